"""``python -m bench.chaos --ops N``: the fault suite on the real deployment shape.

Separate worker, beat and web processes on a private Redis (append-only, so its restart loses
nothing and nothing else is disturbed), both simulators, and a mixed stream of operations on both
sides (flexible bookings: create, reschedule, reassign, delete; fixed bookings on the board:
create, move, delete, open on the phone; in Coredination: schedule, on timed jobs and untimed,
unschedule, finish, and now and then a dispatcher deleting a linked job) while:

- Coredination plays its most hostile dialect throughout (no stamps, nested resources, no
  unassign, a 405 for what is missing, schedule on a finished resource ignored);
- the simulators answer 5xx, hold responses past the client's timeout, reset connections and send
  bursts of 429, and lose a third of ServiceM8's DELETE answers after applying the delete (under
  the default dialects, where a repeated DELETE restores the record);
- webhooks are dropped, duplicated and reordered;
- a worker is killed with SIGKILL every few seconds and started again; beat is killed and
  restarted once; the Redis server is restarted once.

When the operations end the faults stop, one reconcile runs, and the convergence checker must
find nothing lost, duplicated or diverged, and no record a repeated DELETE brought back. Every
fake key and token is then searched for in every log line, dead letter, ``sm8cd status`` and
``/metrics`` output. Exit 0 only when all is clean.

ServiceM8's budget is raised to 1,200 a minute here (the simulator enforces none): this run is
about faults, and at ten operations a second 180 a minute would only make it wait. The budget has
its own benchmark.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import redis
import requests
import typer
from rich.console import Console

from bench.harness import Stack, eventually, free_port
from bench.sentinel import SentinelCluster
from bridge.ops.explain import tell
from bridge.queues import POLL_CYCLE
from bridge.redis.server import EmbeddedRedis
from bridge.simulators import (
    HOSTILE_COREDINATION,
    HOSTILE_SERVICEM8,
    CoredinationSimulator,
    ServiceM8Simulator,
)
from bridge.simulators.checker import Convergence, check
from bridge.simulators.scenario import Business, seed_business
from bridge.sync.context import polled
from mappings.ids import cd_job_uuid, connection_namespace
from mappings.scope import Scope

# Distinctive fakes, so the secret scan cannot miss one.
SM8_KEY = "smk-CHAOS-5ec7e7-a1b2c3d4e5f6"
CD_KEY = "cdk-CHAOS-5ec7e7-f6e5d4c3b2a1"
TOKEN = "whk-CHAOS-5ec7e7-0a9b8c7d6e5f"  # noqa: S105 - a fake, searched for in every output
SECRETS = (SM8_KEY, CD_KEY, TOKEN)
RATE = 10.0  # operations per second
CD_DELETE_SHARE = 0.02  # of operations, a dispatcher deleting a linked job in Coredination
LOST_SECONDS = 3.0  # the store's last writes lost, in the Sentinel run


@dataclass
class ChaosReport:
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    duplicated: int = 0
    diverged: int = 0
    resurrected: int = 0  # records a DELETE sent twice brought back (the office never restores)
    dead_letters: int = 0
    reconciled: int = 0  # drifted pairs the final reconcile found (what webhooks and polls missed)
    held: int = 0  # pairs held by the return-visit rule (Coredination kept a resource at work)
    deleted_in_cd: int = 0  # jobs a dispatcher deleted that wait for the office (deletion rule)
    unreported: list[str] = field(default_factory=list)  # of those, the ones status lacks
    explained: int = 0  # held or diverged pairs whose story ``sm8cd explain`` tells
    unexplained: list[str] = field(default_factory=list)  # those it does not
    converge_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds of each step of the end
    secrets_found: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting pairs.
        return {**vars(self), "operations": dict(self.operations), "faults": dict(self.faults),
                "clean": self.clean}  # fmt: skip

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.diverged or self.resurrected
                    or self.secrets_found or self.unreported or self.unexplained)  # fmt: skip


RedisMode = Literal["single", "sentinel"]


class Chaos:
    """``redis_mode="single"``: one append-only Redis, restarted once; ``"sentinel"``: a
    Sentinel group (a primary, a replica, three sentinels) that loses its last seconds of
    writes once (a snapshot taken a few seconds earlier put back) and fails over once, both
    under load."""

    def __init__(
        self,
        size: int,
        workdir: Path,
        seed: int,
        redis_mode: RedisMode = "single",
        window: float = 60.0,
        starve: int = 0,
    ) -> None:
        """``window``: the bridge's ServiceM8 budget window in seconds, which a 429 pauses the
        API for (a minute, as ServiceM8's; shorter in CI, where each pause is waited out).
        ``starve``: busy processes run beside the bridge while the operations play (a host
        shared with noisy neighbours): leases lapse, answers come late, workers stall between a
        read and the write it decided."""
        self.starve = starve
        self.size = size
        self.window = window
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.report = ChaosReport()
        self.ns: Any = None  # the connection's id namespace, once its stack runs
        self.mode = redis_mode
        self.redis_port = free_port()
        self.redis: EmbeddedRedis | None = None
        self.cluster: SentinelCluster | None = None
        self.sm8 = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=seed)
        self.cd = CoredinationSimulator(api_keys=(CD_KEY,), seed=seed, dialect=HOSTILE_COREDINATION)
        self.stop = threading.Event()

    # --- the world -----------------------------------------------------------------------------
    def start_redis(self) -> str:
        if self.mode == "sentinel":
            self.cluster = SentinelCluster(self.workdir / "sentinel").start()
            return self.cluster.url()
        self.redis = EmbeddedRedis(self.workdir / "redis", port=self.redis_port).start()
        return self.redis.url

    def _primary(self) -> redis.Redis:
        """A plain client of the store's current primary (bytes, no retries)."""
        if self.cluster is not None:
            host, port = self.cluster.master_addr()
            return redis.Redis(host=host, port=port, password=self.cluster.password)
        assert self.redis is not None
        return redis.Redis.from_url(self.redis.url)

    def _lose_last_writes(self, seconds: float) -> None:
        """The store loses its last ``seconds`` of writes: every key is copied (DUMP), the run
        goes on, then the copy is put back in one transaction, as a primary that failed before
        replicating them, or a restore from a backup, would leave it. Everything written
        meanwhile is gone: links, dirty marks, cursors, queued tasks, budgets, leases."""
        client = self._primary()
        try:
            snapshot: list[tuple[bytes, int, bytes]] = []
            for key in client.scan_iter(count=1000):
                with client.pipeline(transaction=False) as pipe:
                    pipe.pttl(key)
                    pipe.dump(key)
                    ttl, dumped = pipe.execute()
                if dumped is not None:
                    snapshot.append((key, max(0, int(ttl)), dumped))
            time.sleep(seconds)
            with client.pipeline(transaction=True) as pipe:
                pipe.flushdb()
                for key, ttl, dumped in snapshot:
                    pipe.restore(key, ttl, dumped, replace=True)
                pipe.execute()
        finally:
            client.close()
        self.report.faults[f"store lost its last {seconds:.0f} s of writes"] += 1

    def run(self) -> ChaosReport:
        self.sm8.start()
        self.cd.start()
        url = self.start_redis()
        stack = Stack(self.workdir / "stack", url, self.sm8, self.cd, sm8_key=SM8_KEY,
                      cd_key=CD_KEY, WEBHOOK_TOKEN=TOKEN, SERVICEM8_POLL_SECONDS="3",
                      COREDINATION_POLL_SECONDS="3", POLL_SECONDS_WITH_WEBHOOKS="3",
                      STAFF_MATCH_SECONDS="10", HTTP_READ_TIMEOUT="1.5",
                      SERVICEM8_RATE_PER_MINUTE=str(int(1200 * self.window / 60)),
                      SERVICEM8_RATE_WINDOW_SECONDS=f"{self.window:g}",
                      COREDINATION_RATE_PER_MINUTE="100000",
                      LOG_LEVEL="INFO")  # fmt: skip
        try:
            self._run(stack)
        finally:
            self.stop.set()
            stack.stop()
            self.sm8.stop()
            self.cd.stop()
            if self.redis is not None:
                self.redis.stop()
            if self.cluster is not None:
                self.cluster.stop()
        return self.report

    def _run(self, stack: Stack) -> None:
        jobs = max(10, self.size // 10)
        biz = seed_business(self.sm8, self.cd, staff=6, jobs=jobs, allocations=jobs,
                            fixed=jobs // 2, seed=3)  # fmt: skip
        ns = self.ns = connection_namespace(stack.connection)
        stack.env["WEBHOOK_PUBLIC_URL"] = stack.web()
        self._bridge(stack, "staff", "match")
        self._bridge(stack, "webhooks", "subscribe")
        for name in ("w1", "w2"):
            stack.worker(name, concurrency=2)
        stack.beat()
        stack.send(POLL_CYCLE)
        eventually(lambda: check(self.sm8, self.cd, ns).converged and len(self.cd.jobs) >= jobs,
                   timeout=120, interval=0.5)  # fmt: skip

        self._faults_on()
        killer = threading.Thread(target=self._kill_workers, args=(stack,), daemon=True)
        killer.start()
        with _busy(self.starve):
            self._operations(biz, ns)
            self.stop.set()
            killer.join(timeout=30)
        self.report.faults["busy processes beside it"] = self.starve
        self._faults_off()
        for name in ("w1", "w2", "beat"):  # everything running again
            if name not in stack.processes or stack.processes[name].poll() is not None:
                stack.processes.pop(name, None)
                if name == "beat":
                    stack.beat()
                else:
                    stack.worker(name, concurrency=2)

        started = time.monotonic()
        phases = self.report.phases

        def phase(name: str) -> None:
            phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)

        self._wait_quiet(stack)
        phase("quiet")
        # The normal paths include the polls: a change whose webhook was dropped in the last
        # seconds is theirs to find, so both systems are polled (and Coredination's census
        # run) once more after all is quiet, before the reconcile counts what is left.
        self._wait_polls(stack)
        phase("polls")
        self._wait_quiet(stack)
        phase("quiet again")
        self._explain_drift(stack)
        reconciled = self._bridge(stack, "reconcile", "--json")
        phase("reconcile")
        with contextlib.suppress(ValueError, KeyError):
            self.report.reconciled = len(json.loads(reconciled)["drift"])
        with contextlib.suppress(AssertionError):  # judged below, whatever the outcome
            eventually(lambda: check(self.sm8, self.cd, ns).converged, timeout=300, interval=1.0)
        phase("checker")
        self.report.converge_seconds = time.monotonic() - started
        result = check(self.sm8, self.cd, ns)
        self._judge(result, stack)
        self._scan(stack)

    def _explain_drift(self, stack: Stack) -> None:
        """What the bridge held of each pair the reconcile is about to repair (a dry run first):
        the snapshot, the Coredination state in its view, the person's bookings. For reading."""
        with contextlib.suppress(ValueError, KeyError):
            drift = json.loads(self._bridge(stack, "reconcile", "--dry-run", "--json"))["drift"]
            for row in drift[:10]:
                record = stack.stores.jobs.load(row["sm8_job_uuid"])
                staff, user = row["sm8_staff_uuid"], row["cd_user_id"]
                mine = [a for a in record.allocations.values() if a.staff_uuid == staff]
                bookings = [(a.uuid[:8], a.active, a.fixed, a.date_ms, a.completed_ms,
                             a.edited_ms, a.by_bridge) for a in mine]  # fmt: skip
                view = None if record.cd is None else record.cd.resources.get(user)
                self.report.problems.append(
                    f"drift job {row['sm8_job_uuid'][:8]} staff {staff[:8]}: read "
                    f"{row['servicem8']}/{row['coredination']}; held snapshot "
                    f"{record.pairs.get(staff)}, view {view}, bookings {bookings}"
                )

    def _bridge(self, stack: Stack, *args: str) -> str:
        """A ``bridge`` command as an operator runs it; its output is kept for the secret scan."""
        result = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bridge", *args], env=stack.env, cwd=stack.tmp,
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        with (stack.tmp / "commands.log").open("a") as log:
            log.write(result.stdout + result.stderr)
        return result.stdout

    # --- faults --------------------------------------------------------------------------------
    def _faults_on(self) -> None:
        # The most hostile reading of ServiceM8 (the simulator's defaults: no allocation webhooks,
        # a second DELETE restores, a repeated create is a 409) and, besides, a third of DELETE
        # and create answers lost after the write was applied. Coredination plays its most
        # hostile reading for the whole run.
        self.sm8.set_dialect(**asdict(HOSTILE_SERVICEM8))
        for sim in (self.sm8, self.cd):
            sim.set_faults(error_rate=0.05, timeout_rate=0.02, timeout_seconds=2.0,
                           reset_rate=0.02, latency_jitter=0.05)  # fmt: skip
            sim.deliverer.faults.drop_rate = 0.2
            sim.deliverer.faults.duplicate_rate = 0.2
            sim.deliverer.faults.max_delay = 1.0

    def _faults_off(self) -> None:
        self.sm8.set_dialect(lost_delete_answer_rate=0.0, lost_create_answer_rate=0.0)
        for sim in (self.sm8, self.cd):
            sim.set_faults(error_rate=0.0, timeout_rate=0.0, reset_rate=0.0, latency_jitter=0.0,
                           burst_429=0)  # fmt: skip
            sim.deliverer.faults.drop_rate = 0.0
            sim.deliverer.faults.duplicate_rate = 0.0
            sim.deliverer.faults.max_delay = 0.0

    def _kill_workers(self, stack: Stack) -> None:
        """SIGKILL a worker every few seconds; beat once, a third of the way through; Redis
        once, at two thirds; a 429 burst now and then."""
        duration = self.size / RATE
        gap = min(3.0, duration / 6)
        beat_done = redis_done = False
        lost_done = self.mode != "sentinel"  # the single Redis's own fault is its restart
        started = time.monotonic()
        while not self.stop.wait(self.rng.uniform(gap * 0.7, gap * 1.3)):
            name = self.rng.choice(["w1", "w2"])
            if name in stack.processes:
                stack.kill(name)
                self.report.faults["worker SIGKILL"] += 1
                stack.worker(name, concurrency=2)
            elapsed = time.monotonic() - started
            if not beat_done and elapsed > duration / 3:
                stack.kill("beat")
                self.report.faults["beat killed"] += 1
                stack.beat()
                beat_done = True
            if not lost_done and elapsed > duration / 4:
                self._lose_last_writes(LOST_SECONDS)
                lost_done = True
            if not redis_done and elapsed > duration * (0.6 if self.cluster else 2 / 3):
                if self.cluster is not None:
                    self.cluster.failover()  # the primary handed over, under load
                    self.report.faults["sentinel failover"] += 1
                else:
                    assert self.redis is not None
                    self.redis.stop()
                    time.sleep(1.0)
                    self.start_redis()
                    self.report.faults["redis restart"] += 1
                redis_done = True
            if self.rng.random() < 0.3:
                self.sm8.set_faults(burst_429=self.rng.randint(3, 10))

    # --- the operation stream ------------------------------------------------------------------
    def _operations(self, biz: Business, ns: Any) -> None:
        users = {s["uuid"]: biz.user_for(s["uuid"]) for s in biz.staff}
        start = time.monotonic()
        for i in range(self.size):
            time.sleep(max(0.0, start + i / RATE - time.monotonic()))
            op = self.rng.choice(["create", "reschedule", "reassign", "delete", "fixed_create",
                                  "fixed_move", "fixed_delete", "open", "schedule",
                                  "unschedule", "finish"])  # fmt: skip
            if self.rng.random() < CD_DELETE_SHARE:
                op = "cd_delete"
            try:
                # An office or dispatcher acts on what it sees: the pick and the change are one
                # step, so no API write lands between them (the office never deletes a deleted
                # booking, which would restore it, nor edits over a change it has not seen).
                with self.sm8.lock, self.cd.lock:
                    done = getattr(self, f"_op_{op}")(biz, ns, users)
            except Exception as exc:  # the simulators refuse an impossible operation
                done = False
                self.report.problems.append(f"{op}: {type(exc).__name__}")
            if done:
                self.report.operations[op] += 1

    def _live(self, obj: str = "joballocation") -> list[dict[str, Any]]:
        with self.sm8.lock:
            return [dict(a) for a in self.sm8.records[obj].values()
                    if str(a["active"]) == "1"]  # fmt: skip

    def _free(self, biz: Business, job: str) -> list[str]:
        """Staff with no live booking of either kind on the job."""
        live = self._live() + self._live("jobactivity")
        taken = {a["staff_uuid"] for a in live if a["job_uuid"] == job}
        return [s["uuid"] for s in biz.staff if s["uuid"] not in taken]

    def _slot(self) -> dict[str, str]:
        start = (datetime.now() + timedelta(days=self.rng.randint(1, 30))).replace(
            hour=self.rng.randint(7, 16), minute=0, second=0, microsecond=0
        )
        end = start + timedelta(hours=self.rng.choice([1, 2, 3]))
        return {"start_date": start.strftime("%Y-%m-%d %H:%M:%S"),
                "end_date": end.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip

    def _op_fixed_create(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        """A booking dragged onto a person's row of the dispatch board."""
        job = self.rng.choice(biz.jobs)
        free = self._free(biz, job)
        if not free:
            return False
        self.sm8.create("jobactivity", {"job_uuid": job, "staff_uuid": self.rng.choice(free),
                                        "activity_was_scheduled": 1, **self._slot()})  # fmt: skip
        return True

    def _op_fixed_move(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        live = self._live("jobactivity")
        if not live:
            return False
        self.sm8.update("jobactivity", self.rng.choice(live)["uuid"], self._slot())
        return True

    def _op_fixed_delete(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        live = self._live("jobactivity")
        if not live:
            return False
        self.sm8.delete("jobactivity", self.rng.choice(live)["uuid"])
        return True

    def _op_open(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        """The booked person opens a booking on the phone (edit_date moves, nothing else)."""
        live = self._live("jobactivity")
        if not live:
            return False
        self.sm8.open_booking("jobactivity", self.rng.choice(live)["uuid"])
        return True

    def _day(self) -> str:
        day = datetime.now() + timedelta(days=self.rng.randint(1, 30))
        return day.strftime("%Y-%m-%d 00:00:00")

    def _op_create(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        job = self.rng.choice(biz.jobs)
        free = self._free(biz, job)
        if not free:
            return False
        self.sm8.create("joballocation", {"job_uuid": job, "staff_uuid": self.rng.choice(free),
                                          "allocation_date": self._day()})  # fmt: skip
        return True

    def _op_reschedule(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        live = self._live()
        if not live:
            return False
        self.sm8.update("joballocation", self.rng.choice(live)["uuid"],
                        {"allocation_date": self._day()})  # fmt: skip
        return True

    def _op_reassign(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        live = self._live()
        if not live:
            return False
        row = self.rng.choice(live)
        free = self._free(biz, row["job_uuid"])
        if not free:
            return False
        self.sm8.update("joballocation", row["uuid"], {"staff_uuid": self.rng.choice(free)})
        return True

    def _op_delete(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        live = self._live()
        if not live:
            return False
        self.sm8.delete("joballocation", self.rng.choice(live)["uuid"])
        return True

    def _cd_pick(self, biz: Business, ns: Any) -> tuple[str, dict[str, Any]] | None:
        job = self.rng.choice(biz.jobs)
        with self.cd.lock:
            if cd_job_uuid(ns, job) not in self.cd.by_uuid:
                return None
            return cd_job_uuid(ns, job), self.cd.jobs[self.cd.by_uuid[cd_job_uuid(ns, job)]]

    def _op_schedule(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        picked = self._cd_pick(biz, ns)
        if picked is None:
            return False
        cd_job, row = picked
        present = {r["userId"] for r in row["resources"] if r["state"] != "UNASSIGNED"}
        free = [u["id"] for u in users.values() if u and u["id"] not in present]
        if not free:
            return False
        self.cd.resource_op(cd_job, "schedule", str(self.rng.choice(free)))
        return True

    def _op_unschedule(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        picked = self._cd_pick(biz, ns)
        if picked is None:
            return False
        cd_job, row = picked
        present = [r["userId"] for r in row["resources"]
                   if r["state"] in ("SCHEDULED", "ASSIGNED")]  # fmt: skip
        if not present:
            return False
        self.cd.resource_op(cd_job, "unschedule", str(self.rng.choice(present)))
        return True

    def _op_finish(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        picked = self._cd_pick(biz, ns)
        if picked is None:
            return False
        cd_job, row = picked
        present = [r["userId"] for r in row["resources"] if r["state"] == "SCHEDULED"]
        if not present:
            return False
        self.cd.user_action(cd_job, str(self.rng.choice(present)), "FINISHED")
        return True

    def _op_cd_delete(self, biz: Business, ns: Any, users: dict[str, Any]) -> bool:
        """A dispatcher deletes a linked job in Coredination (its webhook, a DELETE event, may
        be dropped like any other)."""
        picked = self._cd_pick(biz, ns)
        if picked is None:
            return False
        with self.cd.lock:
            self.cd.delete_job(picked[1])
        return True

    # --- the verdict ---------------------------------------------------------------------------
    def _wait_quiet(self, stack: Stack) -> None:
        """Until nothing is queued, dirty or waiting in the webhook deliverers (or 120 s)."""

        def quiet() -> bool:
            try:
                activity = stack.stores.activity
                queued = sum(activity.queue_length(f"celery:bridge.{stack.connection}.{k}")
                             for k in ("interactive", "sync", "poll", "bulk"))  # fmt: skip
                webhooks = self.sm8.deliverer.pending() + self.cd.deliverer.pending()
                return queued == 0 and webhooks == 0 and not stack.stores.jobs.dirty()
            except Exception:
                return False

        try:
            eventually(quiet, timeout=300, interval=0.5)
        except AssertionError:
            self.report.problems.append("queues did not drain within 300 s")

    def _wait_polls(self, stack: Stack) -> None:
        """Until each system has been polled whole after now (or 150 s: a poll waits out a
        ServiceM8 pause, which a 429 burst makes up to a minute long)."""
        since = time.time()

        def polled_after() -> bool:
            activity = stack.stores.activity
            return all(float(activity.cursor(polled(system)) or 0) > since
                       for system in ("servicem8", "coredination"))  # fmt: skip

        try:
            eventually(polled_after, timeout=150, interval=0.5)
        except AssertionError:
            self.report.problems.append("the polls did not run within 150 s of the quiet")

    def _trace(self, job_prefix: str) -> list[str]:
        """What happened to a job the verdict finds wrong: its Coredination deletion, if any,
        and the writes to its bookings (when, whose, what changed), newest last."""
        with self.sm8.lock, self.cd.lock:
            job = next((j for j in self.sm8.records["job"] if j.startswith(job_prefix)), "")
            cd_uuid = cd_job_uuid(self.ns, job) if job else ""
            lines = [f"  trace job {job_prefix}: deleted in Coredination "
                     f"{self.cd.deleted_jobs.get(cd_uuid)}, created again "
                     f"{self.cd.recreated.get(cd_uuid)}, last resource event "
                     f"{self.cd.last_resource_event.get(cd_uuid)}"]  # fmt: skip
            writes = [w for w in self.sm8.journal if w[2] == job][-12:]
        for at, uuid, _, staff, person, fields in writes:
            who = "person" if person else "api"
            lines.append(f"    {at} {uuid[:8]} staff {staff[:8]} {who} {','.join(fields)}")
        return lines

    def _judge(self, result: Convergence, stack: Stack) -> None:
        self.report.lost = len(result.missing_in_cd) + len(result.missing_in_sm8)
        self.report.duplicated = len(result.duplicates)
        self.report.diverged = len(result.disagree) + len(result.recreated_early)
        self.report.problems += result.problems[:20]
        for problem in result.duplicates[:5]:  # the records behind each duplicate, to read
            job, staff = problem.split(":")[0].split()[1::2]
            with self.sm8.lock:
                rows = [a for obj in ("joballocation", "jobactivity")
                        for a in self.sm8.records[obj].values()
                        if a["job_uuid"].startswith(job) and str(a["staff_uuid"]).startswith(staff)
                        and str(a["active"]) == "1"]  # fmt: skip
            for a in rows:
                when = a.get("allocation_date") or f"{a.get('start_date')}-{a.get('end_date')}"
                self.report.problems.append(
                    f"  {a['uuid']} date {when} done {a.get('completion_timestamp')} "
                    f"edited {a['edit_date']}"
                )
        for problem in [*result.missing_in_cd, *result.recreated_early][:5]:
            self.report.problems += self._trace(problem.split(":")[0].split()[1])
        # Pairs the rules leave as they are must each be in ``sm8cd status`` with the reason.
        pending = stack.stores.parked.pending()
        self.report.held = len(result.held)
        self.report.deleted_in_cd = len(result.deleted_in_cd)
        for job, staff in result.held:
            if "Coredination keeps the user" not in pending.get(f"{job}|{staff}", {}).get(
                "reason", ""
            ):
                self.report.unreported.append(f"held job {job[:8]} staff {staff[:8]}")
        for job in result.deleted_in_cd:
            if f"{job}|cd-deleted" not in pending:
                self.report.unreported.append(f"deleted in Coredination: job {job[:8]}")
        self.report.problems += self.report.unreported[:20]
        self._explain(result, stack)
        self.report.dead_letters = stack.stores.work.dead_letter_count()
        self.report.resurrected = sum(self.sm8.restored.values())
        if self.report.resurrected:
            self.report.problems.append(f"resurrected by a repeated DELETE: {self.sm8.restored}")
        for sim in (self.sm8, self.cd):
            for kind, n in sim.injected.items():
                self.report.faults[f"{sim.name} {kind}"] += n
            for kind in ("dropped", "duplicated"):
                self.report.faults[f"{sim.name} webhooks {kind}"] += sim.deliverer.stats[kind]

    def _explain(self, result: Convergence, stack: Stack) -> None:
        """Each pair the checker found held or out of step must be told by ``sm8cd explain``: a
        held pair as held (in an entry's rule, or now), a diverged one in an entry of its own."""
        named = [(job, staff, True) for job, staff in result.held]
        for problem in [*result.disagree, *result.recreated_early]:
            job_prefix, staff_prefix = problem.split(":")[0].split()[1::2]
            job = next((j for j in self.sm8.records["job"] if j.startswith(job_prefix)), job_prefix)
            named.append((job, staff_prefix, False))
        for job, staff, held in named:
            story = tell(stack.stores, job, scope=Scope(), tz=UTC)
            pairs = [p for e in story.entries for p in e.pairs if p.staff.startswith(staff)]
            now = [s for who, s in story.record.pairs.items() if who.startswith(staff)]
            if held:
                told = any(p.rule == "held" for p in pairs) or any(s.held for s in now)
            else:
                told = bool(pairs)
            if told:
                self.report.explained += 1
            else:
                self.report.unexplained.append(f"job {job[:8]} staff {staff[:8]}")
        self.report.problems += [f"not told by explain: {u}" for u in self.report.unexplained[:20]]

    def _scan(self, stack: Stack) -> None:
        texts = {path.name: path.read_text(errors="replace") for path in stack.tmp.glob("*.log")}
        texts["status"] = self._bridge(stack, "status", "--json")
        texts["dlq"] = self._bridge(stack, "dlq", "list", "--json")
        assert stack.web_port is not None
        texts["metrics"] = requests.get(f"http://127.0.0.1:{stack.web_port}/metrics",
                                        timeout=10).text  # fmt: skip
        entries = stack.stores.work.dead_letters(100_000)
        texts["dlq entries"] = json.dumps([fields for _, fields in entries])
        for where, text in texts.items():
            for secret in SECRETS:
                if secret in text:
                    self.report.secrets_found.append(f"{secret[:9]}… in {where}")


@contextlib.contextmanager
def _busy(count: int) -> Iterator[None]:
    """``count`` processes that spin on the CPU at the bridge's own priority until the block
    ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                 stdin=subprocess.DEVNULL) for _ in range(count)]  # fmt: skip
    try:
        yield
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


console = Console()


def main(
    ops: Annotated[int, typer.Option(help="How many operations to play.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed for operations and faults.")] = 7,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    redis_mode: Annotated[
        str,
        typer.Option(
            "--redis",
            help="single: one Redis, restarted once; sentinel: a Sentinel group that loses its "
            "last seconds of writes once and fails over once (needs `make tools`).",
        ),
    ] = "single",
    starve: Annotated[
        int, typer.Option(help="Busy processes beside the bridge while the operations play.")
    ] = 0,
) -> None:
    """Play operations on both sides under faults; exit 0 only if nothing was lost, duplicated,
    diverged or leaked."""
    from bridge.log import configure_logging

    configure_logging("WARNING", "console")
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    if redis_mode not in ("single", "sentinel"):
        raise typer.BadParameter("--redis: single or sentinel")
    mode: RedisMode = "sentinel" if redis_mode == "sentinel" else "single"
    report = Chaos(ops, workdir, seed, mode, starve=starve).run()
    console.print(f"dialects: coredination {asdict(HOSTILE_COREDINATION)}; servicem8 while "
                  f"faulted {asdict(HOSTILE_SERVICEM8)}")  # fmt: skip
    console.print(f"operations: {sum(report.operations.values())} {dict(report.operations)}")
    console.print(f"faults injected: {sum(report.faults.values())} {dict(report.faults)}")
    console.print(f"records lost: {report.lost}   duplicated: {report.duplicated}   "
                  f"diverged: {report.diverged}   resurrected: {report.resurrected}   "
                  f"dead letters: {report.dead_letters}")  # fmt: skip
    console.print(f"drift left for the final reconcile: {report.reconciled} pair(s)")
    console.print(f"held by the rules, each listed in status: {report.held} pair(s) kept at work"
                  f" in Coredination, {report.deleted_in_cd} job(s) deleted there waiting for the"
                  f" office; not listed: {len(report.unreported)}")  # fmt: skip
    console.print(f"held or diverged pairs told by explain: {report.explained}; not told: "
                  f"{len(report.unexplained)}")  # fmt: skip
    console.print(
        f"time to converge after the faults stopped: {report.converge_seconds:.1f} s"
        f" {report.phases}"
    )
    console.print(f"secrets found in output: {len(report.secrets_found)} {report.secrets_found}")
    for problem in report.problems[:40]:
        console.print(f"  {problem}", markup=False)
    console.print(f"logs: {workdir}")
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=1))
    raise typer.Exit(0 if report.clean else 1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    typer.run(main)
