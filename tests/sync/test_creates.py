"""A create that already landed is done (docs/servicem8-api.md#writes): a booking create whose
first answer is lost is sent again with the same uuid; ServiceM8's "exists" (409, or a refusal
saying so) is read back, and the booking is ours, so the sync goes on as if the first answer had
come. Against both simulators, their lost-answer fault on, and real Redis."""

from __future__ import annotations

import pytest

from bridge.queues import SYNC_JOB
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, sm8_allocation_uuid


def _schedule_a_free_person(engine, sm8_sim, cd_sim):
    """The first job synced, and a person not booked on it scheduled in Coredination."""
    engine.ctx.options.pull_booking = "flexible"
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=1, allocations=1)
    engine.run_cycle()
    job = biz.jobs[0]
    booked = {a["staff_uuid"] for a in biz.allocations}
    staff = next(s for s in biz.staff if s["uuid"] not in booked)
    user = biz.user_for(staff["uuid"])["id"]
    cd_job = cd_job_uuid(engine.ctx.ns, job)
    cd_sim.resource_op(cd_job, "schedule", str(user))
    return job, staff["uuid"], sm8_allocation_uuid(engine.ctx.ns, cd_job, user)


def _bookings_of(sm8_sim, job, staff):
    return [r for r in sm8_sim.records["joballocation"].values()
            if (r["job_uuid"], r["staff_uuid"], int(r["active"])) == (job, staff, 1)]  # fmt: skip


@pytest.mark.parametrize("answer", ["conflict", "refused"])
def test_a_create_whose_answer_was_lost_and_whose_repeat_is_refused_as_existing_is_done(
    answer, engine, sm8_sim, cd_sim, store
):
    job, staff, derived = _schedule_a_free_person(engine, sm8_sim, cd_sim)
    sm8_sim.set_dialect(duplicate_uuid=answer, lost_create_answer_rate=1.0)
    sm8_sim.reset_counts()

    report = engine.run_cycle(match_staff=False)

    assert sm8_sim.injected["lost_answer"] == 1
    assert sm8_sim.count("POST", "joballocation.create") == 2  # the first, and its repeat
    assert sm8_sim.statuses[409 if answer == "conflict" else 200] >= 1
    assert [r["uuid"] for r in _bookings_of(sm8_sim, job, staff)] == [derived]  # one booking
    assert report.counts["servicem8.created"] == 1
    assert not any(k.startswith("failed.") for k in report.counts), report.counts
    assert sm8_sim.count("POST", "joballocation.update") == 0  # it was as sent: nothing more
    assert store.work.dead_letter_count() == 0

    sm8_sim.set_dialect(lost_create_answer_rate=0.0)
    engine.run_cycle(match_staff=False)  # the poll reads the booking back: our own write
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    engine.run_cycle(match_staff=False)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0


def test_through_the_task_a_lost_answer_then_409_leaves_no_dead_letter(app, sm8_sim, cd_sim):
    rt = app.bridge_runtime()
    job, staff, derived = _schedule_a_free_person(rt.engine, sm8_sim, cd_sim)
    sm8_sim.set_dialect(lost_create_answer_rate=1.0)
    rt.engine.poll_coredination()

    result = app.tasks[SYNC_JOB].apply(args=[job], kwargs={"connection": rt.connection})

    assert result.successful(), result.traceback
    assert sm8_sim.statuses[409] == 1 and sm8_sim.injected["lost_answer"] == 1
    assert [r["uuid"] for r in _bookings_of(sm8_sim, job, staff)] == [derived]
    assert rt.stores.work.dead_letter_count() == 0
    assert rt.stores.work.failed_jobs() == {}


class _Killed(BaseException):
    """A worker killed as its write's answer arrived: nothing after the write ran."""


@pytest.mark.parametrize("dies_after", ["upsert_job", "resource_op"])
def test_a_sync_killed_after_a_write_is_followed_by_one_that_sends_nothing_twice(
    dies_after, engine, sm8_sim, cd_sim, monkeypatch
):
    """The job's in-flight mark outlives the killed sync; the next one reads the Coredination
    job before writing: a job its create made is linked with the body it was sent (no second
    PUT), a person already scheduled is linked (no second SCHEDULE)."""
    from collections import Counter

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=3)
    engine.match_staff()
    engine.poll_servicem8()
    job, cd = biz.jobs[0], engine.ctx.cd
    real = getattr(type(cd), dies_after)

    def dies(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise _Killed

    monkeypatch.setattr(type(cd), dies_after, dies)
    with pytest.raises(_Killed):
        engine.sync_job(job)
    monkeypatch.undo()
    cd_job = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, job)]]
    on_job = len(cd_job["resources"])  # put on before the worker died
    cd_sim.reset_counts()
    report = engine.sync_job(job)
    assert report.counts["coredination.read_after_crash"] == 1
    assert cd_sim.count("PUT", "job.put") == 0  # the create landed: not sent again
    sent = sum(cd_sim.count("PUT", f"job.{op}") for op in ("schedule", "assign"))
    assert sent == len(cd_job["resources"]) - on_job  # only those not on the job yet
    events = Counter((e["type"], e.get("toUserId")) for e in cd_job["events"])
    assert events[("CREATE", None)] == 1 and events[("UPDATE", None)] == 0
    people = {k: n for k, n in events.items() if k[0] in ("SCHEDULE", "ASSIGN")}
    assert people and set(people.values()) == {1}
    assert not engine.ctx.stores.redis.hexists(engine.ctx.stores.keys.inflight, job)
    assert engine.sync_job(job).counts["coredination.read_after_crash"] == 0  # mark gone


def test_a_booking_the_office_gave_to_someone_else_keeps_its_uuid_and_the_person_gets_the_next(
    engine, sm8_sim, cd_sim
):
    """The bridge booked a person scheduled in Coredination; the office gives that booking to
    another person; the dispatcher schedules the first person again. Their new booking takes
    the next derived uuid: nothing overwritten, no dead letter (found by a starved chaos run)."""
    from bridge.simulators.checker import check
    from mappings.ids import derived_uuids

    job, staff, derived = _schedule_a_free_person(engine, sm8_sim, cd_sim)
    engine.run_cycle()
    assert _bookings_of(sm8_sim, job, staff)[0]["uuid"] == derived
    other = next(s["uuid"] for s in sm8_sim.records["staff"].values()
                 if s["uuid"] != staff and not _bookings_of(sm8_sim, job, s["uuid"]))  # fmt: skip
    sm8_sim.update("joballocation", derived, {"staff_uuid": other})  # the office
    engine.run_cycle()
    cd_job = cd_job_uuid(engine.ctx.ns, job)
    user = next(u for u, s in engine.ctx.stores.staff.staff_map().u2s.items() if s == staff)
    cd_sim.resource_op(cd_job, "schedule", str(user))  # the dispatcher, again
    report = engine.run_cycle()
    assert not [k for k in report.counts if k.startswith("failed.")]
    mine = _bookings_of(sm8_sim, job, staff)
    assert [b["uuid"] for b in mine] == [sm8_allocation_uuid(engine.ctx.ns, cd_job, user, 2)]
    assert mine[0]["uuid"] in derived_uuids(engine.ctx.ns, cd_job, user)
    assert sm8_sim.records["joballocation"][derived]["staff_uuid"] == other  # left as it is
    assert engine.ctx.stores.work.dead_letter_count() == 0
    assert check(sm8_sim, cd_sim, engine.ctx.ns).converged


def test_a_create_whose_uuid_another_persons_booking_holds_reads_it_and_retries(
    engine, sm8_sim, cd_sim
):
    """The holder is not known to the bridge yet (no poll has read it): the create's "exists"
    reads it back as someone else's, the sync records it and raises a retryable error, and the
    retry takes the next uuid."""
    from bridge.errors import RetryableError, UuidMoved

    job, staff, derived = _schedule_a_free_person(engine, sm8_sim, cd_sim)
    other = next(s["uuid"] for s in sm8_sim.records["staff"].values()
                 if s["uuid"] != staff and not _bookings_of(sm8_sim, job, s["uuid"]))  # fmt: skip
    sm8_sim.create("joballocation", {"uuid": derived, "job_uuid": job, "staff_uuid": other})
    engine.poll_coredination()  # the dispatcher's change; ServiceM8 is not polled
    with pytest.raises(UuidMoved, match="already belongs to another record") as caught:
        engine.sync_job(job)  # the bridge does not know the holder
    assert isinstance(caught.value, RetryableError) and derived in str(caught.value)
    engine.sync_job(job)
    cd_job = cd_job_uuid(engine.ctx.ns, job)
    user = next(u for u, s in engine.ctx.stores.staff.staff_map().u2s.items() if s == staff)
    assert [b["uuid"] for b in _bookings_of(sm8_sim, job, staff)] == [
        sm8_allocation_uuid(engine.ctx.ns, cd_job, user, 2)
    ]
    assert sm8_sim.records["joballocation"][derived]["staff_uuid"] == other
