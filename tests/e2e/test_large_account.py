"""A first sync of an account with history, its worker killed mid-way (SIGKILL, the pool
with it): another worker takes the rest over, and Coredination's own event log and calls show
no job written twice and nobody scheduled or assigned twice; no old job reaches it. The
full-size run is ``python -m bench --only large`` (docs/performance.md#large-account)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import datetime, timedelta

from bridge.queues import POLL_CYCLE
from bridge.simulators.checker import check
from bridge.simulators.scenario import seed_business, seed_history
from mappings.ids import cd_job_uuid, connection_namespace
from tests.e2e.conftest import eventually


def test_a_first_sync_killed_mid_way_resumes_with_nothing_written_twice(stack, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=10, jobs=150, allocations=300, fixed=100,
                        start=datetime.now() + timedelta(days=1))  # fmt: skip
    history = seed_history(sm8_sim, biz, jobs=200)
    ns = connection_namespace(stack.connection)
    jobs = stack.stores.jobs
    stack.worker("w1", 2)
    stack.beat()
    stack.send(POLL_CYCLE)
    eventually(lambda: stack.stores.work.catch_up()[0] >= 60, timeout=120, interval=0.02)
    stack.kill("w1", signal.SIGKILL)
    done, left, _since = stack.stores.work.catch_up()
    assert left > 0, "the first sync ended before the kill: nothing resumed"
    killed = time.time()
    stack.worker("w2", 2)
    eventually(lambda: jobs.dirty_count() == 0 and check(sm8_sim, cd_sim, ns).converged,
               timeout=180, interval=0.5)  # fmt: skip
    read_first = stack.logs().count("sync.read_after_crash")
    print(f"\nkilled after {done} job(s) synced, {left} left; the rest took "
          f"{time.time() - killed:.1f} s on another worker, which read {read_first} job(s) "
          "first (a write was on its way when the worker died)")  # fmt: skip

    assert {cd_job_uuid(ns, j) for j in biz.jobs} == set(cd_sim.by_uuid)  # no old job
    assert not {cd_job_uuid(ns, j) for j in history} & set(cd_sim.by_uuid)
    # Coredination's event log: each job created once and never updated (nothing changed in
    # ServiceM8), each person put on it once. A job whose write was on its way when the worker
    # died is read by the sync that takes it over before anything is written again.
    twice = []
    for cd_job in cd_sim.jobs.values():
        kinds = Counter(e["type"] for e in cd_job["events"] if e["type"] in ("CREATE", "UPDATE"))
        people = Counter((e["type"], e.get("toUserId")) for e in cd_job["events"]
                         if e["type"] in ("SCHEDULE", "ASSIGN"))  # fmt: skip
        if kinds != Counter({"CREATE": 1}) or any(n > 1 for n in people.values()):
            twice.append((cd_job["uuid"], dict(kinds), dict(people)))
    assert twice == [], twice
    puts = cd_sim.count("PUT", "job.put")
    ops = sum(cd_sim.count("PUT", f"job.{op}") for op in ("schedule", "assign"))
    assert puts == len(cd_sim.jobs)  # one PUT a job, none sent again
    assert ops == sum(len(j["resources"]) for j in cd_sim.jobs.values())
