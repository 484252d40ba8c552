"""ServiceM8 wire models, named as in the official OpenAPI description
(docs/servicem8-api.md#records).

Parsing is lenient where the real API is: unknown fields are kept, flags arrive as 0/1 or "0"/"1",
``0000-00-00 00:00:00`` means no date, and naive stamps are read in the account's timezone, passed
as validation context: ``JobAllocation.from_wire(data, tz)``.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

from mappings.stamps import format_sm8_stamp, parse_flag, parse_sm8_stamp


def _stamp(value: Any, info: ValidationInfo) -> datetime | None:
    context = info.context if isinstance(info.context, dict) else {}
    return parse_sm8_stamp(value, context.get("tz", UTC))


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _optional_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return int(value)


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return float(value)


def _uuid(value: Any) -> str:
    """A record id: a uuid, kept in canonical lower-case form (the link store packs it into 16
    bytes). Anything else is refused, so the record is parked with the reason."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    try:
        parsed = UUID(text)
    except ValueError:
        raise ValueError(f"expected a uuid, got {str(value)[:40]!r}") from None
    if str(parsed) != text:
        raise ValueError(f"expected a hyphenated uuid, got {str(value)[:40]!r}")
    return text


Uuid = Annotated[str, BeforeValidator(_uuid)]
Stamp = Annotated[datetime | None, BeforeValidator(_stamp)]
Flag = Annotated[bool, BeforeValidator(parse_flag)]
OptStr = Annotated[str | None, BeforeValidator(_optional_str)]
OptInt = Annotated[int | None, BeforeValidator(_optional_int)]
OptFloat = Annotated[float | None, BeforeValidator(_optional_float)]


class SM8Record(BaseModel):
    """Fields every ServiceM8 record has: ``uuid``, ``active`` and the read-only ``edit_date``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    uuid: str
    active: Flag = True
    edit_date: Stamp = None

    @classmethod
    def from_wire(cls, data: Any, tz: tzinfo = UTC) -> Self:
        return cls.model_validate(data, context={"tz": tz})

    def to_wire(self, tz: tzinfo = UTC) -> dict[str, Any]:
        """The record as ServiceM8 would send it: 0/1 flags, naive stamps in ``tz``."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, bool):
                out[name] = int(value)
            elif isinstance(value, datetime) or (
                value is None and name in _STAMP_FIELDS.get(type(self).__name__, ())
            ):
                out[name] = format_sm8_stamp(value, tz)
            else:
                out[name] = value
        return out


class JobAllocation(SM8Record):
    """A job allocated to a staff member, optionally from a date and within an allocation window."""

    uuid: Uuid
    job_uuid: Uuid
    staff_uuid: OptStr = None
    allocation_date: Stamp = None
    allocation_window_uuid: OptStr = None
    allocated_by_staff_uuid: OptStr = None
    allocated_timestamp: Stamp = None
    expiry_timestamp: Stamp = None
    read_timestamp: Stamp = None
    completion_timestamp: Stamp = None
    sort_priority: OptStr = None


class JobActivity(SM8Record):
    """A job activity: a fixed booking of a staff member from ``start_date`` to ``end_date`` when
    ``activity_was_scheduled`` is set; time actually worked when ``activity_was_recorded`` is;
    ``activity_was_automated`` marks automated records (docs/servicem8-api.md#bookings)."""

    uuid: Uuid
    job_uuid: Uuid
    staff_uuid: OptStr = None
    start_date: Stamp = None
    end_date: Stamp = None
    activity_was_scheduled: Flag = False
    activity_was_recorded: Flag = False
    activity_was_automated: Flag = False
    has_been_opened: Flag = False
    has_been_opened_timestamp: Stamp = None

    @property
    def is_booking(self) -> bool:
        """A fixed booking: scheduled in advance, neither time worked nor automated."""
        return (
            self.activity_was_scheduled
            and not self.activity_was_recorded
            and not self.activity_was_automated
        )


class Job(SM8Record):
    uuid: Uuid
    status: OptStr = None
    job_address: OptStr = None
    job_description: OptStr = None
    generated_job_id: OptStr = None
    purchase_order_number: OptStr = None
    date: Stamp = None
    lat: OptFloat = None
    lng: OptFloat = None
    company_uuid: OptStr = None
    category_uuid: OptStr = None


class Staff(SM8Record):
    first: OptStr = None
    last: OptStr = None
    email: OptStr = None
    mobile: OptStr = None
    job_title: OptStr = None
    hide_from_schedule: Flag = False

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first, self.last) if part) or self.uuid


class AllocationWindow(SM8Record):
    """A named window of the day; ``start_time``/``end_time`` are minutes from midnight. The
    urgent window has both 0 and sets no time (``translate.window_minutes``)."""

    name: OptStr = None
    start_time: OptInt = None
    end_time: OptInt = None
    sort_priority: OptInt = None


class Vendor(SM8Record):
    name: OptStr = None
    timezone_name: OptStr = None
    email: OptStr = None


_STAMP_FIELDS: dict[str, tuple[str, ...]] = {
    "JobAllocation": (
        "edit_date",
        "allocation_date",
        "allocated_timestamp",
        "expiry_timestamp",
        "read_timestamp",
        "completion_timestamp",
    ),
    "JobActivity": ("edit_date", "start_date", "end_date", "has_been_opened_timestamp"),
    "Job": ("edit_date", "date"),
    "Staff": ("edit_date",),
    "AllocationWindow": ("edit_date",),
    "Vendor": ("edit_date",),
}

# Field sets a create or update may carry, from the *Create schemas of the OpenAPI description.
ALLOCATION_WRITABLE = frozenset(
    {
        "uuid",
        "active",
        "job_uuid",
        "staff_uuid",
        "allocation_date",
        "allocation_window_uuid",
        "allocated_by_staff_uuid",
        "allocated_timestamp",
        "expiry_timestamp",
        "read_timestamp",
        "completion_timestamp",
        "sort_priority",
    }
)

__all__ = [
    "ALLOCATION_WRITABLE",
    "AllocationWindow",
    "Job",
    "JobActivity",
    "JobAllocation",
    "SM8Record",
    "Staff",
    "Vendor",
]
