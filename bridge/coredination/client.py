"""CoredinationClient: one thin method per endpoint, after the Job API page
(docs/coredination-api.md#jobs).

Flags are true when present and false when absent (docs/coredination-api.md#conventions), so they
are sent bare (``&untimed``), as the documentation's own examples do. Times go out as epoch
milliseconds. Users and webhooks are not in the documents; their shapes are assumptions kept in
``bridge.coredination.models`` and in the simulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import requests
from pydantic import ValidationError

from bridge.config import Settings
from bridge.coredination.classify import classify_coredination
from bridge.coredination.models import ALL_JOB_STATES_CSV, CdJob, CdUser
from bridge.errors import InvalidRecord, invalid_record
from bridge.http import ApiKeyAuth, CallGate, Credentials, Transport
from mappings.stamps import to_epoch_ms

JOB_LISTS = frozenset(
    {"all", "unassigned", "mine", "user", "customer", "project", "order", "asset"}
)
RESOURCE_OPS = frozenset({"schedule", "unschedule", "assign", "unassign"})
DEFAULT_PAGE = 500
# Far enough back that no timed job starts before it: a poll for every change must not let the
# default "upcoming only" window hide a job that started in the past
# (docs/coredination-api.md#lists).
EPOCH_START_MS = 0


def _query(params: Mapping[str, Any], flags: Iterable[str] = ()) -> str:
    parts = [urlencode({k: v for k, v in params.items() if v is not None})]
    parts += [quote(flag) for flag in flags]
    return "&".join(p for p in parts if p)


def _ms(value: datetime | int | None) -> int | None:
    return value if isinstance(value, int) or value is None else to_epoch_ms(value)


class CoredinationClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        gate: CallGate | None = None,
        session: requests.Session | None = None,
        credentials: Credentials | None = None,
    ) -> CoredinationClient:
        transport = Transport(
            api="coredination",
            base_url=settings.coredination_base_url,
            credentials=credentials or ApiKeyAuth("API-Key", settings.coredination_api_key),
            classify=classify_coredination,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            gate=gate,
            session=session,
        )
        return cls(transport)

    # --- jobs --------------------------------------------------------------------------------
    def get_job(self, ref: str | int) -> CdJob:
        """A job by id or uuid, with its events."""
        return _read_job(
            self.transport.request("GET", f"job/{ref}", operation="job.get").json(), "job.get"
        )

    def upsert_job(self, uuid: str, body: Mapping[str, Any]) -> CdJob:
        """``PUT /job/{uuid}``: update, or create with this uuid. Safe to repeat."""
        response = self.transport.request("PUT", f"job/{uuid}", operation="job.put", json_body=body)
        return CdJob.model_validate(response.json())

    def _job_rows(
        self,
        kind: str = "all",
        ref: str | int | None = None,
        *,
        from_: datetime | int | None = None,
        to: datetime | int | None = None,
        states: Iterable[str] | str | None = None,
        untimed: bool = False,
        current: bool = False,
        modified: datetime | int | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Any]:
        """One page of a job list, unparsed. ``kind`` is the path: all, unassigned, mine, ...

        List items carry no events (docs/coredination-api.md#jobs).
        """
        if kind not in JOB_LISTS:
            raise ValueError(f"unknown job list {kind!r}; one of {sorted(JOB_LISTS)}")
        needs_ref = kind in {"user", "customer", "project", "order", "asset"}
        if needs_ref != (ref is not None):
            raise ValueError(f"job list {kind!r} {'needs' if needs_ref else 'takes no'} ref")
        path = "job" if kind == "all" else f"job/list/{kind}" + (f"/{ref}" if needs_ref else "")
        if states is not None and not isinstance(states, str):
            states = ",".join(states)
        params = {
            "from": _ms(from_),
            "to": _ms(to),
            "states": states,
            "modified": _ms(modified),
            "limit": limit,
            "offset": offset or None,
        }
        flags = [name for name, on in (("untimed", untimed), ("current", current)) if on]
        url = f"{path}?{_query(params, flags)}"
        rows = self.transport.request("GET", url, operation="job.list").json()
        return list(rows) if isinstance(rows, list) else []

    def iter_jobs(
        self,
        kind: str = "all",
        ref: str | int | None = None,
        *,
        page_size: int = DEFAULT_PAGE,
        on_invalid: Callable[[InvalidRecord], None] | None = None,
        **filters: Any,
    ) -> Iterator[CdJob]:
        """Every job of a list, by offset paging until a page comes back short. A job that
        cannot be read raises ``InvalidRecord``, or with ``on_invalid`` is handed to it and
        skipped."""
        offset = 0
        while True:
            rows = self._job_rows(kind, ref, limit=page_size, offset=offset, **filters)
            for row in rows:
                try:
                    job = _read_job(row, "job.list")
                except InvalidRecord as exc:
                    if on_invalid is None:
                        raise
                    on_invalid(exc)
                    continue
                yield job
            if len(rows) < page_size:
                return
            offset += len(rows)

    def iter_changed_jobs(
        self,
        since: datetime | int,
        *,
        page_size: int = DEFAULT_PAGE,
        on_invalid: Callable[[InvalidRecord], None] | None = None,
    ) -> Iterator[CdJob]:
        """Every job modified since ``since``, in any state, timed or not
        (docs/coredination-api.md#lists)."""
        return self.iter_jobs(
            page_size=page_size,
            on_invalid=on_invalid,
            from_=EPOCH_START_MS,
            states=ALL_JOB_STATES_CSV,
            untimed=True,
            current=True,
            modified=since,
        )

    # --- resources ---------------------------------------------------------------------------
    def resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, *, send_message: bool = False
    ) -> None:
        """``PUT /job/{id}/{schedule|unschedule|assign|unassign}?userId=..[&sendMessage]``.

        ``unassign`` is not in the documents (docs/coredination-api.md#resources); it is sent the
        same way.
        """
        if op not in RESOURCE_OPS:
            raise ValueError(f"unknown resource operation {op!r}")
        query = _query({"userId": user_id}, ["sendMessage"] if send_message else [])
        self.transport.request("PUT", f"job/{job_ref}/{op}?{query}", operation=f"job.{op}")

    # --- users (ASSUMPTION: GET /user with offset paging) ------------------------------------
    def list_users(self, *, page_size: int = DEFAULT_PAGE) -> list[CdUser]:
        users: list[CdUser] = []
        offset = 0
        while True:
            query = _query({"limit": page_size, "offset": offset or None})
            rows = self.transport.request("GET", f"user?{query}", operation="user.list").json()
            users += [CdUser.model_validate(row) for row in rows]
            if len(rows) < page_size:
                return users
            offset += len(rows)

    # --- webhooks (ASSUMPTION: /webhook {url, channels, filter}) -----------------------------
    def subscribe_webhook(
        self, url: str, channels: Iterable[str] = ("job",), event_filter: str | None = None
    ) -> dict[str, Any]:
        body = {"url": url, "channels": list(channels), "filter": event_filter}
        response = self.transport.request(
            "POST", "webhook", operation="webhook.create", json_body=body
        )
        return dict(response.json())

    def list_webhooks(self) -> list[dict[str, Any]]:
        return list(self.transport.request("GET", "webhook", operation="webhook.list").json())

    def delete_webhook(self, hook_id: int | str) -> None:
        self.transport.request("DELETE", f"webhook/{hook_id}", operation="webhook.delete")


def _read_job(row: Any, operation: str) -> CdJob:
    try:
        return CdJob.model_validate(row)
    except ValidationError as exc:
        raise invalid_record("coredination", operation, row, exc) from None
