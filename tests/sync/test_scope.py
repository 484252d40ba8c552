"""Scope against both simulators and real Redis (docs/scope.md): an account with two years of
finished work syncs only what is current or upcoming; a booking made today brings an old job in;
the horizon, the statuses, the staff left out and a job excluded by hand take effect at the next
sync; leaving scope deletes and unschedules nothing, and Coredination's changes on a linked job
still flow back."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from typer.testing import CliRunner

from bridge.cli import app
from bridge.simulators.checker import Scope as CheckedScope
from bridge.simulators.checker import check
from bridge.simulators.scenario import seed_business, seed_history
from mappings.ids import cd_job_uuid
from mappings.scope import Scope, names
from tests import days

DAY = 86_400.0


def _resources(cd_sim, ns, job):
    cd_job = cd_sim.by_uuid.get(cd_job_uuid(ns, job))
    if cd_job is None:
        return None
    return {r["userId"]: r["state"] for r in cd_sim.jobs[cd_job]["resources"]}


def _active(sm8_sim):
    return {r["uuid"] for obj in ("joballocation", "jobactivity")
            for r in sm8_sim.records[obj].values() if str(r["active"]) == "1"}  # fmt: skip


def _bookings(sm8_sim, job, staff):
    return [a for obj in ("joballocation", "jobactivity") for a in sm8_sim.records[obj].values()
            if a["job_uuid"] == job and a["staff_uuid"] == staff]  # fmt: skip


def _account(sm8_sim, cd_sim, *, upcoming=2, old=30):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=upcoming, allocations=upcoming,
                        fixed=upcoming)  # fmt: skip
    history = seed_history(sm8_sim, biz, jobs=old)
    return biz, history


def _later(engine, seconds):
    """The engine's clock moved on (the simulators keep theirs: nothing changes there)."""
    engine.ctx.clock = lambda: time.time() + seconds


def test_two_years_of_history_create_nothing_and_cost_no_job_reads(engine, sm8_sim, cd_sim):
    biz, history = _account(sm8_sim, cd_sim)
    sm8_sim.reset_counts()
    report = engine.run_cycle()
    ns = engine.ctx.ns
    assert set(cd_sim.by_uuid) == {cd_job_uuid(ns, j) for j in biz.jobs}
    for job in biz.jobs:
        assert len(_resources(cd_sim, ns, job)) == 2  # a flexible and a fixed booking each
    assert sm8_sim.count("GET", "job.get") <= len(biz.jobs)  # history's are never read alone
    closed = [j for j in history if sm8_sim.records["job"][j]["status"] == "Completed"]
    assert report.counts["skipped.out_of_scope.status"] == len(closed) == len(history) // 3
    assert report.counts["skipped.out_of_scope.history"] == len(history) - len(closed)
    assert sm8_sim.write_count() == 0
    result = check(sm8_sim, cd_sim, ns)
    assert result.converged, result.problems
    assert result.out_of_scope == 2 * len(history)
    assert engine.reconcile(repair=False)[0] == []  # history is no drift


def test_a_booking_made_today_brings_an_old_job_in_with_only_its_person(engine, sm8_sim, cd_sim):
    biz, history = _account(sm8_sim, cd_sim, old=6)
    engine.run_cycle()
    ns = engine.ctx.ns
    old = history[0]  # the newest old job, a Work Order never closed
    assert sm8_sim.records["job"][old]["status"] == "Work Order"
    booked = {a["staff_uuid"] for obj in ("joballocation", "jobactivity")
              for a in sm8_sim.records[obj].values() if a["job_uuid"] == old}  # fmt: skip
    newcomer = next(s for s in biz.staff if s["uuid"] not in booked)
    sm8_sim.create("jobactivity", {"job_uuid": old, "staff_uuid": newcomer["uuid"],
                                   "activity_was_scheduled": 1, "start_date": days.stamp(0, 15),
                                   "end_date": days.stamp(0, 17)})  # fmt: skip
    engine.run_cycle()
    user = biz.user_for(newcomer["uuid"])["id"]
    assert _resources(cd_sim, ns, old) == {user: "SCHEDULED"}  # the old visits put nobody on
    cd_job = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(ns, old)]]
    # Timed by its earliest live booking, history included (docs/scope.md#what-is-left).
    assert cd_job["startTime"] < days.ms(0, 15)
    assert all(_resources(cd_sim, ns, j) is None for j in history[1:])
    assert check(sm8_sim, cd_sim, ns).converged


def test_a_booking_made_today_on_a_closed_job_stays_out(engine, sm8_sim, cd_sim):
    biz, history = _account(sm8_sim, cd_sim, old=6)
    closed = history[2]
    assert sm8_sim.records["job"][closed]["status"] == "Completed"
    sm8_sim.create("joballocation", {"job_uuid": closed, "staff_uuid": biz.staff[3]["uuid"],
                                     "allocation_date": days.stamp(0)})  # fmt: skip
    engine.run_cycle()
    assert _resources(cd_sim, engine.ctx.ns, closed) is None
    report = engine.sync_job(closed)
    assert report.counts == {"skipped.out_of_scope.status": 1}


def test_a_wider_horizon_takes_effect_at_the_next_sync_and_a_narrower_one_deletes_nothing(
    engine, sm8_sim, cd_sim
):
    biz, history = _account(sm8_sim, cd_sim, old=6)
    engine.run_cycle()
    ns = engine.ctx.ns
    assert all(_resources(cd_sim, ns, j) is None for j in history)
    engine.ctx.options.scope = replace(engine.ctx.options.scope, horizon_days=3650)
    engine.run_cycle()  # every job the bridge holds is synced once under the new scope
    open_jobs = [j for j in history if sm8_sim.records["job"][j]["status"] == "Work Order"]
    for job in open_jobs:
        assert set(_resources(cd_sim, ns, job).values()) == {"SCHEDULED"}  # the fixed booking
    assert all(_resources(cd_sim, ns, j) is None for j in set(history) - set(open_jobs))
    assert check(sm8_sim, cd_sim, ns, scope=CheckedScope(horizon_days=3650)).converged

    before_cd = {j: _resources(cd_sim, ns, j) for j in biz.jobs + history}
    before_sm8 = _active(sm8_sim)
    cd_sim.reset_counts()
    engine.ctx.options.scope = replace(engine.ctx.options.scope, horizon_days=1)
    report = engine.run_cycle()
    assert report.counts["skipped.out_of_scope.history"] >= len(open_jobs)
    assert {j: _resources(cd_sim, ns, j) for j in biz.jobs + history} == before_cd
    assert _active(sm8_sim) == before_sm8 and cd_sim.write_count() == 0
    assert check(sm8_sim, cd_sim, ns).converged


def test_narrower_statuses_leave_jobs_as_they_are_both_ways(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2)
    engine.run_cycle()
    ns = engine.ctx.ns
    before = {j: _resources(cd_sim, ns, j) for j in biz.jobs}
    engine.ctx.options.scope = replace(engine.ctx.options.scope, statuses=names(["Quote"]))
    job, row = biz.jobs[0], biz.allocations[0]
    sm8_sim.delete("joballocation", row["uuid"])  # the office, on a job out of scope
    free = next(u for u in biz.users if u["id"] not in before[biz.jobs[1]])
    cd_sim.resource_op(cd_job_uuid(ns, biz.jobs[1]), "schedule", str(free["id"]))
    report = engine.run_cycle()
    assert report.counts["skipped.out_of_scope.status"] == 2
    assert _resources(cd_sim, ns, job) == before[job]  # the deletion did not sync
    assert len(_resources(cd_sim, ns, biz.jobs[1])) == 2
    newcomer = next(m["uuid"] for m in biz.staff if biz.user_for(m["uuid"])["id"] == free["id"])
    assert not _bookings(sm8_sim, biz.jobs[1], newcomer)  # the dispatcher's did not flow back
    engine.ctx.options.scope = replace(engine.ctx.options.scope, statuses=frozenset())
    engine.run_cycle()  # every status again: both changes sync now
    assert row["staff_uuid"] not in {  # the deleted booking's person is off the job
        s["uuid"] for s in biz.staff if biz.user_for(s["uuid"])["id"] in _resources(cd_sim, ns, job)
    }
    assert [str(a["active"]) for a in _bookings(sm8_sim, biz.jobs[1], newcomer)] == ["1"]
    assert check(sm8_sim, cd_sim, ns, scope=CheckedScope(statuses=None)).converged


def test_leaving_scope_by_time_deletes_nothing_and_coredination_still_flows_back(
    engine, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=1, allocations=1, fixed=1)
    engine.run_cycle()
    ns, job = engine.ctx.ns, biz.jobs[0]
    on_job = _resources(cd_sim, ns, job)
    assert len(on_job) == 2
    before = _active(sm8_sim)
    _later(engine, 60 * DAY)  # every booking of the job is now history
    engine.ctx.stores.jobs.mark_dirty([job])
    report = engine.run_cycle(match_staff=False)
    assert report.counts["skipped.out_of_scope.history"] >= 1
    assert _resources(cd_sim, ns, job) == on_job and _active(sm8_sim) == before

    # A dispatcher takes one person off and puts another on: the new one gets a booking, the
    # history of the one taken off stays.
    taken_off = next(iter(on_job))
    newcomer = next(u for u in biz.users if u["id"] not in on_job)
    cd_job = cd_job_uuid(ns, job)
    cd_sim.resource_op(cd_job, "unschedule", str(taken_off))
    cd_sim.resource_op(cd_job, "schedule", str(newcomer["id"]))
    engine.run_cycle(match_staff=False)
    assert _active(sm8_sim) >= before  # nothing of history deleted
    member = next(s["uuid"] for s in biz.staff if biz.user_for(s["uuid"])["id"] == newcomer["id"])
    made = _bookings(sm8_sim, job, member)
    assert len(made) == 1 and str(made[0]["active"]) == "1"


def test_staff_left_out_are_never_put_on_a_job(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3)
    out = biz.allocations[0]["staff_uuid"]
    engine.ctx.options.scope = replace(engine.ctx.options.scope, staff_left_out=names([out]))
    engine.run_cycle()
    user = biz.user_for(out)["id"]
    for job in biz.jobs:
        assert user not in (_resources(cd_sim, engine.ctx.ns, job) or {})


def test_an_excluded_job_is_left_alone_until_included(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2)
    engine.run_cycle()
    ns, job = engine.ctx.ns, biz.jobs[0]
    assert engine.ctx.stores.scope.exclude(job, "ops", time.time(), "moving to another system")
    assert not engine.ctx.stores.scope.exclude(job, "someone else", time.time())  # kept
    assert engine.ctx.stores.scope.excluded()[job]["by"] == "ops"
    before = _resources(cd_sim, ns, job)
    sm8_sim.delete("joballocation", biz.allocations[0]["uuid"])
    report = engine.run_cycle(match_staff=False)
    assert report.counts["skipped.out_of_scope.excluded"] == 1
    assert _resources(cd_sim, ns, job) == before
    assert engine.reconcile(repair=False)[0] == []  # an excluded job is no drift
    assert engine.ctx.stores.scope.include(job)
    engine.ctx.stores.jobs.mark_dirty([job])
    engine.run_cycle(match_staff=False)
    assert _resources(cd_sim, ns, job) == {}
    assert check(sm8_sim, cd_sim, ns).converged


def test_exclude_include_and_status_commands(cli_env, sm8_sim, cd_sim):
    runner = CliRunner()
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    assert runner.invoke(app, ["sync", "--once"]).exit_code == 0
    job = biz.jobs[1]
    done = runner.invoke(app, ["exclude", job.upper(), "--by", "Dana", "--note", "a trial"])
    assert done.exit_code == 0 and "excluded job" in done.output, done.output
    assert runner.invoke(app, ["exclude", "not-a-uuid"]).exit_code == 2
    status = json.loads(runner.invoke(app, ["status", "--json"]).output)["scope"]
    assert status["horizon_days"] == 1 and status["job_statuses"] == ["Quote", "Work Order"]
    assert status["timezone"] == "Australia/Sydney"
    assert status["horizon"].startswith(days.day(-1).isoformat())
    assert status["excluded_count"] == 1
    assert status["excluded"][job]["by"] == "Dana" and status["excluded"][job]["note"] == "a trial"
    text = runner.invoke(app, ["status"]).output
    assert f"excluded job {job} by Dana" in text and "jobs excluded 1" in text
    again = runner.invoke(app, ["include", job])
    assert again.exit_code == 0 and "included" in again.output
    assert "was not excluded" in runner.invoke(app, ["include", job]).output
    status = json.loads(runner.invoke(app, ["status", "--json"]).output)["scope"]
    assert status["excluded"] == {} and status["excluded_count"] == 0


def test_scope_settings_per_connection_are_checked_as_the_environments():
    from bridge.config import load_settings, scope
    from bridge.connections.models import validate_overrides

    settings = load_settings(servicem8_api_key="k", coredination_api_key="k", _env_file=None,
                             scope_job_statuses="*", scope_horizon_days=0)  # fmt: skip
    assert scope(settings) == Scope(horizon_days=0, statuses=frozenset())
    assert validate_overrides({"SCOPE_HORIZON_DAYS": "7"}) == {"scope_horizon_days": 7}
    for bad in ({"SCOPE_JOB_STATUSES": "Open"}, {"SCOPE_STAFF_LEFT_OUT": "ann@example.com"},
                {"SCOPE_HORIZON_DAYS": "-1"}):  # fmt: skip
        try:
            validate_overrides(bad)
        except ValueError as exc:
            assert next(iter(bad)) in str(exc)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_a_process_behind_a_scope_change_leaves_the_job_marked(engine, sm8_sim, cd_sim):
    """Another process changed the scope settings (its cycle marked every job); this one has
    not read them yet: it syncs nothing under the old ones, and the job stays marked."""
    from bridge.sync.scope import CURSOR_SCOPE, rescope

    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    job = biz.jobs[0]
    assert rescope(engine.ctx) == set()  # the first time: recorded, nothing marked
    newer = replace(engine.ctx.options.scope, horizon_days=30)
    engine.ctx.stores.activity.set_cursor(CURSOR_SCOPE, newer.fingerprint())
    assert engine.poll_servicem8() == {job}
    assert engine.sync_job(job).counts == {"skipped.scope_changing": 1}
    assert job in engine.ctx.stores.jobs.dirty() and not cd_sim.jobs
    engine.ctx.options.scope = newer
    engine.sync_job(job)
    assert job not in engine.ctx.stores.jobs.dirty() and len(cd_sim.jobs) == 1
    engine.ctx.options.scope = replace(newer, horizon_days=2)
    assert rescope(engine.ctx) == {job}  # a change marks every job the bridge holds


def test_a_first_sync_shows_its_progress_and_time_left_then_none(engine, sm8_sim, cd_sim):
    """Status's catch-up: N of M jobs synced since the first was, the time left at that rate;
    gone once no job is left to sync (docs/operations.md#backfill)."""
    from bridge.ops.status import catch_up

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=30, allocations=30)
    engine.match_staff()
    engine.poll_servicem8()
    jobs = engine.ctx.stores.jobs
    assert jobs.dirty_count() == 30 and engine.ctx.stores.work.catch_up() == (0, 30, None)
    start = time.time()
    for n, job in enumerate(sorted(biz.jobs)[:12]):
        engine.ctx.clock = lambda n=n: start + n  # a job a second
        engine.sync_job(job)
    done, left, since = engine.ctx.stores.work.catch_up()
    assert (done, left, since) == (12, 18, start)
    shown = catch_up(done, left, since, start + 12)
    assert shown == {"done": 12, "of": 30, "since": start, "per_second": 1.0, "eta_seconds": 18}
    for job in sorted(biz.jobs)[12:]:
        engine.sync_job(job)
    assert engine.ctx.stores.work.catch_up() == (0, 0, None)  # no backlog: nothing shown
    assert not engine.ctx.stores.redis.exists(engine.ctx.stores.keys.catchup)


def test_status_prints_the_catch_up(cli_env, redis_client):
    import uuid

    from bridge.store import Stores

    jobs = Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"]).jobs
    marked = [str(uuid.uuid4()) for _ in range(15)]
    jobs.mark_dirty(marked)
    for job in marked[:3]:
        jobs.clear_dirty(job, 1, time.time() - 30)
    shown = CliRunner().invoke(app, ["status"])
    assert shown.exit_code == 0, shown.output
    assert "catching up: 3 of 15 jobs synced (20 %), about 2 min left" in shown.output
    data = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)["catch_up"]
    assert data["done"] == 3 and data["of"] == 15


def test_a_first_poll_stopped_before_the_job_list_reads_no_job_alone(engine, sm8_sim, cd_sim):
    """The first poll read the bookings and its budget ran out before the job list: the job
    syncs queued meanwhile wait for the list (kept dirty, no job read each), a webhook's sync
    reads its job at once, and once the list is read every job syncs from it."""
    from bridge.http.budget import priority
    from bridge.sync.ingest import poll_servicem8
    from bridge.sync.preflight import WAITING_JOB_LIST

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=6, allocations=6)
    engine.match_staff()
    poll_servicem8(engine.ctx, ("joballocation", "jobactivity"))  # the job list still to come
    jobs = engine.ctx.stores.jobs
    assert jobs.dirty_count() == 6
    sm8_sim.reset_counts()
    report = engine.sync_job(biz.jobs[0])
    assert report.counts[WAITING_JOB_LIST] == 1 and sm8_sim.count() == 0
    assert jobs.dirty_generation(biz.jobs[0]) is not None  # still to sync
    token = priority.set("interactive")  # a webhook's sync
    try:
        engine.sync_job(biz.jobs[1])
    finally:
        priority.reset(token)
    assert sm8_sim.count("GET", "job.get") == 1
    poll_servicem8(engine.ctx, ("job",))
    sm8_sim.reset_counts()
    for job in sorted(jobs.dirty()):
        assert WAITING_JOB_LIST not in engine.sync_job(job).counts
    assert sm8_sim.count() == 0 and jobs.dirty_count() == 0  # every job's details from the list
    assert check(sm8_sim, cd_sim, engine.ctx.ns).converged
