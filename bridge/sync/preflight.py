"""What a job's sync settles before it plans (``bridge.sync.jobsync``): whether to wait for the
first poll's job list rather than read the job alone, and what a sync that ended with a write
on its way left behind (docs/how-it-works.md#leases)."""

from __future__ import annotations

from bridge.coredination.translate import view_of
from bridge.errors import NotFound, Rejected
from bridge.http.budget import priority
from bridge.log import get_logger
from bridge.sync.context import (
    CURSOR_SM8_ACTIVITIES,
    CURSOR_SM8_ALLOCATIONS,
    CURSOR_SM8_JOBS,
    Report,
    SyncContext,
)
from bridge.sync.ingest import UNAVAILABLE
from mappings.readback import take_read
from mappings.state import JobRecord
from mappings.transitions import SyncWrite

log = get_logger(__name__)

WAITING_JOB_LIST = "pending.job_list"


def job_list_first(ctx: SyncContext) -> bool:
    """Whether a job whose details are not known waits for the poll's read of the job list:
    while the first poll has read bookings but not yet the job list (the budget ran out between
    them, or it is still reading), and this is not a webhook's sync (those read their job at
    once). An account that refuses the job list for good waits for nothing."""
    if priority.get() == "interactive":
        return False
    cursors = ctx.stores.activity.cursors()
    if cursors.get(CURSOR_SM8_JOBS) is not None:
        return False
    if cursors.get(CURSOR_SM8_ALLOCATIONS) is None and cursors.get(CURSOR_SM8_ACTIVITIES) is None:
        return False  # no poll has read bookings: a webhook's or a command's job, read it
    state = ctx.stores.activity.object_states(cursors).get("servicem8.job") or {}
    return state.get("state") != UNAVAILABLE


def read_after_crash(ctx: SyncContext, record: JobRecord, flight: str, report: Report) -> None:
    """A sync of this job ended with a write on its way (its worker died, or the answer was
    lost) and no sync has ended since: read the Coredination job before writing anything, so
    what landed is not sent again. A job a create made is linked with the body it was sent
    (``flight``: its digest); a linked job's resources are taken as the job shows them, and the
    pairs are then planned from them (a person already on the job is linked, not written)."""
    uuid = record.cd.uuid if record.cd is not None else ctx.stores.jobs.cd_uuid(record.uuid)
    try:
        seen = view_of(ctx.cd.get_job(uuid), uuid)
    except NotFound:
        return  # the create did not land, or the job is gone: the sync finds out as it goes
    except Rejected:
        return  # the job's reads are refused (so were its writes): the sync meets the refusal
    report.add("coredination.read_after_crash")
    log.info("sync.read_after_crash", sm8_job_uuid=record.uuid, linked=record.cd is not None)
    if record.cd is None:
        record.cd = seen
        record.fields_fp = flight if flight != "1" else None
        report.settle.writes.append(SyncWrite(record.uuid, view=seen, fields_fp=record.fields_fp))
        return
    take_read(record.cd, seen)
