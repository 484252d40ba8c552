"""``sm8cd run``: one Celery worker, one beat and the webhook server as child processes on one
Redis (``REDIS_URL``, or an embedded server in the state folder), stopped together.

Each child runs in its own session, so a Ctrl-C on the terminal reaches only this process, which
then stops them in order: the web server first (no new work), then beat (no new ticks), then the
worker with a *warm* shutdown (it finishes the tasks it holds; with ``acks_late`` anything it cannot
finish goes back to the queue), and the embedded Redis last, which flushes its append-only file.
Nothing in flight is lost.

If a child dies on its own, everything stops and ``sm8cd run`` exits 1: restarting is the job of
whatever runs ``sm8cd run`` (systemd, Docker, a terminal), which sees the failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bridge.config import Settings
from bridge.log import get_logger
from bridge.redis.server import EmbeddedRedis

log = get_logger(__name__)

STOP_ORDER = ("web", "beat", "worker")
STOP_SECONDS = {"web": 10.0, "beat": 10.0, "worker": 60.0}


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Supervisor:
    settings: Settings
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    concurrency: int = 2
    embedded: EmbeddedRedis | None = None
    log_dir: Path | None = None  # children's output goes here (one file each) instead of ours
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    children: dict[str, Child] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        level = self.settings.log_level
        python = sys.executable
        hostname = f"bridge-{self.settings.bridge_connection_id}@%h"
        # Celery's banners (queues, tasks, configuration: about 50 lines) only at DEBUG.
        celery = [python, "-m", "celery", *(() if level == "DEBUG" else ("--quiet",))]
        self.children = {
            "worker": Child("worker", [*celery, "-A", "tasks", "worker",
                                       "--loglevel", level, "--concurrency", str(self.concurrency),
                                       "-n", hostname, "--without-gossip", "--without-mingle"]),
            "beat": Child("beat", [*celery, "-A", "tasks", "beat",
                                   "--loglevel", level, "--pidfile="]),
            "web": Child("web", [python, "-m", "bridge", "web",
                                 "--host", self.host, "--port", str(self.port)]),
        }  # fmt: skip

    def start(self) -> None:
        env = {**os.environ, **self.env, "REDIS_URL": self.redis_url}
        for child in self.children.values():
            output = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                output = open(self.log_dir / f"{child.name}.log", "ab")  # noqa: SIM115
            child.process = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                child.args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
            )
            if output is not None:
                output.close()  # the child holds its own descriptor
            log.info("run.started", part=child.name, pid=child.process.pid)
        # The first poll now, not one beat interval later.
        from bridge.queues import POLL_CYCLE, Enqueuer

        own = self.settings.bridge_connection_id
        Enqueuer.for_broker(self.redis_url, own, own).send(POLL_CYCLE)

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def wait(self) -> int:
        """Until a stop is requested (0) or a child exits on its own (1)."""
        while not self._stop.wait(0.5):
            for child in self.children.values():
                code = child.process.poll() if child.process else None
                if code is not None:
                    log.error("run.child_exited", part=child.name, code=code)
                    return 1
        return 0

    def stop(self) -> None:
        for name in STOP_ORDER:
            child = self.children[name]
            process = child.process
            if process is None or process.poll() is not None:
                continue
            log.info("run.stopping", part=name)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=STOP_SECONDS[name])
            except subprocess.TimeoutExpired:
                log.warning("run.killed", part=name, after_seconds=STOP_SECONDS[name])
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self.embedded is not None:
            self.embedded.stop()
            log.info("run.redis_stopped", data=str(self.embedded.state_dir))

    def run(self) -> int:
        """Start, wait for SIGINT/SIGTERM or a child's death, stop. The exit code."""
        previous = {sig: signal.signal(sig, self.request_stop)
                    for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
        try:
            self.start()
            code = self.wait()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code
