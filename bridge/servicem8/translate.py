"""ServiceM8 wire records → the facts the rules read (``mappings.facts``)."""

from __future__ import annotations

from bridge.servicem8.models import AllocationWindow, Job, JobActivity, JobAllocation
from mappings.facts import AllocationFacts, JobFacts
from mappings.stamps import to_epoch_ms


def window_minutes(window: AllocationWindow | None) -> tuple[int, int] | None:
    """A window's (start, end) in minutes from midnight, or None when it sets no time of day.

    A window whose start equals its end is none: the urgent window is ``0``/``0``
    (docs/servicem8-api.md#windows), and read as a span it would wrap into a 24-hour slot, so an
    allocation dated in it is an all-day job, as one without a window is."""
    if window is None or window.start_time is None or window.end_time is None:
        return None
    if window.start_time == window.end_time:
        return None
    return (window.start_time, window.end_time)


def allocation_facts(
    allocation: JobAllocation, window: AllocationWindow | None, *, by_bridge: bool = False
) -> AllocationFacts:
    minutes = window_minutes(window)
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


def activity_facts(activity: JobActivity, *, by_bridge: bool = False) -> AllocationFacts:
    """A job activity as a fixed booking. Time worked and automated records are no bookings:
    they read as not live, so one that was a booking stops counting
    (docs/servicem8-api.md#bookings).
    ``edit_date`` is kept as for allocations; opening a booking on the phone moves it, which is
    why a change's time is taken from the fields the rules read (``mappings.transitions``)."""
    return AllocationFacts(
        uuid=activity.uuid.lower(),
        job_uuid=activity.job_uuid.lower(),
        staff_uuid=activity.staff_uuid.lower() if activity.staff_uuid else None,
        active=activity.active and activity.is_booking,
        date_ms=to_epoch_ms(activity.start_date),
        window=None,
        completed_ms=None,
        expires_ms=None,
        edited_ms=to_epoch_ms(activity.edit_date),
        by_bridge=by_bridge,
        fixed=True,
        end_ms=to_epoch_ms(activity.end_date),
    )


def job_facts(job: Job) -> JobFacts:
    return JobFacts(
        uuid=job.uuid.lower(),
        active=job.active,
        number=job.generated_job_id,
        description=job.job_description,
        address=job.job_address,
        lat=job.lat if job.lat else None,
        lng=job.lng if job.lng else None,
        status=job.status.strip() if job.status and job.status.strip() else None,
        category_uuid=job.category_uuid.lower() if job.category_uuid else None,
    )
