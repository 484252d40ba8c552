"""Ingest from Coredination: the poll and webhook-triggered reads record a linked job's
resources and time, and mark the job dirty when they differ from what the bridge holds."""

from __future__ import annotations

from bridge.coredination.models import CdJob
from bridge.coredination.translate import view_of
from bridge.errors import NotFound
from bridge.log import get_logger
from bridge.sync.context import CURSOR_CD_JOBS, SyncContext
from bridge.sync.ingest import parker
from mappings.stamps import to_epoch_ms
from mappings.state import CdView, JobRecord
from mappings.transitions import SyncWrite
from mappings.webhooks import JOB_FIELD_EVENTS, cd_event_known

log = get_logger(__name__)

CdEvent = tuple[str, int | None, str | None]  # Coredination event type, user id, resource state


def poll_coredination(ctx: SyncContext) -> set[str]:
    """List jobs modified since the cursor in every state, timed or not; for each linked job
    whose resources differ from what we hold, re-read it (with its events) under its lock."""
    stores = ctx.stores
    cursor = stores.activity.cursor(CURSOR_CD_JOBS)
    since = max(0, int(cursor) - ctx.options.cd_overlap_ms) if cursor else 0
    newest = int(cursor) if cursor else None
    parked = {r for r in stores.parked.invalid() if r.startswith("coredination.")}
    linked: list[tuple[str, CdJob]] = []
    jobs = ctx.cd.iter_changed_jobs(since, on_invalid=parker(ctx))
    for job in jobs:
        if parked:  # read cleanly now: no longer parked
            refs = {f"coredination.job:{r}" for r in (job.uuid and job.uuid.lower(), job.id)}
            stores.parked.clear_invalid(parked & refs)
        modified = to_epoch_ms(job.modified)
        if modified is not None:
            newest = max(newest or 0, modified)
        sm8_job = stores.jobs.job_for_cd(job.uuid or "") if job.uuid else None
        if sm8_job is not None:
            linked.append((sm8_job, job))
    # Every change after the listing began is in the next poll's window, stamped or not
    # (docs/coredination-api.md#change-stamps): the cursor moves on while nothing changes, and
    # the overlap absorbs a small difference between the two clocks.
    if jobs.listed_at_ms is not None:
        newest = max(newest or 0, jobs.listed_at_ms)
    views = stores.jobs.cd_views(j for j, _ in linked)
    dirty: set[str] = set()
    for sm8_job, job in linked:
        view = views.get(sm8_job)
        listed = {r.user_id: r.state for r in job.resources}
        if view is None or view.resources != listed or _moved(view, job):
            dirty |= pull_job(ctx, sm8_job)
    if newest is not None:
        stores.activity.set_cursor(CURSOR_CD_JOBS, str(newest))
    return dirty


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
            ctx.stores.jobs.forget_cd(sm8_job)
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
