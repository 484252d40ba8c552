"""Local time in one place: every conversion between ServiceM8's naive local stamps and instants,
with the account's zone passed as a value (docs/servicem8-api.md#local-time).

ServiceM8 writes ``YYYY-MM-DD HH:MM:SS`` in the account's wall clock, with no offset. Most wall
times name one instant; two kinds do not, and each has one stated reading here:

- **Repeated** (the hour the clocks go back over, e.g. 02:00-03:00 in Sydney on the first Sunday
  of April): the wall time names two instants. It reads as the *first* (``fold=0``, still on
  daylight time). A caller that must not miss the second (the poll's cursor) asks for both with
  ``occurrences`` and reaches back (``reach_back``).
- **Missing** (the hour the clocks jump over, e.g. 02:00-03:00 in Sydney on the first Sunday of
  October): the wall time names no instant. It reads as the instant it would be with the offset in
  force *before* the change, which lands after the jump by the gap: 02:30 reads as 03:30 daylight
  time. Written back, that instant is the stamp ``03:30``: no instant ever writes a missing stamp.

Every other instant writes a stamp that reads back as that same instant. Local days are calendar
days (23 or 25 hours across a change) starting at local midnight read the same way: the first
midnight where it repeats, the instant of the jump where it is skipped.

Pure: the standard library only; no I/O, no clock (the caller passes the time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

EMPTY_STAMP = "0000-00-00 00:00:00"  # ServiceM8's "no date"
STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$")
# No zone has moved its clocks by more than a day at once, so a change further than this from an
# instant cannot give that instant's wall time a second reading.
MAX_SHIFT = timedelta(hours=26)
SECOND = timedelta(seconds=1)  # stamps are whole seconds
_STEP = timedelta(hours=1)  # transitions are found by sampling the offset this often


class StampError(ValueError):
    """A value that claims to be a time stamp but is not one."""


@dataclass(frozen=True)
class Transition:
    """A change of a zone's offset: at the instant ``at`` (UTC) the offset goes from ``before``
    to ``after``. ``size`` is negative when the clocks go back (a repeated span of wall time)
    and positive when they go forward (a missing one)."""

    at: datetime
    before: timedelta
    after: timedelta

    @property
    def size(self) -> timedelta:
        return self.after - self.before

    @property
    def backward(self) -> bool:
        return self.after < self.before

    @property
    def wall_before(self) -> datetime:
        """The wall time the clocks reach as they change (naive): 03:00 in Sydney in April."""
        return (self.at + self.before).replace(tzinfo=None)

    @property
    def wall_after(self) -> datetime:
        """The wall time the clocks show just after the change (naive): 02:00 in Sydney in April."""
        return (self.at + self.after).replace(tzinfo=None)

    def span(self) -> tuple[datetime, datetime]:
        """The wall times repeated (going back) or missing (going forward), as a half-open
        naive range: [02:00, 03:00) for both of Sydney's changes."""
        return min(self.wall_before, self.wall_after), max(self.wall_before, self.wall_after)


# --- wall time <-> instant ----------------------------------------------------------------------
def local(wall_time: datetime, tz: tzinfo) -> datetime:
    """The stated reading of a naive wall time in ``tz``, as an aware datetime in ``tz`` that
    keeps the wall time as written: ``fold=0``, so its instant (``timestamp()``, ``astimezone``)
    is the first occurrence of a repeated time and the shifted-forward one of a missing time."""
    return wall_time.replace(tzinfo=tz, fold=0)


def instant(wall_time: datetime, tz: tzinfo) -> datetime:
    """The instant (UTC) a naive wall time in ``tz`` reads as (the module's stated reading)."""
    return local(wall_time, tz).astimezone(UTC)


def wall(at: datetime, tz: tzinfo) -> datetime:
    """What the clocks in ``tz`` show at the instant ``at`` (aware), as a naive datetime."""
    if at.tzinfo is None:
        raise StampError("refusing to read a naive datetime as an instant: its zone is unknown")
    return at.astimezone(tz).replace(tzinfo=None, fold=0)


def occurrences(wall_time: datetime, tz: tzinfo) -> tuple[datetime, ...]:
    """Every instant (UTC) at which the clocks in ``tz`` show ``wall_time`` (naive), earliest
    first: one for most, two in a repeated span, none in a missing one."""
    found = []
    for fold in (0, 1):
        at = wall_time.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if wall(at, tz) == wall_time.replace(fold=0) and at not in found:
            found.append(at)
    return tuple(sorted(found))


def earliest(wall_time: datetime, tz: tzinfo) -> datetime:
    """The earliest instant (UTC) ``wall_time`` can stand for: its first occurrence, or for a
    missing wall time the earlier of its two offsets' readings (the instant of the jump at most)."""
    found = occurrences(wall_time, tz)
    if found:
        return found[0]
    return min(wall_time.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1))


def is_repeated(wall_time: datetime, tz: tzinfo) -> bool:
    return len(occurrences(wall_time, tz)) == 2


def is_missing(wall_time: datetime, tz: tzinfo) -> bool:
    return not occurrences(wall_time, tz)


# --- ServiceM8 stamps --------------------------------------------------------------------------
def read_stamp(value: Any, tz: tzinfo) -> datetime | None:
    """A ServiceM8 stamp (``YYYY-MM-DD[ HH:MM[:SS]]``) read in ``tz`` (``local``); the empty
    forms give ``None``. An aware datetime passes as it is; a naive one is read like a stamp."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return local(value, tz)
        return value
    if not isinstance(value, str):
        raise StampError(f"expected a 'YYYY-MM-DD HH:MM:SS' string, got {type(value).__name__}")
    text = value.strip()
    if not text or text.startswith("0000-00-00"):
        return None
    match = STAMP.match(text)
    if match is None:
        raise StampError(f"not a ServiceM8 stamp: {text[:40]!r}")
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
    try:
        return local(datetime(year, month, day, hour, minute, second), tz)
    except ValueError as exc:
        raise StampError(f"impossible date {text[:40]!r}: {exc}") from None


def write_stamp(at: datetime | None, tz: tzinfo) -> str:
    """The naive wall-clock stamp ServiceM8 holds for the aware ``at`` in ``tz`` (whole seconds,
    the fraction dropped); ``None`` is the empty stamp. An aware datetime already in ``tz`` is
    written as its wall time, as read."""
    if at is None:
        return EMPTY_STAMP
    if at.tzinfo is None:
        raise StampError("refusing to format a naive datetime: its timezone is unknown")
    return at.astimezone(tz).strftime(STAMP_FORMAT)


def stamp_wall(stamp: str) -> datetime:
    """A stamp's wall time, naive, as written (for comparing stamps as ServiceM8 does)."""
    read = read_stamp(stamp, UTC)
    if read is None:
        raise StampError(f"an empty stamp has no wall time: {stamp[:40]!r}")
    return read.replace(tzinfo=None)


# --- days --------------------------------------------------------------------------------------
def at_wall(day: date, clock: time, tz: tzinfo) -> datetime:
    """The instant (UTC) of ``clock`` on the local ``day`` (the stated reading)."""
    return instant(datetime.combine(day, clock), tz)


def day_start(at: datetime, tz: tzinfo, days: int = 0) -> datetime:
    """The first instant (UTC) of the local day ``days`` calendar days after the one ``at``
    falls on in ``tz`` (negative: before). Calendar days, not 24-hour spans; local midnight read
    as stated: its first occurrence where it repeats, the instant of the jump where the clocks
    jump over it (that day's first moment)."""
    today = at.astimezone(tz).date()
    return at_wall(today + timedelta(days=days), time(0), tz)


def day_length(day: date, tz: tzinfo) -> timedelta:
    """How long the local ``day`` is: 24 hours, or 23 and 25 across a change."""
    start = at_wall(day, time(0), tz)
    return at_wall(day + timedelta(days=1), time(0), tz) - start


# --- transitions -------------------------------------------------------------------------------
def _offset(at: datetime, tz: tzinfo) -> timedelta:
    offset = at.astimezone(tz).utcoffset()
    assert offset is not None
    return offset


def transitions(tz: tzinfo, start: datetime, end: datetime) -> list[Transition]:
    """The changes of ``tz``'s offset at instants in ``(start, end]`` (aware), in order.

    Found by sampling the offset every hour and bisecting to the second where it changes (zone
    data exposes no list of its changes); changes an hour or more apart are all found."""
    if start.tzinfo is None or end.tzinfo is None:
        raise StampError("transitions are looked for between instants, not naive times")
    found: list[Transition] = []
    lo = start.astimezone(UTC)
    before = _offset(lo, tz)
    end = end.astimezone(UTC)
    while lo < end:
        hi = min(lo + _STEP, end)
        after = _offset(hi, tz)
        if after != before:
            found.append(_bisect(tz, lo, hi, before))
        lo, before = hi, after
    return found


def _bisect(tz: tzinfo, lo: datetime, hi: datetime, before: timedelta) -> Transition:
    """The change between ``lo`` (offset ``before``) and ``hi`` (another offset), to the
    microsecond at which the new offset is in force."""
    a, b = lo, hi
    while b - a > timedelta(microseconds=1):
        mid = a + (b - a) / 2
        if _offset(mid, tz) == before:
            a = mid
        else:
            b = mid
    return Transition(at=b, before=before, after=_offset(b, tz))


# --- the poll's cursor ---------------------------------------------------------------------------
def reach_back(cursor: datetime, now: datetime, tz: tzinfo, overlap: timedelta) -> datetime:
    """The wall time (naive) an ``edit_date gt`` filter starts from, so that it misses no record
    written at or after the instant of the stamp ``cursor`` (naive wall time, the newest seen).

    Wall time runs backward when the clocks go back, so a change made in the repeated hour after
    the cursor carries an older-looking stamp. The filter therefore starts at the earliest wall
    time any instant since the cursor can show, less ``overlap``: the cursor's own wall time,
    or the start of a repeated span lying between the cursor and ``now``, whichever is earlier.
    The cursor's instant is taken at its earliest (a repeated cursor may be either pass). The
    rule reaches back at most the change's size (and a second) beyond the overlap, and stops
    once the cursor has moved past the change (the first stamp after the repeated hour). A
    change still ahead of ``now`` needs nothing yet: no stamp of its repeated hour exists."""
    since = earliest(cursor, tz) - overlap
    low = cursor
    horizon = min(now.astimezone(UTC), since + MAX_SHIFT + overlap)
    for change in transitions(tz, since, horizon):
        if change.backward:  # "gt" a second before the span: its first stamp is read too
            low = min(low, change.wall_after - SECOND)
    return low - overlap


def later_stamp(current: datetime | None, value: datetime | None) -> datetime | None:
    """The later of two stamps by wall time as written, as ServiceM8 compares them in a filter
    (never by instant: a stamp of the repeated hour's second pass is not "newer" than one of its
    first pass written before it). A cursor built with this never moves back."""
    if value is None:
        return current
    if current is None:
        return value
    return value if value.replace(tzinfo=None) > current.replace(tzinfo=None) else current
