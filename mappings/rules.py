"""Translation rules and the sync decision. Pure: values in, values out.

The unit of sync is a *pair*: one ServiceM8 job J with one staff member S, against the Coredination
job ``uuid5(ns, J)`` with the user U mapped to S. Both sides are reduced to a ``Presence``:

==========  ======================================  =========================================
Presence    ServiceM8 (allocations of S on J)       Coredination (U's resource on the job)
==========  ======================================  =========================================
ABSENT      none live (deleted, expired, or none)   none, UNASSIGNED, DECLINED, CANCELED,
                                                    INACTIVE
ASSIGNED    live, none has a date                   ASSIGNED
SCHEDULED   live, one has a date                    SCHEDULED, ACCEPTED, IN_TRANSIT,
                                                    ON_STATION, STARTED, PAUSED
FINISHED    every live one has a completion time    FINISHED
==========  ======================================  =========================================

"Live" is active and not past ``expiry_timestamp``. Coredination has no operation that finishes a
resource, so a FINISHED ServiceM8 pair is in step with a present Coredination resource.

Job fields flow ServiceM8 → Coredination only: title and description from the job, destination
from its address, and the time from the earliest live dated allocation (date + allocation window;
a date alone makes an all-day job; no dated allocation leaves the job untimed). Allocations the
bridge itself created from Coredination do not set the job's time, so a time set in Coredination is
never overwritten by its own echo.

Conflicts: when both sides changed since the last agreed snapshot, the later change wins
(ServiceM8 ``edit_date`` vs Coredination event time, both as UTC epoch ms); a tie goes to the side
named by the tie rule (ServiceM8 by default).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal

from mappings.coredination import job_body
from mappings.servicem8 import AllocationWindow, Job, JobAllocation
from mappings.stamps import to_epoch_ms

TieRule = Literal["servicem8", "coredination"]


class Presence(StrEnum):
    ABSENT = "absent"
    ASSIGNED = "assigned"
    SCHEDULED = "scheduled"
    FINISHED = "finished"


CD_PRESENCE: dict[str, Presence] = {
    "UNASSIGNED": Presence.ABSENT,
    "DECLINED": Presence.ABSENT,
    "CANCELED": Presence.ABSENT,
    "INACTIVE": Presence.ABSENT,
    "ASSIGNED": Presence.ASSIGNED,
    "SCHEDULED": Presence.SCHEDULED,
    "ACCEPTED": Presence.SCHEDULED,
    "IN_TRANSIT": Presence.SCHEDULED,
    "ON_STATION": Presence.SCHEDULED,
    "STARTED": Presence.SCHEDULED,
    "PAUSED": Presence.SCHEDULED,
    "FINISHED": Presence.FINISHED,
}


def cd_presence(resource_state: str | None) -> Presence | None:
    """A Coredination resource state as a Presence; ``None`` for a state we do not know."""
    if resource_state is None:
        return Presence.ABSENT
    return CD_PRESENCE.get(resource_state.upper())


# Job-field events: the fields flow ServiceM8 → Coredination only, so these never change a pair.
JOB_FIELD_EVENTS = {"CREATE", "UPDATE"}


def cd_event_known(
    event_type: str, user: int | None, new_state: str | None, held: dict[int, str]
) -> bool:
    """Whether a Coredination event says nothing beyond the resources the bridge holds (``held``:
    user id → state), typically the echo of the bridge's own write. Unknown events are not."""
    kind = event_type.upper()
    if kind in JOB_FIELD_EVENTS:
        return True
    if not kind or user is None:
        return False
    state = held.get(user)
    if not new_state or new_state.upper() == "UNASSIGNED":
        return state is None or state == "UNASSIGNED"
    return state == new_state.upper()


# --- ServiceM8 facts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationFacts:
    """What the bridge keeps of one ServiceM8 allocation (its canonical state)."""

    uuid: str
    job_uuid: str
    staff_uuid: str | None
    active: bool
    date_ms: int | None  # allocation_date, UTC epoch ms (read in the account's timezone)
    window: tuple[int, int] | None  # allocation window start/end, minutes from midnight
    completed_ms: int | None
    expires_ms: int | None
    edited_ms: int | None  # edit_date; None when we wrote it and have not read it back
    by_bridge: bool = False  # created by the bridge from a Coredination resource

    def live(self, now_ms: int) -> bool:
        return self.active and not (self.expires_ms is not None and self.expires_ms <= now_ms)

    def same_state(self, other: AllocationFacts) -> bool:
        """Equal apart from ``edited_ms``: a re-read of our own write is not a change."""
        return asdict(self) | {"edited_ms": None} == asdict(other) | {"edited_ms": None}


def allocation_facts(
    allocation: JobAllocation, window: AllocationWindow | None, *, by_bridge: bool = False
) -> AllocationFacts:
    minutes = None
    if window is not None and window.start_time is not None and window.end_time is not None:
        minutes = (window.start_time, window.end_time)
    return AllocationFacts(
        uuid=allocation.uuid.lower(),
        job_uuid=allocation.job_uuid.lower(),
        staff_uuid=allocation.staff_uuid.lower() if allocation.staff_uuid else None,
        active=allocation.active,
        date_ms=to_epoch_ms(allocation.allocation_date),
        window=minutes,
        completed_ms=to_epoch_ms(allocation.completion_timestamp),
        expires_ms=to_epoch_ms(allocation.expiry_timestamp),
        edited_ms=to_epoch_ms(allocation.edit_date),
        by_bridge=by_bridge,
    )


@dataclass(frozen=True)
class JobFacts:
    """What the bridge keeps of one ServiceM8 job."""

    uuid: str
    active: bool
    number: str | None
    description: str | None
    address: str | None
    lat: float | None
    lng: float | None


def job_facts(job: Job) -> JobFacts:
    return JobFacts(
        uuid=job.uuid.lower(),
        active=job.active,
        number=job.generated_job_id,
        description=job.job_description,
        address=job.job_address,
        lat=job.lat if job.lat else None,
        lng=job.lng if job.lng else None,
    )


def sm8_presence(allocations: Iterable[AllocationFacts], now_ms: int) -> Presence:
    live = [a for a in allocations if a.live(now_ms)]
    if not live:
        return Presence.ABSENT
    if all(a.completed_ms is not None for a in live):
        return Presence.FINISHED
    if any(a.date_ms is not None for a in live):
        return Presence.SCHEDULED
    return Presence.ASSIGNED


# --- Coredination job fields ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobTime:
    start: datetime | None = None
    end: datetime | None = None
    all_day: bool = False


def allocation_time(a: AllocationFacts, tz: tzinfo) -> JobTime:
    """Date + window → a timed slot; a date at midnight alone → all day; a date with a time → that
    start with no end; no date → untimed."""
    if a.date_ms is None:
        return JobTime()
    local = datetime.fromtimestamp(a.date_ms / 1000, tz)
    midnight = datetime.combine(local.date(), time(0), tzinfo=tz)
    if a.window is not None:
        start = midnight + timedelta(minutes=a.window[0])
        end = midnight + timedelta(minutes=a.window[1])
        if end <= start:  # a window past midnight ends the next day
            end += timedelta(days=1)
        return JobTime(start, end)
    if local == midnight:
        return JobTime(midnight, midnight, all_day=True)
    return JobTime(local, None)


def job_time(allocations: Iterable[AllocationFacts], tz: tzinfo, now_ms: int) -> JobTime:
    """The earliest live dated allocation sets the job's time (bridge-made ones excluded)."""
    dated = [a for a in allocations if a.live(now_ms) and a.date_ms is not None and not a.by_bridge]
    if not dated:
        return JobTime()
    earliest = min(dated, key=lambda a: (allocation_time(a, tz).start, a.uuid))
    return allocation_time(earliest, tz)


def job_title(job: JobFacts) -> str:
    first_line = (job.description or "").strip().splitlines()[0:1]
    summary = first_line[0][:80] if first_line else ""
    number = f"#{job.number}" if job.number else f"ServiceM8 job {job.uuid[:8]}"
    return f"{number} {summary}".strip()


def cd_job_body(
    job: JobFacts, allocations: Iterable[AllocationFacts], tz: tzinfo, now_ms: int
) -> dict[str, Any]:
    """The body of ``PUT /job/{uuid5(ns, J)}`` for the fields the bridge owns."""
    when = job_time(allocations, tz, now_ms)
    return job_body(
        title=job_title(job),
        description=job.description,
        start=when.start,
        end=when.end,
        all_day=when.all_day,
        place_name=job.address,
        latitude=job.lat,
        longitude=job.lng,
    )


def fingerprint(body: dict[str, Any]) -> str:
    """A short stable digest of a body, to tell whether it changed since we last wrote it."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# --- the decision ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    presence: Presence
    changed_ms: int | None = None


@dataclass(frozen=True)
class PairSnapshot:
    """Both sides' presence when the pair was last in step."""

    sm8: Presence
    cd: Presence


@dataclass(frozen=True)
class Decision:
    action: Literal["in_step", "push", "pull", "skip"]
    target: Presence | None = None
    reason: str = ""


IN_STEP = Decision("in_step")


def in_step(sm8: Presence, cd: Presence) -> bool:
    if sm8 == cd:
        return True
    # Coredination cannot finish a resource through its API: a finished allocation is in step
    # with a user still present on the job.
    return sm8 == Presence.FINISHED and cd in (Presence.SCHEDULED, Presence.ASSIGNED)


def decide(
    snapshot: PairSnapshot | None, sm8: Side, cd: Side, tie: TieRule = "servicem8"
) -> Decision:
    """Push ServiceM8's presence to Coredination, pull Coredination's to ServiceM8, or neither."""
    if in_step(sm8.presence, cd.presence):
        return IN_STEP
    if snapshot is None:
        # First sight: existence beats absence; two different presences go to the later change.
        if cd.presence == Presence.ABSENT:
            return Decision("push", sm8.presence, "new in ServiceM8")
        if sm8.presence == Presence.ABSENT:
            return Decision("pull", cd.presence, "new in Coredination")
        return _later(sm8, cd, tie, "first sight, both present")
    sm8_changed = sm8.presence != snapshot.sm8
    cd_changed = cd.presence != snapshot.cd
    if sm8_changed and not cd_changed:
        return Decision("push", sm8.presence, "changed in ServiceM8")
    if cd_changed and not sm8_changed:
        return Decision("pull", cd.presence, "changed in Coredination")
    return _later(sm8, cd, tie, "changed on both sides")


def _later(sm8: Side, cd: Side, tie: TieRule, why: str) -> Decision:
    left = sm8.changed_ms if sm8.changed_ms is not None else -1
    right = cd.changed_ms if cd.changed_ms is not None else -1
    if left > right or (left == right and tie == "servicem8"):
        return Decision("push", sm8.presence, f"{why}: ServiceM8 is later")
    return Decision("pull", cd.presence, f"{why}: Coredination is later")


# --- what to write --------------------------------------------------------------------------------

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
        return [Sm8Write(kind, derived_uuid, fields)]
    if target == Presence.SCHEDULED:
        if not any(a.date_ms is not None for a in live) and start is not None:
            writes.append(Sm8Write("update", live[0].uuid, {"allocation_date": start}))
        writes += [
            Sm8Write("update", a.uuid, {"completion_timestamp": None})
            for a in live
            if a.completed_ms is not None
        ]
    elif target == Presence.ASSIGNED:
        writes += [
            Sm8Write("update", a.uuid, {"allocation_date": None, "completion_timestamp": None})
            for a in live
            if a.date_ms is not None or a.completed_ms is not None
        ]
    elif target == Presence.FINISHED:
        when = finished_at or (datetime.fromtimestamp(now_ms / 1000).astimezone())
        writes += [
            Sm8Write("update", a.uuid, {"completion_timestamp": when})
            for a in live
            if a.completed_ms is None
        ]
    return writes
