"""Write planners: the operations that bring one side of a pair to a target presence.

``push_op`` names the Coredination resource operation; ``pull_writes``, ``follow_writes`` and
``redundant_writes`` list the ServiceM8 booking writes (job allocations and job activities);
``after_write`` is the planner's model of a write's effect on the facts (the same model the job
planner uses to plan a whole job before anything is sent).
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


BookingKind = Literal["auto", "flexible", "fixed"]


@dataclass(frozen=True)
class Sm8Write:
    """One ServiceM8 write: to a job allocation (a flexible booking), or with ``fixed`` to a job
    activity (a fixed booking)."""

    kind: Literal["create", "update", "delete"]
    uuid: str
    fields: dict[str, Any] = field(default_factory=dict)
    fixed: bool = False


@dataclass(frozen=True)
class Slot:
    """Where a booking made from Coredination goes. ``fixed``: the exact start and end of a fixed
    booking, or None when a flexible one is made instead; ``day``: a flexible booking's date (the
    job's start, or the day the person was scheduled on an untimed job); ``flexible``: whether the
    account may be given flexible bookings at all (``SERVICEM8_PULL_BOOKING`` is not ``fixed``)."""

    fixed: tuple[datetime, datetime] | None = None
    day: datetime | None = None
    flexible: bool = True


def redundant_writes(pair: Sequence[AllocationFacts], now_ms: int) -> list[Sm8Write]:
    """The bridge's own bookings a pair no longer needs: when someone else also booked the same
    person onto the same job (the office and a dispatcher booking at the same moment), the
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
        undated = [a for a in theirs if not a.fixed]
        if (before != Presence.SCHEDULED or dated is None or not undated
                or any(a.completed_ms for a in theirs)):  # fmt: skip
            return []
        assert dated.date_ms is not None
        when = datetime.fromtimestamp(dated.date_ms / 1000, UTC)
        writes.append(Sm8Write("update", undated[0].uuid, {"allocation_date": when}))
    return writes + [Sm8Write("delete", a.uuid, fixed=a.fixed) for a in ours]


def pull_writes(
    target: Presence,
    pair: Sequence[AllocationFacts],
    *,
    job_uuid: str,
    staff_uuid: str,
    derived: tuple[str, str],
    slot: Slot,
    finished_at: datetime | None,
    now_ms: int,
    reserved: frozenset[str] = frozenset(),
) -> list[Sm8Write]:
    """The ServiceM8 writes that bring the pair's bookings to ``target``.

    ``pair``: the bookings the bridge may write, those in scope (docs/scope.md); ``reserved``:
    the uuids of the person's other bookings on the job (history, never written), so a derived
    uuid among them (the bridge's own old booking) is revived by an update, not created twice.

    A booking created for a person scheduled in Coredination is fixed when ``slot.fixed`` is set
    (a timed job), else flexible, dated ``slot.day``; it carries the uuid ``derived`` gives for its
    kind (flexible, fixed), so a retried create is harmless. Unscheduled removes every live
    booking of both kinds; finished completes the flexible ones and leaves fixed ones as they are
    (ServiceM8 has no completion on a job activity).
    """
    live = [a for a in pair if a.live(now_ms)]
    if target == Presence.ABSENT:
        return [Sm8Write("delete", a.uuid, fixed=a.fixed) for a in live]
    if not live:
        return _create(target, pair, job_uuid, staff_uuid, derived, slot, finished_at, reserved)
    # Finished visits are history: with a booking still open, only the open ones move. Fixed
    # bookings keep their time here (the office's, or the job's: ``follow_writes``).
    flexible = [a for a in live if not a.fixed]
    current = [a for a in flexible if a.completed_ms is None] or flexible
    writes: list[Sm8Write] = []
    if target == Presence.SCHEDULED:
        undated = current and not any(a.date_ms is not None for a in current)
        ours = [a for a in current if a.by_bridge and a.completed_ms is None]
        if undated and slot.fixed is not None and ours and len(ours) == len(current):
            # Our own booking of an assignment, now scheduled on a timed job: a fixed booking
            # of the job's time replaces it, as if the person had been scheduled at once.
            writes = [Sm8Write("delete", a.uuid) for a in ours]
            return writes + _create(target, pair, job_uuid, staff_uuid, derived, slot, None,
                                    reserved)  # fmt: skip
        if undated and slot.day is not None and not any(a.fixed for a in live):
            writes.append(Sm8Write("update", current[0].uuid, {"allocation_date": slot.day}))
        writes += [
            Sm8Write("update", a.uuid, {"completion_timestamp": None})
            for a in current
            if a.completed_ms is not None
        ]
    elif target == Presence.ASSIGNED:
        if not slot.flexible:  # a person without a time cannot be booked on this account
            return []
        writes += [Sm8Write("delete", a.uuid, fixed=True) for a in live if a.fixed]
        writes += [
            Sm8Write("update", a.uuid, {"allocation_date": None, "completion_timestamp": None})
            for a in current
            if a.date_ms is not None or a.completed_ms is not None
        ]
        if not flexible:
            writes += _create(target, pair, job_uuid, staff_uuid, derived, slot, None, reserved)
    elif target == Presence.FINISHED:
        when = finished_at or (datetime.fromtimestamp(now_ms / 1000).astimezone())
        writes += [  # a fixed booking has no completion: it stays as it is
            Sm8Write("update", a.uuid, {"completion_timestamp": when})
            for a in flexible
            if a.completed_ms is None
        ]
    return writes


def _create(
    target: Presence,
    pair: Sequence[AllocationFacts],
    job_uuid: str,
    staff_uuid: str,
    derived: tuple[str, str],
    slot: Slot,
    finished_at: datetime | None,
    reserved: frozenset[str] = frozenset(),
) -> list[Sm8Write]:
    """One new booking for a person with none live (or our own old one, revived)."""
    known = {a.uuid for a in pair} | reserved
    base: dict[str, Any] = {"job_uuid": job_uuid, "staff_uuid": staff_uuid, "active": 1}
    if target != Presence.ASSIGNED and slot.fixed is not None:
        uuid = derived[1]
        start, end = slot.fixed
        fields = base | {"activity_was_scheduled": 1, "start_date": start, "end_date": end}
        return [Sm8Write("update" if uuid in known else "create", uuid, fields, fixed=True)]
    if not slot.flexible:
        return []
    uuid = derived[0]
    fields = dict(base)
    if target in (Presence.SCHEDULED, Presence.FINISHED) and slot.day is not None:
        fields["allocation_date"] = slot.day
    if target == Presence.FINISHED:
        fields["completion_timestamp"] = finished_at or slot.day
    if uuid in known:  # our own old record, revived: it may still hold an old date
        fields.setdefault("allocation_date", None)
        fields.setdefault("completion_timestamp", None)
        return [Sm8Write("update", uuid, fields)]
    return [Sm8Write("create", uuid, fields)]


def follow_writes(
    pair: Sequence[AllocationFacts], times: tuple[datetime, datetime], now_ms: int
) -> list[Sm8Write]:
    """The bridge's own live fixed bookings moved to the Coredination job's time, when a
    dispatcher moved the job. Bookings the office made are never moved from Coredination."""
    start, end = (to_epoch_ms(t) for t in times)
    return [
        Sm8Write("update", a.uuid, {"start_date": times[0], "end_date": times[1]}, fixed=True)
        for a in pair
        if a.live(now_ms) and a.fixed and a.by_bridge and (a.date_ms, a.end_ms) != (start, end)
    ]


def after_write(
    before: AllocationFacts | None, write: Sm8Write, job_uuid: str, staff: str
) -> AllocationFacts:
    """The facts of a booking after the bridge's own write (no edit_date until read back)."""
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
        fixed=write.fixed,
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
    if "start_date" in write.fields:
        changes["date_ms"] = to_epoch_ms(write.fields["start_date"])
    if "end_date" in write.fields:
        changes["end_ms"] = to_epoch_ms(write.fields["end_date"])
    return replace(base, **changes)
