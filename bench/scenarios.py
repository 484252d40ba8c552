"""The benchmark scenarios. Each runs the real path (real Redis, real worker and beat processes, the
webhook server, both simulators over loopback), measures, and returns its figures with targets.

Calls are counted by the simulators (every API request they answered, with its method and status),
so a figure counts what ServiceM8 and Coredination would bill, not what the bridge thinks it sent.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import CD_KEY, SM8_KEY, Stack, eventually, expected_booking
from bridge.config import load_settings
from bridge.process.runtime import Runtime, build
from bridge.queues import POLL_CYCLE
from bridge.simulators import CoredinationSimulator, ServiceM8Simulator
from bridge.simulators.checker import check
from bridge.simulators.scenario import Business, seed_business
from bridge.store import Stores
from mappings.ids import cd_job_uuid, connection_namespace
from mappings.transitions import SyncWrite

# Production poll and match intervals; Coredination's budget (not documented, default 600/min)
# raised because its simulator enforces none and these scenarios are not about it.
PRODUCTION_POLLS = {
    "SERVICEM8_POLL_SECONDS": "60",
    "COREDINATION_POLL_SECONDS": "60",
    "STAFF_MATCH_SECONDS": "900",
    "COREDINATION_RATE_PER_MINUTE": "100000",
}
WEBHOOK_TOKEN = "bench-token-58c1e0"  # noqa: S105 - a loopback benchmark's token


@dataclass
class Figure:
    scenario: str
    name: str
    value: float
    unit: str = ""
    target: str = ""  # e.g. "<= 0.02"; empty: printed only
    ok: bool | None = None

    def judge(self) -> Figure:
        if self.target:
            op, limit = self.target.split()
            self.ok = self.value <= float(limit) if op == "<=" else self.value >= float(limit)
        return self


@dataclass
class Result:
    figures: list[Figure] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # raw data for the plots

    def add(self, scenario: str, name: str, value: float, unit: str = "", target: str = "") -> None:
        self.figures.append(Figure(scenario, name, value, unit, target).judge())


def calls_between(sim: Any, start: float, end: float | None = None) -> list[tuple[Any, ...]]:
    end = end if end is not None else time.time() + 1
    return [c for c in list(sim.calls) if start <= c[0] <= end]


def reads_writes(calls: list[tuple[Any, ...]]) -> tuple[int, int]:
    reads = sum(1 for c in calls if c[1] == "GET")
    return reads, len(calls) - reads


class Bench:
    def __init__(self, redis_url: str, workdir: Path, quick: bool) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.quick = quick
        self.result = Result()

    @contextlib.contextmanager
    def world(self, name: str, **env: str) -> Iterator[tuple[Any, Any, Stack]]:
        sm8 = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=3).start()
        cd = CoredinationSimulator(api_keys=(CD_KEY,), seed=3).start()
        stack = Stack(self.workdir / name, self.redis_url, sm8, cd, **env)
        try:
            yield sm8, cd, stack
        finally:
            stack.stop()
            stack.wipe()
            sm8.stop()
            cd.stop()

    def runtime(self, stack: Stack) -> Runtime:
        """The bridge's own wiring, in this process, for one-off steps (staff match, webhooks)."""
        fields = {k.lower(): v for k, v in stack.env.items() if k.isupper()}
        return build(load_settings(_env_file=None, **fields), self.redis_url)


def _converged(sm8: Any, cd: Any, ns: Any, pairs: int) -> Callable[[], bool]:
    def done() -> bool:
        result = check(sm8, cd, ns)
        return result.converged and sum(result.by_presence.values()) >= pairs

    return done


def _live_pairs(sm8: Any) -> int:
    """(job, staff member) pairs with a live booking of either kind."""
    return len(
        {
            (a["job_uuid"], a["staff_uuid"])
            for obj in ("joballocation", "jobactivity")
            for a in sm8.records[obj].values()
            if str(a["active"]) == "1"
        }
    )


# --- backfill -----------------------------------------------------------------------------------
def backfill(b: Bench) -> None:
    """1,000 bookings over 250 jobs, half flexible (job allocations), half fixed (job
    activities)."""
    flexible, fixed, jobs, staff = 500, 500, 250, 20
    bookings = flexible + fixed
    with b.world("backfill", **PRODUCTION_POLLS) as (sm8, cd, st):
        seed_business(sm8, cd, staff=staff, jobs=jobs, allocations=flexible, fixed=fixed)
        pairs = _live_pairs(sm8)
        ns = connection_namespace(st.connection)
        started = time.time()
        rt = b.runtime(st)
        rt.engine.match_staff()
        rt.close()
        st.worker("w1", 2)
        st.worker("w2", 2)
        st.beat()
        st.send(POLL_CYCLE)
        eventually(_converged(sm8, cd, ns, pairs), timeout=300, interval=0.25)
        took = time.time() - started
        sm8_calls, cd_calls = calls_between(sm8, started), calls_between(cd, started)
    r = b.result
    r.series["backfill_calls_by_operation"] = _by_operation(sm8_calls, cd_calls)
    r.add("backfill", f"ServiceM8 calls per booking ({flexible} flexible + {fixed} fixed)",
          len(sm8_calls) / bookings, "", "<= 0.02")  # fmt: skip
    r.add("backfill", f"Coredination calls per booking ({flexible} flexible + {fixed} fixed)",
          len(cd_calls) / bookings, "", "<= 1.26")  # fmt: skip
    r.add("backfill", f"time to sync {bookings} bookings", took, "s")


def _running(b: Bench, st: Any, sm8: Any, cd: Any) -> None:
    """The web receiver with webhooks subscribed (job activities and jobs; ServiceM8 refuses
    allocations), staff matched, two workers and beat, and the business in step."""
    from bridge.ops.subscriptions import subscribe_webhooks

    st.env["WEBHOOK_PUBLIC_URL"] = st.web()
    rt = b.runtime(st)
    rt.engine.match_staff()
    subscribe_webhooks(rt)
    rt.close()
    st.worker("w1", 2)
    st.worker("w2", 2)
    st.beat()
    st.send(POLL_CYCLE)
    ns = connection_namespace(st.connection)
    eventually(_converged(sm8, cd, ns, _live_pairs(sm8)), timeout=180, interval=0.25)


# --- trickle, latency, quiet --------------------------------------------------------------------
def trickle(b: Bench) -> None:
    # 5 a second is 300 a minute, more than ServiceM8's 180 (each webhook costs one read): from
    # about 36 s on, any bridge queues for budget. The full run stays within one minute's budget.
    count = 100 if b.quick else 150
    rate = 5.0
    with b.world("trickle", **PRODUCTION_POLLS, WEBHOOK_TOKEN=WEBHOOK_TOKEN) as (sm8, cd, st):
        biz = seed_business(sm8, cd, staff=10, jobs=60, allocations=60)
        ns = connection_namespace(st.connection)
        _running(b, st, sm8, cd)
        time.sleep(1.0)  # let the first cycle's tail settle before counting
        created = _trickle(sm8, biz, count, rate)
        started = created[0].at
        eventually(_converged(sm8, cd, ns, _live_pairs(sm8)), timeout=120, interval=0.1)
        settled = time.time()
        sm8_calls, cd_calls = (
            calls_between(sm8, started, settled),
            calls_between(cd, started, settled),
        )
        latencies = _latencies(cd, ns, biz, created)

        # Lone changes: after a quiet spell a hint is read at once, not gathered.
        time.sleep(1.5)
        lone = _trickle(sm8, biz, 5, 1 / 3)
        eventually(_converged(sm8, cd, ns, _live_pairs(sm8)), timeout=60, interval=0.05)
        lone_latencies = _latencies(cd, ns, biz, lone)

        # Quiet: one poll cycle of both systems with nothing changed.
        st.kill("beat", 15)
        time.sleep(1.0)
        polled = [f"polled:{s}" for s in ("servicem8", "coredination")]
        polled += [f"polled:servicem8.{o}" for o in ("joballocation", "jobactivity", "job")]
        st.stores.redis.hdel(st.stores.keys.key("cursor"), *polled, "polled:coredination.job")
        quiet_started = time.time()
        st.send(POLL_CYCLE)
        systems = ("servicem8", "coredination")
        activity = st.stores.activity
        eventually(lambda: all(activity.cursor(f"polled:{s}") for s in systems), timeout=30,
                   interval=0.05)  # fmt: skip
        time.sleep(1.0)  # any sync the cycle queued would have run by now
        quiet = {"servicem8": reads_writes(calls_between(sm8, quiet_started)),
                 "coredination": reads_writes(calls_between(cd, quiet_started))}  # fmt: skip
    r = b.result
    r.series["trickle_calls_by_operation"] = _by_operation(sm8_calls, cd_calls)
    r.add("trickle", f"ServiceM8 calls per booking ({count} fixed at {rate:.0f}/s, by webhook)",
          len(sm8_calls) / count, "", "<= 1.0")  # fmt: skip
    r.add("trickle", "Coredination calls per booking", len(cd_calls) / count, "", "<= 1.3")
    # At 5 a second the hints gather for up to HINT_COALESCE_MS (500 ms) and are read together
    # (docs/operations.md#hint-coalescing): the stream's latency is about one window.
    r.add("latency", f"webhook → scheduled in Coredination, p50 (stream at {rate:.0f}/s, gathered)",
          _pct(latencies, 50) * 1000, "ms", "<= 1000")  # fmt: skip
    r.add("latency", "p99", _pct(latencies, 99) * 1000, "ms", "<= 1500")
    r.add("latency", "max", max(latencies) * 1000, "ms")
    r.add("latency", "a lone change (none for a second before it), p50",
          _pct(lone_latencies, 50) * 1000, "ms", "<= 100")  # fmt: skip
    r.add("latency", "a lone change, max", max(lone_latencies) * 1000, "ms", "<= 500")
    for system, (reads, writes) in quiet.items():
        r.add("quiet", f"{system} write calls per idle cycle", writes, "", "<= 0")
        # ServiceM8: one list per polled object (job allocations, job activities, jobs).
        r.add("quiet", f"{system} read calls per idle cycle", reads, "",
              "<= 3" if system == "servicem8" else "<= 2")  # fmt: skip
    b.result.series["latencies_ms"] = [x * 1000 for x in latencies]


@dataclass
class Created:
    uuid: str
    at: float
    job: str
    staff: str


def _trickle(sm8: Any, biz: Business, count: int, rate: float) -> list[Created]:
    """New fixed bookings on new (job, staff) pairs, one by one at ``rate`` per second: what the
    office makes on the dispatch board, and what ServiceM8 sends webhooks for (it sends none for
    allocations, docs/servicem8-api.md#webhooks).

    The mix an office makes: a second person on a job's day, or a follow-up visit a day or a week
    later; on a job with no date yet, the first visit (which gives the Coredination job its time).
    """
    rng = random.Random(9)
    rows = list(sm8.records["joballocation"].values())
    present = {(a["job_uuid"], a["staff_uuid"]) for a in rows}
    first: dict[str, str] = {}  # job → the day of its earliest allocation
    for a in rows:
        dated = str(a.get("allocation_date") or "")[:10]
        if dated and not dated.startswith("0000") and dated < first.get(a["job_uuid"], "9999"):
            first[a["job_uuid"]] = dated
    free = [(j, s["uuid"]) for j in biz.jobs for s in biz.staff if (j, s["uuid"]) not in present]
    rng.shuffle(free)
    present |= {(a["job_uuid"], a["staff_uuid"]) for a in sm8.records["jobactivity"].values()}
    free = [pair for pair in free if pair not in present]
    created = []
    start = time.monotonic()
    for i, (job, staff) in enumerate(free[:count]):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        if job in first:
            day = datetime.strptime(first[job], "%Y-%m-%d") + timedelta(
                days=rng.choice([0, 0, 1, 7])
            )
        else:
            day = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
                days=rng.randint(3, 20)
            )
            first[job] = day.strftime("%Y-%m-%d")
        begin = day + timedelta(hours=rng.choice([8, 10, 13]))
        stamp = "%Y-%m-%d %H:%M:%S"
        fields = {"job_uuid": job, "staff_uuid": staff, "activity_was_scheduled": 1,
                  "start_date": begin.strftime(stamp),
                  "end_date": (begin + timedelta(hours=2)).strftime(stamp)}  # fmt: skip
        at = time.time()
        uuid = sm8.create("jobactivity", fields)
        created.append(Created(uuid, at, job, staff))
    return created


def _latencies(
    cd: Any, ns: Any, biz: Business, created: list[Created], events: tuple[str, ...] = ("SCHEDULE",)
) -> list[float]:
    """Created in ServiceM8 → the person's latest ``events`` event (SCHEDULE; ASSIGN too for an
    undated booking) on the job in Coredination."""
    with cd.lock:
        scheduled: dict[tuple[str, int], float] = {}
        for job in cd.jobs.values():
            for event in job["events"]:
                if event["type"] in events and event.get("toUserId") is not None:
                    key = (job["uuid"], event["toUserId"])
                    scheduled[key] = max(scheduled.get(key, 0), event["eventTimeStamp"] / 1000)
    out = []
    for c in created:
        user = biz.user_for(c.staff)
        assert user is not None
        out.append(scheduled[(cd_job_uuid(ns, c.job), user["id"])] - c.at)
    return out


def _by_operation(sm8: list[tuple[Any, ...]], cd: list[tuple[Any, ...]]) -> dict[str, int]:
    """Where the calls went: ``{"servicem8 joballocation.get": n, ...}``, most first."""
    from collections import Counter

    counts = Counter(f"servicem8 {c[2]}" for c in sm8) + Counter(f"coredination {c[2]}" for c in cd)
    return dict(counts.most_common())


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[index]


# --- budget -------------------------------------------------------------------------------------
def budget(b: Bench, strategy: str = "shared") -> None:
    """A backlog of 5 x the limit of ServiceM8 writes (users scheduled in Coredination, each
    becoming a ServiceM8 allocation), four worker processes, ServiceM8 enforcing the limit.

    ``strategy``: ``shared``, the bridge's workers (``celery -A tasks``) on the shared budget;
    ``celery-rate-limit``, workers from ``bench.rate_limited_app`` (Celery's per-worker
    ``rate_limit`` instead)."""
    limit, window = (20, 10) if b.quick else (60, 60)
    # The margin keeps production's proportion to the window (1 s of 60 s): it stands for network
    # jitter, which a shorter test window does not shorten in the real world but loopback does.
    margin = window / 60
    backlog = 5 * limit
    label = "budget" if strategy == "shared" else "celery rate_limit"
    env = {"SERVICEM8_RATE_PER_MINUTE": str(limit), "SERVICEM8_RATE_WINDOW_SECONDS": str(window),
           "SERVICEM8_POLL_SECONDS": "60", "COREDINATION_POLL_SECONDS": "1",
           "STAFF_MATCH_SECONDS": "900", "COREDINATION_RATE_PER_MINUTE": "100000",
           "BUDGET_MARGIN_SECONDS": f"{margin:g}"}  # fmt: skip
    app = "tasks" if strategy == "shared" else "bench.rate_limited_app"
    with b.world(f"budget-{strategy}", **env) as (sm8, cd, st):
        biz = seed_business(sm8, cd, staff=3, jobs=backlog, allocations=backlog)
        ns = connection_namespace(st.connection)
        rt = b.runtime(st)
        rt.engine.match_staff()
        rt.close()
        for i in range(4):
            st.worker(f"w{i + 1}", concurrency=1, app=app)
        st.beat()
        st.send(POLL_CYCLE)
        eventually(lambda: len(cd.jobs) == backlog
                   and all(j["resources"] for j in cd.jobs.values()), timeout=120)  # fmt: skip
        time.sleep(window + 1)  # the first sync's calls leave both windows
        sm8.set_limits(per_minute=limit, minute_window=window)
        expected = []
        for job in biz.jobs:
            cd_job = cd_job_uuid(ns, job)
            taken = {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
            member = next(s for s in biz.staff if s["uuid"] not in taken)
            user = biz.user_for(member["uuid"])
            assert user is not None
            cd.resource_op(cd_job, "schedule", str(user["id"]))
            expected.append(expected_booking(cd, ns, cd_job, user["id"]))
        started = time.time()
        records = sm8.records
        eventually(lambda: all(u in records[obj] for obj, u in expected),
                   timeout=window * 12 + 60, interval=0.1)  # fmt: skip
        calls = calls_between(sm8, started)
    first, last = calls[0][0], calls[-1][0]
    rejected = sum(1 for c in calls if c[3] == 429)
    answered = [c for c in calls if c[3] != 429]
    # The fastest drain n calls allow under a moving window: (ceil(n / limit) - 1) windows from the
    # first call to the last. Its ratio to the actual span is the share of the limit achieved.
    ideal = (math.ceil(len(answered) / limit) - 1) * window
    r = b.result
    r.add(label, f"ServiceM8 requests for {backlog} writes (limit {limit}/{window}s)", len(calls))
    r.add(label, "answered 429", rejected, "", "<= 0" if strategy == "shared" else "")
    r.add(label, "time to drain", last - started, "s")
    if strategy == "shared":
        r.add(label, "achieved rate / limit", ideal / (last - first), "", ">= 0.95")
    b.result.series[f"calls_{strategy}"] = {
        "t": [c[0] - started for c in calls],
        "status": [c[3] for c in calls],
        "limit": limit,
        "window": window,
    }


def budget_celery(b: Bench) -> None:
    """The comparison that shows why the budget is shared: in the full run only (it has no
    target, and the quick run must keep CI short)."""
    if b.quick:
        print("(Celery's per-worker rate_limit, for comparison, runs in the full benchmark)")
        return
    budget(b, "celery-rate-limit")


# --- engine throughput --------------------------------------------------------------------------
def engine(b: Bench) -> None:
    allocations = 2000 if b.quick else 10_000
    b.result.add("engine", f"allocations synced per second ({allocations}, two worker processes)",
                 engine_rate(b), "/s", ">= 100")  # fmt: skip


def engine_rate(b: Bench, **settings: str) -> float:
    """Allocations synced per second by two worker processes from nothing, every budget wide
    open (``settings``: more of the workers' settings)."""
    allocations, jobs, staff = (2000, 500, 20) if b.quick else (10_000, 2500, 40)
    env = {"SERVICEM8_RATE_PER_MINUTE": "1000000", "SERVICEM8_RATE_PER_DAY": "100000000",
           "COREDINATION_RATE_PER_MINUTE": "1000000", "SERVICEM8_POLL_SECONDS": "60",
           "COREDINATION_POLL_SECONDS": "60", "STAFF_MATCH_SECONDS": "900", **settings}  # fmt: skip
    with b.world("engine", **env) as (sm8, cd, st):
        seed_business(sm8, cd, staff=staff, jobs=jobs, allocations=allocations)
        pairs = _live_pairs(sm8)
        ns = connection_namespace(st.connection)
        rt = b.runtime(st)
        rt.engine.match_staff()
        rt.close()
        st.worker("w1", concurrency=1)
        st.worker("w2", concurrency=1)
        time.sleep(2.0)  # both workers up before the clock starts
        started = time.time()
        st.send(POLL_CYCLE)
        # Wait on a cheap count (the full check holds both simulators' locks while it runs),
        # then check everything once.
        writes = jobs + pairs  # one upsert per job, one resource operation per pair
        eventually(lambda: sum(1 for c in list(cd.calls) if c[1] != "GET") >= writes,
                   timeout=900, interval=0.2)  # fmt: skip
        eventually(_converged(sm8, cd, ns, pairs), timeout=60, interval=0.5)
        last_write = max(c[0] for c in calls_between(cd, started) if c[1] != "GET")
    return float(allocations / (last_write - started))


# --- memory -------------------------------------------------------------------------------------
def memory(b: Bench) -> None:
    """Redis bytes per link. The real engine links 50 jobs (one allocation each, synced both
    ways); their records are then copied with fresh job, allocation and Coredination ids up to
    the count, each written through the store's own methods (so the layout, the encoding and
    Redis's own overhead at that size are what is measured). Measured as the growth of Redis's
    ``used_memory``, on the benchmark's Redis."""
    import uuid as uuidlib

    from mappings.facts import AllocationFacts, JobFacts
    from mappings.state import CdView, JobRecord

    count = 20_000 if b.quick else 100_000
    with b.world("memory") as (sm8, cd, stack):
        biz = seed_business(sm8, cd, staff=10, jobs=50, allocations=50)
        rt = b.runtime(stack)
        try:
            rt.engine.run_cycle()
            stores, r = rt.stores, rt.stores.redis
            templates = [stores.jobs.load(job) for job in biz.jobs]
            assert all(t.cd is not None and t.details and t.allocations for t in templates)
            stores.wipe()
            server, info = r.info("server"), r.info("memory")
            allocator = str(info.get("mem_allocator") or "allocator unknown").split("-")[0]
            before = int(info["used_memory"])
            made: list[JobRecord] = []
            for i in range(count):
                t = templates[i % len(templates)]
                job = str(uuidlib.uuid4())
                assert t.details is not None and t.cd is not None
                made.append(JobRecord(
                    job,
                    details=JobFacts(**{**t.details.__dict__, "uuid": job}),
                    allocations={(a := str(uuidlib.uuid4())): AllocationFacts(
                        **{**f.__dict__, "uuid": a, "job_uuid": job})
                        for f in t.allocations.values()},
                    cd=CdView(10**6 + i, stores.jobs.cd_uuid(job), dict(t.cd.resources),
                              dict(t.cd.changed_ms), t.cd.modified_ms, t.cd.start_ms),
                    fields_fp=t.fields_fp,
                    pairs=dict(t.pairs),
                ))  # fmt: skip
                if len(made) == 1000 or i == count - 1:
                    _store_links(stores, made)
                    made = []
            after = int(r.info("memory")["used_memory"])
            sample = stores.jobs.load(stores.jobs.known()[0])
        finally:
            rt.close()
    where = f"Redis {server['redis_version']}, {allocator}"
    b.result.add("memory", f"Redis bytes per link ({count:,} links with snapshots; {where})",
                 (after - before) / count, "B", "<= 400")  # fmt: skip
    b.result.series["memory_sample"] = {
        "job": sample.uuid,
        "allocations": len(sample.allocations),
        "pairs": {s: f"{p.sm8}|{p.cd}" for s, p in sample.pairs.items()},
        "cd_resources": {str(u): s for u, s in (sample.cd.resources if sample.cd else {}).items()},
    }


def _store_links(stores: Stores, records: list[Any]) -> None:
    """Write linked jobs the way the sync does: ingest (allocations, then job details), then
    what a sync leaves (Coredination view and reverse links, body fingerprint, snapshots)."""
    stores.jobs.ingest_allocations([a for r in records for a in r.allocations.values()])
    stores.jobs.ingest_jobs([r.details for r in records if r.details is not None])
    stores.jobs.save_syncs([SyncWrite(r.uuid, [], 0.0, r.cd, r.fields_fp, r.pairs)
                            for r in records])  # fmt: skip
    stores.redis.delete(stores.keys.dirty)  # a finished sync leaves no dirty mark


SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "backfill": backfill,
    "trickle": trickle,
    "budget": budget,
    "budget-celery": budget_celery,
    "engine": engine,
    "memory": memory,
}
