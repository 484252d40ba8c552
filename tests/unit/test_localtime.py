"""Local time (``mappings.localtime``, docs/servicem8-api.md#local-time): stamps and instants in
four zones with daylight saving, both directions of each change. Every instant outside a
repeated hour round-trips through its stamp; a repeated wall time reads as its first occurrence,
a missing one as shifted forward by the gap; the cursor's reach-back never leaves out a stamp
written after the cursor; days are 23 or 25 hours long across a change."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mappings import localtime
from mappings.pollplan import PollBudget, _busy_seconds, plan_polls
from mappings.stamps import day_start_ms, format_sm8_stamp, parse_sm8_stamp

ZONES = ("Australia/Sydney", "Pacific/Auckland", "Europe/London", "America/New_York")
YEAR = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
CHANGES = [
    (ZoneInfo(zone), change)
    for zone in ZONES
    for change in localtime.transitions(ZoneInfo(zone), *YEAR)
]
HOUR = timedelta(hours=1)
OVERLAP = timedelta(minutes=15)

changes = st.sampled_from(CHANGES)
near = st.integers(min_value=-3 * 3600, max_value=3 * 3600)  # seconds either side of a change


def _whole(at: datetime) -> datetime:
    return at.replace(microsecond=0)


def test_each_zone_changes_twice_a_year_by_an_hour_each_way():
    for zone in ZONES:
        found = localtime.transitions(ZoneInfo(zone), *YEAR)
        assert [t.backward for t in sorted(found, key=lambda t: t.size)] == [True, False]
        assert {t.size for t in found} == {-HOUR, HOUR}
        for change in found:
            first, last = change.span()
            assert last - first == HOUR
            assert (first, last) == tuple(sorted((change.wall_before, change.wall_after)))


def test_sydney_changes_are_where_the_calendar_puts_them():
    sydney = ZoneInfo("Australia/Sydney")
    back, forward = localtime.transitions(sydney, *YEAR)
    assert back.at == datetime(2027, 4, 3, 16, 0, tzinfo=UTC)  # 03:00 AEDT becomes 02:00 AEST
    assert (back.wall_before, back.wall_after) == (datetime(2027, 4, 4, 3), datetime(2027, 4, 4, 2))
    assert forward.at == datetime(2027, 10, 2, 16, 0, tzinfo=UTC)  # 02:00 AEST becomes 03:00 AEDT
    assert forward.span() == (datetime(2027, 10, 3, 2), datetime(2027, 10, 3, 3))


@given(changes, near)
def test_every_instant_outside_a_repeated_hour_round_trips_through_its_stamp(case, seconds):
    tz, change = case
    at = change.at + timedelta(seconds=seconds)
    stamp = format_sm8_stamp(at, tz)
    if localtime.is_repeated(localtime.wall(at, tz), tz):
        return
    assert localtime.instant(localtime.wall(at, tz), tz) == at
    read = parse_sm8_stamp(stamp, tz)
    assert read is not None and read.astimezone(UTC) == at
    assert format_sm8_stamp(read, tz) == stamp


@given(changes, st.integers(min_value=0, max_value=3599))
def test_a_repeated_wall_time_reads_as_its_first_occurrence(case, seconds):
    tz, change = case
    if not change.backward:
        return
    first_pass = change.at - HOUR + timedelta(seconds=seconds)
    second_pass = change.at + timedelta(seconds=seconds)
    wall = localtime.wall(second_pass, tz)
    assert wall == localtime.wall(first_pass, tz)
    assert localtime.occurrences(wall, tz) == (first_pass, second_pass)
    assert localtime.is_repeated(wall, tz) and not localtime.is_missing(wall, tz)
    read = parse_sm8_stamp(wall.strftime(localtime.STAMP_FORMAT), tz)
    assert read is not None and read.astimezone(UTC) == first_pass
    assert localtime.earliest(wall, tz) == first_pass
    # The second pass writes the same stamp: it reads back an hour early, and is written again
    # as the same stamp, so a comparison in stamps sees no change.
    assert format_sm8_stamp(second_pass, tz) == format_sm8_stamp(first_pass, tz)


@given(changes, st.integers(min_value=0, max_value=3599))
def test_a_missing_wall_time_reads_shifted_forward_by_the_gap(case, seconds):
    tz, change = case
    if change.backward:
        return
    wall = change.span()[0] + timedelta(seconds=seconds)
    assert localtime.is_missing(wall, tz) and localtime.occurrences(wall, tz) == ()
    at = localtime.instant(wall, tz)
    assert at == (wall - change.before).replace(tzinfo=UTC)  # the offset before the change
    assert at == change.at + timedelta(seconds=seconds)  # as far after the jump as into the gap
    assert localtime.wall(at, tz) == wall + change.size  # written back: the wall after the jump
    read = parse_sm8_stamp(wall.strftime(localtime.STAMP_FORMAT), tz)
    assert read is not None and read.astimezone(UTC) == at
    assert localtime.earliest(wall, tz) <= change.at


@given(
    changes,
    near,
    st.integers(min_value=0, max_value=8 * 3600),
    st.integers(min_value=1, max_value=8 * 3600),
    st.sampled_from([OVERLAP, timedelta(0)]),
)
def test_the_reach_back_never_leaves_out_a_stamp_written_after_the_cursor(
    case, seconds, ahead, later, overlap
):
    """The cursor is the stamp of an instant; the poll runs at ``now``; a record written at any
    whole second after the cursor's instant, up to ``now``, passes ``edit_date gt`` the filter's
    start, compared as ServiceM8 compares stamps (as text, that is by wall time)."""
    tz, change = case
    cursor_at = change.at + timedelta(seconds=seconds)
    now = cursor_at + timedelta(seconds=ahead)
    written = cursor_at + timedelta(seconds=min(later, max(ahead, 1)))
    cursor = localtime.wall(cursor_at, tz)
    start = localtime.reach_back(cursor, now, tz, overlap)
    if written <= now:
        stamp = format_sm8_stamp(written, tz)
        assert stamp > start.strftime(localtime.STAMP_FORMAT)
    assert start <= cursor - overlap  # never later than the plain overlap


@given(changes, near)
def test_the_reach_back_reaches_no_further_than_the_change_and_only_while_it_matters(case, sec):
    tz, change = case
    cursor_at = change.at + timedelta(seconds=sec)
    cursor = localtime.wall(cursor_at, tz)
    start = localtime.reach_back(cursor, change.at + 6 * HOUR, tz, OVERLAP)
    assert cursor - OVERLAP - HOUR - localtime.SECOND <= start <= cursor - OVERLAP
    if not change.backward or cursor_at >= change.at + HOUR:  # nothing repeated since the cursor
        assert start == cursor - OVERLAP
    # A change still ahead of now needs nothing yet: no stamp of its repeated hour exists.
    before_it = localtime.reach_back(cursor, min(cursor_at, change.at - localtime.SECOND), tz,
                                     OVERLAP)  # fmt: skip
    if cursor_at < change.at:
        assert before_it == cursor - OVERLAP


def test_sydney_after_the_clocks_go_back_the_poll_re_reads_the_repeated_hour():
    sydney = ZoneInfo("Australia/Sydney")
    cursor = datetime(2027, 4, 4, 2, 55)  # written at 02:55 AEDT, five minutes before the change
    during = datetime(2027, 4, 3, 16, 10, tzinfo=UTC)  # 02:10 AEST, the second pass
    assert localtime.reach_back(cursor, during, sydney, OVERLAP) == datetime(2027, 4, 4, 1, 44, 59)
    assert localtime.reach_back(cursor, during - HOUR, sydney, OVERLAP) == cursor - OVERLAP
    # Once a stamp after the repeated hour has moved the cursor on, the plain overlap again.
    moved = datetime(2027, 4, 4, 3, 5)
    assert localtime.reach_back(moved, during + 2 * HOUR, sydney, OVERLAP) == moved - OVERLAP


def test_the_cursor_moves_by_wall_time_and_never_back():
    sydney = ZoneInfo("Australia/Sydney")
    first = parse_sm8_stamp("2027-04-04 02:55:00", sydney)  # first pass
    second = parse_sm8_stamp("2027-04-04 02:10:00", sydney)  # second pass, an hour later
    assert localtime.later_stamp(first, second) is first
    assert localtime.later_stamp(None, second) is second
    assert localtime.later_stamp(first, None) is first
    after = parse_sm8_stamp("2027-04-04 03:00:01", sydney)
    assert localtime.later_stamp(first, after) is after


@pytest.mark.parametrize("zone", ZONES)
def test_days_are_23_and_25_hours_long_across_the_changes(zone):
    tz = ZoneInfo(zone)
    for change in localtime.transitions(tz, *YEAR):
        day = localtime.wall(change.at, tz).date()
        assert localtime.day_length(day, tz) == timedelta(hours=24) - change.size
        assert localtime.day_length(day + timedelta(days=1), tz) == timedelta(hours=24)
        noon = localtime.at_wall(day, time(12), tz)
        start, end = localtime.day_start(noon, tz), localtime.day_start(noon, tz, days=1)
        assert end - start == timedelta(hours=24) - change.size
        now_ms = int(noon.timestamp() * 1000)
        assert day_start_ms(now_ms, tz) == int(start.timestamp() * 1000)


def test_a_repeated_midnight_starts_the_day_at_its_first_occurrence_and_a_skipped_one_at_the_jump():
    havana = ZoneInfo("America/Havana")  # 01:00 becomes 00:00: midnight repeats
    back = next(t for t in localtime.transitions(havana, *YEAR) if t.backward)
    second_midnight = back.at + timedelta(minutes=30)  # 00:30 on the second pass
    assert localtime.day_start(second_midnight, havana) == back.at - HOUR
    forward = next(t for t in localtime.transitions(havana, *YEAR) if not t.backward)
    assert localtime.day_start(forward.at + HOUR, havana) == forward.at  # 00:00 does not exist
    assert localtime.day_length(localtime.wall(back.at, havana).date(), havana) == 25 * HOUR


def test_naive_values_are_refused_where_an_instant_is_needed():
    sydney = ZoneInfo("Australia/Sydney")
    with pytest.raises(localtime.StampError):
        localtime.wall(datetime(2027, 4, 4, 2, 30), sydney)
    with pytest.raises(localtime.StampError):
        localtime.write_stamp(datetime(2027, 4, 4, 2, 30), sydney)
    with pytest.raises(localtime.StampError):
        localtime.transitions(sydney, datetime(2027, 1, 1), datetime(2027, 2, 1))
    assert localtime.read_stamp("0000-00-00 00:00:00", sydney) is None
    assert localtime.stamp_wall("2027-04-04 02:30:00") == datetime(2027, 4, 4, 2, 30)


# --- the poll plan's day follows the zone ---------------------------------------------------------
BUDGET = PollBudget(day_limit=20_000, share=0.5, busy_from=time(1), busy_to=time(5),
                    min_seconds=5, max_seconds=300)  # fmt: skip
OBJECTS = {"servicem8.joballocation": False, "servicem8.jobactivity": True}


@pytest.mark.parametrize("zone", ZONES)
def test_the_poll_plan_spreads_a_23_or_25_hour_day_and_busy_hours_across_a_change(zone):
    tz = ZoneInfo(zone)
    for change in localtime.transitions(tz, *YEAR):
        day = localtime.wall(change.at, tz).date()
        midnight = localtime.at_wall(day, time(0), tz).astimezone(tz)
        plan = plan_polls(midnight, OBJECTS, BUDGET, polls_spent_today=0, calls_last_day=0)
        assert plan.seconds_left == (timedelta(hours=24) - change.size).total_seconds()
        end = localtime.day_start(midnight, tz, days=1).astimezone(tz)
        # Busy 01:00-05:00 holds the change in every one of these zones: 3 or 5 hours that day.
        busy = _busy_seconds(midnight, end, BUDGET)
        assert busy == (4 * HOUR - change.size).total_seconds()
        later = localtime.day_start(midnight, tz, days=2).astimezone(tz)  # an ordinary day
        assert _busy_seconds(later, localtime.day_start(later, tz, days=1), BUDGET) == 4 * 3600


def test_an_ordinary_day_is_24_hours_and_unchanged():
    sydney = ZoneInfo("Australia/Sydney")
    assert localtime.day_length(date(2027, 6, 1), sydney) == timedelta(hours=24)
    assert localtime.transitions(sydney, datetime(2027, 5, 1, tzinfo=UTC),
                                 datetime(2027, 9, 1, tzinfo=UTC)) == []  # fmt: skip
