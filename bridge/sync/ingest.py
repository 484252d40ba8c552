"""Ingest from ServiceM8: polls, webhook-triggered reads and backfill only record what the API
says into the store and mark the affected jobs dirty, durably, in the same step. The job sync
(``bridge.sync.jobsync``) decides later. So a poll may advance its cursor as soon as it has
ingested: the dirty mark, not a queued message, is what guarantees the job is synced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from bridge.errors import (
    ApiError,
    BudgetExhausted,
    InvalidRecord,
    NotFound,
    Rejected,
    UuidMoved,
)
from bridge.log import get_logger
from bridge.servicem8 import Filter, where
from bridge.servicem8.classify import refused_for_good
from bridge.servicem8.creates import UuidTaken
from bridge.servicem8.models import JobActivity, JobAllocation, SM8Record
from bridge.servicem8.translate import activity_facts, allocation_facts, job_facts
from bridge.store import StaffMap
from bridge.sync.context import (
    CURSOR_SM8_ACTIVITIES,
    CURSOR_SM8_ALLOCATIONS,
    CURSOR_SM8_JOBS,
    SyncContext,
)
from mappings import localtime
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, is_derived, sm8_activity_uuid, sm8_allocation_uuid
from mappings.localtime import later_stamp, reach_back, stamp_wall
from mappings.stamps import format_sm8_stamp, parse_sm8_stamp

log = get_logger(__name__)

BACKFILL_BATCH = 500


def facts_of(
    ctx: SyncContext, booking: JobAllocation | JobActivity, staff_map: StaffMap
) -> AllocationFacts:
    """A booking's facts (an allocation's window resolved), marked as the bridge's own when its
    uuid is the one the bridge derives for that job, user and kind."""
    if isinstance(booking, JobActivity):
        facts, derive = activity_facts(booking), sm8_activity_uuid
    else:
        window_uuid = (booking.allocation_window_uuid or "").lower()
        windows = ctx.allocation_windows()
        if window_uuid and window_uuid not in windows:
            windows = ctx.allocation_windows(refresh=True)
        facts, derive = allocation_facts(booking, windows.get(window_uuid)), sm8_allocation_uuid
    user = staff_map.s2u.get(facts.staff_uuid or "")
    if user is not None and is_derived(
        derive, ctx.ns, cd_job_uuid(ctx.ns, facts.job_uuid), user, facts.uuid
    ):
        facts = replace(facts, by_bridge=True)
    return facts


def parker(ctx: SyncContext) -> Callable[[InvalidRecord], None]:
    """An unreadable record: kept, with the reason, where ``sm8cd status`` shows it."""

    def park(exc: InvalidRecord) -> None:
        kind = (exc.operation or "record").split(".")[0]
        record = f"{exc.api}.{kind}:{(exc.record or '?').lower()}"
        if ctx.stores.parked.set_invalid(record, exc.reason, ctx.clock()):
            log.warning("poll.invalid_record", record=record, reason=exc.reason)

    return park


def active(obj: str) -> Any:
    """Every active record of ``obj``; of job activities, only the fixed bookings (an account's
    years of time worked are no bookings, and need not be read whole)."""
    flt = where("active", "eq", 1)
    return flt.where("activity_was_scheduled", "eq", 1) if obj == "jobactivity" else flt


def _since(ctx: SyncContext, cursor: str | None, obj: str) -> Any:
    """Changed since the cursor (re-reading the overlap); everything active when there is none.
    A read from the cursor filters on nothing else, so a booking that stops being one is seen.

    The cursor is a naive stamp, compared as ServiceM8 compares stamps, by wall time. When the
    clocks have gone back since it was written, a change made in the repeated hour carries an
    older-looking stamp, so the filter reaches back to that hour's start until the cursor has
    passed it (``localtime.reach_back``, docs/servicem8-api.md#local-time); the records read
    again are echoes and change nothing."""
    if cursor is None:
        return active(obj)
    now = datetime.fromtimestamp(ctx.clock(), UTC)
    start = reach_back(stamp_wall(cursor), now, ctx.tz, ctx.options.sm8_overlap)
    return where("edit_date", "gt", localtime.local(start, ctx.tz))


def _max_stamp(current: datetime | None, value: datetime | None) -> datetime | None:
    return later_stamp(current, value)


def _save_cursor(ctx: SyncContext, name: str, cursor: str | None, newest: datetime | None) -> None:
    """The cursor moves to the newest stamp read, never back: a poll that reached back into a
    repeated hour reads stamps older-looking than the cursor, which must not pull it back."""
    if newest is None:
        return
    stored = parse_sm8_stamp(cursor, ctx.tz) if cursor is not None else None
    ctx.stores.activity.set_cursor(name, format_sm8_stamp(later_stamp(stored, newest), ctx.tz))


R = TypeVar("R", bound=SM8Record)
READ_IN_FULL = "read-in-full"  # an object_states state: the object's change filter does not work


def _read(
    ctx: SyncContext,
    obj: str,
    listing: Callable[[Filter | None, Callable[[InvalidRecord], None]], Iterable[R]],
    cursor: str | None,
    park: Callable[[InvalidRecord], None],
) -> list[R]:
    """The records changed since ``cursor``, or the whole list where the object's change filter
    does not work (docs/servicem8-api.md#paging): one refused (``400 Unsupported $filter
    field``) is read again without it, recorded as read in full, and the filter is tried again
    only every ``RECHECK_SECONDS``; one accepted and ignored (the answer holds records older
    than the filter's stamp) is recorded so too, for status. The poll plan counts the pages
    either way, so a read in full is polled less often within the day's budget."""
    name, now = f"servicem8.{obj}.filter", ctx.clock()
    state = ctx.stores.activity.object_states().get(name) if cursor is not None else None
    refused = filter_refused(state, now)
    flt = Filter() if refused else _since(ctx, cursor, obj)
    try:
        rows = list(listing(flt, park))
    except Rejected as exc:
        if not (cursor is not None and flt and "filter" in exc.reason.lower()):
            raise
        read_in_full(ctx, name, state, now, refused=True,
                      reason=f"its edit_date filter is refused (HTTP {exc.status}): "
                             f"{exc.reason}")  # fmt: skip
        return list(listing(Filter(), park))
    if refused or cursor is None or not flt:
        return rows
    since = next((v for f, _, v in flt.conditions if f == "edit_date"), None)
    assert isinstance(since, datetime)
    wall = since.replace(tzinfo=None)
    older = sum(1 for r in rows
                if r.edit_date is not None and r.edit_date.replace(tzinfo=None) < wall)  # fmt: skip
    if older:
        read_in_full(ctx, name, state, now, refused=False,
                      reason=f"its edit_date filter is accepted and ignored ({older} of "
                             f"{len(rows)} records read were older than it)")  # fmt: skip
    elif state is not None:
        ctx.stores.activity.clear_object_state(name)
        log.info("poll.filter_works", object=obj)
    return rows


def filter_refused(state: dict[str, Any] | None, now: float) -> bool:
    """Whether an object's ``edit_date`` filter, as its state records it
    (``servicem8.{obj}.filter``), was refused less than ``RECHECK_SECONDS`` ago."""
    return bool(state and state.get("refused")) and now - float(
        (state or {}).get("checked", 0)) < RECHECK_SECONDS  # fmt: skip


def read_in_full(
    ctx: SyncContext, name: str, known: dict[str, Any] | None, now: float, *, refused: bool,
    reason: str,
) -> None:  # fmt: skip
    """Record that an object is read in full, and why (``sm8cd status`` shows it)."""
    ctx.stores.activity.set_object_state(name, {
        "state": READ_IN_FULL, "refused": refused, "reason": reason[:300],
        "since": (known or {}).get("since", now), "checked": now,
    })  # fmt: skip
    if known is None or known.get("refused") != refused:
        log.warning("poll.read_in_full", object=name, reason=reason[:300])


SM8_POLLED = ("joballocation", "jobactivity", "job")  # the ServiceM8 objects polled, in order
ALLOCATIONS = "servicem8.joballocation"
UNAVAILABLE = "unavailable"  # an object_states state: the account refuses the object for good
# An object the account refused for good is asked again this often: an add-on enabled later
# brings its object back within hours, at one call each time (docs/how-it-works.md#refusals).
RECHECK_SECONDS = 6 * 3600.0


def withheld(states: dict[str, dict[str, Any]], objects: Collection[str], now: float) -> set[str]:
    """The objects of ``objects`` the account refused for good, until their recheck is due
    (``states``: ``ActivityStore.object_states``)."""
    return {
        obj
        for obj in objects
        if (row := states.get(f"servicem8.{obj}")) is not None
        and row.get("state") == UNAVAILABLE
        and now - float(row.get("checked", 0)) < RECHECK_SECONDS
    }


def allocations_unavailable(ctx: SyncContext) -> dict[str, Any] | None:
    """Why the account's job allocations are unavailable (its list refused for good), or None."""
    row = ctx.stores.activity.object_states().get(ALLOCATIONS)
    return row if row is not None and row.get("state") == UNAVAILABLE else None


def _mark_unavailable(ctx: SyncContext, obj: str, exc: ApiError) -> None:
    name, now = f"servicem8.{obj}", ctx.clock()
    known = ctx.stores.activity.object_states().get(name) or {}
    ctx.stores.activity.set_object_state(name, {
        "state": UNAVAILABLE,
        "reason": f"the account refuses the {obj} list (HTTP {exc.status}): {exc.reason}"[:300],
        "since": known.get("since", now),
        "checked": now,
    })  # fmt: skip
    ctx.windows.allocations_at = None  # pull_booking reads it again
    if not known:
        log.warning("poll.object_unavailable", object=obj, **exc.describe())


def poll_servicem8(ctx: SyncContext, objects: Collection[str] = SM8_POLLED) -> set[str]:
    """Read bookings of both kinds (allocations, then activities) and jobs changed since their
    cursors (re-reading an overlap window), or only the ``objects`` named; record them; return
    the jobs now dirty. The first poll reads every active record. A record that cannot be read is
    parked with its reason; the others go on.

    Each object is read on its own, so one object's failure stops no other
    (docs/how-it-works.md#refusals): an allocation list refused for good (the account lacks the
    add-on) marks allocations unavailable and is asked again only every ``RECHECK_SECONDS``;
    any other failure is raised once the other objects are read. A spent budget stops them all
    (it is the account's)."""
    stores, park = ctx.stores, parker(ctx)
    staff_map = functools.cache(stores.staff.staff_map)  # read once, and only for bookings read
    dirty: set[str] = set()
    read: set[str] = set()
    failed: list[ApiError] = []
    states = stores.activity.object_states()
    skipped = withheld(states, objects, ctx.clock())
    for obj in (o for o in SM8_POLLED if o in objects and o not in skipped):
        try:
            read |= _poll_object(ctx, obj, staff_map, park, dirty)
        except BudgetExhausted:
            raise
        except ApiError as exc:
            if refused_for_good(obj, exc):
                _mark_unavailable(ctx, obj, exc)
            else:
                log.warning("poll.object_failed", object=obj, **exc.describe())
                failed.append(exc)
            continue
        if obj == "joballocation" and ALLOCATIONS in states:
            stores.activity.clear_object_state(ALLOCATIONS)
            ctx.windows.allocations_at = None
            log.info("poll.object_available", object=obj)
    parked = set(stores.parked.invalid()) if read else set()
    if parked:  # read cleanly now: no longer parked
        stores.parked.clear_invalid(parked & read)
    if failed:
        raise failed[0]
    return dirty


def _poll_object(
    ctx: SyncContext,
    obj: str,
    staff_map: Callable[[], StaffMap],
    park: Callable[[InvalidRecord], None],
    dirty: set[str],
) -> set[str]:
    """One object's poll: read since its cursor, record, advance the cursor; the jobs made
    dirty are added to ``dirty``. Returns the records read."""
    stores = ctx.stores
    if obj == "job":
        cursor, newest = stores.activity.cursor(CURSOR_SM8_JOBS), None
        jobs = []
        for job in _read(ctx, "job", ctx.sm8.iter_jobs, cursor, park):
            jobs.append(job_facts(job))
            newest = _max_stamp(newest, job.edit_date)
        dirty |= stores.jobs.ingest_jobs(jobs, only_known=True)
        _save_cursor(ctx, CURSOR_SM8_JOBS, cursor, newest)
        return {f"servicem8.job:{j.uuid}" for j in jobs}
    cursor_name = CURSOR_SM8_ALLOCATIONS if obj == "joballocation" else CURSOR_SM8_ACTIVITIES
    started = ctx.clock()
    cursor, newest = stores.activity.cursor(cursor_name), None
    facts = []
    bookings: list[JobAllocation] | list[JobActivity] = (
        _read(ctx, obj, ctx.sm8.iter_allocations, cursor, park)
        if obj == "joballocation"
        else _read(ctx, obj, ctx.sm8.iter_activities, cursor, park)
    )
    for booking in bookings:
        facts.append(facts_of(ctx, booking, staff_map()))
        newest = _max_stamp(newest, booking.edit_date)
    dirty |= stores.jobs.ingest_allocations(facts, read_started=started)
    _save_cursor(ctx, cursor_name, cursor, newest)
    return {f"servicem8.{obj}:{f.uuid}" for f in facts}


def push_allocation(ctx: SyncContext, uuid: str) -> set[str]:
    """A webhook said allocation ``uuid`` changed: read it and record it."""
    return _push_booking(ctx, "joballocation", uuid)


def push_activity(ctx: SyncContext, uuid: str) -> set[str]:
    """A webhook said job activity ``uuid`` changed: read it and record it (time worked and
    automated records read as no booking, and change nothing)."""
    return _push_booking(ctx, "jobactivity", uuid)


def _push_booking(ctx: SyncContext, obj: str, uuid: str) -> set[str]:
    started = ctx.clock()
    get = ctx.sm8.get_activity if obj == "jobactivity" else ctx.sm8.get_allocation
    try:
        booking: JobAllocation | JobActivity = get(uuid)
    except NotFound:
        log.warning(f"push.{obj.removeprefix('job')}_missing", sm8_record_uuid=uuid)
        return set()
    facts = facts_of(ctx, booking, ctx.stores.staff.staff_map())
    return ctx.stores.jobs.ingest_allocations([facts], read_started=started)


def record_holder(ctx: SyncContext, obj: str, uuid: str, taken: UuidTaken) -> UuidMoved:
    """A create found ``uuid`` held by a booking that is not the one it meant: read that booking
    and record it (the office gave the bridge's earlier booking to someone else), so the retry
    derives the next uuid. The error to raise: retried, not dead-lettered."""
    _push_booking(ctx, obj, uuid)
    return UuidMoved(f"{taken}; read it, the next try takes the person's next uuid",
                     api="servicem8", operation=taken.operation)  # fmt: skip


def push_job(ctx: SyncContext, uuid: str) -> set[str]:
    """A webhook said job ``uuid`` changed: re-read it if the bridge knows it."""
    if not ctx.stores.jobs.has(uuid.lower()):
        return set()
    return ctx.stores.jobs.ingest_jobs([job_facts(ctx.sm8.get_job(uuid))], only_known=True)


def backfill(
    ctx: SyncContext, since: datetime | None, progress: Callable[[int], None] = lambda n: None
) -> set[str]:
    """Read every booking of both kinds edited after ``since`` (account time; ``None``: every
    active one) and record it; return the jobs now dirty. Cursors are left alone."""
    staff_map = ctx.stores.staff.staff_map()
    dirty: set[str] = set()
    skipped = withheld(ctx.stores.activity.object_states(), ("joballocation",), ctx.clock())
    for obj, listing in (("joballocation", ctx.sm8.iter_allocations),
                         ("jobactivity", ctx.sm8.iter_activities)):  # fmt: skip
        if obj in skipped:  # the account has no allocations (poll_servicem8)
            continue
        if since is None:
            flt = active(obj)
        else:
            flt = where("edit_date", "gt", since.replace(tzinfo=since.tzinfo or ctx.tz))
        batch: list[AllocationFacts] = []
        started = ctx.clock()
        for booking in listing(flt, parker(ctx)):
            batch.append(facts_of(ctx, booking, staff_map))
            if len(batch) >= BACKFILL_BATCH:
                dirty |= ctx.stores.jobs.ingest_allocations(batch, read_started=started)
                progress(len(batch))
                batch = []
        if batch:
            dirty |= ctx.stores.jobs.ingest_allocations(batch, read_started=started)
            progress(len(batch))
    return dirty
