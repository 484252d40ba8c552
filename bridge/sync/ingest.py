"""Ingest from ServiceM8: polls, webhook-triggered reads and backfill only record what the API
says into the store and mark the affected jobs dirty, durably, in the same step. The job sync
(``bridge.sync.jobsync``) decides later. So a poll may advance its cursor as soon as it has
ingested: the dirty mark, not a queued message, is what guarantees the job is synced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from bridge.errors import InvalidRecord, NotFound
from bridge.log import get_logger
from bridge.servicem8 import where
from bridge.servicem8.models import JobAllocation
from bridge.servicem8.translate import allocation_facts, job_facts
from bridge.store import StaffMap
from bridge.sync.context import CURSOR_SM8_ALLOCATIONS, CURSOR_SM8_JOBS, SyncContext
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, sm8_allocation_uuid
from mappings.stamps import format_sm8_stamp, parse_sm8_stamp

log = get_logger(__name__)

BACKFILL_BATCH = 500


def facts_of(ctx: SyncContext, allocation: JobAllocation, staff_map: StaffMap) -> AllocationFacts:
    """An allocation's facts, its window resolved, and marked as the bridge's own when its uuid
    is the one the bridge derives for that job and user."""
    window_uuid = (allocation.allocation_window_uuid or "").lower()
    windows = ctx.allocation_windows()
    if window_uuid and window_uuid not in windows:
        windows = ctx.allocation_windows(refresh=True)
    facts = allocation_facts(allocation, windows.get(window_uuid))
    user = staff_map.s2u.get(facts.staff_uuid or "")
    if user is not None:
        derived = sm8_allocation_uuid(ctx.ns, cd_job_uuid(ctx.ns, facts.job_uuid), user)
        if derived == facts.uuid:
            facts = replace(facts, by_bridge=True)
    return facts


def parker(ctx: SyncContext) -> Callable[[InvalidRecord], None]:
    """An unreadable record: kept, with the reason, where ``bridge status`` shows it."""

    def park(exc: InvalidRecord) -> None:
        kind = (exc.operation or "record").split(".")[0]
        record = f"{exc.api}.{kind}:{(exc.record or '?').lower()}"
        if ctx.stores.parked.set_invalid(record, exc.reason, ctx.clock()):
            log.warning("poll.invalid_record", record=record, reason=exc.reason)

    return park


def _since(ctx: SyncContext, cursor: str | None) -> Any:
    if cursor is None:
        return where("active", "eq", 1)
    stamp = parse_sm8_stamp(cursor, ctx.tz)
    assert stamp is not None
    return where("edit_date", "gt", stamp - ctx.options.sm8_overlap)


def _max_stamp(current: datetime | None, value: datetime | None) -> datetime | None:
    if value is None:
        return current
    return value if current is None or value > current else current


def poll_servicem8(ctx: SyncContext) -> set[str]:
    """Read allocations and jobs changed since the cursors (re-reading an overlap window);
    record them; return the jobs now dirty. The first poll reads every active record. A record
    that cannot be read is parked with its reason; the others go on."""
    stores, park = ctx.stores, parker(ctx)
    staff_map = stores.staff.staff_map()
    parked = set(stores.parked.invalid())
    dirty: set[str] = set()
    started = ctx.clock()
    cursor, newest = stores.activity.cursor(CURSOR_SM8_ALLOCATIONS), None
    facts = []
    for allocation in ctx.sm8.iter_allocations(_since(ctx, cursor), park):
        facts.append(facts_of(ctx, allocation, staff_map))
        newest = _max_stamp(newest, allocation.edit_date)
    dirty |= stores.jobs.ingest_allocations(facts, read_started=started)
    if newest is not None:
        stores.activity.set_cursor(CURSOR_SM8_ALLOCATIONS, format_sm8_stamp(newest, ctx.tz))

    cursor, newest = stores.activity.cursor(CURSOR_SM8_JOBS), None
    jobs = []
    for job in ctx.sm8.iter_jobs(_since(ctx, cursor), park):
        jobs.append(job_facts(job))
        newest = _max_stamp(newest, job.edit_date)
    dirty |= stores.jobs.ingest_jobs(jobs, only_known=True)
    if newest is not None:
        stores.activity.set_cursor(CURSOR_SM8_JOBS, format_sm8_stamp(newest, ctx.tz))
    if parked:  # read cleanly now: no longer parked
        read = {f"servicem8.joballocation:{f.uuid}" for f in facts}
        read |= {f"servicem8.job:{j.uuid}" for j in jobs}
        stores.parked.clear_invalid(parked & read)
    return dirty


def push_allocation(ctx: SyncContext, uuid: str) -> set[str]:
    """A webhook said allocation ``uuid`` changed: read it and record it."""
    started = ctx.clock()
    try:
        allocation = ctx.sm8.get_allocation(uuid)
    except NotFound:
        log.warning("push.allocation_missing", sm8_allocation_uuid=uuid)
        return set()
    facts = facts_of(ctx, allocation, ctx.stores.staff.staff_map())
    return ctx.stores.jobs.ingest_allocations([facts], read_started=started)


def push_job(ctx: SyncContext, uuid: str) -> set[str]:
    """A webhook said job ``uuid`` changed: re-read it if the bridge knows it."""
    if not ctx.stores.jobs.has(uuid.lower()):
        return set()
    return ctx.stores.jobs.ingest_jobs([job_facts(ctx.sm8.get_job(uuid))], only_known=True)


def backfill(
    ctx: SyncContext, since: datetime | None, progress: Callable[[int], None] = lambda n: None
) -> set[str]:
    """Read every allocation edited after ``since`` (account time; ``None``: every active one)
    and record it; return the jobs now dirty. Cursors are left alone."""
    staff_map = ctx.stores.staff.staff_map()
    if since is None:
        flt = where("active", "eq", 1)
    else:
        flt = where("edit_date", "gt", since.replace(tzinfo=since.tzinfo or ctx.tz))
    dirty: set[str] = set()
    batch: list[AllocationFacts] = []
    started = ctx.clock()
    for allocation in ctx.sm8.iter_allocations(flt, parker(ctx)):
        batch.append(facts_of(ctx, allocation, staff_map))
        if len(batch) >= BACKFILL_BATCH:
            dirty |= ctx.stores.jobs.ingest_allocations(batch, read_started=started)
            progress(len(batch))
            batch = []
    if batch:
        dirty |= ctx.stores.jobs.ingest_allocations(batch, read_started=started)
        progress(len(batch))
    return dirty
