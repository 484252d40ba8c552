"""The trail's cost (docs/performance.md#trail): Redis round trips per writing sync, the trail's
bytes per job-day, and the engine's rate with the trail on against off.

The real engine (in this process, over HTTP to both simulators, on the benchmark's Redis) links
an account, then one "day" happens to each of a set of jobs: the office books someone new on it,
a dispatcher takes someone off, each followed by a sync. Round trips
are counted where redis-py sends (one per command, one per pipeline), for each job's sync that
wrote. The trail's bytes are Redis's own count (``MEMORY USAGE``) of each job's trail after its
day. The engine's rate: its job syncs per second over those jobs, the trail kept and not, in turns.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis.connection import AbstractConnection

from bench.scenarios import Bench
from bridge.http.transport import Transport
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid
from mappings.trail import KEEP


@dataclass
class Sent:
    """Round trips this thread sent to Redis: the sync's own, and those of its API calls (the
    budget's gate, the write fence's lease renewal), one per command or pipeline."""

    own: int = 0
    in_calls: int = 0


@contextmanager
def round_trips() -> Iterator[Sent]:
    sent = Sent()
    send, request = AbstractConnection.send_packed_command, Transport.request
    me = threading.get_ident()
    calling = threading.local()

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == me:
            if getattr(calling, "on", False):
                sent.in_calls += 1
            else:
                sent.own += 1
        send(self, command, check_health)  # type: ignore[no-untyped-call]

    def calls(self: Any, *args: Any, **kwargs: Any) -> Any:
        calling.on = True
        try:
            return request(self, *args, **kwargs)
        finally:
            calling.on = False

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    Transport.request = calls  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        Transport.request = request  # type: ignore[method-assign]


def trail(b: Bench) -> None:
    jobs_touched = 20 if b.quick else 100
    with b.world("trail") as (sm8, cd, st):
        biz = seed_business(sm8, cd, staff=10, jobs=jobs_touched, allocations=jobs_touched)
        rt = b.runtime(st)
        try:
            engine = rt.engine
            engine.run_cycle()
            ns, stores = engine.ctx.ns, rt.stores
            trips: list[Sent] = []
            for n, row in enumerate(biz.allocations[:jobs_touched]):
                job = row["job_uuid"]
                other = biz.staff[(biz.staff.index(_member(biz, row)) + 1) % len(biz.staff)]
                # the office books someone new: a push
                booking = {"job_uuid": job, "staff_uuid": other["uuid"],
                           "allocation_date": row.get("allocation_date") or ""}  # fmt: skip
                sm8.create("joballocation", booking)
                engine.poll_servicem8()
                with round_trips() as sent:
                    report = engine.sync_job(job, "poll")
                if report.writes("coredination") or report.writes("servicem8"):
                    trips.append(sent)
                # a dispatcher takes the first person off: a pull
                user = (biz.user_for(row["staff_uuid"]) or {})["id"]
                cd.resource_op(cd_job_uuid(ns, job), "unschedule", str(user))
                engine.poll_coredination()
                with round_trips() as sent:
                    report = engine.sync_job(job, "poll")
                if report.writes("servicem8"):
                    trips.append(sent)
                if n == 0:
                    stores.jobs.mark_dirty([job])  # an echo's sync: in step, nothing written
                engine.run_cycle(match_staff=False)
            touched = list(dict.fromkeys(row["job_uuid"] for row in biz.allocations[:jobs_touched]))
            sizes = [stores.trail.size(job) for job in touched]
            entries = [len(e) for job in touched for e in stores.trail.entries(job)]
            rates = _rates(engine, touched)
        finally:
            rt.close()
    own, calls = [t.own for t in trips], [t.in_calls for t in trips]
    b.result.add("trail", f"Redis round trips per writing sync, its own (mean of {len(trips)})",
                 statistics.mean(own), "", "<= 6")  # fmt: skip
    b.result.add("trail", "Redis round trips per writing sync, its own (most)", max(own))
    b.result.add("trail", "and those of its API calls (budget, lease at each write), mean",
                 statistics.mean(calls))  # fmt: skip
    b.result.add("trail", "trail bytes per job-day (a push, a pull, their syncs)",
                 statistics.mean(sizes), "B")  # fmt: skip
    b.result.add("trail", "trail entry bytes (mean, encoded)", statistics.mean(entries), "B")
    on, off = rates[KEEP], rates[0]
    b.result.add(
        "trail", "engine job syncs/s with the trail (in step, 9 rounds in turns)", on, "/s"
    )
    b.result.add("trail", "engine job syncs/s without the trail", off, "/s")
    b.result.add("trail", "engine rate, trail on / off", on / off, "", ">= 0.8")


def _rates(engine: Any, jobs: list[str], rounds: int = 9, passes: int = 3) -> dict[int, float]:
    """The engine's job syncs per second with the trail kept and with none, the two taking
    turns round by round (so the machine's drift falls on both alike): each pass marks every job
    and syncs it. These syncs find the jobs in step, where the trail's own cost is the largest
    share of a sync there is."""
    took: dict[int, float] = {KEEP: 0.0, 0: 0.0}
    for n in range(rounds):
        for keep in (KEEP, 0) if n % 2 else (0, KEEP):
            engine.ctx.options.trail_entries = keep
            for _ in range(passes):
                engine.ctx.stores.jobs.mark_dirty(jobs)
                started = time.perf_counter()
                for job in jobs:
                    engine.sync_job(job, "poll")
                took[keep] += time.perf_counter() - started
    syncs = rounds * passes * len(jobs)
    return {keep: syncs / seconds for keep, seconds in took.items()}


def _member(biz: Any, row: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in biz.staff if s["uuid"] == row["staff_uuid"])
