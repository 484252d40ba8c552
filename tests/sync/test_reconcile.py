"""Reconcile: both systems read whole; drift that webhooks and polls missed is reported, then
repaired through the normal sync path. The convergence checker judges the end state."""

from __future__ import annotations

import time

from bridge.simulators.checker import check
from bridge.simulators.scenario import seed_business
from bridge.sync.context import (
    CURSOR_CD_JOBS,
    CURSOR_SM8_ACTIVITIES,
    CURSOR_SM8_ALLOCATIONS,
    CURSOR_SM8_JOBS,
)
from mappings.ids import cd_job_uuid
from tests import days


def _miss_everything_from_now(store):
    """As if every webhook were lost and the polls' cursors had run past the changes."""
    store.activity.set_cursor(CURSOR_SM8_ALLOCATIONS, "2099-01-01 00:00:00")
    store.activity.set_cursor(CURSOR_SM8_ACTIVITIES, "2099-01-01 00:00:00")
    store.activity.set_cursor(CURSOR_SM8_JOBS, "2099-01-01 00:00:00")
    store.activity.set_cursor(CURSOR_CD_JOBS, str(int((time.time() + 7200) * 1000)))


def _drift_three_ways(ns, sm8_sim, cd_sim, biz):
    """A deletion in ServiceM8, an unschedule in Coredination, a new allocation on a new job."""
    deleted = biz.allocations[0]
    sm8_sim.delete("joballocation", deleted["uuid"])
    kept = biz.allocations[1]
    user = biz.user_for(kept["staff_uuid"])["id"]
    cd_sim.resource_op(cd_job_uuid(ns, kept["job_uuid"]), "unschedule", str(user))
    new_job = sm8_sim.create("job", {"job_address": "1 New St, Sydney NSW", "status": "Work Order"})
    sm8_sim.create("joballocation", {"job_uuid": new_job, "staff_uuid": biz.staff[0]["uuid"],
                                     "allocation_date": days.stamp(17)})  # fmt: skip
    return deleted, kept, new_job


def test_reconcile_reports_missed_drift_then_repairs_it(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=6, allocations=8)
    engine.run_cycle()
    assert check(sm8_sim, cd_sim, engine.ctx.ns).converged
    _miss_everything_from_now(engine.ctx.stores)
    engine.ctx.options.cd_census_seconds = 0  # the census would see Coredination's side
    deleted, kept, new_job = _drift_three_ways(engine.ctx.ns, sm8_sim, cd_sim, biz)
    engine.run_cycle(match_staff=False)
    before = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert len(before.problems) == 3  # the polls saw none of it

    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    drifts, dirty = engine.reconcile(repair=False)
    assert dirty == set() and sm8_sim.write_count() == cd_sim.write_count() == 0
    # One list each: ServiceM8's bookings of both kinds (allocations, activities), Coredination's
    # jobs.
    assert sm8_sim.read_count() == 2 and cd_sim.read_count() == 1
    reasons = {(d.sm8_job_uuid, d.servicem8, d.coredination, d.reason) for d in drifts}
    assert reasons == {
        (deleted["job_uuid"], "absent", "scheduled", "the two sides disagree"),
        (kept["job_uuid"], "scheduled", "absent", "the two sides disagree"),
        (new_job, "scheduled", "absent", "job not linked yet"),
    }

    drifts, dirty = engine.reconcile(repair=True)
    assert dirty == {deleted["job_uuid"], kept["job_uuid"], new_job}
    for job in dirty:
        engine.sync_job(job)
    after = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert after.converged, after.problems
    # Each side's later change won: the deletion reached Coredination, the unschedule ServiceM8.
    assert str(sm8_sim.records["joballocation"][kept["uuid"]]["active"]) == "0"
    assert engine.reconcile(repair=False)[0] == []


def test_reconcile_finds_fixed_bookings_the_polls_missed(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=4, allocations=4, fixed=2)
    engine.run_cycle()
    assert check(sm8_sim, cd_sim, engine.ctx.ns).converged
    _miss_everything_from_now(engine.ctx.stores)
    engine.ctx.options.cd_census_seconds = 0  # the census would see Coredination's side
    gone = biz.activities[0]
    sm8_sim.delete("jobactivity", gone["uuid"])
    new = sm8_sim.create("jobactivity", {
        "job_uuid": biz.jobs[3], "staff_uuid": biz.staff[0]["uuid"], "activity_was_scheduled": 1,
        "start_date": days.stamp(17, 9), "end_date": days.stamp(17, 10),
    })  # fmt: skip
    engine.run_cycle(match_staff=False)
    assert len(check(sm8_sim, cd_sim, engine.ctx.ns).problems) == 2  # the polls saw neither

    drifts, dirty = engine.reconcile(repair=True)
    assert {d.sm8_job_uuid for d in drifts} == {gone["job_uuid"], biz.jobs[3]}
    for job in dirty:
        engine.sync_job(job)
    assert check(sm8_sim, cd_sim, engine.ctx.ns).converged
    assert sm8_sim.records["jobactivity"][new]["active"] == 1
