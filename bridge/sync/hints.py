"""ServiceM8 webhook hints read together (docs/operations.md#hint-coalescing): the hints of one
object gathered over a short window cost one list read, not one read each.

A batch of one hint is read by id (one call either way). A larger batch is one list read of the
object's records edited since the earliest change the hints name, less a second, and every record
it returns is ingested, hinted or not; a hinted record that read did not return (its hint named
no time, or ServiceM8's clock and the hint disagree) is then read by id, so no hint is lost to the
filter. The poll cursor is left alone: the read covers the hints, not everything since the poll.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from datetime import datetime, timedelta

from bridge.errors import InvalidRecord, NotFound, Rejected
from bridge.log import get_logger
from bridge.servicem8 import where
from bridge.servicem8.models import JobActivity, JobAllocation
from bridge.servicem8.translate import job_facts
from bridge.store import HintBatch, HintStore
from bridge.sync.context import SyncContext
from bridge.sync.ingest import (
    facts_of,
    filter_refused,
    parker,
    push_activity,
    push_allocation,
    push_job,
    read_in_full,
)
from mappings.stamps import StampError, parse_sm8_stamp

log = get_logger(__name__)

HINTED = ("joballocation", "jobactivity", "job")  # the ServiceM8 objects whose hints gather
MARGIN = timedelta(seconds=1)  # stamps are whole seconds: "gt" one second earlier takes the first


def read_hints(ctx: SyncContext, obj: str, lease_ms: int) -> tuple[set[str], int] | None:
    """Take the waiting hints of ``obj``, read what they name, ingest it, clear them. Returns the
    jobs now dirty and how many hints wait still, or None when another reader holds the lease
    (its batch covers what was waiting)."""
    hints = ctx.stores.hints
    kind = f"servicem8.{obj}"
    batch = hints.take(kind, uuidlib.uuid4().hex, lease_ms)
    if batch is None:
        return None
    # The lease is short, so a reader killed at work frees its object within two windows; a
    # thread renews it while this reader lives, however long its reads take (it dies with it).
    stop = threading.Event()
    keeper = threading.Thread(target=_keep, args=(hints, kind, batch.token, lease_ms, stop),
                              name="hint-lease", daemon=True)  # fmt: skip
    keeper.start()
    try:
        dirty = _read(ctx, obj, batch)
    except BaseException:
        hints.release(kind, batch.token)
        raise
    finally:
        stop.set()
        keeper.join()
    return dirty, hints.done(kind, batch)


def _keep(hints: HintStore, kind: str, token: str, lease_ms: int, stop: threading.Event) -> None:
    while not stop.wait(lease_ms / 3000):
        try:
            if not hints.renew(kind, token, lease_ms):
                return
        except Exception:  # Redis away a moment: the next renewal tries again
            log.debug("hints.lease_renew_failed", object=kind)


def _read(ctx: SyncContext, obj: str, batch: HintBatch) -> set[str]:
    if not batch.uuids:
        return set()
    stamps = [s for s in (_stamp(ctx, t) for t in batch.times) if s is not None]
    if len(batch.uuids) == 1 or not stamps:  # one hint, or no change time to filter by
        return _each_by_id(ctx, obj, batch.uuids)
    name, started = f"servicem8.{obj}.filter", ctx.clock()
    state = ctx.stores.activity.object_states().get(name)
    if filter_refused(state, started):  # the list cannot be narrowed: each hint alone
        return _each_by_id(ctx, obj, batch.uuids)
    since = min(stamps) - MARGIN
    dirty: set[str] = set()
    seen: set[str] = set()
    flt = where("edit_date", "gt", since)
    try:
        if obj == "job":
            jobs = list(ctx.sm8.iter_jobs(flt, parker(ctx)))
            dirty |= ctx.stores.jobs.ingest_jobs([job_facts(j) for j in jobs], only_known=True)
            seen = {j.uuid.lower() for j in jobs}
        else:
            listing = ctx.sm8.iter_activities if obj == "jobactivity" else ctx.sm8.iter_allocations
            staff_map = ctx.stores.staff.staff_map()
            bookings: list[JobAllocation | JobActivity] = list(listing(flt, parker(ctx)))
            facts = [facts_of(ctx, b, staff_map) for b in bookings]
            dirty |= ctx.stores.jobs.ingest_allocations(facts, read_started=started)
            seen = {b.uuid.lower() for b in bookings}
    except Rejected as exc:
        if "filter" not in exc.reason.lower():
            raise
        # The object's change filter is refused (docs/servicem8-api.md#paging): recorded as the
        # poll records it, and the hinted records are read one by one.
        read_in_full(ctx, name, state, started, refused=True,
                     reason=f"its edit_date filter is refused (HTTP {exc.status}): "
                            f"{exc.reason}")  # fmt: skip
        return _each_by_id(ctx, obj, batch.uuids)
    missed = [u for u in batch.uuids if u not in seen]
    ctx.stores.activity.count({"hints.servicem8.list_reads": 1,
                               "hints.servicem8.by_list": len(batch.uuids) - len(missed),
                               "hints.servicem8.by_id": len(missed)})  # fmt: skip
    if missed:
        log.info("hints.not_in_list", object=obj, missed=len(missed), hinted=len(batch.uuids))
        dirty |= _by_id(ctx, obj, missed)
    return dirty


def _stamp(ctx: SyncContext, text: str) -> datetime | None:
    """The change time a hint named (the account's time), or None when it named none."""
    try:
        return parse_sm8_stamp(text, ctx.tz) if text else None
    except StampError:
        return None


def _each_by_id(ctx: SyncContext, obj: str, uuids: list[str]) -> set[str]:
    """The whole batch read one record at a time, counted as such."""
    ctx.stores.activity.count({"hints.servicem8.by_id": len(uuids)})
    return _by_id(ctx, obj, uuids)


def _by_id(ctx: SyncContext, obj: str, uuids: list[str]) -> set[str]:
    dirty: set[str] = set()
    park = parker(ctx)
    for uuid in uuids:
        try:
            if obj == "job":
                dirty |= push_job(ctx, uuid)
            elif obj == "jobactivity":
                dirty |= push_activity(ctx, uuid)
            else:
                dirty |= push_allocation(ctx, uuid)
        except NotFound:
            log.warning("push.record_missing", object=obj, sm8_record_uuid=uuid)
        except InvalidRecord as exc:  # parked with its reason, as a poll parks it; the rest go on
            park(exc)
    return dirty
