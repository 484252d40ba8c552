"""Ingest from Coredination: the poll and webhook-triggered reads record a linked job's
resources and time, and mark the job dirty when they differ from what the bridge holds."""

from __future__ import annotations

from typing import Any

from bridge.coredination.client import DEFAULT_PAGE
from bridge.coredination.models import CdJob
from bridge.coredination.translate import view_of
from bridge.errors import InvalidRecord, NotFound
from bridge.log import get_logger
from bridge.sync.context import (
    CD_DELETED,
    CD_DELETED_REASON,
    CURSOR_CD_CENSUS,
    CURSOR_CD_CENSUS_SIZE,
    CURSOR_CD_JOBS,
    Report,
    SyncContext,
)
from bridge.sync.ingest import parker
from mappings.plan import booked_since, changed_since, deleted_since
from mappings.stamps import to_epoch_ms
from mappings.state import CdView, JobRecord
from mappings.transitions import SyncWrite
from mappings.webhooks import JOB_FIELD_EVENTS, cd_event_known

log = get_logger(__name__)

CdEvent = tuple[str, int | None, str | None]  # Coredination event type, user id, resource state
CENSUS_MAX_MISSING = 20  # linked jobs a census may find gone at once (or a tenth of the links)
ONE_PAGE = DEFAULT_PAGE  # a census that listed fewer jobs than this took one call
LINK_BATCH = 500  # listed jobs whose links are read in one round trip


def poll_coredination(ctx: SyncContext) -> set[str]:
    """List jobs modified since the cursor in every state, timed or not; for each linked job
    whose resources differ from what we hold, re-read it (with its events) under its lock.

    When the census is due the list is the whole one instead (``_census_due``): besides the
    changes it shows, by their absence, the linked jobs deleted in Coredination."""
    stores = ctx.stores
    cursor = stores.activity.cursor(CURSOR_CD_JOBS)
    census = _census_due(ctx)
    since = max(0, int(cursor) - ctx.options.cd_overlap_ms) if cursor and not census else 0
    newest = int(cursor) if cursor else None
    parked: set[str] | None = None  # read at the first job listed: an idle poll lists none
    linked: list[tuple[str, CdJob]] = []
    listed: set[str] = set()
    park = parker(ctx)

    def unreadable(exc: InvalidRecord) -> None:
        park(exc)
        listed.add((exc.record or "").lower())  # listed, so not gone, though not readable

    def link(page: list[CdJob]) -> None:
        found = stores.jobs.jobs_for_cd(j.uuid for j in page if j.uuid)
        linked.extend((found[j.uuid], j) for j in page if j.uuid and j.uuid in found)
        page.clear()

    jobs = ctx.cd.iter_changed_jobs(since, on_invalid=unreadable)
    started = ctx.clock()
    page: list[CdJob] = []
    for job in jobs:
        if job.uuid:
            listed.add(job.uuid.lower())
        if parked is None:
            parked = {r for r in stores.parked.invalid() if r.startswith("coredination.")}
        if parked:  # read cleanly now: no longer parked
            refs = {f"coredination.job:{r}" for r in (job.uuid and job.uuid.lower(), job.id)}
            stores.parked.clear_invalid(parked & refs)
        modified = to_epoch_ms(job.modified)
        if modified is not None:
            newest = max(newest or 0, modified)
        page.append(job)
        if len(page) >= LINK_BATCH:
            link(page)
    link(page)
    # Every change after the listing began is in the next poll's window, stamped or not
    # (docs/coredination-api.md#change-stamps): the cursor moves on while nothing changes, and
    # the overlap absorbs a small difference between the two clocks.
    if jobs.listed_at_ms is not None:
        newest = max(newest or 0, jobs.listed_at_ms)
    views = stores.jobs.cd_views(j for j, _ in linked)
    dirty: set[str] = set()
    for sm8_job, job in linked:
        view = views.get(sm8_job)
        resources = {r.user_id: r.state for r in job.resources}
        if view is None or view.resources != resources or _moved(view, job):
            dirty |= pull_job(ctx, sm8_job)
    if census:
        dirty |= _census(ctx, listed, len({sm8_job for sm8_job, _ in linked}), started)
        stores.activity.set_cursor(CURSOR_CD_CENSUS_SIZE, str(len(listed)))
    if newest is not None:
        stores.activity.set_cursor(CURSOR_CD_JOBS, str(newest))
    return dirty


def _census_due(ctx: SyncContext) -> bool:
    """At every poll while the whole list fits one page, where a census costs no more calls
    than a list of changes; otherwise once ``cd_census_seconds`` have passed since the last one.
    Never when ``cd_census_seconds`` is 0."""
    every = ctx.options.cd_census_seconds
    if not every:
        return False
    activity = ctx.stores.activity
    last, size = activity.cursor(CURSOR_CD_CENSUS), activity.cursor(CURSOR_CD_CENSUS_SIZE)
    if last is None or (size is not None and int(size) < ONE_PAGE):
        return True
    return ctx.clock() - float(last) >= every * 0.9


def _census(ctx: SyncContext, listed: set[str], shown: int, started: float) -> set[str]:
    """Linked jobs the whole list lacks are read by id: a 404 is a job deleted in Coredination
    (``job_deleted_in_coredination``). ``shown``: how many linked jobs the list showed; while
    that is every linked job (the count the links keep), nothing is missing and no link is read.
    A list that lacks many at once is taken for a bad answer, not a mass deletion: logged, and
    nothing is done about it."""
    stores = ctx.stores
    stores.activity.set_cursor(CURSOR_CD_CENSUS, repr(started))
    if shown >= stores.jobs.linked_cd_count():
        return set()
    links = stores.jobs.linked_cd()
    missing = {cd_uuid: job for cd_uuid, job in links.items() if cd_uuid not in listed}
    views = stores.jobs.cd_views(set(missing.values()))
    # A link to a Coredination job other than the one its job's view names is dropped, which
    # mends the count. A link whose job has no view yet is left: a sync writes the link before
    # the record, so it may be a job linked after this list began.
    stale = [c for c, job in missing.items() if (v := views.get(job)) is not None and v.uuid != c]
    if stale:
        stores.jobs.unlink(stale)
    gone = sorted(
        job for c, job in missing.items() if views.get(job) is not None and c not in stale
    )
    if len(gone) > max(CENSUS_MAX_MISSING, len(links) // 10):
        log.warning("coredination.census_suspicious", missing=len(gone), linked=len(links))
        return set()
    dirty: set[str] = set()
    for sm8_job in gone:
        dirty |= pull_job(ctx, sm8_job)
    return dirty


def job_deleted_in_coredination(ctx: SyncContext, sm8_job: str, view: CdView) -> None:
    """The linked Coredination job is gone (a dispatcher deleted it): the bridge drops its view
    and snapshots and parks the job, where ``sm8cd status`` shows it. It is created again at
    the next ServiceM8 change to a booking on it (``jobsync``), not at once: the dispatcher's
    deletion stands until the office acts. No ServiceM8 booking is touched."""
    since_ms = deleted_since(view)
    parked = ctx.stores.parked
    parked.clear_pending(sm8_job, CD_DELETED)  # a deletion noticed again is dated afresh
    parked.set_pending(sm8_job, CD_DELETED, CD_DELETED_REASON, since=since_ms / 1000)
    ctx.stores.jobs.forget_cd(sm8_job, view)
    log.warning("coredination.job_deleted", sm8_job_uuid=sm8_job, cd_job_uuid=view.uuid,
                since_ms=since_ms)  # fmt: skip


def _times(view: CdView) -> tuple[int | None, int | None, bool]:
    return view.start_ms, view.end_ms, view.all_day


def _moved(view: CdView, job: CdJob) -> bool:
    """The job's time differs from the one the bridge holds (a dispatcher moved it): the
    bridge's own fixed bookings follow it."""
    return _times(view) != _times(view_of(job, view.uuid))


def _follows(record: JobRecord) -> bool:
    """The job holds a live fixed booking the bridge made: it follows the job's time."""
    return any(a.fixed and a.by_bridge and a.active for a in record.allocations.values())


def pull_job(ctx: SyncContext, sm8_job: str, event: CdEvent | None = None) -> set[str]:
    """Re-read the Coredination job linked to ``sm8_job`` and record its resources; unless
    ``event`` (from a webhook) tells nothing beyond what the bridge already holds."""
    with ctx.locked(sm8_job):
        record = ctx.stores.jobs.load(sm8_job)
        if record.cd is None:
            return set()
        # A job-field event can move the job's time, which only the bridge's own fixed bookings
        # follow: for any other job it says nothing the bridge acts on.
        moves = event is not None and event[0].upper() in JOB_FIELD_EVENTS and _follows(record)
        if event is not None and cd_event_known(*event, record.cd.resources) and not moves:
            log.debug("pull.echo_skipped", sm8_job_uuid=sm8_job, event_type=event[0])
            return set()
        try:
            job = ctx.cd.get_job(record.cd.uuid)
        except NotFound:
            job_deleted_in_coredination(ctx, sm8_job, record.cd)
            return {sm8_job}
        view = view_of(job, record.cd.uuid)
        if view.resources == record.cd.resources and _times(view) == _times(record.cd):
            return set()
        ctx.stores.jobs.save_sync(SyncWrite(sm8_job, view=view, dirty=True))
        return {sm8_job}


def pull_webhook(ctx: SyncContext, ref: str, event: CdEvent | None = None) -> set[str]:
    """A Coredination webhook named job ``ref`` (and maybe the event: type, user, state)."""
    sm8_job = ctx.stores.jobs.job_for_cd(ref)
    return pull_job(ctx, sm8_job, event) if sm8_job else set()


def cd_job_gone(ctx: SyncContext, view: CdView) -> bool:
    """Whether the linked Coredination job is gone (read to be sure: an operation's 404 may be
    about its user)."""
    try:
        ctx.cd.get_job(view.uuid)
    except NotFound:
        return True
    return False


def may_link(record: JobRecord, entry: dict[str, Any] | None, report: Report) -> bool:
    """Whether a job with no Coredination job may get one: unless a dispatcher deleted it there
    and no booking on it has changed in ServiceM8 since (``entry``: its ``CD_DELETED`` parking,
    as loaded)."""
    if entry is None:
        return True
    since_ms = int(float(entry.get("since", 0)) * 1000)
    if booked_since(record, since_ms):
        report.settle.park(CD_DELETED, None)
        report.add("coredination.job_recreated")
        log.info("sync.coredination_job_recreated", sm8_job_uuid=record.uuid,
                 **why_recreated(record, since_ms))  # fmt: skip
        return True
    report.add("skipped.deleted_in_coredination")
    return False


def why_recreated(record: JobRecord, since_ms: int) -> dict[str, object]:
    """For the log: the deletion's bound and the bookings whose change counted after it."""
    counted = [f"{a.uuid}@{a.edited_ms}(own {a.own_ms})"
               for a in record.allocations.values() if changed_since(a, since_ms)]  # fmt: skip
    return {"since_ms": since_ms, "changed": counted}
