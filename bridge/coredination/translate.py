"""Coredination wire records → the bridge's view of a linked job (``mappings.state.CdView``)."""

from __future__ import annotations

from bridge.coredination.models import CdJob
from mappings.stamps import to_epoch_ms
from mappings.state import CdView


def view_of(job: CdJob, uuid: str) -> CdView:
    """Our view of a Coredination job: resource states and when each last changed, and its time
    (the end is ``endTime``, or the start plus ``duration`` minutes; docs/coredination-api.md#jobs).
    """
    changed: dict[int, int] = {}
    for event in job.events or []:
        when = to_epoch_ms(event.event_time)
        if event.to_user_id is not None and when is not None:
            changed[event.to_user_id] = max(changed.get(event.to_user_id, 0), when)
    start, end = to_epoch_ms(job.start_time), to_epoch_ms(job.end_time)
    if end is None and start is not None and job.duration:
        end = start + job.duration * 60_000
    return CdView(
        id=job.id,
        uuid=(job.uuid or uuid).lower(),
        resources={r.user_id: r.state for r in job.resources},
        changed_ms=changed,
        modified_ms=to_epoch_ms(job.modified),
        start_ms=start,
        end_ms=end,
        all_day=job.all_day,
    )
