"""ServiceM8Client: one thin method per endpoint the bridge uses, no business logic.

Paths, fields and formats follow the official spec as summarised in docs/servicem8-api.md#records:
``$filter`` with ``eq ne gt lt`` joined by ``and`` (at most 10), ``cursor=-1`` / ``x-next-cursor``
paging (up to 5,000 records a page), ``x-record-uuid`` on create, soft delete, object webhooks at
``{origin}/webhook_subscriptions`` (outside ``/api_1.0``).

Three behaviours are met here rather than left to the caller: a 2xx saying ``success: false`` is a
refusal, a create whose ``x-record-uuid`` is not the supplied uuid fails loudly, and a delete reads
the record before every DELETE, since a DELETE of a deleted record restores it
(docs/servicem8-api.md#writes, docs/servicem8-api.md#delete).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from pydantic import ValidationError

from bridge.config import Settings
from bridge.errors import (
    Api,
    ApiError,
    ConfigError,
    InvalidRecord,
    PermanentError,
    Unavailable,
    invalid_record,
)
from bridge.http import ApiKeyAuth, CallGate, Credentials, Transport
from bridge.log import get_logger
from bridge.servicem8.classify import classify_servicem8
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
OnInvalid = Callable[[InvalidRecord], None]
DELETE_TRIES = 3  # DELETEs whose answer may be lost before a delete gives up for now
_LOG_UUID = {"joballocation": "sm8_allocation_uuid", "jobactivity": "sm8_activity_uuid"}

FILTER_OPS = frozenset({"eq", "ne", "gt", "lt"})
MAX_FILTER_CONDITIONS = 10
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FilterValue = str | int | float | bool | datetime | date


@dataclass(frozen=True)
class Filter:
    """An immutable ``$filter`` expression (docs/servicem8-api.md#filtering).

    Strings are single-quoted with an embedded quote doubled (the OData rule; ServiceM8 documents
    no escape), so a value can never close its quotes and add a condition. Stamps are written as
    naive wall-clock strings in the account's timezone, which is why ``render`` takes ``tz``.
    """

    conditions: tuple[tuple[str, str, FilterValue], ...] = ()

    def where(self, field: str, op: str, value: FilterValue) -> Filter:
        if not _FIELD.match(field):
            raise ValueError(f"not a field name: {field!r}")
        if op not in FILTER_OPS:
            raise ValueError(f"operator must be one of {sorted(FILTER_OPS)}, not {op!r}")
        if len(self.conditions) >= MAX_FILTER_CONDITIONS:
            raise ValueError(f"ServiceM8 accepts at most {MAX_FILTER_CONDITIONS} conditions")
        return Filter((*self.conditions, (field, op, value)))

    @staticmethod
    def quote(value: FilterValue, tz: tzinfo = UTC) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int | float):
            return repr(value) if isinstance(value, float) else str(value)
        if isinstance(value, datetime):
            value = format_sm8_stamp(value, tz)
        elif isinstance(value, date):
            value = value.isoformat()
        return "'" + str(value).replace("'", "''") + "'"

    def render(self, tz: tzinfo = UTC) -> str:
        return " and ".join(f"{f} {op} {self.quote(v, tz)}" for f, op, v in self.conditions)

    def __bool__(self) -> bool:
        return bool(self.conditions)


def where(field: str, op: str, value: FilterValue) -> Filter:
    return Filter().where(field, op, value)


class UuidNotKept(PermanentError):
    """ServiceM8 made the record under a uuid other than the one supplied, so a repeated create
    would make another record: this account cannot be written to idempotently. ``made_uuid``
    is the record that was made (docs/servicem8-api.md#writes)."""

    def __init__(self, message: str, *, made_uuid: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.made_uuid = made_uuid


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
        response = self.transport.request(
            "POST", f"{obj}.json", operation=f"{obj}.create", json_body=body, idempotent=bool(uuid)
        )
        made = response.headers.get("x-record-uuid") or ""
        if uuid and made and made.lower() != uuid.lower():
            raise UuidNotKept(
                f"servicem8 {obj}.create: ServiceM8 did not keep the supplied uuid {uuid} and made "
                f"record {made} instead, so the bridge cannot create idempotently",
                made_uuid=made,
                api="servicem8",
                status=response.status_code,
                operation=f"{obj}.create",
            )
        return made or uuid or ""

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
        read before every DELETE: one the office deleted meanwhile, or one an earlier try of this
        task deleted before its answer was lost, is left alone. The transport does not repeat the
        DELETE; after a lost answer (timeout, broken connection, 5xx) the loop reads again.
        After ``DELETE_TRIES`` lost answers with the record still active it raises
        ``Unavailable``, and the task's retry starts again from a read.
        """
        operation = f"{obj}.delete"
        for attempt in range(DELETE_TRIES + 1):
            if not self._get_one(obj, SM8Record, uuid).active:
                return
            if attempt == DELETE_TRIES:
                break
            try:
                self.transport.request(
                    "DELETE", f"{obj}/{uuid}.json", operation=operation, idempotent=False
                )
                return
            except Unavailable as exc:
                field = _LOG_UUID.get(obj, "sm8_record_uuid")
                log.warning("servicem8.delete_unconfirmed", reason=exc.reason, attempt=attempt,
                            **{field: uuid})  # fmt: skip
        raise Unavailable(
            f"servicem8 {operation}: {DELETE_TRIES} answers lost and the record is still active",
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
            response = self._get(path, operation=operation, params=params)
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
