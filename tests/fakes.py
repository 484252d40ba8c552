"""In-memory fakes of ServiceM8 and Coredination that satisfy the sync ports structurally.

Records are kept as each API sends them (ServiceM8: naive account-time stamps, ``0000-00-00
00:00:00`` for empty, ``active`` 0/1, soft delete; Coredination: epoch ms, an event per change) and
answered as the wire models the real clients return. Port calls are counted in ``calls``; the
``book``/``move``/``unbook``, ``dispatcher_*`` and ``worker_acts`` helpers are people acting in
each system, not the bridge, and are not counted. Where the documents are silent the fakes do what
``bridge.simulators`` does (unschedule removes the resource), and what schedule and assign do to a
resource already at work is a switch: ``at_work="kept"`` leaves it as it is (the simulator's
reading), ``"applied"`` sets the new state.
"""

from __future__ import annotations

import copy
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bridge.coredination.models import CdJob, CdUser
from bridge.errors import NotFound
from bridge.servicem8 import Filter, OnInvalid
from bridge.servicem8.models import AllocationWindow, Job, JobActivity, JobAllocation, Staff

EMPTY = "0000-00-00 00:00:00"
SYDNEY = ZoneInfo("Australia/Sydney")


class Clock:
    """A settable clock (epoch seconds) shared by the engine and both fakes."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeServiceM8:
    WRITES = ("create_allocation", "update_allocation", "delete_allocation",
              "create_activity", "update_activity", "delete_activity")  # fmt: skip
    BLANK: Mapping[str, Any] = {
        "allocation_date": EMPTY, "allocation_window_uuid": "", "allocated_by_staff_uuid": "",
        "allocated_timestamp": EMPTY, "expiry_timestamp": EMPTY, "read_timestamp": EMPTY,
        "completion_timestamp": EMPTY, "sort_priority": "",
    }  # fmt: skip
    BLANK_ACTIVITY: Mapping[str, Any] = {
        "start_date": EMPTY, "end_date": EMPTY, "activity_was_scheduled": 0,
        "activity_was_recorded": 0, "activity_was_automated": 0, "has_been_opened": 0,
        "has_been_opened_timestamp": EMPTY,
    }  # fmt: skip
    STAMPS = frozenset(k for k, v in {**BLANK, **BLANK_ACTIVITY}.items() if v == EMPTY)

    def __init__(self, clock: Clock, tz: tzinfo = SYDNEY) -> None:
        self.clock, self.tz, self.calls = clock, tz, Counter[str]()
        self.pages = Counter[str]()  # the port's pages per list: one per list here
        self.records: dict[str, dict[str, dict[str, Any]]] = {
            o: {} for o in ("joballocation", "jobactivity", "job", "staff", "allocationwindow")
        }
        self.by_bridge: set[str] = set()  # allocations created through the port
        self._seq = 0

    def writes(self) -> int:
        return sum(self.calls[m] for m in self.WRITES)

    # --- wire conventions -----------------------------------------------------------------------
    def _wire(self, value: Any, stamp: bool = False) -> Any:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, datetime):
            return value.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")
        return (EMPTY if stamp else "") if value is None else value

    def _put(self, obj: str, uuid: str | None, fields: Mapping[str, Any]) -> str:
        if uuid is None:
            self._seq += 1
            uuid = str(uuidlib.UUID(int=0x5A8 << 64 | self._seq, version=4))
        record = self.records[obj].setdefault(uuid, {"uuid": uuid, "active": 1})
        record.update({k: self._wire(v, k in self.STAMPS) for k, v in fields.items()})
        record["edit_date"] = self._wire(datetime.fromtimestamp(self.clock(), self.tz))
        return uuid

    def _matches(self, record: Mapping[str, Any], flt: Filter | None) -> bool:
        for field, op, value in flt.conditions if flt else ():
            have, want = record.get(field), self._wire(value)
            if isinstance(want, int | float):  # numbers compare as numbers, the rest as text
                have, want = float(have or 0), float(want)
            else:
                have, want = str(have or ""), str(want)
            if not {"eq": have == want, "ne": have != want, "gt": have > want,
                    "lt": have < want}[op]:  # fmt: skip
                return False
        return True

    def _list(self, obj: str, model: Any, flt: Filter | None = None) -> list[Any]:
        rows = [r for r in self.records[obj].values() if self._matches(r, flt)]
        return [model.from_wire(dict(r), self.tz) for r in rows]

    def _get(self, obj: str, uuid: str) -> dict[str, Any]:
        if (record := self.records[obj].get(uuid.lower())) is None:
            raise NotFound("Resource not found", api="servicem8", status=404, operation=obj)
        return record

    # --- the office (people, not the bridge) ----------------------------------------------------
    def add(self, obj: str, **fields: Any) -> str:
        if obj == "job":
            fields.setdefault("generated_job_id", str(1001 + len(self.records["job"])))
        return self._put(obj, None, fields)

    def book(self, job: str, staff: str, date: datetime | None = None, window: str = "") -> str:
        fields = {**self.BLANK, "job_uuid": job, "staff_uuid": staff}
        return self._put("joballocation", None, fields | self._when(date, window))

    def move(self, uuid: str, date: datetime | None, window: str = "") -> None:
        self._put("joballocation", uuid, self._when(date, window))

    def unbook(self, uuid: str) -> None:
        self._put("joballocation", uuid, {"active": 0})

    def _when(self, date: datetime | None, window: str) -> dict[str, Any]:
        return {"allocation_date": date, "allocation_window_uuid": window if date else ""}

    def book_fixed(self, job: str, staff: str, start: datetime, end: datetime) -> str:
        fields = {**self.BLANK_ACTIVITY, "job_uuid": job, "staff_uuid": staff,
                  "activity_was_scheduled": 1, "start_date": start, "end_date": end}  # fmt: skip
        return self._put("jobactivity", None, fields)

    def move_fixed(self, uuid: str, start: datetime, end: datetime) -> None:
        """The office moves a fixed booking; one the bridge made is the office's from then on
        (README: a fixed booking the office moves is never moved from Coredination again), so
        it is no longer the bridge's copy next to the office's own."""
        before = dict(self.records["jobactivity"].get(uuid, {}))
        self._put("jobactivity", uuid, {"start_date": start, "end_date": end,
                                        "has_been_opened": 0})  # fmt: skip
        after = self.records["jobactivity"][uuid]
        if (before.get("start_date"), before.get("end_date")) != (after["start_date"],
                                                                  after["end_date"]):  # fmt: skip
            self.by_bridge.discard(uuid)

    def open_booking(self, uuid: str) -> None:
        """The booked person opens it on the phone: edit_date moves, nothing the rules read."""
        now = datetime.fromtimestamp(self.clock(), self.tz)
        self._put("jobactivity", uuid, {"has_been_opened": 1, "has_been_opened_timestamp": now})

    def allocations(self, job: str, staff: str) -> list[dict[str, Any]]:
        return [r for r in self.records["joballocation"].values()
                if r["job_uuid"] == job and r["staff_uuid"] == staff]  # fmt: skip

    def activities(self, job: str, staff: str) -> list[dict[str, Any]]:
        return [r for r in self.records["jobactivity"].values()
                if r["job_uuid"] == job and r["staff_uuid"] == staff]  # fmt: skip

    # --- the port -------------------------------------------------------------------------------
    def iter_allocations(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobAllocation]:
        self.calls["iter_allocations"] += 1
        return iter(self._list("joballocation", JobAllocation, flt))

    def get_allocation(self, uuid: str) -> JobAllocation:
        self.calls["get_allocation"] += 1
        return JobAllocation.from_wire(dict(self._get("joballocation", uuid)), self.tz)

    def create_allocation(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        """A create with a known uuid updates that record (the simulator's reading)."""
        self.calls["create_allocation"] += 1
        uuid = uuid.lower() if uuid else None
        if uuid is None or uuid not in self.records["joballocation"]:
            if not fields.get("job_uuid"):
                raise ValueError("job_uuid is required")
            fields = {**self.BLANK, **fields}
        uuid = self._put("joballocation", uuid, fields)
        self.by_bridge.add(uuid)
        return uuid

    def update_allocation(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self.calls["update_allocation"] += 1
        self._put("joballocation", self._get("joballocation", uuid)["uuid"], fields)

    def delete_allocation(self, uuid: str) -> None:
        """Soft delete, as the real client does it: only while the record is active (a DELETE of
        a deleted record would restore it, docs/servicem8-api.md#delete)."""
        self.calls["delete_allocation"] += 1
        record = self._get("joballocation", uuid)
        if record["active"]:
            self._put("joballocation", record["uuid"], {"active": 0})

    def iter_activities(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobActivity]:
        self.calls["iter_activities"] += 1
        return iter(self._list("jobactivity", JobActivity, flt))

    def get_activity(self, uuid: str) -> JobActivity:
        self.calls["get_activity"] += 1
        return JobActivity.from_wire(dict(self._get("jobactivity", uuid)), self.tz)

    def create_activity(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        self.calls["create_activity"] += 1
        uuid = uuid.lower() if uuid else None
        if uuid is None or uuid not in self.records["jobactivity"]:
            if not fields.get("job_uuid"):
                raise ValueError("job_uuid is required")
            fields = {**self.BLANK_ACTIVITY, **fields}
        uuid = self._put("jobactivity", uuid, fields)
        self.by_bridge.add(uuid)
        return uuid

    def update_activity(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self.calls["update_activity"] += 1
        self._put("jobactivity", self._get("jobactivity", uuid)["uuid"], fields)

    def delete_activity(self, uuid: str) -> None:
        """Soft delete, only while active, as for allocations."""
        self.calls["delete_activity"] += 1
        record = self._get("jobactivity", uuid)
        if record["active"]:
            self._put("jobactivity", record["uuid"], {"active": 0})

    def get_job(self, uuid: str) -> Job:
        self.calls["get_job"] += 1
        return Job.from_wire(dict(self._get("job", uuid)), self.tz)

    def iter_jobs(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[Job]:
        self.calls["iter_jobs"] += 1
        return iter(self._list("job", Job, flt))

    def list_staff(self, flt: Filter | None = None) -> list[Staff]:
        self.calls["list_staff"] += 1
        return self._list("staff", Staff, flt)

    def list_allocation_windows(self) -> list[AllocationWindow]:
        self.calls["list_allocation_windows"] += 1
        return self._list("allocationwindow", AllocationWindow)


class _Listed(Iterator[CdJob]):
    """A change poll's jobs, as ``bridge.sync.ports.ChangedJobs`` has them."""

    def __init__(self, jobs: list[CdJob]) -> None:
        self._jobs = iter(jobs)
        self.listed_at_ms: int | None = None

    def __next__(self) -> CdJob:
        return next(self._jobs)


class FakeCoredination:
    WRITES = ("upsert_job", "resource_op", "delete_job")
    AT_WORK = frozenset({"ACCEPTED", "IN_TRANSIT", "ON_STATION", "STARTED", "PAUSED", "FINISHED"})
    JOB_FIELDS = ("title", "description", "allDay", "startTime", "endTime", "destinations")

    def __init__(self, clock: Clock, at_work: Literal["kept", "applied"] = "kept") -> None:
        self.clock, self.calls = clock, Counter[str]()
        self.at_work = at_work
        self.users: dict[int, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}  # by uuid
        # (job uuid, user) → the op last kept out of a resource at work, until it next changes
        self.ignored: dict[tuple[str, int], str] = {}
        self._next = 100_000

    def writes(self) -> int:
        return sum(self.calls[m] for m in self.WRITES)

    def _id(self) -> int:
        self._next += 1
        return self._next

    def add_user(self, email: str, first: str, last: str) -> int:
        user_id = self._id()
        self.users[user_id] = {"id": user_id, "uuid": str(uuidlib.UUID(int=user_id, version=4)),
                               "email": email, "firstName": first, "lastName": last,
                               "active": True}  # fmt: skip
        return user_id

    def job(self, ref: str | int) -> dict[str, Any] | None:
        text = str(ref).lower()
        return self.jobs.get(text) or next(
            (j for j in self.jobs.values() if str(j["id"]) == text), None
        )

    def _job(self, ref: str | int) -> dict[str, Any]:
        if (job := self.job(ref)) is None:
            raise NotFound(f"Job {ref} not found", api="coredination", status=404)
        return job

    def resources(self, job_uuid: str) -> dict[int, str]:
        job = self.job(job_uuid)
        return {r["userId"]: r["state"] for r in job["resources"]} if job else {}

    def _event(self, job: dict[str, Any], kind: str, user: int | None = None,
               state: str | None = None) -> None:  # fmt: skip
        job["modified"] = int(self.clock() * 1000)
        job["events"].append({"id": self._id(), "type": kind, "eventTimeStamp": job["modified"],
                              "toUserId": user, "newResourceState": state})  # fmt: skip

    def _set(self, job: dict[str, Any], user: int, state: str | None, kind: str) -> bool:
        """Put ``user`` in ``state`` (None removes the resource); False when nothing changed."""
        current = next((r for r in job["resources"] if r["userId"] == user), None)
        if (current["state"] if current else None) == state:
            return False
        self.ignored.pop((job["uuid"], user), None)
        if state is None:
            job["resources"].remove(current)
        elif current is None:
            job["resources"].append({"userId": user, "state": state})
        else:
            current["state"] = state
        self._event(job, kind, user, state or "UNASSIGNED")
        return True

    def _op(self, op: str, job_ref: str | int, user: int) -> None:
        if op not in ("schedule", "assign", "unschedule", "unassign"):
            raise ValueError(f"unknown resource operation {op!r}")
        job = self._job(job_ref)
        if user not in self.users:
            raise NotFound(f"User {user} not found", api="coredination", status=404)
        at_work = self.resources(job["uuid"]).get(user) in self.AT_WORK
        if op in ("schedule", "assign") and at_work and self.at_work == "kept":
            self.ignored[(job["uuid"], user)] = op
            return  # a resource already at work stays as it is (the simulator's reading)
        self._set(job, user, {"schedule": "SCHEDULED", "assign": "ASSIGNED"}.get(op), op.upper())

    # --- the dispatcher and the workers (people, not the bridge) --------------------------------
    def dispatcher_schedule(self, job_uuid: str, user: int) -> None:
        self._op("schedule", job_uuid, user)

    def dispatcher_assign(self, job_uuid: str, user: int) -> None:
        self._op("assign", job_uuid, user)

    def dispatcher_unschedule(self, job_uuid: str, user: int) -> None:
        self._op("unschedule", job_uuid, user)

    def worker_acts(self, job_uuid: str, user: int, state: str) -> bool:
        """What a worker does in the app (ACCEPTED, STARTED, DECLINED, FINISHED...)."""
        job = self._job(job_uuid)
        return user in self.resources(job_uuid) and self._set(job, user, state, "RESOURCE_ACTION")

    def dispatcher_finish(self, job_uuid: str, user: int) -> bool:
        return self.worker_acts(job_uuid, user, "FINISHED")

    # --- the port -------------------------------------------------------------------------------
    def get_job(self, ref: str | int) -> CdJob:
        self.calls["get_job"] += 1
        return CdJob.model_validate(copy.deepcopy(self._job(ref)))

    def upsert_job(self, uuid: str, body: Mapping[str, Any]) -> CdJob:
        """``PUT /job/{uuid}``: update the job with this uuid, or create it."""
        self.calls["upsert_job"] += 1
        job = self.job(uuid)
        if creating := job is None:
            job = {**dict.fromkeys(self.JOB_FIELDS), "destinations": [], "id": self._id(),
                   "uuid": uuid.lower(), "state": "PUBLISHED", "resources": [], "events": [],
                   "created": int(self.clock() * 1000)}  # fmt: skip
            self.jobs[job["uuid"]] = job
        job.update({k: copy.deepcopy(body[k]) for k in self.JOB_FIELDS if k in body})
        self._event(job, "CREATE" if creating else "UPDATE")
        return CdJob.model_validate(copy.deepcopy(job))

    def delete_job(self, ref: str | int) -> None:
        self.calls["delete_job"] += 1
        del self.jobs[self._job(ref)["uuid"]]

    def iter_changed_jobs(
        self, since: datetime | int, *, page_size: int = 500, on_invalid: OnInvalid | None = None
    ) -> _Listed:
        """Jobs modified at or after ``since``; list items carry no events. Every job here
        carries its stamp, so the listing time is not needed (None)."""
        self.calls["iter_changed_jobs"] += 1
        ms = since if isinstance(since, int) else round(since.timestamp() * 1000)
        rows = [{k: v for k, v in copy.deepcopy(j).items() if k != "events"}
                for j in self.jobs.values() if j["modified"] >= ms]  # fmt: skip
        return _Listed([CdJob.model_validate(r) for r in rows])

    def resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, *, send_message: bool = False
    ) -> None:
        self.calls["resource_op"] += 1
        self._op(op, job_ref, int(user_id))

    def list_users(self, *, page_size: int = 500) -> list[CdUser]:
        self.calls["list_users"] += 1
        return [CdUser.model_validate(dict(u)) for u in self.users.values()]
