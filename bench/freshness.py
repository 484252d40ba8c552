"""Freshness within the budget (docs/operations.md#poll-plan, docs/operations.md#hint-coalescing):
how soon an office change reaches Coredination when ServiceM8 sends no webhook for it (the planned
allocation poll), and when a burst of webhook hints comes faster than the budget reads one each.

Both run the real path: worker, beat and web processes, both simulators, ServiceM8 refusing the
allocation subscription (its default dialect) and subscribing jobs and job activities.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bench.harness import eventually
from bench.scenarios import (
    PRODUCTION_POLLS,
    WEBHOOK_TOKEN,
    Bench,
    Created,
    _converged,
    _latencies,
    _live_pairs,
    _pct,
    _running,
    _trickle,
    calls_between,
)
from bench.scenarios import (
    SCENARIOS as BASE,
)
from bridge.simulators.scenario import Business, seed_business
from mappings.ids import connection_namespace


def _busy_now(tz: Any) -> str:
    """BUSY_HOURS that hold the next hours in the account's timezone, wherever the run happens."""
    now = datetime.now(tz)
    start, end = now - timedelta(hours=1), now + timedelta(hours=3)
    return f"{start:%H}:00-{end:%H}:00"


# --- freshness: poll-only allocation changes -----------------------------------------------------
def freshness(b: Bench) -> None:
    every, count = (2.0, 15) if b.quick else (10.0, 60)
    env = {**PRODUCTION_POLLS, "WEBHOOK_TOKEN": WEBHOOK_TOKEN}
    with b.world("freshness", **env) as (sm8, cd, st):
        del st.env["SERVICEM8_POLL_SECONDS"]  # planned from the day's budget
        st.env["BUSY_HOURS"] = _busy_now(sm8.tz)
        biz = seed_business(sm8, cd, staff=8, jobs=40, allocations=40)
        ns = connection_namespace(st.connection)
        _running(b, st, sm8, cd)
        created = _allocations(sm8, biz, count, every)
        eventually(_converged(sm8, cd, ns, _live_pairs(sm8)), timeout=120, interval=0.1)
        latencies = _latencies(cd, ns, biz, created, ("SCHEDULE", "ASSIGN"))
        plan = st.stores.activity.poll_plan() or {}
        quiet = _quiet_hours(st, sm8, 30.0 if b.quick else 300.0)
    r = b.result
    r.add("freshness", f"allocation change → Coredination, p50 ({count}, one every {every:g} s, "
          "poll only, busy hours)", _pct(latencies, 50), "s", "<= 5")  # fmt: skip
    r.add("freshness", "p99", _pct(latencies, 99), "s", "<= 15")
    r.add("freshness", "job allocation poll interval (planned)",
          float(plan.get("intervals", {}).get("servicem8.joballocation", 0)), "s")  # fmt: skip
    budget = float(plan.get("poll_budget") or 1)
    r.add("freshness", f"planned daily poll calls / the polls' share ({budget:.0f})",
          float(plan.get("projected", 0)) / budget, "", "<= 1.0")  # fmt: skip
    r.series["freshness_latency"] = {"t": [c.at - created[0].at for c in created],
                                     "latency_s": latencies}  # fmt: skip
    r.add("quiet hours", "ServiceM8 calls per hour with nothing changing (measured)",
          quiet["measured"], "/h")  # fmt: skip
    r.add("quiet hours", "what the plan's intervals make", quiet["planned"], "/h")
    # Over a short measurement a poll may fall just inside either end: one per object allowed.
    r.add("quiet hours", f"calls in {quiet['seconds']:.0f} s beyond the plan (one a poll allowed "
          "at the edges)", quiet["beyond"], "", "<= 0")  # fmt: skip
    r.add("quiet hours", "ServiceM8 write calls", quiet["writes"], "", "<= 0")


def _quiet_hours(st: Any, sm8: Any, seconds: float) -> dict[str, float]:
    """Beat and the workers started again with the busy hours elsewhere in the day (so it is
    night for the plan), then ServiceM8's calls counted for ``seconds`` with nothing changing,
    against the calls per hour the plan's intervals make."""
    for name in ("beat", "w1", "w2"):
        st.kill(name, 15)
    now = datetime.now(sm8.tz)
    st.env["BUSY_HOURS"] = f"{now + timedelta(hours=4):%H}:00-{now + timedelta(hours=5):%H}:00"
    st.worker("w1", 2)
    st.beat()
    eventually(lambda: not (st.stores.activity.poll_plan() or {}).get("busy", True), timeout=60,
               interval=0.2)  # fmt: skip
    time.sleep(2.0)
    started = time.time()
    time.sleep(seconds)
    calls = calls_between(sm8, started, time.time())
    plan = st.stores.activity.poll_plan() or {}
    intervals = plan.get("intervals", {})
    per_hour = sum(3600 / float(s) for s in intervals.values())
    allowed = math.ceil(per_hour * seconds / 3600) + len(intervals)
    return {
        "seconds": seconds,
        "measured": len(calls) * 3600 / seconds,
        "planned": per_hour,
        "beyond": float(max(0, len(calls) - allowed)),
        "writes": float(sum(1 for c in calls if c[1] != "GET")),
    }


def _allocations(sm8: Any, biz: Business, count: int, every: float) -> list[Created]:
    """Dated flexible bookings on new (job, staff) pairs, one every ``every`` seconds: office
    changes ServiceM8 sends no webhook for."""
    taken = {(a["job_uuid"], a["staff_uuid"]) for a in sm8.records["joballocation"].values()}
    taken |= {(a["job_uuid"], a["staff_uuid"]) for a in sm8.records["jobactivity"].values()}
    free = [(j, s["uuid"]) for j in biz.jobs for s in biz.staff if (j, s["uuid"]) not in taken]
    day = (datetime.now() + timedelta(days=3)).strftime("%Y-%m-%d 00:00:00")
    created = []
    # Each change at a random point of its period: at exact multiples of a period that the poll
    # interval divides, every change would meet the poll at the same phase, and the figures would
    # measure that one phase instead of the spread an office sees.
    rng = random.Random(11)
    start = time.monotonic()
    for i, (job, staff) in enumerate(free[:count]):
        time.sleep(max(0.0, start + (i + rng.random()) * every - time.monotonic()))
        at = time.time()
        uuid = sm8.create("joballocation", {"job_uuid": job, "staff_uuid": staff,
                                            "allocation_date": day})  # fmt: skip
        created.append(Created(uuid, at, job, staff))
    return created


# --- burst: webhook hints faster than one read each ---------------------------------------------
def burst(b: Bench) -> None:
    rate = 5.0
    count = 150 if b.quick else 1500
    modes = [("gathered", "500")] if b.quick else [("gathered", "500"), ("one read each", "0")]
    for label, coalesce in modes:
        figures = _burst(b, count, rate, coalesce)
        r = b.result
        name = f"burst ({label})"
        p99_target = "<= 5" if coalesce != "0" else ""
        r.add(name, f"hint → Coredination, p50 ({count} fixed bookings at {rate:g}/s)",
              figures["p50"], "s", "<= 5" if coalesce != "0" else "")  # fmt: skip
        r.add(name, "p99", figures["p99"], "s", p99_target)
        r.add(name, "max", figures["max"], "s")
        r.add(name, "ServiceM8 calls per change", figures["per_change"], "",
              "<= 0.5" if coalesce != "0" else "")  # fmt: skip
        r.add(name, "answered 429", figures["429"], "", "<= 0")
        r.series[f"burst_latency_{coalesce}"] = figures["series"]
    if b.quick:
        print("(the burst without gathering, for comparison, runs in the full benchmark)")


def _burst(b: Bench, count: int, rate: float, coalesce: str) -> dict[str, Any]:
    env = {**PRODUCTION_POLLS, "WEBHOOK_TOKEN": WEBHOOK_TOKEN, "HINT_COALESCE_MS": coalesce}
    with b.world(f"burst-{coalesce}", **env) as (sm8, cd, st):
        # ServiceM8 enforcing its per-minute limit from the start, as the bridge's budget counts
        # it: without gathering, the backlog shows.
        sm8.set_limits(per_minute=180)
        jobs = max(60, count // 6)
        biz = seed_business(sm8, cd, staff=12, jobs=jobs, allocations=jobs)
        ns = connection_namespace(st.connection)
        _running(b, st, sm8, cd)
        created = _trickle(sm8, biz, count, rate)
        started = created[0].at
        eventually(_converged(sm8, cd, ns, _live_pairs(sm8)), timeout=1800, interval=0.2)
        calls = calls_between(sm8, started, time.time())
        latencies = _latencies(cd, ns, biz, created)
    return {
        "p50": _pct(latencies, 50),
        "p99": _pct(latencies, 99),
        "max": max(latencies),
        "per_change": len(calls) / count,
        "429": sum(1 for c in calls if c[3] == 429),
        "series": {"t": [c.at - started for c in created], "latency_s": latencies},
    }


SCENARIOS: dict[str, Callable[[Bench], None]] = {}
for _name, _run in BASE.items():
    SCENARIOS[_name] = _run
    if _name == "trickle":
        SCENARIOS["freshness"] = freshness
        SCENARIOS["burst"] = burst
