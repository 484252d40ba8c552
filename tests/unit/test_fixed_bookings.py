"""The rules for fixed bookings (job activities), pure: what they mean for a pair and for the
job's time. (Reading them in polls and writing them back from Coredination come next.)"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID
from zoneinfo import ZoneInfo

from bridge.servicem8.models import JobActivity, JobAllocation
from bridge.servicem8.translate import activity_facts, allocation_facts
from mappings.decision import Side, decide
from mappings.jobfields import job_time
from mappings.planners import Slot, pull_writes
from mappings.presence import Presence, finish_in_step, pair_in_step, sm8_presence
from mappings.stamps import to_epoch_ms
from mappings.state import PairSnapshot

SYD = ZoneInfo("Australia/Sydney")
NOW = int(datetime(2026, 11, 23, 9, tzinfo=SYD).timestamp() * 1000)
JOB = "4f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6"
BEN = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
AVA = "1a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6e"


def fixed(start: str, end: str, **wire: object):
    row = {"uuid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "job_uuid": JOB, "staff_uuid": BEN,
           "active": "1", "activity_was_scheduled": "1", "start_date": start, "end_date": end,
           "edit_date": "2026-11-20 10:00:00", **wire}  # fmt: skip
    return activity_facts(JobActivity.from_wire(row, SYD))


def test_a_fixed_booking_schedules_the_person_and_times_the_job_exactly():
    booking = fixed("2026-12-01 09:00:00", "2026-12-01 11:00:00")
    assert booking.fixed and booking.live(NOW)
    assert sm8_presence([booking], NOW) == Presence.SCHEDULED
    when = job_time([booking], SYD, NOW)
    assert (when.start, when.end, when.all_day) == (
        datetime(2026, 12, 1, 9, tzinfo=SYD),
        datetime(2026, 12, 1, 11, tzinfo=SYD),
        False,
    )
    moved = fixed("2026-12-01 13:00:00", "2026-12-01 15:00:00")
    assert job_time([moved], SYD, NOW).start == datetime(2026, 12, 1, 13, tzinfo=SYD)


def test_the_earliest_booking_of_either_kind_sets_the_time():
    ben = fixed("2026-12-02 09:00:00", "2026-12-02 11:00:00")
    ava = allocation_facts(JobAllocation.from_wire(
        {"uuid": "bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee", "job_uuid": JOB, "staff_uuid": AVA,
         "active": 1, "allocation_date": "2026-12-01 00:00:00"}, SYD), None)  # fmt: skip
    ava = ava.__class__(**{**ava.__dict__, "window": (480, 720)})
    assert job_time([ben, ava], SYD, NOW).start == datetime(2026, 12, 1, 8, tzinfo=SYD)


def test_time_worked_and_automated_activities_are_no_bookings():
    worked = fixed("2026-11-20 08:00:00", "2026-11-20 09:30:00", activity_was_scheduled="0",
                   activity_was_recorded="1")  # fmt: skip
    automated = fixed("2026-12-01 09:00:00", "2026-12-01 10:00:00", activity_was_automated="1")
    for activity in (worked, automated):
        assert not activity.live(NOW)
        assert sm8_presence([activity], NOW) == Presence.ABSENT
        assert job_time([activity], SYD, NOW).start is None


def test_a_fixed_booking_whose_end_has_passed_stays_a_booking():
    past = fixed("2026-11-01 09:00:00", "2026-11-01 11:00:00")
    assert sm8_presence([past], NOW) == Presence.SCHEDULED


def test_a_person_finished_in_coredination_is_in_step_with_a_fixed_booking():
    booking = fixed("2026-12-01 09:00:00", "2026-12-01 11:00:00")
    assert finish_in_step([booking], NOW) and pair_in_step([booking], Presence.FINISHED, NOW)
    sm8 = Side(sm8_presence([booking], NOW), finishable=finish_in_step([booking], NOW))
    snapshot = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    assert decide(snapshot, sm8, Side(Presence.FINISHED)).action == "in_step"
    # Finishing completes flexible bookings only: a fixed one has no completion.
    end = datetime(2026, 12, 1, 11, tzinfo=SYD)
    assert pull_writes(Presence.FINISHED, [booking], job_uuid=JOB, staff_uuid=BEN,
                       derived=(booking.uuid, booking.uuid),
                       slot=Slot(day=end - timedelta(hours=2)),
                       finished_at=end, now_ms=NOW) == []  # fmt: skip
    assert to_epoch_ms(end) == booking.end_ms


def test_a_pull_to_assigned_never_moves_a_booking_it_deletes():
    """Found in review: the dispatcher moved a timed job and then only assigned the person; the
    plan deleted our fixed booking and then updated it to the job's new time."""
    from mappings.plan import plan_pair
    from mappings.scope import Horizon
    from mappings.state import CdView, JobRecord

    ns = UUID("6f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6")
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "ASSIGNED"}, {5: NOW},
                  start_ms=to_epoch_ms(datetime(2026, 12, 1, 11, tzinfo=SYD)),
                  end_ms=to_epoch_ms(datetime(2026, 12, 1, 12, tzinfo=SYD)))  # fmt: skip
    ours = replace(fixed("2026-12-01 09:00:00", "2026-12-01 10:00:00"), by_bridge=True)
    in_step = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    record = JobRecord(JOB, cd=view, allocations={ours.uuid: ours}, pairs={BEN: in_step})
    plan = plan_pair(record, BEN, [ours], 5, ns=ns, tz=SYD, now_ms=NOW, tie="servicem8",
                     horizon=Horizon.everything())  # fmt: skip
    touched = [(w.kind, w.uuid) for w in plan.writes if w.uuid == ours.uuid]
    assert touched == [("delete", ours.uuid)]
    assert plan.snapshot == PairSnapshot(Presence.ASSIGNED, Presence.ASSIGNED)


def test_times_from_coredination_are_written_as_servicem8_reads_them_back():
    """In the hour repeated when daylight saving ends, and on an all-day job west of UTC."""
    from zoneinfo import ZoneInfo

    from mappings.plan import _day, _wall
    from mappings.stamps import format_sm8_stamp, parse_sm8_stamp
    from mappings.state import CdView

    second = datetime(2026, 4, 5, 2, 30, tzinfo=SYD).replace(fold=1)  # AEST, after the change
    wall = _wall(to_epoch_ms(second), SYD)
    assert to_epoch_ms(parse_sm8_stamp(format_sm8_stamp(wall, SYD), SYD)) == to_epoch_ms(wall)
    new_york = ZoneInfo("America/New_York")
    all_day = CdView(1, "x", start_ms=to_epoch_ms(datetime(2026, 3, 10, tzinfo=UTC)), all_day=True)
    assert _day(all_day, NOW, new_york) == datetime(2026, 3, 10, tzinfo=new_york)
