"""A large account's first sync (docs/performance.md#large-account): years of history beside the
work in scope, synced by the real path (web, two workers, beat, both simulators) from nothing.

The full run: 100,000 bookings, 20,000 of them in scope (half flexible, half fixed) on 5,000
jobs, the rest two years of finished work (a completed flexible booking and a past fixed one on
each old job). The quick run: a twentieth. Half-way through, the office books someone on a job in
scope; its webhook must reach Coredination while the backlog is worked through (the
interactive share of the budget is left to it).

Printed: ServiceM8 calls per booking in scope (target <= 0.02) and Coredination calls per
booking in scope (<= 1.26), the wall time beside the least the budgets allow, the webhook's
latency during the backlog, what status said of the time left half-way and what it took, and
Redis bytes per linked job (history records included).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

from bench.harness import eventually
from bench.scenarios import PRODUCTION_POLLS, WEBHOOK_TOKEN, Bench, calls_between
from bridge.queues import POLL_CYCLE
from bridge.simulators.checker import check
from bridge.simulators.scenario import seed_business, seed_history
from mappings.ids import cd_job_uuid, connection_namespace

SERVICEM8_PER_MINUTE = 180  # the account's minute window (docs/servicem8-api.md#limits)


def large(b: Bench) -> None:
    scale = 20 if b.quick else 1  # quick: 5,000 bookings, 1,000 in scope
    jobs, flexible, fixed = 5_000 // scale, 10_000 // scale, 10_000 // scale
    old_jobs = 40_000 // scale  # two bookings each: 80,000 (full run)
    in_scope = flexible + fixed
    env = {**PRODUCTION_POLLS, "WEBHOOK_TOKEN": WEBHOOK_TOKEN}
    with b.world("large", **env) as (sm8, cd, st):
        seeded = time.monotonic()
        biz = seed_business(sm8, cd, staff=30, jobs=jobs, allocations=flexible, fixed=fixed,
                            start=datetime.now() + timedelta(days=1))  # fmt: skip
        history = seed_history(sm8, biz, jobs=old_jobs, days=730)
        total = sum(len(sm8.records[o]) for o in ("joballocation", "jobactivity"))
        print(f"  seeded {total:,} bookings ({in_scope:,} in scope on {jobs:,} jobs, "
              f"{len(history):,} old jobs) in {time.monotonic() - seeded:.0f} s")  # fmt: skip
        ns = connection_namespace(st.connection)
        memory_before = int(st.client.info("memory")["used_memory"])
        from bridge.ops.subscriptions import subscribe_webhooks

        st.env["WEBHOOK_PUBLIC_URL"] = st.web()
        rt = b.runtime(st)
        subscribe_webhooks(rt)
        rt.close()
        started = time.time()
        st.worker("w1", 2)
        st.worker("w2", 2)
        st.beat()
        st.send(POLL_CYCLE)
        jobs_store = st.stores.jobs

        # Half-way: the office books a person on a job in scope (a fixed booking: its webhook
        # arrives); status's time left is noted.
        def half_way() -> bool:
            done, left, _since = st.stores.work.catch_up()
            return done > 0 and done >= left

        eventually(half_way, timeout=3600, interval=1.0)
        done, left, since = st.stores.work.catch_up()
        assert since is not None
        eta = left / (done / max(1e-6, time.time() - since))
        noted = time.time()
        booked_at, user = _book_mid_way(sm8, cd, biz, ns)
        eventually(lambda: _scheduled(cd, ns, biz.jobs[0], user), timeout=600, interval=0.01)
        webhook_latency = time.time() - booked_at
        eventually(lambda: jobs_store.dirty_count() == 0, timeout=3600, interval=1.0)
        finished = time.time()
        result = check(sm8, cd, ns)
        took = finished - started
        sm8_calls, cd_calls = calls_between(sm8, started), calls_between(cd, started)
        links = jobs_store.count()
        memory_after = int(st.client.info("memory")["used_memory"])
        old_in_cd = sum(1 for j in history if cd_job_uuid(ns, j) in cd.by_uuid)
    r = b.result
    name = f"large ({total:,} bookings, {in_scope:,} in scope)"
    r.add(name, "ServiceM8 calls per booking in scope", len(sm8_calls) / in_scope, "", "<= 0.02")
    r.add(name, "Coredination calls per booking in scope", len(cd_calls) / in_scope, "",
          "<= 1.26")  # fmt: skip
    least = len(sm8_calls) / SERVICEM8_PER_MINUTE * 60
    r.add(name, "time to sync", took, "s")
    r.add(name, "least the ServiceM8 budget allows", least, "s")
    r.add(name, "webhook during the backlog: change → Coredination", webhook_latency, "s",
          "<= 60")  # fmt: skip
    r.add(name, "status's time left half-way", eta, "s")
    r.add(name, "time it took from there", finished - noted, "s")
    r.add(name, "Redis bytes per linked job (history records included)",
          (memory_after - memory_before) / max(1, links), "B")  # fmt: skip
    r.add(name, "old jobs in Coredination", old_in_cd, "", "<= 0")
    r.add(name, "pairs out of step at the end", len(result.problems), "", "<= 0")
    r.series["large"] = {"links": links, "bookings": total, "in_scope": in_scope,
                         "sm8_calls": len(sm8_calls), "cd_calls": len(cd_calls)}  # fmt: skip


def _book_mid_way(sm8: Any, cd: Any, biz: Any, ns: Any) -> tuple[float, int]:
    """A fixed booking of someone not yet on the first job, two days out: its user's id."""
    job = biz.jobs[0]
    on_job = {a["staff_uuid"] for a in biz.bookings if a["job_uuid"] == job}
    member = next(m for m in biz.staff if m["uuid"] not in on_job and biz.user_for(m["uuid"]))
    day = (datetime.now() + timedelta(days=2)).replace(hour=10, minute=0, second=0)
    at = time.time()
    sm8.create("jobactivity", {
        "job_uuid": job, "staff_uuid": member["uuid"], "activity_was_scheduled": 1,
        "start_date": day.strftime("%Y-%m-%d %H:%M:%S"),
        "end_date": (day + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
    })  # fmt: skip
    return at, int(biz.user_for(member["uuid"])["id"])


def _scheduled(cd: Any, ns: Any, job: str, user: int) -> bool:
    cd_job = cd.by_uuid.get(cd_job_uuid(ns, job))
    if cd_job is None:
        return False
    return any(r["userId"] == user for r in cd.jobs[cd_job]["resources"])
