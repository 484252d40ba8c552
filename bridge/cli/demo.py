"""``sm8cd demo``: both simulators with a small, real-looking business, the whole bridge (embedded
Redis, worker, beat, webhook server) between them, four scripted changes shown as they sync, and a
summary read back from both simulators. Exit 0 only when both sides agree.

Everything runs on loopback with throwaway keys; the bridge's own state lives in a temporary folder
unless ``--state-dir`` names one.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from bridge.config import Settings
from bridge.process.runtime import Runtime, build
from bridge.process.supervisor import Supervisor
from bridge.redis.server import EmbeddedRedis, free_port
from bridge.simulators import CoredinationSimulator, ServiceM8Simulator
from bridge.simulators.checker import Convergence, check
from bridge.simulators.scenario import Business, seed_business, seed_history
from bridge.simulators.summary import summary_data
from mappings.ids import cd_job_uuid, connection_namespace

SM8_KEY = "demo-servicem8-key"
CD_KEY = "demo-coredination-key"
CONNECTION = "demo"
STEP_TIMEOUT = 30.0
HISTORY_JOBS = 5  # finished jobs from the last year: the demo shows them left out


class DemoFailed(Exception):
    pass


def _wait(what: str, condition: Callable[[], Any], timeout: float = STEP_TIMEOUT) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.005)
    raise DemoFailed(f"timed out after {timeout:.0f}s waiting for: {what}")


class Demo:
    def __init__(self, console: Console, state_dir: Path, log_level: str = "INFO") -> None:
        self.console = console
        self.state_dir = state_dir
        self.log_level = log_level
        self.ns = connection_namespace(CONNECTION)
        self.sm8 = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=11)
        self.cd = CoredinationSimulator(api_keys=(CD_KEY,), seed=11)
        self.business: Business | None = None
        self.history: set[str] = set()  # finished jobs, out of the sync's scope
        self.supervisor: Supervisor | None = None
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()

    # --- helpers -----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def done(self, text: str, seconds: float) -> None:
        self.say(f"  [green]✓[/] {text} [dim]({seconds * 1000:.0f} ms)[/]")

    def staff_name(self, staff_uuid: str) -> str:
        member = self.sm8.records["staff"][staff_uuid]
        return f"{member['first']} {member['last']}"

    def job_address(self, job_uuid: str) -> str:
        return str(self.sm8.records["job"][job_uuid]["job_address"])

    def cd_state(self, job_uuid: str, user_id: int) -> str | None:
        with self.cd.lock:
            job_id = self.cd.by_uuid.get(cd_job_uuid(self.ns, job_uuid))
            if job_id is None:
                return None
            for resource in self.cd.jobs[job_id]["resources"]:
                if resource["userId"] == user_id:
                    return str(resource["state"])
        return None

    def live_allocations(
        self, job_uuid: str, staff_uuid: str, obj: str = "joballocation"
    ) -> list[dict[str, Any]]:
        with self.sm8.lock:
            return [
                dict(a)
                for a in self.sm8.records[obj].values()
                if a["job_uuid"] == job_uuid
                and a["staff_uuid"] == staff_uuid
                and str(a["active"]) == "1"
            ]

    def live_bookings(self, job_uuid: str, staff_uuid: str) -> list[dict[str, Any]]:
        """Both kinds: flexible (job allocations) and fixed (job activities)."""
        return self.live_allocations(job_uuid, staff_uuid) + self.live_allocations(
            job_uuid, staff_uuid, "jobactivity"
        )

    def settings(self, redis_url: str) -> Settings:
        from bridge.config import load_settings

        return load_settings(
            _env_file=None, **{k.lower(): v for k, v in self.env(redis_url).items()}
        )

    def env(self, redis_url: str) -> dict[str, str]:
        return {
            "SERVICEM8_API_KEY": SM8_KEY,
            "SERVICEM8_BASE_URL": self.sm8.api_url(),
            "COREDINATION_API_KEY": CD_KEY,
            "COREDINATION_BASE_URL": self.cd.api_url(),
            "REDIS_URL": redis_url,
            "WEBHOOK_TOKEN": self.token,
            "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{self.port}",
            "BRIDGE_CONNECTION_ID": CONNECTION,
            "BRIDGE_STATE_DIR": str(self.state_dir),
            "SERVICEM8_POLL_SECONDS": "10",
            "COREDINATION_POLL_SECONDS": "10",
            "STAFF_MATCH_SECONDS": "30",
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": "json",
        }

    # --- the story ---------------------------------------------------------------------------
    def run(self, keep_running: bool = False, summary_json: Path | None = None) -> Convergence:
        with ExitStack() as stack:
            self.sm8.start()
            stack.callback(self.sm8.stop)
            self.cd.start()
            stack.callback(self.cd.stop)
            tomorrow = datetime.now() + timedelta(days=1)
            self.business = seed_business(self.sm8, self.cd, staff=4, jobs=6, allocations=8,
                                          seed=5, start=tomorrow)  # fmt: skip
            history = seed_history(self.sm8, self.business, jobs=HISTORY_JOBS, days=365)
            self.history = set(history)
            self.say("[bold]1. Two systems, one business[/]")
            self.say(f"  ServiceM8 simulator     {self.sm8.api_url()}  "
                     f"4 staff, 6 upcoming jobs, 8 allocations; {len(history)} finished "
                     "jobs from the last year")  # fmt: skip
            self.say(f"  Coredination simulator  {self.cd.api_url()}  "
                     f"4 users (the staff's e-mail addresses)")  # fmt: skip

            redis_server = EmbeddedRedis(self.state_dir / "redis").start()
            stack.callback(redis_server.stop)
            settings = self.settings(redis_server.url)
            runtime = build(settings, redis_server.url)
            stack.callback(runtime.close)
            runtime.engine.match_staff()
            self._preview(runtime)
            self.supervisor = Supervisor(settings, redis_server.url, port=self.port,
                                         log_dir=self.state_dir / "logs",
                                         env=self.env(redis_server.url))  # fmt: skip
            self.supervisor.start()
            stack.callback(self.supervisor.stop)
            self.say(
                "\n[bold]2. The bridge starts[/] (embedded Redis, worker, beat, webhook server)"
            )
            health = f"http://127.0.0.1:{self.port}/healthz"
            seconds = _wait("the bridge to report healthy", lambda: healthy(health), 60)
            self.done(f"healthy at {health}", seconds)
            started = time.monotonic()
            from bridge.ops.subscriptions import subscribe_webhooks

            subscribed = subscribe_webhooks(runtime)
            self.done("webhooks subscribed: " + ", ".join(subscribed) +
                      " (ServiceM8's challenge answered)", time.monotonic() - started)  # fmt: skip
            seconds = _wait(
                "the first sync of every allocation",
                lambda: (c := check(self.sm8, self.cd, self.ns)).converged and c.pairs >= 8,
            )
            result = check(self.sm8, self.cd, self.ns)
            self.done(f"first sync: {result.pairs} allocations → {result.cd_jobs} Coredination "
                      f"jobs, users scheduled or assigned", seconds)  # fmt: skip

            self.say("\n[bold]3. Changes on both sides[/]")
            self._new_allocation()
            self._fixed_on_the_board()
            self._reschedule_in_coredination()
            self._delete_allocation()
            self._finish_in_coredination()

            self.say("\n[bold]4. Summary[/] (read back from both simulators)")
            _wait("both sides to agree", lambda: check(self.sm8, self.cd, self.ns).converged)
            result = check(self.sm8, self.cd, self.ns)
            print_summary(self, result, runtime.stores.activity.stats())
            show_why(self.console, runtime, self.business.jobs[1])
            if summary_json is not None:
                data = summary_data(self.sm8, self.cd, result, self.history)
                summary_json.write_text(json.dumps(data, indent=2))
            if keep_running:
                self._keep_running()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _preview(self, runtime: Runtime) -> None:
        """What ``sm8cd preview`` says of the first sync, before anything syncs."""
        from bridge.process.preview import run_preview

        started = time.monotonic()
        seen = run_preview(runtime)
        self.done("preview of the first sync (nothing written): " + seen.summary(),
                  time.monotonic() - started)  # fmt: skip
        history = seen.left_out().get("history", []) + seen.left_out().get("status", [])
        if history:
            self.say(f"  left out as finished work: {len(history)} job(s), e.g. "
                     f"{self.job_address(sorted(history)[0])}")  # fmt: skip

    def _new_allocation(self) -> None:
        assert self.business is not None
        job = self.business.jobs[0]
        taken = {a["staff_uuid"] for a in self.live_allocations_of(job)}
        member = next(s for s in self.business.staff if s["uuid"] not in taken)
        user = self.business.user_for(member["uuid"])
        assert user is not None
        day = (datetime.now() + timedelta(days=2)).strftime("%Y-%m-%d 00:00:00")
        self.say(f"  ServiceM8: office allocates {self.staff_name(member['uuid'])} to "
                 f"'{self.job_address(job)}' for {day[:10]}, morning window")  # fmt: skip
        started = time.monotonic()
        window = self.business.windows[1]
        self.sm8.create("joballocation", {"job_uuid": job, "staff_uuid": member["uuid"],
                                          "allocation_date": day,
                                          "allocation_window_uuid": window})  # fmt: skip
        _wait("the new allocation in Coredination",
              lambda: self.cd_state(job, user["id"]) == "SCHEDULED")  # fmt: skip
        self.done(f"Coredination: {self.staff_name(member['uuid'])} (user {user['id']}) "
                  "SCHEDULED on the job", time.monotonic() - started)  # fmt: skip

    def _fixed_on_the_board(self) -> None:
        """A fixed booking dragged onto a person's row of the dispatch board: the Coredination
        job takes its exact time."""
        assert self.business is not None
        job = self.business.jobs[4]  # its only booking is undated: the job has no time yet
        taken = {a["staff_uuid"] for a in self.live_allocations_of(job)}
        member = next(s for s in self.business.staff if s["uuid"] not in taken)
        user = self.business.user_for(member["uuid"])
        assert user is not None
        start = (datetime.now() + timedelta(days=3)).replace(hour=13, minute=0, second=0,
                                                             microsecond=0)  # fmt: skip
        end = start + timedelta(hours=2)
        self.say(f"  ServiceM8: office drags '{self.job_address(job)}' onto "
                 f"{self.staff_name(member['uuid'])}'s row of the dispatch board, "
                 f"{start:%Y-%m-%d %H:%M}-{end:%H:%M} (a fixed-time booking)")  # fmt: skip
        started = time.monotonic()
        self.sm8.create("jobactivity", {"job_uuid": job, "staff_uuid": member["uuid"],
                                        "activity_was_scheduled": 1,
                                        "start_date": f"{start:%Y-%m-%d %H:%M:%S}",
                                        "end_date": f"{end:%Y-%m-%d %H:%M:%S}"})  # fmt: skip
        want = (
            int(start.replace(tzinfo=self.sm8.tz).timestamp() * 1000),  # the account's timezone
            int(end.replace(tzinfo=self.sm8.tz).timestamp() * 1000),
        )
        _wait("the fixed booking in Coredination",
              lambda: self.cd_state(job, user["id"]) == "SCHEDULED"
              and self.cd_times(job) == want)  # fmt: skip
        self.done(f"Coredination: {self.staff_name(member['uuid'])} SCHEDULED, the job set to "
                  f"{start:%H:%M}-{end:%H:%M} exactly", time.monotonic() - started)  # fmt: skip

    def cd_times(self, job_uuid: str) -> tuple[int | None, int | None]:
        with self.cd.lock:
            job_id = self.cd.by_uuid.get(cd_job_uuid(self.ns, job_uuid))
            row = self.cd.jobs[job_id] if job_id is not None else {}
            return row.get("startTime"), row.get("endTime")

    def live_allocations_of(self, job: str) -> list[dict[str, Any]]:
        with self.sm8.lock:
            return [a for a in self.sm8.records["joballocation"].values()
                    if a["job_uuid"] == job and str(a["active"]) == "1"]  # fmt: skip

    def _reschedule_in_coredination(self) -> None:
        assert self.business is not None
        job = self.business.jobs[1]
        allocation = self.live_allocations_of(job)[0]
        old = allocation["staff_uuid"]
        taken = {a["staff_uuid"] for a in self.live_allocations_of(job)}
        new = next(s["uuid"] for s in self.business.staff if s["uuid"] not in taken)
        old_user, new_user = self.business.user_for(old), self.business.user_for(new)
        assert old_user is not None and new_user is not None
        self.say(f"  Coredination: dispatcher moves the visit at '{self.job_address(job)}' from "
                 f"{self.staff_name(old)} to {self.staff_name(new)}")  # fmt: skip
        started = time.monotonic()
        cd_job = cd_job_uuid(self.ns, job)
        self.cd.resource_op(cd_job, "unschedule", str(old_user["id"]))
        self.cd.resource_op(cd_job, "schedule", str(new_user["id"]))
        _wait(
            "the move in ServiceM8",
            lambda: not self.live_bookings(job, old) and self.live_bookings(job, new),
        )
        made = self.live_bookings(job, new)[0]
        kind = (f"fixed booking {made['start_date'][11:16]}-{made['end_date'][11:16]} (the job's "
                "time)" if "start_date" in made else "allocation")  # fmt: skip
        self.done(f"ServiceM8: {self.staff_name(old)}'s allocation deleted, "
                  f"{self.staff_name(new)}'s {kind} created",
                  time.monotonic() - started)  # fmt: skip

    def _delete_allocation(self) -> None:
        assert self.business is not None
        job = self.business.jobs[2]
        allocation = self.live_allocations_of(job)[0]
        user = self.business.user_for(allocation["staff_uuid"])
        assert user is not None
        self.say(f"  ServiceM8: office deletes {self.staff_name(allocation['staff_uuid'])}'s "
                 f"allocation at '{self.job_address(job)}'")  # fmt: skip
        started = time.monotonic()
        self.sm8.delete("joballocation", allocation["uuid"])
        _wait("the unschedule in Coredination",
              lambda: self.cd_state(job, user["id"]) in (None, "UNASSIGNED"))  # fmt: skip
        self.done("Coredination: user unscheduled from the job", time.monotonic() - started)

    def _finish_in_coredination(self) -> None:
        assert self.business is not None
        job = self.business.jobs[3]
        allocation = self.live_allocations_of(job)[0]
        staff = allocation["staff_uuid"]
        user = self.business.user_for(staff)
        assert user is not None
        self.say(f"  Coredination: {self.staff_name(staff)} marks the job at "
                 f"'{self.job_address(job)}' finished")  # fmt: skip
        started = time.monotonic()
        self.cd.user_action(cd_job_uuid(self.ns, job), str(user["id"]), "FINISHED")
        _wait("the completion in ServiceM8",
              lambda: any(a.get("completion_timestamp", "0000")[:4] not in ("0000", "")
                          for a in self.live_allocations(job, staff)))  # fmt: skip
        self.done("ServiceM8: allocation completion time set", time.monotonic() - started)

    def _keep_running(self) -> None:
        self.say(f"\nStill running (Ctrl-C to stop). Logs in {self.state_dir / 'logs'}.")
        self.say(f"  metrics  http://127.0.0.1:{self.port}/metrics")
        self.say(f"  ServiceM8 simulator admin  {self.sm8.root_url}/_admin/state")
        self.say(f"  Coredination simulator admin  {self.cd.root_url}/_admin/state")
        assert self.supervisor is not None
        import signal

        signal.signal(signal.SIGTERM, self.supervisor.request_stop)
        signal.signal(signal.SIGINT, self.supervisor.request_stop)
        self.supervisor.wait()


def show_why(console: Console, runtime: Runtime, job: str) -> None:
    """Why the moved visit is as it is: the job's trail, as ``sm8cd explain`` tells it."""
    from mappings.trail import decode, sentences

    console.print(f"\n[bold]5. Why[/] (sm8cd explain {job}: the sync that took the dispatcher's "
                  "move)", highlight=False)  # fmt: skip
    names = {k: str(v.get("name")) for k, v in runtime.stores.staff.directory("staff").items()}
    entries = [e for e in map(decode, runtime.stores.trail.entries(job)) if e is not None]
    moved = [e for e in entries if any(p.rule == "pull" for p in e.pairs)] or entries
    for line in sentences(moved[-1], runtime.engine.ctx.tz, names) if moved else []:
        console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def print_summary(demo: Demo, result: Convergence, stats: dict[str, int]) -> None:
    data = summary_data(demo.sm8, demo.cd, result, demo.history)
    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("ServiceM8", justify="right")
    table.add_column("Coredination", justify="right")
    table.add_row("jobs with people on them", str(data["servicem8_jobs_allocated"]),
                  str(data["coredination_jobs"]))  # fmt: skip
    bookings = data["servicem8_live_allocations"] + data["servicem8_live_fixed_bookings"]
    table.add_row("live bookings (flexible + fixed) / resources",
                  f"{bookings} ({data['servicem8_live_allocations']} + "
                  f"{data['servicem8_live_fixed_bookings']})",
                  str(data["coredination_resources"]))  # fmt: skip
    table.add_row("finished jobs left out (their bookings)",
                  f"{data['servicem8_history_jobs']} ({data['servicem8_history_bookings']})",
                  "0")  # fmt: skip
    table.add_row("API requests made to it", str(data["servicem8_requests"]),
                  str(data["coredination_requests"]))  # fmt: skip
    demo.console.print(table)
    in_step = ", ".join(f"{n} {p}" for p, n in sorted(result.by_presence.items()))
    demo.say(f"  pairs in step: {sum(result.by_presence.values())} ({in_step}); "
             f"pending: {result.pending}; 429 answers: {data['answered_429']}")  # fmt: skip
    writes = {k: v for k, v in sorted(stats.items()) if not k.startswith("webhook.")}
    demo.say(f"  bridge counters: {writes}")
    if result.converged:
        demo.say("  [bold green]Both systems agree.[/]")
    else:
        for problem in result.problems:
            demo.say(f"  [red]✗[/] {problem}")


def healthy(url: str) -> bool:
    """Whether the bridge's ``/healthz`` answers 200."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def run_demo(
    console: Console,
    *,
    keep_running: bool = False,
    state_dir: Path | None = None,
    summary_json: Path | None = None,
) -> bool:
    with ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="bridge-demo-"))
            )
        demo = Demo(console, state_dir)
        started = time.monotonic()
        try:
            result = demo.run(keep_running=keep_running, summary_json=summary_json)
        except DemoFailed as exc:
            console.print(f"[red]demo failed:[/] {exc}. Logs: {state_dir / 'logs'}")
            if state_dir.name.startswith("bridge-demo-"):
                _show_tail(console, state_dir / "logs")
            return False
        console.print(f"\nDemo finished in {time.monotonic() - started:.1f} s.")
        return result.converged
    return False  # pragma: no cover


def _show_tail(console: Console, logs: Path) -> None:
    for path in sorted(logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()[-5:]
        console.print(f"[dim]--- {path.name}[/]")
        for line in lines:
            console.print(line, markup=False, highlight=False)
