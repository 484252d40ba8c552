"""Days of upcoming work, counted from today in the account's timezone: tests that need bookings
in the sync's scope (docs/scope.md) date them with these, so they hold whatever day they run.
Day 1 is tomorrow."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

SYDNEY = ZoneInfo("Australia/Sydney")  # the simulators' and the fakes' account timezone


def day(n: int, tz: tzinfo = SYDNEY) -> date:
    """The date ``n`` days from today (negative: ago)."""
    return datetime.now(tz).date() + timedelta(days=n)


def at(n: int, hour: int = 0, minute: int = 0, tz: tzinfo = SYDNEY) -> datetime:
    """Day ``n`` at ``hour:minute``, local time in ``tz`` (aware)."""
    return datetime.combine(day(n, tz), time(hour, minute), tzinfo=tz)


def stamp(n: int, hour: int = 0, minute: int = 0, tz: tzinfo = SYDNEY) -> str:
    """Day ``n`` as a ServiceM8 stamp (naive, account time)."""
    return at(n, hour, minute, tz).strftime("%Y-%m-%d %H:%M:%S")


def ms(n: int, hour: int = 0, minute: int = 0, tz: tzinfo = SYDNEY) -> int:
    """Day ``n`` at ``hour:minute`` as epoch milliseconds."""
    return int(at(n, hour, minute, tz).timestamp() * 1000)
