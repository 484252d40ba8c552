"""CoredinationClient: one thin method per endpoint, after the Job API page
(docs/coredination-api.md#jobs).

Flags are true when present and false when absent (docs/coredination-api.md#conventions), so they
are sent bare (``&untimed``), as the documentation's own examples do. Times go out as epoch
milliseconds. Users and webhooks are not in the documents; their shapes are assumptions kept in
``bridge.coredination.models`` and in the simulator.

Two guessed endpoints may not exist on a live account (docs/coredination-api.md#guesses): a
missing ``unassign`` falls back to ``unschedule``, learnt once per client; a missing users list
raises ``UsersListMissing``, which tells the operator to link staff by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

import requests
from pydantic import ValidationError

from bridge.config import Settings
from bridge.coredination.classify import classify_coredination
from bridge.coredination.models import ALL_JOB_STATES_CSV, CdJob, CdUser
from bridge.errors import ApiError, Forbidden, InvalidRecord, PermanentError, invalid_record
from bridge.http import ApiKeyAuth, CallGate, Credentials, Transport
from bridge.log import get_logger
from mappings.stamps import to_epoch_ms

log = get_logger(__name__)

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


def _operation_missing(exc: ApiError) -> bool:
    """An answer that may mean "no such operation": 404 (no route; also what a missing job or
    user answers, so the caller confirms) or 405 (a route without this verb)."""
    return exc.status in (404, 405)


USERS_MISSING = (
    "this account has no users list, so staff cannot be matched by e-mail; link each staff "
    "member by hand with 'sm8cd staff link'"
)


class UsersListMissing(PermanentError):
    """Coredination answered the users list with 404 or 405 (this account has no such endpoint:
    it is a guess, docs/coredination-api.md#users) or 403 (the list is not this key's to read;
    the key itself was taken). Retrying cannot help; staff are linked to users by hand
    (``sm8cd staff link``), and nothing is paused."""


class ChangedJobs(Iterator[CdJob]):
    """The jobs of a change poll, one at a time, and ``listed_at_ms``: the client's clock just
    before the first page was asked for (None until then).

    When jobs carry no change stamp, that time is what a poll's cursor can advance to: every
    change after it is in the next poll's ``modified`` window, and the cursor's overlap absorbs
    a small difference between the two clocks (docs/coredination-api.md#change-stamps).
    """

    def __init__(self, jobs: Iterator[CdJob], clock: Callable[[], float]) -> None:
        self._jobs = jobs
        self._clock = clock
        self.listed_at_ms: int | None = None

    def __iter__(self) -> ChangedJobs:
        return self

    def __next__(self) -> CdJob:
        if self.listed_at_ms is None:
            self.listed_at_ms = int(self._clock() * 1000)
        return next(self._jobs)


class CoredinationClient:
    def __init__(self, transport: Transport, *, clock: Callable[[], float] = time.time) -> None:
        self.transport = transport
        self.clock = clock
        # Learnt from the first refusal and kept for the client's life, which is the process's:
        # a process builds its client once (bridge.process.runtime).
        self.unassign_missing = False
        self.users_missing = False  # set from a stored probe: GET /user does not exist here

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

    def delete_job(self, ref: str | int) -> None:
        """``DELETE /job/{id}`` (answers with a status code only). Used only to take back a job
        the bridge's own update created afresh after a dispatcher deleted it."""
        self.transport.request("DELETE", f"job/{ref}", operation="job.delete")

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
    ) -> ChangedJobs:
        """Every job modified since ``since``, in any state, timed or not
        (docs/coredination-api.md#lists), with the time the listing started."""
        jobs = self.iter_jobs(
            page_size=page_size,
            on_invalid=on_invalid,
            from_=EPOCH_START_MS,
            states=ALL_JOB_STATES_CSV,
            untimed=True,
            current=True,
            modified=since,
        )
        return ChangedJobs(jobs, self.clock)

    # --- resources ---------------------------------------------------------------------------
    def resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, *, send_message: bool = False
    ) -> None:
        """``PUT /job/{id}/{schedule|unschedule|assign|unassign}?userId=..[&sendMessage]``.

        ``unassign`` is not in the documents (docs/coredination-api.md#resources): it is sent the
        same way, and where it does not exist ``unschedule`` is sent instead (ASSUMPTION: it takes
        a user off the job whether scheduled or only assigned).
        """
        if op not in RESOURCE_OPS:
            raise ValueError(f"unknown resource operation {op!r}")
        if op == "unassign" and self.unassign_missing:
            op = "unschedule"
        try:
            self._send_resource_op(op, job_ref, user_id, send_message)
        except PermanentError as exc:
            if op != "unassign" or not _operation_missing(exc):
                raise
            self._unassign_by_unschedule(exc, job_ref, user_id, send_message)

    def _send_resource_op(
        self, op: str, job_ref: str | int, user_id: str | int, send_message: bool
    ) -> None:
        query = _query({"userId": user_id}, ["sendMessage"] if send_message else [])
        self.transport.request("PUT", f"job/{job_ref}/{op}?{query}", operation=f"job.{op}")

    def _unassign_by_unschedule(
        self, refused: ApiError, job_ref: str | int, user_id: str | int, send_message: bool
    ) -> None:
        """``unassign`` was refused as missing: take the user off with ``unschedule``.

        A 404 is also what a missing job or user answers, so the fallback is learnt only once
        ``unschedule`` on the same job and user has worked (a 405 is learnt at once). Should
        ``unschedule`` fail too, its error is the one raised.
        """
        if refused.status == 405:
            self._learn_unassign_missing(refused)
        self._send_resource_op("unschedule", job_ref, user_id, send_message)
        self._learn_unassign_missing(refused)

    def _learn_unassign_missing(self, refused: ApiError) -> None:
        if self.unassign_missing:
            return
        self.unassign_missing = True
        log.warning(
            "coredination.unassign_missing",
            status=refused.status,
            fallback="unschedule",
            reason="PUT /job/{id}/unassign does not exist here; unschedule is sent instead",
        )

    # --- users (ASSUMPTION: GET /user with offset paging) ------------------------------------
    def list_users(self, *, page_size: int = DEFAULT_PAGE) -> list[CdUser]:
        """Every user. Raises ``UsersListMissing`` when the endpoint does not exist
        (docs/coredination-api.md#users)."""
        if self.users_missing:
            raise UsersListMissing(USERS_MISSING, api="coredination", operation="user.list")
        users: list[CdUser] = []
        offset = 0
        while True:
            rows = self._user_rows(page_size, offset)
            users += [CdUser.model_validate(row) for row in rows]
            if len(rows) < page_size:
                return users
            offset += len(rows)

    def _user_rows(self, page_size: int, offset: int) -> list[Any]:
        query = _query({"limit": page_size, "offset": offset or None})
        try:
            response = self.transport.request("GET", f"user?{query}", operation="user.list")
        except PermanentError as exc:
            if offset or not (_operation_missing(exc) or isinstance(exc, Forbidden)):
                raise
            raise UsersListMissing(
                f"coredination user.list: GET /user answered {exc.status}: {USERS_MISSING}",
                api="coredination",
                status=exc.status,
                operation="user.list",
                body_excerpt=exc.body_excerpt,
            ) from None
        rows = response.json()
        return list(rows) if isinstance(rows, list) else []

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
