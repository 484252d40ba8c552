"""ServiceM8Client: one thin method per endpoint the bridge uses, no business logic.

Paths, fields and formats follow the official spec as summarised in docs/servicem8-api.md#records:
``$filter`` (``bridge.servicem8.filters``), ``cursor=-1`` / ``x-next-cursor`` paging (1,000
records a page as observed; ``$top`` is never sent), ``x-record-uuid`` on create, soft delete,
object webhooks at ``{origin}/webhook_subscriptions`` (outside ``/api_1.0``).

Four behaviours are met here rather than left to the caller: a 2xx saying ``success: false`` is a
refusal, a create whose ``x-record-uuid`` is not the supplied uuid fails loudly, a create with
the bridge's uuid answered "exists" is read back (``bridge.servicem8.creates``), and a delete
reads the record before every DELETE, since a DELETE of a deleted record restores it
(docs/servicem8-api.md#writes, docs/servicem8-api.md#delete).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from pydantic import ValidationError

from bridge.config import Settings
from bridge.errors import (
    AlreadyExists,
    Api,
    ApiError,
    ConfigError,
    InvalidRecord,
    Unavailable,
    Unconfirmed,
    invalid_record,
)
from bridge.http import ApiKeyAuth, CallGate, Credentials, Transport
from bridge.http.budget import page_wait
from bridge.log import get_logger
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.creates import UuidNotKept as UuidNotKept  # re-exported
from bridge.servicem8.creates import existing, made_uuid
from bridge.servicem8.filters import Filter as Filter  # re-exported
from bridge.servicem8.filters import where as where  # re-exported
from bridge.servicem8.models import (
    AllocationWindow,
    Job,
    JobActivity,
    JobAllocation,
    SM8Record,
    Staff,
    Vendor,
)
from mappings.stamps import format_sm8_stamp

log = get_logger(__name__)

R = TypeVar("R", bound=SM8Record)
LEARN_RETRY_SECONDS = 60.0
# How long a list's later page may wait in place for its budget slot (a minute window).
PAGE_WAIT = 65.0
OnInvalid = Callable[[InvalidRecord], None]
_LOG_UUID = {"joballocation": "sm8_allocation_uuid", "jobactivity": "sm8_activity_uuid"}


def _wire_fields(fields: Mapping[str, Any], tz: tzinfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            # Cleared as the official integration clears, with an empty string: what JSON null
            # does to a date is not known (docs/servicem8-api.md#writes).
            out[key] = ""
        elif isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, datetime):
            out[key] = format_sm8_stamp(value, tz)
        elif isinstance(value, date):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


class Accounts(Protocol):
    """Where the client reports the account it works on (``bridge.accounts.AccountIds``)."""

    def known(self, api: Api) -> bool: ...

    def learn(self, api: Api, account: str) -> None: ...


class Timezones(Protocol):
    """Where the account's timezone is kept for the connection's other processes, for a day
    (``bridge.store.ActivityStore``): they read it there, not from ``/vendor.json``."""

    def known_timezone(self) -> str | None: ...

    def keep_timezone(self, name: str) -> None: ...


class ServiceM8Client:
    def __init__(
        self,
        transport: Transport,
        timezone_name: str | None = None,
        accounts: Accounts | None = None,
        timezones: Timezones | None = None,
    ) -> None:
        self.transport, self.accounts, self.timezones = transport, accounts, timezones
        self._tz: tzinfo | None = _zone(timezone_name) if timezone_name else None
        self._reading_vendor = False
        self._learn_after = 0.0  # after a failed read of the account: when to try again
        # Pages read, by list operation (``jobactivity.list``): what a poll costs (1,000 rows a
        # page as observed), for the poll plan (``bridge.sync.cycle``).
        self.pages: Counter[str] = Counter()
        # How long a DELETE whose answer was lost may still land at the server, for all we know:
        # twice the read timeout (``Unconfirmed``).
        self.delete_settle = 2 * transport.timeout[1]
        origin = urlsplit(transport.base_url)
        self.webhook_url = f"{origin.scheme}://{origin.netloc}/webhook_subscriptions"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        gate: CallGate | None = None,
        session: requests.Session | None = None,
        credentials: Credentials | None = None,
        accounts: Accounts | None = None,
        timezones: Timezones | None = None,
    ) -> ServiceM8Client:
        transport = Transport(
            api="servicem8",
            base_url=settings.servicem8_base_url,
            credentials=credentials or ApiKeyAuth("X-Api-Key", settings.servicem8_api_key),
            classify=classify_servicem8,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            gate=gate,
            session=session,
        )
        return cls(transport, settings.servicem8_timezone, accounts, timezones)

    # --- account -----------------------------------------------------------------------------
    def vendor(self) -> Vendor:
        rows = self._get("vendor.json", operation="vendor.list").json()
        if not rows:
            raise Unavailable("servicem8 vendor.list: empty answer", api="servicem8")
        vendor = Vendor.from_wire(rows[0], self._tz or UTC)
        if self._tz is None:
            self._tz = _zone(vendor.timezone_name or "UTC")
            if self.timezones is not None:
                self.timezones.keep_timezone(vendor.timezone_name or "UTC")
        if self.accounts is not None:
            self.accounts.learn("servicem8", vendor.uuid)
        return vendor

    @property
    def tz(self) -> tzinfo:
        """The account's timezone, read once from ``/vendor.json`` unless configured. The same
        read tells which account the budget belongs to (``bridge.http.accounts``): every request
        asks for the timezone first, so only that read goes under the stand-in account. With the
        timezone configured, a failed read of the account does not fail the call: it goes under
        the stand-in, and the read is tried again a minute later."""
        if self._tz is None and self.timezones is not None:
            self._tz = _zone(kept) if (kept := self.timezones.known_timezone()) else None
        if self._tz is None:
            self.vendor()
        elif self._wants_account():
            self._reading_vendor = True
            try:
                self.vendor()
            except ApiError as exc:
                self._learn_after = time.monotonic() + LEARN_RETRY_SECONDS
                log.warning("servicem8.account_unknown", **exc.describe())
            finally:
                self._reading_vendor = False
        assert self._tz is not None
        return self._tz

    @property
    def known_tz(self) -> tzinfo:
        """The timezone as far as it is known, without a call (UTC until it is read)."""
        return self._tz or UTC

    def _wants_account(self) -> bool:
        return (
            self.accounts is not None
            and not self._reading_vendor
            and time.monotonic() >= self._learn_after
            and not self.accounts.known("servicem8")
        )

    # --- bookings: job allocations (flexible) and job activities (fixed) ----------------------
    def iter_allocations(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobAllocation]:
        return self._paged(
            "joballocation.json", JobAllocation, flt, "joballocation.list", on_invalid
        )

    def get_allocation(self, uuid: str) -> JobAllocation:
        return self._get_one("joballocation", JobAllocation, uuid)

    def create_allocation(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        """Create an allocation; with ``uuid`` the call is safe to repeat. Returns the uuid."""
        return self._create("joballocation", fields, uuid)

    def update_allocation(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self._update("joballocation", uuid, fields)

    def delete_allocation(self, uuid: str) -> None:
        """Soft delete: the record stays readable with ``active=0``."""
        self._delete("joballocation", uuid)

    def iter_activities(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[JobActivity]:
        """Job activities: fixed bookings and time worked alike (the caller tells them apart)."""
        return self._paged("jobactivity.json", JobActivity, flt, "jobactivity.list", on_invalid)

    def get_activity(self, uuid: str) -> JobActivity:
        return self._get_one("jobactivity", JobActivity, uuid)

    def create_activity(self, fields: Mapping[str, Any], uuid: str | None = None) -> str:
        """Create a job activity; with ``uuid`` the call is safe to repeat. Returns the uuid."""
        return self._create("jobactivity", fields, uuid)

    def update_activity(self, uuid: str, fields: Mapping[str, Any]) -> None:
        self._update("jobactivity", uuid, fields)

    def delete_activity(self, uuid: str) -> None:
        """Soft delete: the record stays readable with ``active=0``."""
        self._delete("jobactivity", uuid)

    # --- jobs, staff, windows ----------------------------------------------------------------
    def get_job(self, uuid: str) -> Job:
        return self._get_one("job", Job, uuid)

    def iter_jobs(
        self, flt: Filter | None = None, on_invalid: OnInvalid | None = None
    ) -> Iterator[Job]:
        return self._paged("job.json", Job, flt, "job.list", on_invalid)

    def list_staff(self, flt: Filter | None = None) -> list[Staff]:
        return list(self._paged("staff.json", Staff, flt, "staff.list"))

    def list_allocation_windows(self) -> list[AllocationWindow]:
        return list(
            self._paged("allocationwindow.json", AllocationWindow, None, "allocationwindow.list")
        )

    # --- object webhooks (docs/servicem8-api.md#webhooks) -------------------------------------
    def subscribe_object(
        self, obj: str, fields: list[str], callback_url: str, unique_id: str | None = None
    ) -> None:
        """ServiceM8 answers only after our receiver has echoed its challenge."""
        form = {"object": obj, "fields": ",".join(fields), "callback_url": callback_url}
        if unique_id:
            form["unique_id"] = unique_id
        self.transport.request(
            "POST", f"{self.webhook_url}/object", operation="webhook.subscribe", form=form
        )

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription, deactivated ones included (``status=all``), each with its
        ``uuid``, ``active``, ``last_failure_reason`` and ``last_failure_at`` where ServiceM8
        gives them (docs/servicem8-api.md#webhooks)."""
        rows = self._get(
            self.webhook_url, operation="webhook.list", params={"status": "all"}
        ).json()
        return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []

    def delete_subscription(self, uuid: str) -> None:
        self.transport.request(
            "DELETE", f"{self.webhook_url}/{uuid}", operation="webhook.delete", idempotent=True
        )

    # --- plumbing ----------------------------------------------------------------------------
    def _get_one(self, obj: str, model: type[R], uuid: str) -> R:
        tz = self.tz  # before the request: the timezone read also tells the budget's account
        data = self._get(f"{obj}/{uuid}.json", operation=f"{obj}.get").json()
        return _read(model, data, tz, f"{obj}.get")

    def _create(self, obj: str, fields: Mapping[str, Any], uuid: str | None) -> str:
        body = _wire_fields(fields, self.tz)
        if uuid:
            body["uuid"] = uuid
        try:
            response = self.transport.request("POST", f"{obj}.json", operation=f"{obj}.create",
                                              json_body=body, idempotent=bool(uuid))  # fmt: skip
        except AlreadyExists:
            if not uuid:
                raise
            self._created_before(obj, uuid, body)
            return uuid
        header = response.headers.get("x-record-uuid") or ""
        return made_uuid(obj, uuid, header, response.status_code)

    def _created_before(self, obj: str, uuid: str, body: Mapping[str, Any]) -> None:
        """A create answered "exists" (the repeat of one whose answer was lost, mostly): read
        back, done, one update, or someone else's (``creates.existing``)."""
        row = self._get(f"{obj}/{uuid}.json", operation=f"{obj}.get").json()
        fields = existing(obj, uuid, body, row)
        log.info("servicem8.create_found", aligned=bool(fields),
                 **{_LOG_UUID.get(obj, "sm8_record_uuid"): uuid})  # fmt: skip
        if fields:
            self.transport.request("POST", f"{obj}/{uuid}.json", operation=f"{obj}.update",
                                   json_body=fields, idempotent=True)  # fmt: skip

    def _update(self, obj: str, uuid: str, fields: Mapping[str, Any]) -> None:
        self.transport.request(
            "POST",
            f"{obj}/{uuid}.json",
            operation=f"{obj}.update",
            json_body=_wire_fields(fields, self.tz),
            idempotent=True,
        )

    def _delete(self, obj: str, uuid: str) -> None:
        """Soft delete, sent only to a record read as active, and never sent blindly again.

        A DELETE of a deleted record restores it (docs/servicem8-api.md#delete). So the record is
        read before the DELETE: one the office deleted meanwhile, or one an earlier try deleted
        before its answer was lost, is left alone. The transport does not repeat a DELETE. When
        its answer is lost (timeout, broken connection, 5xx) the record is read once more; if it
        still reads active, the request may yet be on its way at the server (a late DELETE
        landing after a second one would restore the record), so ``Unconfirmed`` asks the task
        to come back only after ``settle`` seconds, and to start from a read.
        """
        operation = f"{obj}.delete"
        if not self._get_one(obj, SM8Record, uuid).active:
            return
        try:
            self.transport.request(
                "DELETE", f"{obj}/{uuid}.json", operation=operation, idempotent=False
            )
            return
        except Unavailable as exc:
            field = _LOG_UUID.get(obj, "sm8_record_uuid")
            log.warning("servicem8.delete_unconfirmed", reason=exc.reason, **{field: uuid})
            lost = exc
        if not self._get_one(obj, SM8Record, uuid).active:
            return  # it landed; only its answer was lost
        raise Unconfirmed(
            f"servicem8 {operation}: the answer was lost and the record still reads active "
            f"({lost.reason}); read again in {self.delete_settle:g} s",
            settle=self.delete_settle,
            api="servicem8",
            operation=operation,
        )

    def _get(
        self, path: str, *, operation: str, params: Mapping[str, Any] | None = None
    ) -> requests.Response:
        return self.transport.request("GET", path, operation=operation, params=params)

    def _paged(
        self,
        path: str,
        model: type[R],
        flt: Filter | None,
        operation: str,
        on_invalid: OnInvalid | None = None,
    ) -> Iterator[R]:
        """Cursor paging: ``cursor=-1`` first, then each ``x-next-cursor`` until it is absent.

        A record that cannot be read raises ``InvalidRecord``, or with ``on_invalid`` is handed
        to it and skipped, so one bad record does not stop the others."""
        tz = self.tz if model is not Vendor else UTC
        params: dict[str, str] = {"cursor": "-1"}
        if flt:
            params["$filter"] = flt.render(tz)
        seen: set[str] = set()
        while True:
            with _slot_wait(later=bool(seen)):
                response = self._get(path, operation=operation, params=params)
            self.pages[operation] += 1
            for row in response.json():
                try:
                    record = _read(model, row, tz, operation)
                except InvalidRecord as exc:
                    if on_invalid is None:
                        raise
                    on_invalid(exc)
                    continue
                yield record
            cursor = response.headers.get("x-next-cursor")
            if not cursor:
                return
            if cursor in seen:
                raise Unavailable(
                    f"servicem8 {operation}: the API repeated cursor {cursor}",
                    api="servicem8",
                    operation=operation,
                )
            seen.add(cursor)
            params["cursor"] = cursor


@contextlib.contextmanager
def _slot_wait(*, later: bool) -> Iterator[None]:
    """A list's later page waits in place for its budget slot (up to ``PAGE_WAIT``) rather than
    give up the pages read: the first poll of a large account reads more than a minute allows.
    A first page defers at once, as any call does."""
    token = page_wait.set(PAGE_WAIT if later else 0.0)
    try:
        yield
    finally:
        page_wait.reset(token)


def _read(model: type[R], row: Any, tz: tzinfo, operation: str) -> R:
    try:
        return model.from_wire(row, tz)
    except ValidationError as exc:
        raise invalid_record("servicem8", operation, row, exc) from None


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"SERVICEM8_TIMEZONE: unknown timezone {name!r}") from None
