"""The small interfaces the sync use cases need from each API. The real clients
(``bridge.servicem8.ServiceM8Client``, ``bridge.coredination.CoredinationClient``) satisfy them, and
so do the in-memory fakes the state-machine test drives (``tests/fakes.py``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, tzinfo
from typing import Any, Protocol

from bridge.coredination.models import CdJob, CdUser
from bridge.servicem8 import Filter, OnInvalid
from bridge.servicem8.models import AllocationWindow, Job, JobActivity, JobAllocation, Staff


class ChangedJobs(Iterator[CdJob], Protocol):
    """The jobs of a change poll, and ``listed_at_ms``: when the listing began by the client's
    clock (None before the first page), which moves the cursor on where jobs carry no stamp
    (docs/coredination-api.md#change-stamps)."""

    listed_at_ms: int | None


class ServiceM8Port(Protocol):
    @property
    def tz(self) -> tzinfo: ...

    # Pages read by each list operation (``jobactivity.list``) in this process: a poll's cost.
    pages: Counter[str]

    def iter_allocations(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobAllocation]: ...

    def get_allocation(self, uuid: str) -> JobAllocation: ...

    def create_allocation(self, fields: Mapping[str, Any], uuid: str | None = None) -> str: ...

    def update_allocation(self, uuid: str, fields: Mapping[str, Any]) -> None: ...

    def delete_allocation(self, uuid: str) -> None: ...

    def iter_activities(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobActivity]: ...

    def get_activity(self, uuid: str) -> JobActivity: ...

    def create_activity(self, fields: Mapping[str, Any], uuid: str | None = None) -> str: ...

    def update_activity(self, uuid: str, fields: Mapping[str, Any]) -> None: ...

    def delete_activity(self, uuid: str) -> None: ...

    def get_job(self, uuid: str) -> Job: ...

    def iter_jobs(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[Job]: ...

    def list_staff(self, flt: Filter | None = None) -> list[Staff]: ...

    def list_allocation_windows(self) -> list[AllocationWindow]: ...


class CoredinationPort(Protocol):
    def get_job(self, ref: str | int) -> CdJob: ...

    def upsert_job(self, uuid: str, body: Mapping[str, Any]) -> CdJob: ...

    def delete_job(self, ref: str | int) -> None: ...

    def iter_changed_jobs(
        self, since: datetime | int, *, page_size: int = ..., on_invalid: OnInvalid | None = None
    ) -> ChangedJobs: ...

    def resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, *, send_message: bool = False
    ) -> None: ...

    def list_users(self, *, page_size: int = ...) -> list[CdUser]: ...
