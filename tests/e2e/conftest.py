"""Real deployment shape: ``celery -A tasks worker`` and ``celery -A tasks beat`` as separate
processes, real Redis, both simulators on loopback in this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bridge.store import Store
from tests.conftest import CD_KEY, SM8_KEY

pytestmark = pytest.mark.e2e


def eventually(check: Callable[[], Any], timeout: float = 45.0, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last result otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last result: {last!r}")


class Stack:
    def __init__(
        self, tmp_path: Path, redis_url: str, sm8_sim: Any, cd_sim: Any, **env: str
    ) -> None:
        self.tmp = tmp_path
        self.connection = f"e2e{uuid.uuid4().hex[:8]}"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_"))
        }
        self.env.update(
            {
                "REDIS_URL": redis_url,
                "BRIDGE_CONNECTION_ID": self.connection,
                "SERVICEM8_API_KEY": SM8_KEY,
                "SERVICEM8_BASE_URL": sm8_sim.api_url(),
                "COREDINATION_API_KEY": CD_KEY,
                "COREDINATION_BASE_URL": cd_sim.api_url(),
                "SERVICEM8_POLL_SECONDS": "1",
                "COREDINATION_POLL_SECONDS": "1",
                "STAFF_MATCH_SECONDS": "2",
                "HTTP_READ_TIMEOUT": "5",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logfiles: list[Any] = []
        self.client = redis.Redis.from_url(redis_url)
        self.store = Store(self.client, self.connection)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.logfiles.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", *args],
            cwd=self.tmp,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def worker(self, name: str = "w1", concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self._spawn(
            name,
            ["worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
             "-n", f"{name}-{self.connection}@%h", "--without-gossip", "--without-mingle"],
        )  # fmt: skip

    def beat(self) -> subprocess.Popen[bytes]:
        return self._spawn("beat", ["beat", "--loglevel", "INFO", "--pidfile="])

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: the worker and its pool children, mid-task."""
        proc = self.processes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.processes.clear()
        for log in self.logfiles:
            log.close()
        self.logfiles.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, sm8_sim: Any, cd_sim: Any) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_url, sm8_sim, cd_sim)
    yield s
    s.stop()
    s.store.wipe()
    s.client.close()
