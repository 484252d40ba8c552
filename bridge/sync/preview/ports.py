"""The ports a preview runs the sync on: every read goes to the API, every write is recorded and
answered as the API would answer it, and nothing is sent.

- ServiceM8: a create answers with the uuid it carries (the bridge always supplies one), an
  update and a delete succeed. The client reads a booking before deleting it
  (docs/servicem8-api.md#delete), so a delete counts two calls in the estimate.
- Coredination: ``PUT /job/{uuid}`` answers with the job as it would be: the job read once (a
  read the sync itself does not make, left out of the estimate) with the body's fields over it,
  or a new job where there is none. Resource operations change that job as Coredination does:
  ``schedule`` and ``assign`` leave a resource at work as it is (the reading the bridge is
  built for, docs/coredination-api.md#resources), so a read-back after one sees what the real
  one would. Reads of a job the preview wrote are answered from it.

Imports nothing above ``bridge.sync``'s own wings; the ports it wraps are ``bridge.sync.ports``.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from bridge.coredination.models import CdJob, CdUser
from bridge.errors import Api, NotFound
from bridge.http import CallGate, Outcome
from bridge.servicem8 import Filter, OnInvalid
from bridge.servicem8.client import _wire_fields
from bridge.servicem8.models import AllocationWindow, Job, JobActivity, JobAllocation, Staff
from bridge.sync.ports import ChangedJobs, CoredinationPort, ServiceM8Port
from mappings.readback import AT_WORK

# The body fields ``PUT /job`` takes; the job's id, uuid, resources and events are its own.
JOB_OWN = frozenset({"id", "uuid", "resources", "events", "created", "modified"})
STATE_AFTER: dict[str, str | None] = {
    "schedule": "SCHEDULED",
    "assign": "ASSIGNED",
    "unschedule": None,
    "unassign": None,
}


@dataclass(frozen=True)
class PlannedWrite:
    """One write the sync would send. ``operation`` is the clients' name for it
    (``joballocation.create``, ``job.put``, ``job.schedule``); ``target`` the record written
    (a booking's uuid, a Coredination job's uuid); ``fields`` what would be sent (ServiceM8's in
    its wire form); ``user`` a resource operation's user; ``creates`` whether a ``job.put``
    would make the job; ``job`` the ServiceM8 job whose sync makes it."""

    api: Api
    operation: str
    target: str
    fields: dict[str, Any] = field(default_factory=dict)
    user: int | None = None
    creates: bool = False
    job: str | None = None


class Metered:
    """A call gate that counts the calls it lets through, by API and operation, in front of the
    real one (the shared budget): what the preview read, and so what the sync will read."""

    def __init__(self, inner: CallGate) -> None:
        self.inner = inner
        self.sent: Counter[tuple[str, str]] = Counter()

    def before_call(self, api: Api, operation: str = "") -> None:
        self.inner.before_call(api, operation)
        self.sent[(api, operation)] += 1

    def after_call(self, api: Api, outcome: Outcome) -> None:
        self.inner.after_call(api, outcome)


class RecordingServiceM8:
    """``ServiceM8Port``: reads through ``inner``, writes recorded."""

    def __init__(self, inner: ServiceM8Port, writes: list[PlannedWrite]) -> None:
        self.inner = inner
        self.writes = writes
        self.pages = inner.pages  # a poll's cost is read from it (bridge.sync.cycle)

    @property
    def tz(self) -> tzinfo:
        return self.inner.tz

    # --- reads ---------------------------------------------------------------------------------
    def iter_allocations(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobAllocation]:
        return self.inner.iter_allocations(flt, on_invalid)

    def get_allocation(self, uuid: str) -> JobAllocation:
        return self.inner.get_allocation(uuid)

    def iter_activities(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobActivity]:
        return self.inner.iter_activities(flt, on_invalid)

    def get_activity(self, uuid: str) -> JobActivity:
        return self.inner.get_activity(uuid)

    def get_job(self, uuid: str) -> Job:
        return self.inner.get_job(uuid)

    def iter_jobs(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[Job]:
        return self.inner.iter_jobs(flt, on_invalid)

    def list_staff(self, flt: Filter | None = None) -> list[Staff]:
        return self.inner.list_staff(flt)

    def list_allocation_windows(self) -> list[AllocationWindow]:
        return self.inner.list_allocation_windows()

    # --- writes --------------------------------------------------------------------------------
    def create_allocation(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        return self._create("joballocation", fields, uuid)

    def update_allocation(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self._record("joballocation.update", uuid, fields)

    def delete_allocation(self, uuid: str) -> None:
        self._record("joballocation.delete", uuid, {})

    def create_activity(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        return self._create("jobactivity", fields, uuid)

    def update_activity(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self._record("jobactivity.update", uuid, fields)

    def delete_activity(self, uuid: str) -> None:
        self._record("jobactivity.delete", uuid, {})

    def _create(self, obj: str, fields: Mapping[str, Any], uuid: str | None) -> str:
        made = uuid or str(uuidlib.uuid4())
        self._record(f"{obj}.create", made, fields)
        return made

    def _record(self, operation: str, uuid: str, fields: Mapping[str, Any]) -> None:
        wire = _wire_fields(fields, self.inner.tz)  # as the client would send them
        self.writes.append(PlannedWrite("servicem8", operation, uuid.lower(), wire))


class RecordingCoredination:
    """``CoredinationPort``: reads through ``inner``, writes recorded and played on a copy of
    each job they touch (``jobs``, in the wire form; None: no such job)."""

    def __init__(
        self,
        inner: CoredinationPort,
        writes: list[PlannedWrite],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.writes = writes
        self.clock = clock
        self.jobs: dict[str, dict[str, Any] | None] = {}
        self.by_id: dict[str, str] = {}
        self.own_reads = 0  # reads made only to answer a write: the sync makes none of them
        self.answered = 0  # reads the sync makes that the copy answered (read-backs)
        self._stand_in_ids = 0

    # --- reads ---------------------------------------------------------------------------------
    def get_job(self, ref: str | int) -> CdJob:
        uuid = self._uuid(ref)
        if uuid not in self.jobs:
            return self.inner.get_job(ref)
        self.answered += 1
        return self._answer(uuid)

    def iter_changed_jobs(
        self, since: datetime | int, *, page_size: int = 500, on_invalid: OnInvalid | None = None
    ) -> ChangedJobs:
        return self.inner.iter_changed_jobs(since, page_size=page_size, on_invalid=on_invalid)

    def list_users(self, *, page_size: int = 500) -> list[CdUser]:
        return self.inner.list_users(page_size=page_size)

    # --- writes --------------------------------------------------------------------------------
    def upsert_job(self, uuid: str, body: Mapping[str, Any]) -> CdJob:
        uuid = uuid.lower()
        job = self._held(uuid)
        creates = job is None
        now = self._now_ms()
        if job is None:
            self._stand_in_ids -= 1  # Coredination numbers a new job; never one of its own
            job = {
                "id": self._stand_in_ids,
                "uuid": uuid,
                "state": "INITIAL",
                "resources": [],
                "events": [],
                "created": now,
            }
            self.by_id[str(job["id"])] = uuid
        job.update({k: v for k, v in body.items() if k not in JOB_OWN})
        job["modified"] = now
        job["events"].append({"type": "CREATE" if creates else "UPDATE", "eventTimeStamp": now})
        self.jobs[uuid] = job
        self.writes.append(
            PlannedWrite("coredination", "job.put", uuid, dict(body), creates=creates)
        )
        return self._answer(uuid)

    def delete_job(self, ref: str | int) -> None:
        uuid = self._uuid(ref)
        self.writes.append(PlannedWrite("coredination", "job.delete", uuid))
        self._held(uuid)
        self.jobs[uuid] = None

    def resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, *, send_message: bool = False
    ) -> None:
        uuid = self._uuid(job_ref)
        self.writes.append(PlannedWrite("coredination", f"job.{op}", uuid, user=int(user_id)))
        job = self._held(uuid)
        if job is None:
            raise NotFound(
                f"coredination job.{op}: job {uuid} not found",
                api="coredination",
                status=404,
                operation=f"job.{op}",
            )
        resources: list[dict[str, Any]] = job["resources"]
        current = next((r for r in resources if r.get("userId") == int(user_id)), None)
        state = current.get("state") if current is not None else None
        after = STATE_AFTER[op]
        if after is not None and state in AT_WORK:
            return  # kept as it is: the read-back sees it so
        if after is None and current is not None:
            resources.remove(current)
        elif after is not None and current is None:
            resources.append({"userId": int(user_id), "state": after})
        elif after is not None and current is not None:
            current["state"] = after
        now = self._now_ms()
        job["modified"] = now
        job["events"].append(
            {
                "type": op.upper(),
                "eventTimeStamp": now,
                "toUserId": int(user_id),
                "newResourceState": after or "UNASSIGNED",
            }
        )

    # --- the copies --------------------------------------------------------------------------
    def _uuid(self, ref: str | int) -> str:
        text = str(ref).strip().lower()
        return self.by_id.get(text, text)

    def _held(self, uuid: str) -> dict[str, Any] | None:
        """The job as the writes so far leave it, read from Coredination the first time."""
        if uuid not in self.jobs:
            self.own_reads += 1
            try:
                job = self.inner.get_job(uuid)
            except NotFound:
                self.jobs[uuid] = None
            else:
                self.jobs[uuid] = job.model_dump(by_alias=True, mode="json")
                if job.id is not None:
                    self.by_id[str(job.id)] = uuid
        return self.jobs[uuid]

    def _answer(self, uuid: str) -> CdJob:
        job = self.jobs[uuid]
        if job is None:
            raise NotFound(
                f"coredination job.get: job {uuid} not found",
                api="coredination",
                status=404,
                operation="job.get",
            )
        return CdJob.model_validate(job)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)
