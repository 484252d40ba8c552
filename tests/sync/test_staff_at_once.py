"""Staff at once (issue 27): the first job sync finds its people mapped, a booking of a person
not mapped asks a match of that person (at most once a minute each), and a user added in
Coredination is matched within one Coredination poll. Against both simulators and real Redis,
one call at a time (no Celery)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

import pytest
from redis.exceptions import LockError

from bridge.errors import BudgetExhausted, Unavailable
from bridge.simulators import scenario
from bridge.sync.staff import ASK_AGAIN_SECONDS, FIRST_MATCH_WAIT_SECONDS, MATCH_LOCK_SECONDS
from mappings.ids import cd_job_uuid

# Bookings from the day after tomorrow on: upcoming, so in the sync's scope whatever today is.
seed_business = partial(scenario.seed_business, start=datetime.now() + timedelta(days=2))


def _resources(cd_sim, job_uuid):
    jobs = {j["uuid"]: j for j in cd_sim.snapshot()["jobs"]}
    return (
        {r["userId"]: r["state"] for r in jobs[job_uuid]["resources"]} if job_uuid in jobs else None
    )


def _want(biz, job):
    return {
        biz.user_for(a["staff_uuid"])["id"]: "SCHEDULED" if a.get("allocation_date") else "ASSIGNED"
        for a in biz.allocations
        if a["job_uuid"] == job
    }


def _pending_of(store, staff_uuid):
    return [k for k in store.parked.pending() if k.endswith(staff_uuid.lower())]


def test_the_first_job_sync_matches_the_staff_before_it_creates_the_job(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=4)
    dirty = engine.poll_servicem8()  # the poll ran before any match: nobody is mapped yet
    assert store.staff.staff_map().s2u == {} and len(dirty) == 2
    for job in sorted(dirty):
        report = engine.sync_job(job)
        assert report.counts["pending.unmapped_staff"] == 0
        assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job)) == _want(biz, job)
    assert len(store.staff.staff_map().s2u) == 3
    assert store.staff.last_match()["users"] == "listed"
    sm8_sim.reset_counts()
    engine.sync_job(sorted(dirty)[0])  # matched once: later syncs ask no list again
    assert sm8_sim.count("GET", "staff.list") == 0


def test_a_sync_waits_while_the_first_match_cannot_run_and_creates_nothing(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2)
    job = biz.jobs[0]
    engine.poll_servicem8()
    sm8_sim.set_faults(refusals={"staff.json": (503, "busy")})
    with pytest.raises(Unavailable):  # the task retries it, after the match can run
        engine.sync_job(job)
    assert cd_sim.jobs == {} and not store.staff.matched_once()
    sm8_sim.set_faults(refusals={})
    tried = sm8_sim.count("GET", "staff.list")
    with pytest.raises(BudgetExhausted) as waited:  # tried a moment ago: the others wait,
        engine.sync_job(job)  # without a call and without counting an attempt
    assert 0 < waited.value.retry_in <= 5
    assert sm8_sim.count("GET", "staff.list") == tried and cd_sim.jobs == {}
    store.redis.delete(store.keys.staff_first_try)  # as FIRST_MATCH_RETRY_SECONDS later
    engine.sync_job(job)
    assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, job)) == _want(biz, job)


def test_a_refused_staff_list_lets_the_syncs_go_on_with_their_pairs_pending(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=1)
    engine.poll_servicem8()
    sm8_sim.set_faults(refusals={"staff.json": (403, "no staff scope")})
    report = engine.sync_job(biz.jobs[0])  # no dead end: the operator links by hand
    assert report.counts["pending.unmapped_staff"] == 1
    assert store.staff.last_match()["users"] == "refused"


def test_a_sync_waits_for_the_first_match_another_process_is_making(
    engine, sm8_sim, cd_sim, store, monkeypatch
):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=1)
    engine.poll_servicem8()
    monkeypatch.setattr("bridge.sync.staff.FIRST_MATCH_WAIT_SECONDS", 0.2)
    other = store.staff.match_lock(MATCH_LOCK_SECONDS, blocking_timeout=1)
    assert other.acquire()
    try:
        with pytest.raises(LockError):  # the task retries it a second later
            engine.sync_job(biz.jobs[0])
        assert cd_sim.jobs == {}
    finally:
        other.release()
    assert FIRST_MATCH_WAIT_SECONDS > 0.2


def test_a_booking_of_an_unmapped_person_asks_one_match_a_minute_then_the_job_syncs_again(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    job, ns = biz.jobs[0], engine.ctx.ns
    # A staff member added in ServiceM8 (and in Coredination) after the match, then booked.
    member = sm8_sim.create(
        "staff", {"first": "Nia", "last": "Okafor", "email": "Nia.Okafor@example.com"}
    )
    user = cd_sim.add_user("nia.okafor@example.com", "Nia", "Okafor")["id"]
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": member, "active": 1})
    engine.poll_servicem8()
    report = engine.sync_job(job)
    assert report.counts["pending.unmapped_staff"] == 1
    asked = engine.ask_match(job)
    assert asked is not None
    assert engine.ask_match(job) is None  # asked already: not again within the minute
    ttl = store.redis.ttl(store.keys.staff_asked(member.lower()))
    assert ASK_AGAIN_SECONDS - 5 < ttl <= ASK_AGAIN_SECONDS

    engine.match_staff(asked)  # the match task the sync queued
    assert store.staff.staff_map().s2u[member.lower()] == user
    assert job in store.jobs.dirty()  # the job syncs again, with the person on it
    engine.sync_job(job)
    assert _resources(cd_sim, cd_job_uuid(ns, job))[user] == "ASSIGNED"
    assert not _pending_of(store, member)


def test_an_asked_match_is_left_out_when_a_whole_match_began_since(engine, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    asked = engine.ctx.clock() - 1
    engine.match_staff()
    sm8_sim.reset_counts()
    assert not engine.match_staff(asked).counts  # that match saw all the ask was about
    assert sm8_sim.count("GET", "staff.list") == 0


def test_a_match_marks_whom_it_left_unmatched_so_their_bookings_ask_none_within_the_minute(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2, unmapped_staff=1)
    report = engine.run_cycle()  # the whole match first, then the sync meets the orphan
    assert report.counts["pending.unmapped_staff"] == 1
    assert engine.ask_match(biz.jobs[0]) is None


def test_a_user_added_in_coredination_is_matched_at_the_next_coredination_poll(
    engine, sm8_sim, cd_sim, store
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2, unmapped_staff=1)
    engine.run_cycle()
    orphan = biz.staff[-1]
    row = next(a for a in biz.allocations if a["staff_uuid"] == orphan["uuid"])
    assert _pending_of(store, orphan["uuid"])
    user = cd_sim.add_user(orphan["email"].lower(), orphan["first"], orphan["last"])["id"]
    sm8_sim.reset_counts()
    dirty = engine.poll_due({"servicem8": 3600.0, "coredination": 0.0})
    assert store.staff.staff_map().s2u[orphan["uuid"].lower()] == user
    assert sm8_sim.count("GET", "staff.list") == 0  # the staff directory of the last match
    assert row["job_uuid"] in dirty
    engine.sync_job(row["job_uuid"])
    assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, row["job_uuid"]))[user] == "SCHEDULED"
    assert not _pending_of(store, orphan["uuid"])


def test_the_users_poll_writes_nothing_while_nobody_changed(engine, sm8_sim, cd_sim, store):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2, unmapped_staff=1)
    engine.run_cycle()
    assert store.parked.pending_count()  # somebody waits: the users are read
    users = store.staff.directory("users")
    cd_sim.reset_counts()
    assert engine.poll_due({"servicem8": 3600.0, "coredination": 0.0}) == set()
    assert cd_sim.count("GET", "user.list") == 1
    assert store.staff.directory("users") == users


def test_the_users_are_not_read_while_nobody_waits_for_a_match(engine, sm8_sim, cd_sim, store):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    assert not store.parked.pending_count()
    cd_sim.reset_counts()
    assert engine.poll_due({"servicem8": 3600.0, "coredination": 0.0}) == set()
    assert cd_sim.count("GET", "user.list") == 0  # an idle connection's poll: no extra call


def test_the_users_poll_waits_for_the_first_whole_match(engine, sm8_sim, cd_sim, store):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.poll_due({"servicem8": 3600.0, "coredination": 0.0})
    assert cd_sim.count("GET", "user.list") == 0 and store.staff.staff_map().s2u == {}


def test_a_first_match_waiting_for_the_budget_holds_the_syncs_as_long(
    engine, sm8_sim, cd_sim, store, monkeypatch
):
    """The first match found the budget spent: every sync waits as long as it must, as a budget
    wait (deferred when long, no attempt counted), not a retry every few seconds."""
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2)
    engine.poll_servicem8()

    def spent() -> None:
        raise BudgetExhausted("spent", retry_in=120.0, api="servicem8", operation="staff.list")

    monkeypatch.setattr(engine.ctx.sm8, "list_staff", spent)
    with pytest.raises(BudgetExhausted):
        engine.sync_job(biz.jobs[0])
    with pytest.raises(BudgetExhausted) as waited:
        engine.sync_job(biz.jobs[0])
    assert waited.value.retry_in > 60 and cd_sim.jobs == {}
