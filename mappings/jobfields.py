"""Job fields: what the Coredination job of a ServiceM8 job says, and the body that writes it.

Job fields flow ServiceM8 → Coredination only: title and description from the job, destination
from its address, and the time from the earliest live booking of either kind (a fixed booking: its
exact start and end; a flexible one: date + allocation window, a date alone makes an all-day job;
none leaves the job untimed).
Bookings the bridge itself created from Coredination do not set the job's time, so a time set in
Coredination is never overwritten by its own echo. A job deleted in ServiceM8 asks for the state
``CANCELED`` (a state override, docs/coredination-api.md#states). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from mappings.facts import AllocationFacts, JobFacts
from mappings.stamps import to_epoch_ms

CANCELED = "CANCELED"  # the Coredination job state a deleted ServiceM8 job asks for


@dataclass(frozen=True)
class JobTime:
    start: datetime | None = None
    end: datetime | None = None
    all_day: bool = False


def allocation_time(a: AllocationFacts, tz: tzinfo) -> JobTime:
    """A fixed booking → its exact start and end. An allocation: date + window → a timed slot; a
    date at midnight alone → all day; a date with a time → that start with no end; no date →
    untimed."""
    if a.date_ms is None:
        return JobTime()
    if a.fixed:  # a fixed booking: exactly its start and end
        start = datetime.fromtimestamp(a.date_ms / 1000, tz)
        end = datetime.fromtimestamp(a.end_ms / 1000, tz) if a.end_ms is not None else None
        return JobTime(start, end if end is not None and end > start else None)
    local = datetime.fromtimestamp(a.date_ms / 1000, tz)
    midnight = datetime.combine(local.date(), time(0), tzinfo=tz)
    if a.window is not None:
        start = midnight + timedelta(minutes=a.window[0])
        end = midnight + timedelta(minutes=a.window[1])
        if end <= start:  # a window past midnight ends the next day
            end += timedelta(days=1)
        return JobTime(start, end)
    if local == midnight:
        return JobTime(midnight, midnight, all_day=True)
    return JobTime(local, None)


def job_time(allocations: Iterable[AllocationFacts], tz: tzinfo, now_ms: int) -> JobTime:
    """The earliest live dated booking of either kind sets the job's time (bridge-made ones
    excluded). A fixed booking whose end has passed still counts: history is not undone."""
    dated = [a for a in allocations if a.live(now_ms) and a.date_ms is not None and not a.by_bridge]
    if not dated:
        return JobTime()
    earliest = min(dated, key=lambda a: (allocation_time(a, tz).start, a.uuid))
    return allocation_time(earliest, tz)


def job_title(job: JobFacts) -> str:
    first_line = (job.description or "").strip().splitlines()[0:1]
    summary = first_line[0][:80] if first_line else ""
    number = f"#{job.number}" if job.number else f"ServiceM8 job {job.uuid[:8]}"
    return f"{number} {summary}".strip()


def job_body(
    *,
    title: str | None,
    description: str | None,
    start: datetime | None,
    end: datetime | None,
    all_day: bool = False,
    place_name: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> dict[str, Any]:
    """The JSON body of Coredination's ``PUT /job/{uuid}`` for the fields the bridge owns
    (docs/coredination-api.md#jobs): epoch-ms times, one destination from the address."""
    body: dict[str, Any] = {
        "title": title,
        "description": description,
        "allDay": all_day,
        "startTime": to_epoch_ms(start),
        "endTime": to_epoch_ms(end),
    }
    if place_name or latitude is not None:
        location = {"placeName": place_name, "latitude": latitude, "longitude": longitude}
        body["destinations"] = [{"location": location}]
    else:
        body["destinations"] = []
    return body


def cd_job_body(
    job: JobFacts, allocations: Iterable[AllocationFacts], tz: tzinfo, now_ms: int
) -> dict[str, Any]:
    """The body of ``PUT /job/{uuid5(ns, J)}`` for the fields the bridge owns."""
    when = job_time(allocations, tz, now_ms)
    body = job_body(
        title=job_title(job),
        description=job.description,
        start=when.start,
        end=when.end,
        all_day=when.all_day,
        place_name=job.address,
        latitude=job.lat,
        longitude=job.lng,
    )
    if not job.active:
        body["state"] = CANCELED
    return body


def fingerprint(body: dict[str, Any]) -> str:
    """A short stable digest of a body, to tell whether it changed since we last wrote it."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
