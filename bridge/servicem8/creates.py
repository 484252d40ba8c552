"""Creates with the bridge's own uuid: what their answers mean (docs/servicem8-api.md#writes).

The bridge creates a booking under a uuid derived from (Coredination job, user, kind), so that a
create repeated after a lost answer lands on the same record. Two answers need more than the
status to read:

- ``x-record-uuid`` naming another uuid: ServiceM8 did not keep the one supplied, and a repeat
  would make a second record (``UuidNotKept``, from ``made_uuid``).
- 409, or a refusal saying the record exists (``bridge.errors.AlreadyExists``): the uuid is
  taken, most often by the first try of this very create. The writer reads the record back and
  ``existing`` decides: ours (same job, same staff, same kind) and as sent → done; ours but
  different (deleted since, or an old one of ours) → one update with the create's fields; anyone
  else's → ``UuidTaken``, a permanent error naming what holds the uuid.

Pure functions over the wire values: no I/O here (the client sends and reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.errors import PermanentError

# The fields that make a booking the one a create meant: its job, its person and its kind
# (a job activity the bridge creates is a scheduled one; an allocation's kind is its object).
IDENTITY = ("job_uuid", "staff_uuid", "activity_was_scheduled")


class UuidNotKept(PermanentError):
    """ServiceM8 made the record under a uuid other than the one supplied, so a repeated create
    would make another record: this account cannot be written to idempotently. ``made_uuid``
    is the record that was made (docs/servicem8-api.md#writes)."""

    def __init__(self, message: str, *, made_uuid: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.made_uuid = made_uuid


class UuidTaken(PermanentError):
    """A create's uuid belongs to a record that is not the booking the create meant (another
    job, person or kind). Retrying cannot help and the bridge never overwrites it: an operator
    looks at ``record`` (docs/servicem8-api.md#writes)."""

    def __init__(self, message: str, *, record: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.record = record


def made_uuid(obj: str, supplied: str | None, header: str, status: int) -> str:
    """The uuid a create made, from its ``x-record-uuid``; ``UuidNotKept`` when it is not the
    one supplied."""
    if supplied and header and header.lower() != supplied.lower():
        raise UuidNotKept(
            f"servicem8 {obj}.create: ServiceM8 did not keep the supplied uuid {supplied} and "
            f"made record {header} instead, so the bridge cannot create idempotently",
            made_uuid=header,
            api="servicem8",
            status=status,
            operation=f"{obj}.create",
        )
    return header or supplied or ""


def existing(obj: str, uuid: str, sent: Mapping[str, Any], row: Any) -> dict[str, Any]:
    """What is left to do after a create of ``sent`` under ``uuid`` was answered "exists" and
    the record read back is ``row``: ``{}`` when it is already the booking as sent, else the
    fields of the one update that makes it so (active again, the create's values). Raises
    ``UuidTaken`` when the record is not the booking the create meant."""
    operation = f"{obj}.create"
    if not isinstance(row, Mapping):
        raise UuidTaken(
            f"servicem8 {operation}: uuid {uuid} exists but its record could not be read back",
            record=uuid, api="servicem8", operation=operation,
        )  # fmt: skip
    differs = [f for f in IDENTITY if f in sent and not _same(sent[f], row.get(f))]
    if differs:
        held = ", ".join(f"{f} {_text(row.get(f)) or '(empty)'}" for f in differs)
        meant = ", ".join(f"{f} {_text(sent[f])}" for f in differs)
        raise UuidTaken(
            f"servicem8 {operation}: uuid {uuid} already belongs to another record ({held}; the "
            f"create meant {meant}); the bridge does not overwrite it",
            record=uuid, api="servicem8", operation=operation,
        )  # fmt: skip
    wanted = {k: v for k, v in sent.items() if k != "uuid"}
    if all(_same(v, row.get(k)) for k, v in wanted.items()):
        return {}
    return wanted


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    text = str(value).strip()
    return "" if text.startswith("0000-00-00") else text


def _same(sent: Any, have: Any) -> bool:
    """Equal as ServiceM8 spells them: case aside, 1 and "1" alike, an empty stamp as ``""``,
    and a date as that day's midnight stamp."""
    a, b = _text(sent).lower(), _text(have).lower()
    if a == b:
        return True
    short, long_ = sorted((a, b), key=len)
    return len(short) == 10 and long_ == f"{short} 00:00:00"
