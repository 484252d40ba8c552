"""Ingest from ServiceM8: polls, webhook-triggered reads and backfill only record what the API
says into the store and mark the affected jobs dirty, durably, in the same step. The job sync
(``bridge.sync.jobsync``) decides later. So a poll may advance its cursor as soon as it has
ingested: the dirty mark, not a queued message, is what guarantees the job is synced.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from typing import Any

from bridge.errors import InvalidRecord, NotFound
from bridge.log import get_logger
from bridge.servicem8 import where
from bridge.servicem8.models import JobActivity, JobAllocation
from bridge.servicem8.translate import activity_facts, allocation_facts, job_facts
from bridge.store import StaffMap
from bridge.sync.context import (
    CURSOR_SM8_ACTIVITIES,
    CURSOR_SM8_ALLOCATIONS,
    CURSOR_SM8_JOBS,
    SyncContext,
)
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, sm8_activity_uuid, sm8_allocation_uuid
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
    if user is not None and derive(ctx.ns, cd_job_uuid(ctx.ns, facts.job_uuid), user) == facts.uuid:
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
    A read from the cursor filters on nothing else, so a booking that stops being one is seen."""
    if cursor is None:
        return active(obj)
    stamp = parse_sm8_stamp(cursor, ctx.tz)
    assert stamp is not None
    return where("edit_date", "gt", stamp - ctx.options.sm8_overlap)


def _max_stamp(current: datetime | None, value: datetime | None) -> datetime | None:
    if value is None:
        return current
    return value if current is None or value > current else current


SM8_POLLED = ("joballocation", "jobactivity", "job")  # the ServiceM8 objects polled, in order


def poll_servicem8(ctx: SyncContext, objects: Collection[str] = SM8_POLLED) -> set[str]:
    """Read bookings of both kinds (allocations, then activities) and jobs changed since their
    cursors (re-reading an overlap window), or only the ``objects`` named; record them; return
    the jobs now dirty. The first poll reads every active record. A record that cannot be read is
    parked with its reason; the others go on."""
    stores, park = ctx.stores, parker(ctx)
    staff_map = stores.staff.staff_map()
    parked = set(stores.parked.invalid())
    dirty: set[str] = set()
    read: set[str] = set()
    for obj, cursor_name, listing in (
        ("joballocation", CURSOR_SM8_ALLOCATIONS, ctx.sm8.iter_allocations),
        ("jobactivity", CURSOR_SM8_ACTIVITIES, ctx.sm8.iter_activities),
    ):
        if obj not in objects:
            continue
        started = ctx.clock()
        cursor, newest = stores.activity.cursor(cursor_name), None
        facts = []
        for booking in listing(_since(ctx, cursor, obj), park):
            facts.append(facts_of(ctx, booking, staff_map))
            newest = _max_stamp(newest, booking.edit_date)
        dirty |= stores.jobs.ingest_allocations(facts, read_started=started)
        if newest is not None:
            stores.activity.set_cursor(cursor_name, format_sm8_stamp(newest, ctx.tz))
        read |= {f"servicem8.{obj}:{f.uuid}" for f in facts}

    if "job" in objects:
        cursor, newest = stores.activity.cursor(CURSOR_SM8_JOBS), None
        jobs = []
        for job in ctx.sm8.iter_jobs(_since(ctx, cursor, "job"), park):
            jobs.append(job_facts(job))
            newest = _max_stamp(newest, job.edit_date)
        dirty |= stores.jobs.ingest_jobs(jobs, only_known=True)
        if newest is not None:
            stores.activity.set_cursor(CURSOR_SM8_JOBS, format_sm8_stamp(newest, ctx.tz))
        read |= {f"servicem8.job:{j.uuid}" for j in jobs}
    if parked:  # read cleanly now: no longer parked
        stores.parked.clear_invalid(parked & read)
    return dirty


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
    for obj, listing in (("joballocation", ctx.sm8.iter_allocations),
                         ("jobactivity", ctx.sm8.iter_activities)):  # fmt: skip
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
