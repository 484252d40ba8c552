"""The real deployment shape, for the benchmarks and the end-to-end tests: ``celery -A tasks
worker`` / ``beat`` and ``sm8cd web`` as separate processes on real Redis, both simulators on
loopback in this process. (One benchmark starts its workers from ``bench.rate_limited_app``.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bridge.redis import conn as redis_conn
from bridge.redis.server import free_port
from bridge.store import Stores
from mappings.ids import cd_job_uuid, sm8_activity_uuid, sm8_allocation_uuid

__all__ = ["Stack", "eventually", "expected_booking", "free_port"]

ROOT = Path(__file__).resolve().parents[1]
SM8_KEY = "bench-servicem8-key-4c1f"
CD_KEY = "bench-coredination-key-9a2e"
OUR_PREFIXES = ("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_", "BUDGET_")


def expected_booking(cd_sim: Any, ns: uuid.UUID, cd_job: str, user: int) -> tuple[str, str]:
    """The ServiceM8 object and uuid of the booking the bridge makes for ``user`` scheduled on
    ``cd_job`` (``SERVICEM8_PULL_BOOKING=auto``): fixed on a timed job, flexible otherwise."""
    job = cd_sim.jobs[cd_sim.by_uuid[cd_job.lower()]]
    if job.get("startTime") is not None and not job.get("allDay"):
        return "jobactivity", sm8_activity_uuid(ns, cd_job, user)
    return "joballocation", sm8_allocation_uuid(ns, cd_job, user)


def cd_resources(cd_sim: Any) -> dict[str, dict[int, str]]:
    """Each Coredination job's people and their states: job uuid → user id → state."""
    return {j["uuid"]: {r["userId"]: r["state"] for r in j["resources"]}
            for j in cd_sim.snapshot()["jobs"]}  # fmt: skip


def book_and_wait(sm8: Any, cd: Any, biz: Any, ns: uuid.UUID, start: str, end: str) -> float:
    """A fixed booking on the first job for somebody not booked on it yet, made in ServiceM8;
    waits until Coredination shows that person scheduled on the job and returns the seconds it
    took (``AssertionError`` after 30 s)."""
    job = biz.jobs[0]
    taken = {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
    member = next((s for s in biz.staff if s["uuid"] not in taken), biz.staff[0])
    sm8.create("jobactivity", {"job_uuid": job, "staff_uuid": member["uuid"],
                               "activity_was_scheduled": 1, "start_date": start,
                               "end_date": end})  # fmt: skip
    user = biz.user_for(member["uuid"])["id"]
    made = time.monotonic()

    def scheduled() -> bool:
        cd_job = cd.jobs[cd.by_uuid[cd_job_uuid(ns, job)]]
        return any(r["userId"] == user and r["state"] == "SCHEDULED"
                   for r in cd_job["resources"])  # fmt: skip

    eventually(scheduled, timeout=30)
    return time.monotonic() - made


def expected_resources(biz: Any, ns: uuid.UUID) -> dict[str, dict[int, str]]:
    """What ``cd_resources`` should show once a seeded business's flexible bookings synced."""
    want: dict[str, dict[int, str]] = {cd_job_uuid(ns, j): {} for j in biz.jobs}
    for row in biz.allocations:
        user = biz.user_for(row["staff_uuid"])
        if user is not None:
            state = "SCHEDULED" if row.get("allocation_date") else "ASSIGNED"
            want[cd_job_uuid(ns, row["job_uuid"])][user["id"]] = state
    return want


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
    """Bridge processes for one fresh connection; ``stop()`` ends them, ``wipe()`` its keys."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        sm8_sim: Any,
        cd_sim: Any,
        *,
        sm8_key: str = SM8_KEY,
        cd_key: str = CD_KEY,
        **env: str,
    ) -> None:
        self.tmp = tmp_path
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.connection = f"s{uuid.uuid4().hex[:9]}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
        self.env.update(
            {
                "REDIS_URL": redis_url,
                "BRIDGE_CONNECTION_ID": self.connection,
                "SERVICEM8_API_KEY": sm8_key,
                "SERVICEM8_BASE_URL": sm8_sim.api_url(),
                "COREDINATION_API_KEY": cd_key,
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
        self.client = redis_conn.client(redis_url)
        self.stores = Stores.connect(self.client, self.connection)
        self.web_port: int | None = None

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
                [sys.executable, *args],
                cwd=self.tmp,
                env=self.env if env is None else env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def celery(self, name: str, args: list[str], app: str = "tasks") -> subprocess.Popen[bytes]:
        """``celery -A app …``; an app outside the installed packages (``bench.…``) is found
        from the repository."""
        env = None
        if app.split(".")[0] != "tasks":
            path = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH")) if p)
            env = {**self.env, "PYTHONPATH": path}
        return self._spawn(name, ["-m", "celery", "-A", app, *args], env)

    def worker(
        self, name: str = "w1", concurrency: int = 2, app: str = "tasks"
    ) -> subprocess.Popen[bytes]:
        return self.celery(
            name,
            ["worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
             "-n", f"{name}-{self.connection}@%h", "--without-gossip", "--without-mingle"],
            app,
        )  # fmt: skip

    def beat(self) -> subprocess.Popen[bytes]:
        return self.celery("beat", ["beat", "--loglevel", "INFO", "--pidfile="])

    def web(self, port: int | None = None) -> str:
        """Start the webhook server (on ``port``, or a free one); its base URL once it answers."""
        self.web_port = port or free_port()
        self._spawn("web", ["-m", "bridge", "web", "--port", str(self.web_port)])
        base = f"http://127.0.0.1:{self.web_port}"

        def answering() -> bool:
            try:
                return requests.get(f"{base}/metrics", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        eventually(answering, timeout=30, interval=0.1)
        return base

    def send(self, task: str, *args: Any) -> None:
        from bridge.queues import Enqueuer

        Enqueuer.for_broker(self.env["REDIS_URL"], self.connection).send(task, args)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a worker and its pool children), mid-task."""
        proc = self.processes.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

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

    def wipe(self) -> None:
        self.stores.wipe()
        self.client.close()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))
