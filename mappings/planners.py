"""Write planners: the operations that bring one side of a pair to a target presence.

``push_op`` names the Coredination resource operation; ``pull_writes`` and ``redundant_writes``
list the ServiceM8 allocation writes; ``after_write`` is the planner's model of a write's effect
on the facts (the same model the job planner uses to plan a whole job before anything is sent).
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from mappings.facts import AllocationFacts
from mappings.presence import Presence, sm8_presence
from mappings.stamps import to_epoch_ms

CdOp = Literal["schedule", "assign", "unschedule", "unassign"]


def push_op(target: Presence, cd_now: Presence, dated: bool) -> CdOp | None:
    """The Coredination resource operation that brings the user to ``target``."""
    if target == Presence.SCHEDULED:
        return "schedule"
    if target == Presence.ASSIGNED:
        return "assign"
    if target == Presence.FINISHED:
        if cd_now == Presence.ABSENT:
            return "schedule" if dated else "assign"
        return None
    if cd_now == Presence.ASSIGNED:
        return "unassign"
    if cd_now == Presence.ABSENT:
        return None
    return "unschedule"


def cd_state_after(op: CdOp) -> str | None:
    """The resource state the simulator and the documents imply after ``op`` (None: removed)."""
    return {"schedule": "SCHEDULED", "assign": "ASSIGNED"}.get(op)


@dataclass(frozen=True)
class Sm8Write:
    kind: Literal["create", "update", "delete"]
    uuid: str
    fields: dict[str, Any] = field(default_factory=dict)


def redundant_writes(pair: Sequence[AllocationFacts], now_ms: int) -> list[Sm8Write]:
    """The bridge's own allocations a pair no longer needs: when someone else also allocated the
    same person to the same job (the office and a dispatcher booking at the same moment), the
    bridge's copy is deleted. If it alone carried the date, the date moves to theirs first, so
    the pair keeps its presence. Never deletes anyone else's; leaves finished work as it is."""
    live = [a for a in pair if a.live(now_ms)]
    ours = [a for a in live if a.by_bridge]
    theirs = [a for a in live if not a.by_bridge]
    if not ours or not theirs:
        return []
    writes: list[Sm8Write] = []
    before = sm8_presence(live, now_ms)
    if sm8_presence(theirs, now_ms) != before:
        dated = next((a for a in ours if a.date_ms is not None), None)
        if before != Presence.SCHEDULED or dated is None or any(a.completed_ms for a in theirs):
            return []
        assert dated.date_ms is not None
        when = datetime.fromtimestamp(dated.date_ms / 1000, UTC)
        writes.append(Sm8Write("update", theirs[0].uuid, {"allocation_date": when}))
    return writes + [Sm8Write("delete", a.uuid) for a in ours]


def pull_writes(
    target: Presence,
    pair: Sequence[AllocationFacts],
    *,
    job_uuid: str,
    staff_uuid: str,
    derived_uuid: str,
    start: datetime | None,
    finished_at: datetime | None,
    now_ms: int,
) -> list[Sm8Write]:
    """The ServiceM8 writes that bring the pair's allocations to ``target``.

    ``start`` is the Coredination job's start (or, for an untimed job, the time the user was
    scheduled); a created allocation carries ``derived_uuid`` so a retried create is harmless.
    """
    live = [a for a in pair if a.live(now_ms)]
    if target == Presence.ABSENT:
        return [Sm8Write("delete", a.uuid) for a in live]
    writes: list[Sm8Write] = []
    if not live:
        fields: dict[str, Any] = {"job_uuid": job_uuid, "staff_uuid": staff_uuid, "active": 1}
        if target in (Presence.SCHEDULED, Presence.FINISHED) and start is not None:
            fields["allocation_date"] = start
        if target == Presence.FINISHED:
            fields["completion_timestamp"] = finished_at or start
        known = {a.uuid for a in pair}
        kind: Literal["create", "update"] = "update" if derived_uuid in known else "create"
        if kind == "update":  # our own old record, revived: it may still hold an old date
            fields.setdefault("allocation_date", None)
            fields.setdefault("completion_timestamp", None)
        return [Sm8Write(kind, derived_uuid, fields)]
    # Finished visits are history: with a booking still open, only the open ones move. Fixed
    # bookings are not moved from here (their time is the office's, or the job's).
    flexible = [a for a in live if not a.fixed]
    current = [a for a in flexible if a.completed_ms is None] or flexible
    if target == Presence.SCHEDULED:
        if current and not any(a.date_ms is not None for a in current) and start is not None:
            writes.append(Sm8Write("update", current[0].uuid, {"allocation_date": start}))
        writes += [
            Sm8Write("update", a.uuid, {"completion_timestamp": None})
            for a in current
            if a.completed_ms is not None
        ]
    elif target == Presence.ASSIGNED:
        writes += [
            Sm8Write("update", a.uuid, {"allocation_date": None, "completion_timestamp": None})
            for a in current
            if a.date_ms is not None or a.completed_ms is not None
        ]
    elif target == Presence.FINISHED:
        when = finished_at or (datetime.fromtimestamp(now_ms / 1000).astimezone())
        writes += [  # a fixed booking has no completion: it stays as it is
            Sm8Write("update", a.uuid, {"completion_timestamp": when})
            for a in flexible
            if a.completed_ms is None
        ]
    return writes


def after_write(
    before: AllocationFacts | None, write: Sm8Write, job_uuid: str, staff: str
) -> AllocationFacts:
    """The facts of an allocation after the bridge's own write (no edit_date until read back)."""
    base = before or AllocationFacts(
        uuid=write.uuid,
        job_uuid=job_uuid,
        staff_uuid=staff,
        active=True,
        date_ms=None,
        window=None,
        completed_ms=None,
        expires_ms=None,
        edited_ms=None,
        by_bridge=True,
    )
    if write.kind == "delete":
        return replace(base, active=False, edited_ms=None)
    changes: dict[str, Any] = {"edited_ms": None, "active": True}
    if "allocation_date" in write.fields:
        changes["date_ms"] = to_epoch_ms(write.fields["allocation_date"])
        # The window stays with the allocation, dated or not, as ServiceM8 keeps it: a read-back
        # of this write must compare equal (an undated allocation's window sets no time).
        changes["window"] = base.window
    if "completion_timestamp" in write.fields:
        changes["completed_ms"] = to_epoch_ms(write.fields["completion_timestamp"])
    return replace(base, **changes)
