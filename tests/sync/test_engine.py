"""The sync use cases against both simulators and real Redis, one cycle at a time (no Celery).

The same flows run under real workers in tests/e2e; here each step is a direct call so a failure
points at the rule, not at the plumbing.
"""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from redis.exceptions import LockError

from bridge.simulators.scenario import seed_business
from bridge.sync import jobsync
from mappings.ids import cd_job_uuid, sm8_allocation_uuid
from tests import days

SYD = ZoneInfo("Australia/Sydney")


def _cd_jobs_by_uuid(cd_sim):
    return {j["uuid"]: j for j in cd_sim.snapshot()["jobs"]}


def _resources(cd_sim, job_uuid):
    job = _cd_jobs_by_uuid(cd_sim)[job_uuid]
    return {r["userId"]: r["state"] for r in job["resources"]}


def test_fifty_allocations_become_twenty_jobs_with_the_right_people(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=5, jobs=20, allocations=50)
    sm8_sim.reset_counts()
    report = engine.run_cycle()

    jobs = _cd_jobs_by_uuid(cd_sim)
    assert set(jobs) == {cd_job_uuid(engine.ctx.ns, j) for j in biz.jobs}
    for job in biz.jobs:
        expected = {}
        for row in (a for a in biz.allocations if a["job_uuid"] == job):
            user = biz.user_for(row["staff_uuid"])["id"]
            expected[user] = "SCHEDULED" if row.get("allocation_date") else "ASSIGNED"
        assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job)) == expected
    assert sm8_sim.write_count() == 0  # nothing echoed back
    assert report.counts["coredination.job_created"] == 20
    assert report.counts["coredination.scheduled"] + report.counts["coredination.assigned"] == 50


def test_job_time_comes_from_the_earliest_dated_allocation(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    job = _cd_jobs_by_uuid(cd_sim)[cd_job_uuid(engine.ctx.ns, biz.jobs[0])]
    # allocation 0: the seed's first day with the "Early Morning" window (07:00-09:00), Sydney
    assert biz.day0 is not None
    first = biz.day0.replace(tzinfo=SYD)
    assert job["startTime"] == int(first.replace(hour=7).timestamp() * 1000)
    assert job["endTime"] == int(first.replace(hour=9).timestamp() * 1000)
    assert job["title"].endswith(
        sm8_sim.records["job"][biz.jobs[0]]["job_description"].splitlines()[0]
    )
    assert job["destinations"][0]["location"]["placeName"].endswith("NSW")


def test_a_quiet_cycle_writes_nothing_and_reads_little(engine, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=5, jobs=20, allocations=50)
    engine.run_cycle()
    engine.run_cycle(match_staff=False)  # the first re-read sees our own job writes once
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    report = engine.run_cycle(match_staff=False)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0
    # ServiceM8: one list per polled object (allocations, activities, jobs).
    assert sm8_sim.read_count() <= 3 and cd_sim.read_count() <= 2
    assert report.writes("coredination") == report.writes("servicem8") == 0


def test_coredination_schedule_unschedule_finish_flow_back_without_echo(engine, sm8_sim, cd_sim):
    engine.ctx.options.pull_booking = "flexible"  # fixed bookings: tests/sync/test_fixed_flows.py
    biz = seed_business(sm8_sim, cd_sim, staff=5, jobs=2, allocations=2)
    engine.run_cycle()
    job, cd_job = biz.jobs[0], cd_job_uuid(engine.ctx.ns, biz.jobs[0])
    staff_free = next(
        s
        for s in biz.staff
        if s["uuid"] not in {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
    )
    user = biz.user_for(staff_free["uuid"])
    cd_sim.resource_op(cd_job, "schedule", str(user["id"]))

    cd_sim.reset_counts()
    engine.run_cycle(match_staff=False)
    derived = sm8_allocation_uuid(engine.ctx.ns, cd_job, user["id"])
    row = sm8_sim.records["joballocation"][derived]
    assert (row["job_uuid"], row["staff_uuid"], row["active"]) == (job, staff_free["uuid"], 1)
    cd_start = _cd_jobs_by_uuid(cd_sim)[cd_job]["startTime"]
    assert row["allocation_date"] == datetime.fromtimestamp(cd_start / 1000, SYD).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    assert cd_sim.write_count() == 0  # no echo to Coredination

    engine.run_cycle(match_staff=False)  # the poll re-reads our allocation: still no echo
    assert cd_sim.write_count() == 0

    cd_sim.user_action(cd_job, str(user["id"]), "FINISHED")
    engine.run_cycle(match_staff=False)
    assert (
        sm8_sim.records["joballocation"][derived]["completion_timestamp"] != "0000-00-00 00:00:00"
    )
    assert cd_sim.write_count() == 0

    cd_sim.user_action(cd_job, str(user["id"]), "SCHEDULED")
    cd_sim.resource_op(cd_job, "unschedule", str(user["id"]))
    engine.run_cycle(match_staff=False)
    assert sm8_sim.records["joballocation"][derived]["active"] == 0
    assert cd_sim.write_count() == 0


def test_deleting_a_servicem8_allocation_unschedules_the_user(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    row = biz.allocations[0]
    user = biz.user_for(row["staff_uuid"])["id"]
    cd_job = cd_job_uuid(engine.ctx.ns, row["job_uuid"])
    assert _resources(cd_sim, cd_job) == {user: "SCHEDULED"}
    sm8_sim.delete("joballocation", row["uuid"])
    sm8_sim.reset_counts()
    engine.run_cycle(match_staff=False)
    assert _resources(cd_sim, cd_job) == {}
    assert sm8_sim.write_count() == 0


def test_both_sides_changed_between_polls_the_later_change_wins(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    engine.run_cycle()
    # Job 0: ServiceM8 deletes (earlier), Coredination moves the user to ASSIGNED (later).
    first = biz.allocations[0]
    user0 = biz.user_for(first["staff_uuid"])["id"]
    cd0 = cd_job_uuid(engine.ctx.ns, first["job_uuid"])
    sm8_sim.delete("joballocation", first["uuid"])
    cd_sim.clock_offset += 5
    cd_sim.resource_op(cd0, "assign", str(user0))
    # Job 1: Coredination unschedules (earlier), ServiceM8 drops the date (later).
    second = biz.allocations[1]
    user1 = biz.user_for(second["staff_uuid"])["id"]
    cd1 = cd_job_uuid(engine.ctx.ns, second["job_uuid"])
    cd_sim.resource_op(cd1, "unschedule", str(user1))
    sm8_sim.clock_offset += 10
    sm8_sim.update("joballocation", second["uuid"], {"allocation_date": "0000-00-00 00:00:00"})

    engine.run_cycle(match_staff=False)
    engine.run_cycle(match_staff=False)

    assert _resources(cd_sim, cd0) == {user0: "ASSIGNED"}  # Coredination was later
    live0 = [
        a
        for a in sm8_sim.records["joballocation"].values()
        if a["job_uuid"] == first["job_uuid"]
        and a["staff_uuid"] == first["staff_uuid"]
        and a["active"] == 1
    ]
    assert len(live0) == 1 and live0[0]["allocation_date"] == "0000-00-00 00:00:00"

    assert _resources(cd_sim, cd1) == {user1: "ASSIGNED"}  # ServiceM8 was later
    assert sm8_sim.records["joballocation"][second["uuid"]]["active"] == 1


def test_unmapped_staff_is_pending_then_syncs_once_linked(engine, sm8_sim, cd_sim, store):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3, unmapped_staff=1)
    report = engine.run_cycle()
    orphan = biz.staff[-1]
    pending = store.parked.pending()
    assert [k for k in pending if k.endswith(orphan["uuid"])]
    assert report.counts["pending.unmapped_staff"] >= 1
    job = next(a["job_uuid"] for a in biz.allocations if a["staff_uuid"] == orphan["uuid"])
    late_user = cd_sim.add_user("late.joiner@example.com", "Late", "Joiner")
    engine.link_staff(orphan["uuid"], late_user["id"])
    engine.run_cycle(match_staff=False)
    assert late_user["id"] in _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job))
    assert not [k for k in store.parked.pending() if k.endswith(orphan["uuid"])]


def test_email_match_is_case_insensitive_and_never_guesses(engine, sm8_sim, cd_sim, store):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    cd_sim.add_user(biz.staff[1]["email"].upper(), "Dup", "Licate")  # two users share an e-mail
    report = engine.match_staff()
    mapping = store.staff.staff_map().s2u
    assert mapping[biz.staff[0]["uuid"]] == biz.users[0]["id"]
    assert biz.staff[1]["uuid"] not in mapping
    assert report.counts["staff.ambiguous"] == 1


def test_an_allocation_that_expires_unschedules_the_user(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    row = biz.allocations[0]
    clock = [sm8_sim.now()]
    engine.ctx.clock = lambda: clock[0]
    expiry = datetime.fromtimestamp(clock[0] + 3600, SYD).strftime("%Y-%m-%d %H:%M:%S")
    sm8_sim.update("joballocation", row["uuid"], {"expiry_timestamp": expiry})
    engine.run_cycle()
    cd_job = cd_job_uuid(engine.ctx.ns, row["job_uuid"])
    user = biz.user_for(row["staff_uuid"])["id"]
    assert _resources(cd_sim, cd_job) == {user: "SCHEDULED"}
    clock[0] += 3601  # nothing changes in ServiceM8; only time passes
    engine.run_cycle(match_staff=False)
    assert _resources(cd_sim, cd_job) == {}


def test_a_coredination_webhook_echoing_our_own_write_costs_no_read(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    cd_job = cd_job_uuid(engine.ctx.ns, biz.jobs[0])
    user = biz.user_for(biz.allocations[0]["staff_uuid"])["id"]
    state = _resources(cd_sim, cd_job)[user]
    cd_sim.reset_counts()
    # The events our own writes caused: the job upsert and the user's resource operation.
    assert engine.pull_webhook(cd_job, ("UPDATE", None, None)) == set()
    assert engine.pull_webhook(cd_job, ("SCHEDULE", user, state)) == set()
    assert cd_sim.read_count() == 0
    # A change the bridge does not hold is read (and marks the job for a sync).
    cd_sim.user_action(cd_job, str(user), "ACCEPTED")
    assert engine.pull_webhook(cd_job, ("RESOURCE_ACTION", user, "ACCEPTED")) == {biz.jobs[0]}
    assert cd_sim.read_count() == 1
    # An event the bridge cannot judge (no user, unknown type) is read too.
    assert engine.pull_webhook(cd_job, ("STATE_OVERRIDE", None, None)) == set()
    assert cd_sim.read_count() == 2


def test_allocation_windows_are_listed_once_for_every_process(engine, sm8_sim, cd_sim, store):
    from bridge.sync import SyncContext

    seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=4)
    engine.run_cycle()
    ctx = engine.ctx
    other = SyncContext(store, ctx.sm8, ctx.cd, ctx.ns)  # another worker process
    sm8_sim.reset_counts()
    assert other.allocation_windows() == ctx.allocation_windows()
    assert sm8_sim.read_count() == 0
    assert other.allocation_windows(refresh=True)  # an unknown window within a minute: no call
    assert sm8_sim.read_count() == 0


def test_a_dirty_mark_on_an_id_that_is_not_a_uuid_is_dropped(engine):
    engine.ctx.stores.jobs.mark_dirty(["JOB-1042"])
    report = engine.sync_job("JOB-1042")
    assert report.counts["skipped.bad_job_id"] == 1
    assert engine.ctx.stores.jobs.dirty() == {}


def test_every_expiry_on_a_job_is_noticed_not_only_the_first(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=2)
    now = engine.ctx.now_ms() // 1000 * 1000  # ServiceM8 stamps are whole seconds
    soon, later = now + 60_000, now + 120_000
    stamps = [datetime.fromtimestamp(t / 1000, SYD).strftime("%Y-%m-%d %H:%M:%S")
              for t in (soon, later)]  # fmt: skip
    for row, stamp in zip(biz.allocations, stamps, strict=True):
        sm8_sim.update("joballocation", row["uuid"], {"expiry_timestamp": stamp})
    engine.run_cycle()
    job = biz.jobs[0]
    assert engine.ctx.stores.jobs.due_expiries(soon) == {job}
    engine.ctx.clock = lambda: soon / 1000 + 1
    engine.sync_job(job)  # the first expiry's sync sets the reminder for the next one
    assert engine.ctx.stores.jobs.due_expiries(later - 1) == set()
    assert engine.ctx.stores.jobs.due_expiries(later) == {job}


def test_a_sync_that_lost_its_lease_keeps_its_writes_but_not_its_view(
    engine, sm8_sim, cd_sim, monkeypatch
):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    job = biz.jobs[0]
    before = engine.ctx.stores.jobs.load(job)
    free = next(s for s in biz.staff if s["uuid"] != biz.allocations[0]["staff_uuid"])
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": free["uuid"],
                                     "allocation_date": days.stamp(15)})  # fmt: skip
    engine.poll_servicem8()
    cd, send = engine.ctx.cd, engine.ctx.cd.resource_op

    def taken_over(*args, **kwargs):  # the write leaves, then another worker takes the job over
        send(*args, **kwargs)
        engine.ctx.stores.redis.set(engine.ctx.stores.keys.job_lock(job), "another-worker")

    monkeypatch.setattr(cd, "resource_op", taken_over)
    with pytest.raises(LockError):  # its release finds the lock another's: the task retries
        engine.sync_job(job)
    user = biz.user_for(free["uuid"])["id"]
    assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job))[user] == "SCHEDULED"  # it went
    after = engine.ctx.stores.jobs.load(job)
    assert after.cd == before.cd and after.pairs == before.pairs  # left to the new owner's sync


def test_an_objects_poll_stretches_only_while_its_own_webhooks_arrive(engine, sm8_sim, cd_sim):
    """Job and job-activity webhooks say nothing of allocations, which ServiceM8 may not send at
    all: the allocation poll keeps its own interval while the others stretch."""
    seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    engine.run_cycle()
    activity, now = engine.ctx.stores.activity, time.time()
    intervals = {"servicem8": 60.0, "coredination": 60.0}
    engine.poll_due(intervals, with_webhooks=300.0)  # every object polled once
    activity.set_subscription("servicem8.joballocation", "poll-only: refused (HTTP 400)")
    activity.set_subscription("servicem8.job", "active")
    activity.set_subscription("servicem8.jobactivity", "active")
    # Webhooks arrive for jobs, activities and (as a first-reading simulator would send them)
    # allocations; the allocation subscription is known to be refused all the same.
    activity.note_webhook(["servicem8", "servicem8.job", "servicem8.jobactivity",
                           "servicem8.joballocation"], now)  # fmt: skip
    sm8_sim.reset_counts()
    engine.ctx.clock = lambda: now + 61  # one interval later
    engine.poll_due(intervals, with_webhooks=300.0)
    assert sm8_sim.count("GET", "joballocation.list") == 1  # its own interval
    assert sm8_sim.count("GET", "job.list") == 0  # stretched: job webhooks arrive
    assert sm8_sim.count("GET", "jobactivity.list") == 0
    engine.ctx.clock = lambda: now + 301  # the stretched interval too
    engine.poll_due(intervals, with_webhooks=300.0)
    assert sm8_sim.count("GET", "job.list") == 1 and sm8_sim.count("GET", "jobactivity.list") == 1


def test_planned_polls_give_the_poll_only_object_the_budget_and_record_the_plan(
    engine, sm8_sim, cd_sim
):
    """With the plan on, job allocations (no webhooks) poll within seconds in busy hours while
    jobs and job activities, whose subscriptions are active, poll as a safety net; every poll's
    calls count against the day's share (docs/operations.md#poll-plan)."""
    from dataclasses import replace
    from datetime import time as clock_time

    from mappings.pollplan import PollBudget

    seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    engine.run_cycle()
    all_day = PollBudget(20_000, 0.5, clock_time(0), clock_time(23, 59), 5.0, 300.0)
    engine.ctx.options = replace(engine.ctx.options, poll_budget=all_day)
    activity, tz = engine.ctx.stores.activity, engine.ctx.tz
    # Noon in the account's zone today: busy hours, and a day's rest to spread the share over.
    now = datetime.combine(datetime.now(tz).date(), clock_time(12), tzinfo=tz).timestamp()
    activity.set_subscription("servicem8.joballocation", "poll-only: refused (HTTP 400)")
    activity.set_subscription("servicem8.job", "active")
    activity.set_subscription("servicem8.jobactivity", "active")
    engine.ctx.clock = lambda: now
    engine.poll_due({"coredination": 60.0})  # every object polled once
    plan = activity.poll_plan()
    assert plan is not None and plan["busy"] is True and plan["spent"] == 0
    assert plan["intervals"]["servicem8.job"] == plan["intervals"]["servicem8.jobactivity"] == 300
    allocation_every = plan["intervals"]["servicem8.joballocation"]
    assert 5.0 <= allocation_every <= 10.0
    sm8_sim.reset_counts()
    engine.ctx.clock = lambda: now + allocation_every  # one planned interval later
    engine.poll_due({"coredination": 60.0})
    assert sm8_sim.count("GET", "joballocation.list") == 1
    assert sm8_sim.count("GET", "job.list") == sm8_sim.count("GET", "jobactivity.list") == 0
    assert activity.poll_plan()["spent"] == 3  # the first cycle's three lists


def test_with_servicem8_paused_before_its_timezone_is_known_coredination_is_still_polled(
    engine, sm8_sim, cd_sim, monkeypatch
):
    """The plan needs the account's timezone; while ServiceM8 is paused and it is not known yet,
    the plan waits and Coredination's poll goes ahead."""
    from dataclasses import replace
    from datetime import time as clock_time

    from bridge.errors import BudgetExhausted
    from bridge.servicem8 import ServiceM8Client
    from mappings.pollplan import PollBudget

    seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=1)
    plan = PollBudget(20_000, 0.5, clock_time(6), clock_time(19), 5.0, 300.0)
    engine.ctx.options = replace(engine.ctx.options, poll_budget=plan)

    def paused(self):
        raise BudgetExhausted("paused", api="servicem8", retry_in=3600)

    monkeypatch.setattr(ServiceM8Client, "tz", property(paused))
    cd_sim.reset_counts()
    engine.poll_due({"coredination": 60.0})
    assert cd_sim.count("GET", "job.list") == 1
    assert engine.ctx.stores.activity.cursor("polled:coredination") is not None


def test_a_sync_whose_lease_is_taken_after_it_decided_sends_no_write(
    engine, sm8_sim, cd_sim, monkeypatch
):
    """A worker starved of CPU between deciding a write and sending it: another worker took the
    job meanwhile. The fence renews the lease as the write leaves, finds it gone, and nothing is
    sent; the task retries from a read (the LockError)."""
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    job = biz.jobs[0]
    free = next(s for s in biz.staff if s["uuid"] != biz.allocations[0]["staff_uuid"])
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": free["uuid"],
                                     "allocation_date": days.stamp(15)})  # fmt: skip
    engine.poll_servicem8()
    stores, plan = engine.ctx.stores, jobsync.plan_job_fields

    def decide_then_lose(*args, **kwargs):
        decided = plan(*args, **kwargs)  # decided while the lease is ours, then starved
        stores.redis.set(stores.keys.job_lock(job), "another-worker", px=60_000)
        return decided

    monkeypatch.setattr(jobsync, "plan_job_fields", decide_then_lose)
    cd_sim.reset_counts()
    with pytest.raises(LockError):
        engine.sync_job(job)
    assert cd_sim.write_count() == 0, cd_sim.counts  # no write of any kind
    monkeypatch.setattr(jobsync, "plan_job_fields", plan)
    stores.redis.delete(stores.keys.job_lock(job))  # the other worker is done
    engine.sync_job(job)  # the retry, from a read
    user = biz.user_for(free["uuid"])["id"]
    assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job))[user] == "SCHEDULED"
