"""Scope (``mappings.scope``, docs/scope.md), pure: the horizon as the start of a local day across
daylight-saving changes, the booking rule at its boundaries, the job filters, and what the
planner does with history (never links a job, never puts anyone on one, never deletes it)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from uuid import UUID
from zoneinfo import ZoneInfo

import pytest

from mappings.facts import AllocationFacts, JobFacts
from mappings.jobfields import job_time
from mappings.plan import needs_link, plan_job_fields, plan_pairs
from mappings.presence import Presence, current_presence
from mappings.scope import CATEGORY, EXCLUDED, HISTORY, STATUS, Horizon, Scope, job_open, names
from mappings.stamps import day_start_ms, to_epoch_ms
from mappings.state import CdView, JobRecord, PairSnapshot

SYDNEY = ZoneInfo("Australia/Sydney")
STOCKHOLM = ZoneInfo("Europe/Stockholm")
SANTIAGO = ZoneInfo("America/Santiago")
JOB = "4f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6"
BEN = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
AVA = "1a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6e"
NS = UUID("6f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6")


def ms(*parts: int, tz: ZoneInfo = SYDNEY, fold: int = 0) -> int:
    value = to_epoch_ms(datetime(*parts, tzinfo=tz).replace(fold=fold))  # type: ignore[misc]
    assert value is not None
    return value


def utc(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


# --- the horizon: the start of a local day, as a UTC instant --------------------------------------
@pytest.mark.parametrize(
    ("tz", "now", "days", "start"),
    [
        # Sydney: clocks go forward 02:00 → 03:00 on Sunday 2026-10-04 (AEST +10 → AEDT +11)
        (SYDNEY, (2026, 10, 5, 9, 0), 1, datetime(2026, 10, 3, 14, 0, tzinfo=UTC)),  # +10
        (SYDNEY, (2026, 10, 5, 9, 0), 0, datetime(2026, 10, 4, 13, 0, tzinfo=UTC)),  # +11
        (SYDNEY, (2026, 10, 4, 1, 30), 0, datetime(2026, 10, 3, 14, 0, tzinfo=UTC)),
        (SYDNEY, (2026, 10, 4, 3, 30), 0, datetime(2026, 10, 3, 14, 0, tzinfo=UTC)),  # 23 h day
        # Sydney: clocks go back 03:00 → 02:00 on Sunday 2026-04-05 (AEDT +11 → AEST +10)
        (SYDNEY, (2026, 4, 6, 0, 30), 1, datetime(2026, 4, 4, 13, 0, tzinfo=UTC)),  # +11
        (SYDNEY, (2026, 4, 6, 0, 30), 0, datetime(2026, 4, 5, 14, 0, tzinfo=UTC)),  # +10
        # Stockholm: forward 02:00 → 03:00 on 2026-03-29, back 03:00 → 02:00 on 2026-10-25
        (STOCKHOLM, (2026, 3, 30, 8, 0), 1, datetime(2026, 3, 28, 23, 0, tzinfo=UTC)),  # CET
        (STOCKHOLM, (2026, 3, 30, 8, 0), 0, datetime(2026, 3, 29, 22, 0, tzinfo=UTC)),  # CEST
        (STOCKHOLM, (2026, 10, 26, 0, 10), 1, datetime(2026, 10, 24, 22, 0, tzinfo=UTC)),
        (STOCKHOLM, (2026, 10, 26, 0, 10), 0, datetime(2026, 10, 25, 23, 0, tzinfo=UTC)),
        (STOCKHOLM, (2026, 10, 25, 23, 59), 0, datetime(2026, 10, 24, 22, 0, tzinfo=UTC)),
        # a week back across both of Sydney's changes is still seven calendar days
        (SYDNEY, (2026, 10, 8, 12, 0), 7, datetime(2026, 9, 30, 14, 0, tzinfo=UTC)),
    ],
)
def test_the_horizon_is_local_midnight_in_calendar_days(tz, now, days, start):
    assert utc(day_start_ms(ms(*now, tz=tz), tz, days)) == start


def test_yesterday_is_23_or_25_hours_before_today_across_a_change():
    monday = ms(2026, 10, 5, 9, tz=SYDNEY)  # the day after the clocks went forward
    assert day_start_ms(monday, SYDNEY, 0) - day_start_ms(monday, SYDNEY, 1) == 23 * 3600_000
    tuesday = ms(2026, 10, 6, 9, tz=SYDNEY)
    assert day_start_ms(tuesday, SYDNEY, 0) - day_start_ms(tuesday, SYDNEY, 1) == 24 * 3600_000
    back = ms(2026, 10, 26, 12, tz=STOCKHOLM)
    assert day_start_ms(back, STOCKHOLM, 0) - day_start_ms(back, STOCKHOLM, 1) == 25 * 3600_000


def test_in_the_repeated_hour_the_day_is_the_one_the_instant_falls_on():
    second = ms(2026, 4, 5, 2, 30, tz=SYDNEY, fold=1)  # the second 02:30 (AEST)
    first = ms(2026, 4, 5, 2, 30, tz=SYDNEY, fold=0)  # the first (AEDT), an hour earlier
    assert second - first == 3600_000
    assert day_start_ms(first, SYDNEY) == day_start_ms(second, SYDNEY)
    assert utc(day_start_ms(second, SYDNEY)) == datetime(2026, 4, 4, 13, 0, tzinfo=UTC)


def test_a_midnight_the_clocks_jump_over_starts_the_day_at_the_jump():
    """Santiago's clocks go from 00:00 to 01:00 on 2026-09-06: that day has no midnight, and
    begins at 04:00 UTC (00:00 at -4, which is 01:00 at -3)."""
    later = ms(2026, 9, 7, 10, tz=SANTIAGO)
    start = day_start_ms(later, SANTIAGO, 1)
    assert utc(start) == datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(start / 1000, SANTIAGO).hour == 1  # the day's first hour
    assert utc(day_start_ms(later, SANTIAGO, 0)) == datetime(2026, 9, 7, 3, 0, tzinfo=UTC)


def test_scope_at_takes_the_clock_and_the_zone_as_values():
    now = ms(2026, 12, 7, 15, tz=STOCKHOLM)
    assert Scope().at(now, STOCKHOLM).start_ms == ms(2026, 12, 6, tz=STOCKHOLM)
    assert Scope(horizon_days=0).at(now, STOCKHOLM).start_ms == ms(2026, 12, 7, tz=STOCKHOLM)
    assert Scope().at(now, SYDNEY).start_ms == ms(2026, 12, 7, tz=SYDNEY)  # already the 8th


# --- one booking ----------------------------------------------------------------------------------
HORIZON = Horizon(ms(2026, 12, 6))  # the start of yesterday, seen on 2026-12-07 in Sydney
NOW = ms(2026, 12, 7, 10)


def booking(uuid: str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", *, staff: str = BEN,
            date: int | None = None, end: int | None = None, fixed: bool = False,
            completed: int | None = None, active: bool = True,
            by_bridge: bool = False) -> AllocationFacts:  # fmt: skip
    return AllocationFacts(uuid, JOB, staff, active, date, None, completed, None, NOW - 86_400_000,
                           by_bridge=by_bridge, fixed=fixed, end_ms=end)  # fmt: skip


@pytest.mark.parametrize(
    ("facts", "job_is_open", "admitted"),
    [
        # a fixed booking: its end after the horizon
        (booking(fixed=True, date=HORIZON.start_ms - 3600_000, end=HORIZON.start_ms), True, False),
        (booking(fixed=True, date=HORIZON.start_ms - 3600_000, end=HORIZON.start_ms + 1), True,
         True),
        (booking(fixed=True, date=ms(2025, 3, 1, 9), end=ms(2025, 3, 1, 11)), True, False),
        (booking(fixed=True, date=ms(2026, 12, 9, 9), end=ms(2026, 12, 9, 11)), False, True),
        (booking(fixed=True, date=HORIZON.start_ms + 1), True, True),  # no end: its start
        # a flexible booking with a date: on or after the horizon, completed or not
        (booking(date=HORIZON.start_ms), True, True),
        (booking(date=HORIZON.start_ms - 1), True, False),
        (booking(date=ms(2026, 12, 5)), True, False),
        (booking(date=ms(2026, 12, 6), completed=ms(2026, 12, 6, 17)), True, True),
        (booking(date=ms(2027, 1, 4)), False, True),
        # a flexible booking without a date: not completed, on an open job
        (booking(), True, True),
        (booking(), False, False),
        (booking(completed=ms(2024, 5, 1)), True, False),
    ],
)  # fmt: skip
def test_a_booking_is_in_scope_when_current_or_upcoming(facts, job_is_open, admitted):
    assert HORIZON.admits(facts, job_is_open) is admitted


def test_current_bookings_are_live_and_of_staff_not_left_out():
    job = JobFacts(JOB, True, "7", None, None, None, None, status="Work Order")
    left_out = Horizon(HORIZON.start_ms, Scope(staff_left_out=names([BEN.upper()])))
    upcoming = booking(date=ms(2026, 12, 8))
    assert HORIZON.current([upcoming], NOW, job) == [upcoming]
    assert HORIZON.current([replace(upcoming, active=False)], NOW, job) == []
    assert left_out.current([upcoming], NOW, job) == []
    assert left_out.current([replace(upcoming, staff_uuid=AVA)], NOW, job) != []


@pytest.mark.parametrize(
    ("job", "is_open"),
    [
        (None, True),  # not read yet
        (JobFacts(JOB, True, None, None, None, None, None, status="Quote"), True),
        (JobFacts(JOB, True, None, None, None, None, None, status="work order"), True),
        (JobFacts(JOB, True, None, None, None, None, None, status="Completed"), False),
        (JobFacts(JOB, True, None, None, None, None, None, status="Unsuccessful"), False),
        (JobFacts(JOB, False, None, None, None, None, None, status="Quote"), False),
        (JobFacts(JOB, True, None, None, None, None, None), True),  # kept before statuses were
    ],
)
def test_a_job_is_open_unless_completed_unsuccessful_or_deleted(job, is_open):
    assert job_open(job) is is_open


# --- one job --------------------------------------------------------------------------------------
CATEGORY_UUID = "5c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"


@pytest.mark.parametrize(
    ("scope", "status", "category", "excluded", "reason"),
    [
        (Scope(), "Work Order", None, False, None),
        (Scope(), "Quote", None, False, None),
        (Scope(), "Completed", None, False, STATUS),
        (Scope(), "Unsuccessful", None, False, STATUS),
        (Scope(), None, None, False, None),  # a status not known yet passes
        (Scope(statuses=frozenset()), "Completed", None, False, None),  # every status
        (Scope(statuses=names(["Completed"])), "Work Order", None, False, STATUS),
        (Scope(categories=names([CATEGORY_UUID])), "Quote", None, False, CATEGORY),
        (Scope(categories=names([CATEGORY_UUID])), "Quote", CATEGORY_UUID.upper(), False, None),
        (Scope(), "Work Order", None, True, EXCLUDED),
    ],
)
def test_a_job_is_left_out_by_hand_by_status_or_by_category(
    scope, status, category, excluded, reason
):
    job = JobFacts(JOB, True, None, None, None, None, None, status=status,
                   category_uuid=category)  # fmt: skip
    assert Horizon(HORIZON.start_ms, scope).left_out(job, excluded=excluded) == reason


def test_a_job_whose_bookings_are_all_history_is_not_in_scope():
    job = JobFacts(JOB, True, "7", None, None, None, None, status="Work Order")
    old = [booking(date=ms(2025, 2, 3), completed=ms(2025, 2, 3, 16)),
           booking("bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee", fixed=True, date=ms(2025, 2, 3, 9),
                   end=ms(2025, 2, 3, 11))]  # fmt: skip
    assert HORIZON.job_reason(job, old, NOW) == HISTORY
    today = booking("cccccccc-bbbb-4ccc-8ddd-eeeeeeeeeeee", date=ms(2026, 12, 7))
    assert HORIZON.job_reason(job, [*old, today], NOW) is None


# --- presence under a horizon ---------------------------------------------------------------------
def test_a_pair_with_history_only_is_silent_and_a_booking_in_scope_deleted_absent():
    job = JobFacts(JOB, True, "7", None, None, None, None, status="Work Order")
    past = booking(fixed=True, date=ms(2025, 2, 3, 9), end=ms(2025, 2, 3, 11))
    assert current_presence([past], NOW, HORIZON, job) is None
    assert current_presence([replace(past, active=False)], NOW, HORIZON, job) is None
    assert current_presence([], NOW, HORIZON, job) == Presence.ABSENT  # none at all
    tomorrow = booking(fixed=True, date=ms(2026, 12, 8, 9), end=ms(2026, 12, 8, 11))
    gone = replace(tomorrow, active=False)  # a deletion in scope is a change: nobody booked
    assert current_presence([past, gone], NOW, HORIZON, job) == Presence.ABSENT
    assert current_presence([gone], NOW, HORIZON, job) == Presence.ABSENT
    undated = booking("bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    assert current_presence([past, undated], NOW, HORIZON, job) == Presence.ASSIGNED


def test_a_booking_leaving_scope_alone_changes_no_presence():
    """A past dated visit next to an undated booking still open: over every live booking the
    person is SCHEDULED, over those in scope ASSIGNED. With SCHEDULED agreed in the snapshot,
    only history moved, and the presence stays (no 'assign' that unschedules them)."""
    job = JobFacts(JOB, True, "7", None, None, None, None, status="Work Order")
    visit = booking(date=ms(2026, 12, 1))
    undated = booking("bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    both = [visit, undated]
    assert current_presence(both, NOW, HORIZON, job, kept=Presence.SCHEDULED) == (
        Presence.SCHEDULED
    )
    assert current_presence(both, NOW, HORIZON, job, kept=Presence.ASSIGNED) == Presence.ASSIGNED
    assert current_presence(both, NOW, HORIZON, job) == Presence.ASSIGNED


# --- the planner ------------------------------------------------------------------------------
DETAILS = JobFacts(JOB, True, "1042", "Fix tap", "1 George St", None, None, status="Work Order")
OLD = booking("aaaaaaaa-0000-4ccc-8ddd-eeeeeeeeeeee", staff=AVA, fixed=True,
              date=ms(2025, 2, 3, 9), end=ms(2025, 2, 3, 11))  # fmt: skip
TODAY = booking("bbbbbbbb-0000-4ccc-8ddd-eeeeeeeeeeee", staff=BEN, fixed=True,
                date=ms(2026, 12, 7, 13), end=ms(2026, 12, 7, 15))  # fmt: skip


def record(*facts: AllocationFacts, cd: CdView | None = None,
           pairs: dict[str, PairSnapshot] | None = None) -> JobRecord:  # fmt: skip
    return JobRecord(JOB, DETAILS, {a.uuid: a for a in facts}, cd=cd, pairs=pairs or {})


def plan(rec: JobRecord, horizon: Horizon = HORIZON):
    return plan_pairs(rec, {BEN: 5, AVA: 6}, {5: BEN, 6: AVA}, ns=NS, tz=SYDNEY, now_ms=NOW,
                      tie="servicem8", horizon=horizon)  # fmt: skip


def test_history_never_links_a_job_and_a_booking_made_today_does():
    assert not needs_link(record(OLD), HORIZON, NOW)
    assert needs_link(record(OLD), Horizon.everything(), NOW)  # as before scope
    assert needs_link(record(OLD, TODAY), HORIZON, NOW)
    assert not needs_link(
        record(replace(TODAY, staff_uuid=BEN)),
        Horizon(HORIZON.start_ms, Scope(staff_left_out=names([BEN]))),
        NOW,
    )


def test_the_jobs_time_does_not_move_as_days_pass():
    """The job is timed by its live bookings, history included, so the same record plans the
    same fields whatever the day (timing it by the bookings in scope moved it with the clock, and
    a repeated sync wrote again)."""
    upsert = plan_job_fields(record(OLD, TODAY), NS, SYDNEY, NOW, HORIZON)
    assert upsert is not None
    assert OLD.date_ms is not None
    old_start = datetime.fromtimestamp(OLD.date_ms / 1000, SYDNEY)
    assert job_time([OLD, TODAY], SYDNEY, NOW).start == old_start
    later = plan_job_fields(record(OLD, TODAY), NS, SYDNEY, NOW + 30 * 86_400_000, HORIZON)
    assert later is not None and later.body["startTime"] == upsert.body["startTime"]


def test_history_puts_nobody_on_a_linked_job():
    """Ben's booking today brings the job in; Ava's from last year puts nobody on it."""
    rec = record(OLD, TODAY, cd=CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"))
    pairs = {p.staff: p for p in plan(rec).pairs}
    assert [w.op for w in pairs[BEN].writes] == ["schedule"]  # type: ignore[union-attr]
    assert pairs[AVA].writes == [] and pairs[AVA].snapshot is None
    assert pairs[AVA].skipped == "skipped.out_of_scope.history"


def test_a_job_leaving_scope_unschedules_and_deletes_nothing():
    """Yesterday's booking synced; now it is history (the clock moved on two days): Ben stays
    scheduled in Coredination, and Ava, whom a dispatcher put on, keeps her booking."""
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "SCHEDULED", 6: "SCHEDULED"})
    agreed = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    hers = booking("cccccccc-0000-4ccc-8ddd-eeeeeeeeeeee", staff=AVA, by_bridge=True,
                   date=ms(2026, 12, 7))  # fmt: skip
    rec = record(TODAY, hers, cd=view, pairs={BEN: agreed, AVA: agreed})
    later = Horizon(ms(2026, 12, 9))
    for pair in plan(rec, later).pairs:
        assert pair.writes == [] and pair.direction == "none", pair


def test_coredination_still_flows_back_on_a_linked_job_out_of_scope():
    """Every booking is history; a dispatcher schedules Cy (no booking) and takes Ben off:
    Cy gets a booking, and Ben's old booking stays."""
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {6: "SCHEDULED"},
                  {6: NOW - 60_000, 5: NOW - 60_000}, start_ms=ms(2026, 12, 12, 9),
                  end_ms=ms(2026, 12, 12, 11))  # fmt: skip
    old_ben = replace(TODAY, date_ms=ms(2026, 11, 2, 9), end_ms=ms(2026, 11, 2, 11))
    agreed = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    rec = record(old_ben, cd=view, pairs={BEN: agreed})
    pairs = {p.staff: p for p in plan(rec).pairs}
    assert pairs[BEN].direction == "pull" and pairs[BEN].writes == []
    assert pairs[BEN].snapshot == PairSnapshot(Presence.ABSENT, Presence.ABSENT)
    (created,) = pairs[AVA].writes
    assert created.kind == "create" and created.fixed  # type: ignore[union-attr]
    assert pairs[AVA].snapshot == PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)


def test_a_worker_finishing_after_the_visit_left_scope_completes_it():
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "FINISHED"}, {5: NOW - 60_000})
    visit = booking("dddddddd-0000-4ccc-8ddd-eeeeeeeeeeee", date=ms(2026, 12, 2))
    agreed = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    (done,) = plan(record(visit, cd=view, pairs={BEN: agreed})).pairs
    assert [(w.kind, w.uuid, list(w.fields)) for w in done.writes] == [  # type: ignore[union-attr]
        ("update", visit.uuid, ["completion_timestamp"])
    ]


def test_the_bridges_own_old_booking_is_revived_not_created_twice():
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "ASSIGNED"}, {5: NOW - 60_000})
    from mappings.ids import sm8_allocation_uuid

    ours = booking(sm8_allocation_uuid(NS, view.uuid, 5), completed=ms(2025, 6, 1),
                   by_bridge=True)  # fmt: skip
    (pair,) = plan(record(ours, cd=view)).pairs
    assert [(w.kind, w.uuid) for w in pair.writes] == [("update", ours.uuid)]  # type: ignore[union-attr]


def test_staff_left_out_are_left_alone_both_ways():
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "SCHEDULED"}, {5: NOW - 60_000})
    out = Horizon(HORIZON.start_ms, Scope(staff_left_out=names([BEN])))
    (pair,) = plan(record(cd=view), out).pairs
    assert pair.writes == [] and pair.skipped == "skipped.out_of_scope.staff"
    upcoming = booking(date=NOW + 86_400_000)
    (pair,) = plan(record(upcoming, cd=CdView(7, view.uuid)), out).pairs
    assert pair.writes == []


def test_with_no_horizon_everything_is_as_before():
    assert Horizon.everything().admits(OLD, False)
    assert Horizon.everything().left_out(replace(DETAILS, status="Completed")) is None


def test_a_deletion_in_scope_keeps_its_change_time_for_the_conflict_rule():
    """Both sides changed since they agreed: the office deleted the booking (later), a
    dispatcher moved the person to assigned (earlier). The deletion is a booking no longer
    live, yet its time still counts: the later change wins, and the person comes off."""
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "ASSIGNED"}, {5: NOW - 600_000})
    gone = replace(TODAY, active=False, edited_ms=NOW - 60_000)
    agreed = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    (pair,) = plan(record(gone, cd=view, pairs={BEN: agreed})).pairs
    assert pair.direction == "push" and pair.target == Presence.ABSENT
    assert [w.op for w in pair.writes] == ["unassign"]  # type: ignore[union-attr]


def test_a_person_whose_bookings_moved_to_someone_else_comes_off():
    """Found by the chaos run: the office gives Ben's booking to Ava. Ben has no booking on the
    job any more (not history: none at all), so he comes off, as before scope."""
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {5: "SCHEDULED"}, {5: NOW - 600_000})
    moved = replace(TODAY, staff_uuid=AVA)
    agreed = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
    pairs = {p.staff: p for p in plan(record(moved, cd=view, pairs={BEN: agreed})).pairs}
    assert [w.op for w in pairs[BEN].writes] == ["unschedule"]  # type: ignore[union-attr]
    assert [w.op for w in pairs[AVA].writes] == ["schedule"]  # type: ignore[union-attr]
