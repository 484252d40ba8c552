"""Lenient parsing and formatting of the two APIs' time and flag formats.

ServiceM8 sends naive ``YYYY-MM-DD HH:MM:SS`` stamps (``0000-00-00 00:00:00`` for "no date") in
the account's timezone, taken from ``/vendor.json`` ``timezone_name``; ``mappings.localtime``
owns how they become instants (repeated and missing hours included,
docs/servicem8-api.md#local-time), and the ServiceM8 functions here are its names for callers.
Coredination sends epoch milliseconds in UTC (docs/coredination-api.md#conventions), or plain
dates on all-day jobs.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

from mappings import localtime
from mappings.localtime import StampError as StampError

SM8_EMPTY_STAMP = localtime.EMPTY_STAMP
SM8_STAMP_FORMAT = localtime.STAMP_FORMAT
SM8_STAMP = localtime.STAMP


def parse_sm8_stamp(value: Any, tz: tzinfo) -> datetime | None:
    """Read a ServiceM8 stamp as an aware datetime in ``tz``; empty forms give ``None``
    (``localtime.read_stamp``: a repeated time reads as its first occurrence, a missing one as
    shifted forward by the gap)."""
    return localtime.read_stamp(value, tz)


def format_sm8_stamp(value: datetime | None, tz: tzinfo) -> str:
    """Write an aware datetime as the naive wall-clock stamp ServiceM8 expects in ``tz``."""
    return localtime.write_stamp(value, tz)


def parse_cd_time(value: Any) -> datetime | None:
    """Read a Coredination time: epoch ms (int or digit string), or an ISO date / datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise StampError("expected epoch milliseconds, got a boolean")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text):
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise StampError(f"not a Coredination time: {text[:40]!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise StampError(f"not a Coredination time: {type(value).__name__}")


def to_epoch_ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise StampError("refusing to convert a naive datetime to epoch ms")
    return round(value.timestamp() * 1000)


def day_start_ms(now_ms: int, tz: tzinfo, days_back: int = 0) -> int:
    """The first instant of the local day ``days_back`` calendar days before the day ``now_ms``
    falls on in ``tz``, as UTC epoch ms (docs/scope.md#the-horizon; ``localtime.day_start``).

    Counted in calendar days, not in 24-hour spans: a day with a daylight-saving change is 23 or
    25 hours long. The day starts at local midnight, read with ``fold=0``: where midnight is
    repeated (clocks going back over it) that is its first occurrence, and where the clocks jump
    over midnight (it does not exist that day) it maps to the instant of the jump, which is the
    first moment of that day."""
    start = localtime.day_start(datetime.fromtimestamp(now_ms / 1000, UTC), tz, -days_back)
    return round(start.timestamp() * 1000)


def parse_flag(value: Any) -> bool:
    """ServiceM8 booleans arrive as 0/1, "0"/"1" or true/false (docs/servicem8-api.md#types)."""
    if isinstance(value, bool):
        return value
    if value is None or value == "":
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"1", "true", "yes"}:
            return True
        if text in {"0", "false", "no"}:
            return False
    raise ValueError(f"not a 0/1 flag: {value!r}")
