"""ServiceM8's ``$filter`` expressions (docs/servicem8-api.md#filtering): ``eq ne gt lt`` joined
by ``and``, at most 10 conditions. Pure: builds the text, sends nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo

from mappings.stamps import format_sm8_stamp

FILTER_OPS = frozenset({"eq", "ne", "gt", "lt"})
MAX_FILTER_CONDITIONS = 10
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FilterValue = str | int | float | bool | datetime | date


@dataclass(frozen=True)
class Filter:
    """An immutable ``$filter`` expression (docs/servicem8-api.md#filtering).

    Strings are single-quoted with an embedded quote doubled (the OData rule; ServiceM8 documents
    no escape), so a value can never close its quotes and add a condition. Stamps are written as
    naive wall-clock strings in the account's timezone, which is why ``render`` takes ``tz``.
    """

    conditions: tuple[tuple[str, str, FilterValue], ...] = ()

    def where(self, field: str, op: str, value: FilterValue) -> Filter:
        if not _FIELD.match(field):
            raise ValueError(f"not a field name: {field!r}")
        if op not in FILTER_OPS:
            raise ValueError(f"operator must be one of {sorted(FILTER_OPS)}, not {op!r}")
        if len(self.conditions) >= MAX_FILTER_CONDITIONS:
            raise ValueError(f"ServiceM8 accepts at most {MAX_FILTER_CONDITIONS} conditions")
        return Filter((*self.conditions, (field, op, value)))

    @staticmethod
    def quote(value: FilterValue, tz: tzinfo = UTC) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int | float):
            return repr(value) if isinstance(value, float) else str(value)
        if isinstance(value, datetime):
            value = format_sm8_stamp(value, tz)
        elif isinstance(value, date):
            value = value.isoformat()
        return "'" + str(value).replace("'", "''") + "'"

    def render(self, tz: tzinfo = UTC) -> str:
        return " and ".join(f"{f} {op} {self.quote(v, tz)}" for f, op, v in self.conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)


def where(field: str, op: str, value: FilterValue) -> Filter:
    return Filter().where(field, op, value)
