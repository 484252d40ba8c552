"""Both kinds of ServiceM8 booking against both simulators and real Redis, one cycle at a time:
fixed-time bookings (job activities) beside flexible ones (job allocations), the job's time from
the earliest of either, bookings made back from Coredination, opened bookings, deleted jobs."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from bridge.errors import Rejected
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, sm8_activity_uuid
from tests import days

SYD = ZoneInfo("Australia/Sydney")
EMPTY = "0000-00-00 00:00:00"


def _ms(day: int, hour: int) -> int:
    return days.ms(day, hour, tz=SYD)  # upcoming: day 1 is tomorrow


def _stamp(day: int, hour: int) -> str:
    return days.stamp(day, hour, tz=SYD)


def _cd_job(cd_sim, uuid):
    return next(j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == uuid)


def _resources(cd_sim, uuid):
    return {r["userId"]: r["state"] for r in _cd_job(cd_sim, uuid)["resources"]}


def _fixed(sm8_sim, job, staff, day, start, end, **extra):
    return sm8_sim.create("jobactivity", {
        "job_uuid": job, "staff_uuid": staff, "activity_was_scheduled": 1,
        "start_date": _stamp(day, start), "end_date": _stamp(day, end), **extra,
    })  # fmt: skip


def _one_job(sm8_sim, cd_sim, engine):
    """One job with nobody booked, three staff members mapped to users (Ava, Ben, Chloe)."""
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=0)
    engine.run_cycle()
    job = biz.jobs[0]
    people = [(s["uuid"], biz.user_for(s["uuid"])["id"]) for s in biz.staff]
    return job, cd_job_uuid(engine.ctx.ns, job), people


def _cycle(engine):
    return engine.run_cycle(match_staff=False)


def test_a_fixed_booking_schedules_the_user_at_its_exact_time_and_moves_the_job(
    engine, sm8_sim, cd_sim
):
    job, cd_job, [(ava, ava_id), *_] = _one_job(sm8_sim, cd_sim, engine)
    booking = _fixed(sm8_sim, job, ava, 3, 9, 11)
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}
    cd = _cd_job(cd_sim, cd_job)
    assert (cd["startTime"], cd["endTime"], cd["allDay"]) == (_ms(3, 9), _ms(3, 11), False)

    sm8_sim.update("jobactivity", booking, {"start_date": _stamp(3, 13), "end_date": _stamp(3, 15)})
    _cycle(engine)
    cd = _cd_job(cd_sim, cd_job)
    assert (cd["startTime"], cd["endTime"]) == (_ms(3, 13), _ms(3, 15))
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}

    # Another live booking of the same person keeps her scheduled when this one goes.
    other = sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ava,
                                             "allocation_date": _stamp(4, 0)})  # fmt: skip
    _cycle(engine)
    sm8_sim.delete("jobactivity", booking)
    sm8_sim.reset_counts()
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}
    sm8_sim.delete("joballocation", other)
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {}
    assert sm8_sim.write_count() == 0  # requests only: the office works in the app


def test_the_job_starts_at_the_earliest_booking_of_either_kind(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, ava_id), (ben, ben_id), _] = _one_job(sm8_sim, cd_sim, engine)
    morning = next(w for w in sm8_sim.records["allocationwindow"].values()
                   if w["name"] == "Morning")  # fmt: skip  # 08:00-12:00
    _fixed(sm8_sim, job, ben, 3, 9, 11)
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ava,
                                     "allocation_date": _stamp(2, 0),
                                     "allocation_window_uuid": morning["uuid"]})  # fmt: skip
    _cycle(engine)
    cd = _cd_job(cd_sim, cd_job)
    assert (cd["startTime"], cd["endTime"]) == (_ms(2, 8), _ms(2, 12))
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED", ben_id: "SCHEDULED"}


def test_time_worked_creates_nothing_and_changes_nothing(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, ava_id), (ben, _), _] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ben, 3, 9, 11, activity_was_scheduled=0, activity_was_recorded=1)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    assert cd_sim.snapshot()["jobs"] == [] and cd_sim.write_count() == 0  # nothing linked

    _fixed(sm8_sim, job, ava, 3, 9, 11)
    _cycle(engine)
    _fixed(sm8_sim, job, ava, 3, 9, 10, activity_was_scheduled=0, activity_was_recorded=1)
    _fixed(sm8_sim, job, ben, 3, 7, 8, activity_was_automated=1)
    cd_sim.reset_counts()
    sm8_sim.reset_counts()
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}
    assert cd_sim.write_count() == 0 and sm8_sim.write_count() == 0


def test_scheduled_on_a_timed_job_becomes_one_fixed_booking_and_nothing_more(
    engine, sm8_sim, cd_sim
):
    job, cd_job, [(ava, _), _, (cat, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 14, 16)
    _cycle(engine)
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    _cycle(engine)
    mine = [a for a in sm8_sim.records["jobactivity"].values() if a["staff_uuid"] == cat]
    assert len(mine) == 1
    assert mine[0]["uuid"] == sm8_activity_uuid(engine.ctx.ns, cd_job, cat_id)
    assert (mine[0]["start_date"], mine[0]["end_date"]) == (_stamp(3, 14), _stamp(3, 16))
    assert (mine[0]["activity_was_scheduled"], mine[0]["active"]) == ("1", 1)
    assert not [a for a in sm8_sim.records["joballocation"].values() if a["staff_uuid"] == cat]

    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    _cycle(engine)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0  # no duplicate, no echo

    # The dispatcher moves the job: the bridge's booking follows, the office's stays.
    with cd_sim.lock:
        cd_sim.update_job(cd_sim._job(cd_job), {"startTime": _ms(3, 10), "endTime": _ms(3, 12)})
    _cycle(engine)
    assert (mine[0]["uuid"] and sm8_sim.records["jobactivity"][mine[0]["uuid"]]["start_date"]
            == _stamp(3, 10))  # fmt: skip
    office = next(a for a in sm8_sim.records["jobactivity"].values() if a["staff_uuid"] == ava)
    assert office["start_date"] == _stamp(3, 14)
    sm8_sim.reset_counts()
    _cycle(engine)
    assert sm8_sim.write_count() == 0

    # Finished in Coredination: a fixed booking has no completion, and is in step as it is.
    cd_sim.user_action(cd_job, str(cat_id), "FINISHED")
    _cycle(engine)
    _cycle(engine)
    assert sm8_sim.write_count() == 0 and _resources(cd_sim, cd_job)[cat_id] == "FINISHED"
    assert sm8_sim.records["jobactivity"][mine[0]["uuid"]]["active"] == 1
    cd_sim.user_action(cd_job, str(cat_id), "SCHEDULED")
    _cycle(engine)

    # Unscheduled in Coredination: the booking goes.
    cd_sim.resource_op(cd_job, "unschedule", str(cat_id))
    _cycle(engine)
    assert sm8_sim.records["jobactivity"][mine[0]["uuid"]]["active"] == 0


def test_scheduled_on_an_untimed_job_becomes_one_flexible_booking(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, _), _, (cat, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ava})  # no date: untimed
    _cycle(engine)
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    _cycle(engine)
    assert not [a for a in sm8_sim.records["jobactivity"].values() if a["staff_uuid"] == cat]
    flexible = [a for a in sm8_sim.records["joballocation"].values() if a["staff_uuid"] == cat]
    assert len(flexible) == 1 and flexible[0]["allocation_date"] != EMPTY
    sm8_sim.reset_counts()
    _cycle(engine)
    assert sm8_sim.write_count() == 0


def test_fixed_only_accounts_get_fixed_bookings_even_on_untimed_jobs(engine, sm8_sim, cd_sim):
    engine.ctx.options.pull_booking = "fixed"
    job, cd_job, [(ava, _), (_, ben_id), (cat, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ava})
    _cycle(engine)
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    cd_sim.resource_op(cd_job, "assign", str(ben_id))
    _cycle(engine)
    assert [a["staff_uuid"] for a in sm8_sim.records["jobactivity"].values()] == [cat]
    assert {a["staff_uuid"] for a in sm8_sim.records["joballocation"].values()} == {ava}
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0


def test_opening_a_booking_is_no_change_and_wins_no_conflict(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, ava_id), *_] = _one_job(sm8_sim, cd_sim, engine)
    fixed = _fixed(sm8_sim, job, ava, 3, 9, 11)
    undated = sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ava})
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}

    sm8_sim.open_booking("jobactivity", fixed)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0
    assert sm8_sim.records["jobactivity"][fixed]["has_been_opened"] == "1"

    # The office takes the fixed booking away (Ava is then only assigned), the dispatcher then
    # unschedules Ava, and after that Ava opens her remaining booking on the phone. The
    # dispatcher's change is the later real change: Ava is off the job in both systems.
    sm8_sim.clock_offset += 10
    sm8_sim.delete("jobactivity", fixed)
    cd_sim.clock_offset += 20
    cd_sim.resource_op(cd_job, "unschedule", str(ava_id))
    sm8_sim.clock_offset += 20
    sm8_sim.open_booking("joballocation", undated)
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {}
    assert sm8_sim.records["joballocation"][undated]["active"] == 0


def test_a_deleted_job_books_nobody_and_a_restored_one_books_them_again(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, ava_id), (ben, ben_id), (cat, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 9, 11)
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": ben,
                                     "allocation_date": _stamp(3, 0)})  # fmt: skip
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED", ben_id: "SCHEDULED"}

    sm8_sim.delete("job", job)
    sm8_sim.reset_counts()
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {}
    assert _cd_job(cd_sim, cd_job)["state"] == "CANCELED"
    assert sm8_sim.write_count() == 0  # the office's bookings stay as they are

    # A late booking on the deleted job, and a dispatcher scheduling on it: nobody is booked.
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": cat})
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    _cycle(engine)
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {}
    assert sm8_sim.write_count() == 0

    sm8_sim.update("job", job, {"active": 1})
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {
        ava_id: "SCHEDULED",
        ben_id: "SCHEDULED",
        cat_id: "ASSIGNED",
    }
    assert _cd_job(cd_sim, cd_job)["state"] != "CANCELED"


def test_a_refused_cancel_leaves_the_job_without_people_and_says_why(
    engine, sm8_sim, cd_sim, monkeypatch
):
    job, cd_job, [(ava, ava_id), *_] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 9, 11)
    _cycle(engine)
    upsert = engine.ctx.cd.upsert_job

    def refuse_states(uuid, body):
        if "state" in body:
            raise Rejected("state override not allowed", api="coredination", status=406)
        return upsert(uuid, body)

    monkeypatch.setattr(engine.ctx.cd, "upsert_job", refuse_states)
    sm8_sim.delete("job", job)
    report = _cycle(engine)
    assert _resources(cd_sim, cd_job) == {}
    assert report.counts["skipped.state_refused"] == 1
    pending = engine.ctx.stores.parked.pending()
    assert "refused the state CANCELED (HTTP 406)" in pending[f"{job}|job-state"]["reason"]
    cd_sim.reset_counts()
    _cycle(engine)
    assert cd_sim.write_count() == 0  # not retried on every cycle

    sm8_sim.update("job", job, {"active": 1})
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "SCHEDULED"}
    assert f"{job}|job-state" not in engine.ctx.stores.parked.pending()


def test_a_job_activity_webhook_reads_that_record_alone(engine, sm8_sim, cd_sim):
    job, _, [(ava, _), (ben, _), _] = _one_job(sm8_sim, cd_sim, engine)
    booking = _fixed(sm8_sim, job, ava, 3, 9, 11)
    worked = _fixed(sm8_sim, job, ben, 3, 9, 11, activity_was_scheduled=0, activity_was_recorded=1)
    sm8_sim.reset_counts()
    assert engine.push_activity(booking) == {job}
    assert engine.push_activity(worked) == set()  # time worked: nothing to sync
    assert engine.push_activity("3f0b9c1e-5a7d-4c2b-9e8f-1a2b3c4d5e6f") == set()  # gone: logged
    assert sm8_sim.read_count() == 3 and sm8_sim.count("GET", "jobactivity.get") == 3


def test_the_office_moving_a_booking_the_bridge_made_is_kept_and_moves_the_job(
    engine, sm8_sim, cd_sim
):
    job, cd_job, [(ava, _), _, (_, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 14, 16)
    _cycle(engine)
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    _cycle(engine)
    made = sm8_activity_uuid(engine.ctx.ns, cd_job, cat_id)
    assert sm8_sim.records["jobactivity"][made]["start_date"] == _stamp(3, 14)
    # The office drags Cat's booking to the morning: it is the office's now.
    sm8_sim.update("jobactivity", made, {"start_date": _stamp(3, 8), "end_date": _stamp(3, 9)})
    _cycle(engine)
    _cycle(engine)
    assert sm8_sim.records["jobactivity"][made]["start_date"] == _stamp(3, 8)  # not reverted
    cd = _cd_job(cd_sim, cd_job)
    assert (cd["startTime"], cd["endTime"]) == (_ms(3, 8), _ms(3, 9))  # the earliest booking


def test_an_assignment_then_scheduled_on_a_timed_job_becomes_a_fixed_booking(
    engine, sm8_sim, cd_sim
):
    job, cd_job, [(ava, _), _, (cat, cat_id)] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 14, 16)
    _cycle(engine)
    cd_sim.resource_op(cd_job, "assign", str(cat_id))
    _cycle(engine)
    flexible = [a for a in sm8_sim.records["joballocation"].values() if a["staff_uuid"] == cat]
    assert len(flexible) == 1 and flexible[0]["allocation_date"] == EMPTY
    cd_sim.resource_op(cd_job, "schedule", str(cat_id))
    _cycle(engine)
    assert sm8_sim.records["joballocation"][flexible[0]["uuid"]]["active"] == 0
    fixed = sm8_sim.records["jobactivity"][sm8_activity_uuid(engine.ctx.ns, cd_job, cat_id)]
    assert (fixed["start_date"], fixed["end_date"], fixed["active"]) == (
        _stamp(3, 14),
        _stamp(3, 16),
        1,
    )
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0


def test_work_finished_before_the_job_was_deleted_stays(engine, sm8_sim, cd_sim):
    job, cd_job, [(ava, ava_id), (ben, ben_id), _] = _one_job(sm8_sim, cd_sim, engine)
    _fixed(sm8_sim, job, ava, 3, 9, 11)
    _fixed(sm8_sim, job, ben, 3, 9, 11)
    _cycle(engine)
    cd_sim.user_action(cd_job, str(ava_id), "FINISHED")
    _cycle(engine)
    sm8_sim.delete("job", job)
    _cycle(engine)
    assert _resources(cd_sim, cd_job) == {ava_id: "FINISHED"}
    assert ben_id not in _resources(cd_sim, cd_job)
