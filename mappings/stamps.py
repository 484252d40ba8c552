"""Lenient parsing and formatting of the two APIs' time and flag formats.

ServiceM8 sends naive ``YYYY-MM-DD HH:MM:SS`` stamps (``0000-00-00 00:00:00`` for "no date") whose
timezone is not documented (docs/servicem8-api.md#errors): we read them in the account's timezone,
taken from ``/vendor.json`` ``timezone_name``. Coredination sends epoch milliseconds in UTC
(docs/coredination-api.md#conventions), or plain dates on all-day jobs.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

SM8_EMPTY_STAMP = "0000-00-00 00:00:00"
SM8_STAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
SM8_STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$")


class StampError(ValueError):
    """A value that claims to be a time stamp but is not one."""


def parse_sm8_stamp(value: Any, tz: tzinfo) -> datetime | None:
    """Read a ServiceM8 stamp as an aware datetime in ``tz``; empty forms give ``None``."""
    if value is None or isinstance(value, datetime):
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=tz)
        return value
    if not isinstance(value, str):
        raise StampError(f"expected a 'YYYY-MM-DD HH:MM:SS' string, got {type(value).__name__}")
    text = value.strip()
    if not text or text.startswith("0000-00-00"):
        return None
    match = SM8_STAMP.match(text)
    if match is None:
        raise StampError(f"not a ServiceM8 stamp: {text[:40]!r}")
    year, month, day, hour, minute, second = (int(g) if g else 0 for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError as exc:
        raise StampError(f"impossible date {text[:40]!r}: {exc}") from None


def format_sm8_stamp(value: datetime | None, tz: tzinfo) -> str:
    """Write an aware datetime as the naive wall-clock stamp ServiceM8 expects in ``tz``."""
    if value is None:
        return SM8_EMPTY_STAMP
    if value.tzinfo is None:
        raise StampError("refusing to format a naive datetime: its timezone is unknown")
    return value.astimezone(tz).strftime(SM8_STAMP_FORMAT)


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
