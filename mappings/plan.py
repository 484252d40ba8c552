"""The job planner: what one sync of a job must write, computed as data before anything is sent
(in the manner of vdirsyncer's actions). The sync use case (``bridge.sync.jobsync``) applies the
plan in order and keeps what was done if a write fails half-way. Pure: no I/O.

A job is planned in two steps, because the second reads what the first returns:

1. ``plan_job_fields``: the Coredination job's fields (``PUT /job/{uuid5(ns, J)}``), unless the
   body's fingerprint says Coredination already holds them;
2. ``plan_pairs``: per (job, staff member) pair, the decision and the writes that carry it out,
   against the Coredination view the first step left.

Each pair's plan also says what its snapshot becomes once its writes are done, and what to park.

Scope (``mappings.scope``, docs/scope.md) is an input of both steps, as a ``Horizon``: a job is
linked only once it has a booking in scope, the job's time comes from its bookings in scope, and
a pair is decided on the person's bookings in scope. A pair whose bookings are all history is
*silent* on the ServiceM8 side: nothing is pushed from it, nothing of it is deleted, and only a
change made in Coredination flows back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Literal
from uuid import UUID

from mappings.decision import Decision, Side, TieRule, decide
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, free_derived, sm8_activity_uuid, sm8_allocation_uuid
from mappings.jobfields import cd_job_body, fingerprint
from mappings.planners import (
    BookingKind,
    Slot,
    Sm8Write,
    after_write,
    cd_state_after,
    follow_writes,
    pull_writes,
    push_op,
    redundant_writes,
)
from mappings.presence import (
    Presence,
    cd_presence,
    current_presence,
    finish_in_step,
    sm8_presence,
)
from mappings.readback import ResourceOp, held_reason
from mappings.scope import Horizon, job_open
from mappings.state import CdView, JobRecord, PairSnapshot


@dataclass(frozen=True)
class UpsertJob:
    uuid: str
    body: dict[str, object]
    digest: str
    creates: bool  # the bridge holds no Coredination view of this job yet


def hold(plan: PairPlan, seen: str | None) -> None:
    """Coredination ignored the pair's op on a resource at work: the pair is held as both
    sides now are, with the reason parked, and is left alone until one of them changes."""
    assert plan.snapshot is not None
    sm8 = plan.snapshot.sm8
    plan.snapshot = PairSnapshot(sm8, cd_presence(seen) or Presence.ABSENT, held=True)
    plan.park = Park(plan.staff, held_reason(seen, sm8))
    plan.skipped = "held.at_work"


@dataclass(frozen=True)
class Park:
    who: str  # a staff uuid, or "u:{user id}"
    reason: str | None  # None: no longer parked


@dataclass
class PairPlan:
    """One pair: what to park, the writes in order, and the snapshot once they are done."""

    staff: str
    user: int | None
    park: Park | None = None
    park_after: int = 0  # the pair is parked (or cleared) once this many writes are done
    writes: list[Sm8Write | ResourceOp] = field(default_factory=list)
    snapshot: PairSnapshot | None = None
    direction: Literal["push", "pull", "in_step", "none"] = "none"
    reason: str = ""
    target: Presence | None = None
    skipped: str | None = None  # a report counter name when the pair is left alone
    # what the rule read, for the trail (``mappings.trail``)
    sm8_side: Side | None = None
    cd_side: Side | None = None
    state: str | None = None
    bookings: tuple[AllocationFacts, ...] = ()


@dataclass
class PairsPlan:
    pairs: list[PairPlan]
    unmapped_users: list[int]  # present in Coredination, no ServiceM8 staff member


def job_deleted(record: JobRecord) -> bool:
    """The ServiceM8 job is deleted (``active = 0``): nobody is booked on it, whatever its
    bookings say, until it is restored."""
    return record.details is not None and not record.details.active


def deleted_since(view: CdView) -> int:
    """The earliest a Coredination job found gone can have been deleted: its last change the
    bridge knows of. A person's ServiceM8 change after it re-creates the job (the bridge's own
    writes never count: ``AllocationFacts.changed_by_person``). With nothing known, 0: every
    later change counts (better a job created again than a change left out)."""
    known = [t for t in (view.modified_ms, *view.changed_ms.values()) if t is not None]
    return max(known) if known else 0


def booked_since(record: JobRecord, since_ms: int) -> bool:
    """A person changed a booking on the job in ServiceM8 after ``since_ms`` (a change of the
    fields the rules read: opening a booking on the phone is none, nor the bridge's own write).
    ServiceM8 stamps whole seconds, so a change within the second before counts too: better a
    job created once more than an office change left out."""
    return any(changed_since(a, since_ms) for a in record.allocations.values())


def changed_since(allocation: AllocationFacts, since_ms: int) -> bool:
    """A person changed this booking after ``since_ms`` (``booked_since``, one booking)."""
    return allocation.changed_by_person and (allocation.edited_ms or 0) + 1000 > since_ms


def in_scope(record: JobRecord, horizon: Horizon, now_ms: int) -> bool:
    """The job has a live booking in scope (its job-level filters aside: ``Horizon.left_out``)."""
    return bool(horizon.current(record.allocations.values(), now_ms, record.details))


def needs_link(record: JobRecord, horizon: Horizon, now_ms: int) -> bool:
    """A job the bridge has not linked is linked only once it has a live booking in scope (and
    is not deleted): history never creates a Coredination job."""
    if record.cd is not None:
        return True
    return not job_deleted(record) and in_scope(record, horizon, now_ms)


def plan_job_fields(
    record: JobRecord, ns: UUID, tz: tzinfo, now_ms: int, horizon: Horizon
) -> UpsertJob | None:
    """The job's fields; its time from its live bookings, history included. A time taken from
    the bookings in scope alone moved as days passed with nothing changed, and a repeated sync
    then wrote again (the state machine found it: the reminder meant to move it misses a case),
    so a job an old one brings in is dated by its earliest live booking for now. ``horizon`` is
    kept for that next step."""
    assert record.details is not None
    body = cd_job_body(record.details, record.allocations.values(), tz, now_ms)
    digest = fingerprint(body)
    if record.cd is not None and record.fields_fp == digest:
        return None
    return UpsertJob(cd_job_uuid(ns, record.uuid), body, digest, creates=record.cd is None)


def plan_pairs(
    record: JobRecord,
    s2u: Mapping[str, int],
    u2s: Mapping[int, str],
    *,
    ns: UUID,
    tz: tzinfo,
    now_ms: int,
    tie: TieRule,
    horizon: Horizon,
    booking: BookingKind = "auto",
) -> PairsPlan:
    """Every pair of the job: each staff member with an allocation, a snapshot, or a mapped
    user's resource on the Coredination job (docs/scope.md#pairs)."""
    assert record.cd is not None
    view = record.cd
    by_staff: dict[str, list[AllocationFacts]] = {}
    for fact in record.allocations.values():
        if fact.staff_uuid:
            by_staff.setdefault(fact.staff_uuid, []).append(fact)
    people = set(by_staff) | set(record.pairs)
    unmapped = []
    for user, state in view.resources.items():
        if user in u2s:
            people.add(u2s[user])
        elif cd_presence(state) not in (None, Presence.ABSENT):
            unmapped.append(user)
    plans = [
        plan_pair(record, staff, by_staff.get(staff, []), s2u.get(staff), ns=ns, tz=tz,
                  now_ms=now_ms, tie=tie, horizon=horizon, booking=booking)
        for staff in sorted(people)
    ]  # fmt: skip
    return PairsPlan(plans, unmapped)


def plan_pair(
    record: JobRecord,
    staff: str,
    pair: Sequence[AllocationFacts],
    user: int | None,
    *,
    ns: UUID,
    tz: tzinfo,
    now_ms: int,
    tie: TieRule,
    horizon: Horizon,
    booking: BookingKind = "auto",
) -> PairPlan:
    """Decide one (job, staff member) pair and list the writes that carry the decision out.

    Only the person's bookings in scope are read and written (``horizon``); with none in scope,
    live or gone, the ServiceM8 side is silent (``_plan_silent``). On a job deleted in ServiceM8
    every booking counts: nobody stays on it."""
    assert record.cd is not None
    view = record.cd
    plan = PairPlan(staff, user)
    if staff in horizon.scope.staff_left_out:  # left alone both ways, and not parked
        plan.park, plan.skipped = Park(staff, None), "skipped.out_of_scope.staff"
        return plan
    deleted = job_deleted(record)
    everything = list(pair)
    facts = everything if deleted else horizon.current(everything, now_ms, record.details)
    history = frozenset(a.uuid for a in everything) - {a.uuid for a in facts}
    opened = job_open(record.details)
    spoken = [a for a in everything if a.uuid in history and horizon.admits(a, opened)]
    snapshot = record.pairs.get(staff)
    silent = not deleted and current_presence(everything, now_ms, horizon, record.details) is None
    # A double booking: drop our own copy, among bookings in scope only (on a deleted job too:
    # history is never deleted)
    current = facts if not deleted else horizon.current(everything, now_ms, record.details)
    for write in redundant_writes(current, now_ms):
        plan.writes.append(write)
        facts = [after_write(a, write, record.uuid, staff) if a.uuid == write.uuid else a
                 for a in facts]  # fmt: skip
    plan.park_after = len(plan.writes)
    kept = snapshot.sm8 if snapshot is not None else None
    presence_now = current_presence(facts + [a for a in everything if a.uuid in history],
                                    now_ms, horizon, record.details, kept)  # fmt: skip
    live_facts = [a for a in facts if a.live(now_ms)]
    basis = live_facts if presence_now == sm8_presence(live_facts, now_ms) else everything
    sm8 = Side(
        Presence.ABSENT if deleted or presence_now is None else presence_now,
        # when the person last changed a booking in scope: a deletion counts (it is no live one)
        max((a.edited_ms or 0 for a in facts + spoken), default=None),
        finishable=not deleted and finish_in_step(basis, now_ms),
    )
    plan.sm8_side, plan.bookings = sm8, tuple(facts)
    if user is None:
        reason = "staff member has no Coredination user"
        pending = not silent and sm8.presence != Presence.ABSENT
        plan.park = Park(staff, reason if pending else None)
        plan.skipped = "pending.unmapped_staff" if plan.park.reason else None
        return plan
    state = view.resources.get(user)
    presence = cd_presence(state)
    if presence is None:
        plan.park = Park(staff, f"Coredination resource state {str(state)[:30]!r} is unknown")
        plan.skipped = "skipped.unknown_resource_state"
        return plan
    plan.park = Park(staff, None)
    cd = Side(presence, view.changed_ms.get(user, view.modified_ms))
    plan.cd_side, plan.state = cd, state
    if silent:
        return _plan_silent(plan, record, view, everything, cd, ns=ns, tz=tz, now_ms=now_ms,
                            booking=booking)  # fmt: skip
    if (not deleted and snapshot is not None and snapshot.held
            and (snapshot.sm8, snapshot.cd) == (sm8.presence, cd.presence)):  # fmt: skip
        # Held (Coredination ignored our write to a resource at work): neither side has moved
        # since, so nothing is sent again and the reason stays parked.
        plan.direction, plan.snapshot, plan.skipped = "in_step", snapshot, "held.at_work"
        plan.park = Park(staff, held_reason(state, sm8.presence))
        plan.writes += _follow(view, facts, tz, now_ms)
        return plan
    if deleted:  # nobody goes to work that no longer exists, and nobody is booked onto it
        # (work finished before the job was deleted is history: it stays as it is)
        left = cd.presence in (Presence.ABSENT, Presence.FINISHED)
        decision = (
            Decision("in_step")
            if left
            else Decision("push", Presence.ABSENT, "job deleted in ServiceM8")
        )
    else:
        decision = decide(record.pairs.get(staff), sm8, cd, tie)
    plan.reason, plan.target = decision.reason, decision.target
    if decision.action == "in_step":
        plan.direction = "in_step"
        plan.snapshot = PairSnapshot(sm8.presence, cd.presence)
        if not deleted and cd.presence != Presence.ABSENT:
            plan.writes += _follow(view, facts, tz, now_ms)
        return plan
    assert decision.target is not None
    if decision.action == "push":
        plan.direction = "push"
        dated = any(a.date_ms is not None for a in facts if a.live(now_ms))
        op = push_op(decision.target, cd.presence, dated)
        after = state
        if op is not None:
            after = cd_state_after(op)
            plan.writes.append(ResourceOp(user, op, after, before=state))
        plan.snapshot = PairSnapshot(sm8.presence, cd_presence(after) or Presence.ABSENT)
        return plan
    plan.direction = "pull"
    writes = _pull(record.uuid, view, staff, user, decision.target, facts, ns, tz, now_ms, booking,
                   reserved=history, taken=_others(record, staff))  # fmt: skip
    by_uuid = {a.uuid: a for a in facts}
    for write in writes:
        by_uuid[write.uuid] = after_write(by_uuid.get(write.uuid), write, record.uuid, staff)
    if decision.target in (Presence.SCHEDULED, Presence.FINISHED):  # on the bookings as pulled
        follow = _follow(view, list(by_uuid.values()), tz, now_ms)
        for write in follow:
            by_uuid[write.uuid] = after_write(by_uuid[write.uuid], write, record.uuid, staff)
        writes += follow
    plan.writes += writes
    plan.snapshot = PairSnapshot(sm8_presence(by_uuid.values(), now_ms), cd.presence)
    return plan


def _others(record: JobRecord, staff: str) -> frozenset[str]:
    """The uuids of the job's bookings held by anyone but ``staff``: a uuid the bridge derives
    for ``staff`` must not be one of them (``ids.free_derived``)."""
    return frozenset(u for u, a in record.allocations.items() if a.staff_uuid != staff)


def _plan_silent(
    plan: PairPlan,
    record: JobRecord,
    view: CdView,
    bookings: list[AllocationFacts],
    cd: Side,
    *,
    ns: UUID,
    tz: tzinfo,
    now_ms: int,
    booking: BookingKind,
) -> PairPlan:
    """A pair whose ServiceM8 side is silent: the person has no booking in scope (or the job
    has none). Left alone unless Coredination changed since the snapshot; then the change flows
    back, onto what is not history: a person put on the job gets a new booking (or the bridge's
    own old one, revived), a person finished completes their open flexible bookings (a worker
    finishing after the visit left scope), and a person taken off deletes nothing."""
    snapshot = record.pairs.get(plan.staff)
    before = snapshot.cd if snapshot is not None else Presence.ABSENT
    if cd.presence == before:
        plan.skipped = "skipped.out_of_scope.history" if bookings else None
        return plan
    assert plan.user is not None
    plan.direction, plan.target = "pull", cd.presence
    plan.reason = "changed in Coredination (the person's bookings are out of scope)"
    writes: list[Sm8Write] = []
    if cd.presence == Presence.FINISHED:
        when = _wall(view.changed_ms.get(plan.user) or view.modified_ms or now_ms, tz)
        writes = [Sm8Write("update", a.uuid, {"completion_timestamp": when}) for a in bookings
                  if a.live(now_ms) and not a.fixed and a.completed_ms is None]  # fmt: skip
    elif cd.presence != Presence.ABSENT:
        writes = _pull(record.uuid, view, plan.staff, plan.user, cd.presence, [], ns, tz, now_ms,
                       booking, reserved=frozenset(a.uuid for a in bookings),
                       taken=_others(record, plan.staff))  # fmt: skip
    by_uuid = {a.uuid: a for a in bookings}
    done = [after_write(by_uuid.get(w.uuid), w, record.uuid, plan.staff) for w in writes]
    plan.writes += writes
    plan.snapshot = PairSnapshot(sm8_presence(done, now_ms), cd.presence)
    return plan


def _follow(view: CdView, pair: list[AllocationFacts], tz: tzinfo, now_ms: int) -> list[Sm8Write]:
    """Our own fixed bookings follow the Coredination job's time (a timed job only)."""
    if not view.timed:
        return []
    return follow_writes(pair, _job_times(view, tz), now_ms)


def _job_times(view: CdView, tz: tzinfo) -> tuple[datetime, datetime]:
    """A timed Coredination job's start and end; one hour when it has neither end nor duration."""
    assert view.start_ms is not None
    start = _wall(view.start_ms, tz)
    end = _wall(view.end_ms, tz) if view.end_ms is not None else None
    return start, end if end is not None and end > start else start + timedelta(hours=1)


def _wall(ms: int, tz: tzinfo) -> datetime:
    """A time as ServiceM8 will hold it: whole seconds (a time written with milliseconds would
    read back as another time, and the bridge would take its own write for a change), and wall
    clock in the account's timezone (in the hour repeated when daylight saving ends, the reading
    ServiceM8's naive stamp gives back)."""
    return datetime.fromtimestamp(ms // 1000, tz).replace(fold=0)


def _day(view: CdView, event_ms: int, tz: tzinfo) -> datetime:
    """The date of a flexible booking on an untimed or all-day job: the job's day (an all-day
    job's start is a date: a whole UTC day is taken as that date), else the day the person was
    scheduled; midnight in the account's timezone."""
    if view.start_ms is not None and view.all_day and view.start_ms % 86_400_000 == 0:
        day = datetime.fromtimestamp(view.start_ms / 1000, UTC).date()
    else:
        day = datetime.fromtimestamp((view.start_ms or event_ms) // 1000, tz).date()
    return datetime.combine(day, time(0), tzinfo=tz)


def _pull(
    job_uuid: str,
    view: CdView,
    staff: str,
    user: int,
    target: Presence,
    pair: list[AllocationFacts],
    ns: UUID,
    tz: tzinfo,
    now_ms: int,
    booking: BookingKind,
    reserved: frozenset[str] = frozenset(),
    taken: frozenset[str] = frozenset(),
) -> list[Sm8Write]:
    event_ms = view.changed_ms.get(user) or view.modified_ms or now_ms
    event = _wall(event_ms, tz)
    fixed: tuple[datetime, datetime] | None = None
    if view.timed:
        day = _wall(view.start_ms or 0, tz)
        if booking != "flexible":
            fixed = _job_times(view, tz)
    else:  # an untimed (or all-day) job: the day of the job, or the day the user was scheduled
        day = _day(view, event_ms, tz)
        if booking == "fixed":  # no flexible bookings on this account: an hour from then
            start = event.replace(second=0)
            fixed = (start, start + timedelta(hours=1))
    return pull_writes(
        target,
        pair,
        job_uuid=job_uuid,
        staff_uuid=staff,
        derived=(
            free_derived(sm8_allocation_uuid, ns, view.uuid, user, taken),
            free_derived(sm8_activity_uuid, ns, view.uuid, user, taken),
        ),
        slot=Slot(fixed=fixed, day=day, flexible=booking != "fixed"),
        finished_at=event,
        now_ms=now_ms,
        reserved=reserved,
    )
