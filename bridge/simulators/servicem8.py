"""A stateful ServiceM8 REST API on loopback (docs/servicem8-api.md#records).

Serves ``/api_1.0/{object}.json`` and ``/api_1.0/{object}/{uuid}.json`` for joballocation (flexible
bookings), jobactivity (fixed bookings, and time worked), job, staff, allocationwindow and vendor;
``$filter`` (``eq ne gt lt`` joined by ``and``, at most 10); ``cursor=-1`` / ``x-next-cursor``
paging; ``x-record-uuid`` on create; soft delete; ``edit_date`` in the account's timezone bumped on
every write; 429 as text or JSON per minute or per day; and object webhooks at
``/webhook_subscriptions`` with the ``mode=subscribe`` / ``challenge`` handshake, each with a uuid,
``active`` and its last failure, deactivated after repeated failed deliveries.

Where ServiceM8's behaviour is unsettled, a ``ServiceM8Dialect`` picks the reading the simulator
plays (docs/servicem8-api.md#open-questions). Its defaults are the readings the evidence points to;
``FIRST_READING`` is the friendlier one the simulator played before it had dialects.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal
from zoneinfo import ZoneInfo

import requests

from bridge.simulators.base import SimError, SimReply, SimRequest, SimServer
from bridge.simulators.servicem8_types import WIRE_TYPES, WireTypes, served
from mappings.localtime import day_start

STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
EMPTY_STAMP = "0000-00-00 00:00:00"

# Writable fields per object (the *Create schemas) and which of them are stamps / uuids / flags.
OBJECTS: dict[str, dict[str, set[str]]] = {
    "joballocation": {
        "fields": {
            "job_uuid",
            "staff_uuid",
            "allocation_date",
            "allocation_window_uuid",
            "allocated_by_staff_uuid",
            "allocated_timestamp",
            "expiry_timestamp",
            "read_timestamp",
            "completion_timestamp",
            "sort_priority",
            "queue_uuid",
            "estimated_duration",
            "revised_duration",
            "requires_acceptance",
            "acceptance_status",
            "acceptance_timestamp",
        },
        "stamps": {
            "allocation_date",
            "allocated_timestamp",
            "expiry_timestamp",
            "read_timestamp",
            "completion_timestamp",
            "acceptance_timestamp",
        },
    },
    "job": {
        "fields": {
            "created_by_staff_uuid",
            "date",
            "company_uuid",
            "billing_address",
            "status",
            "category_uuid",
            "purchase_order_number",
            "queue_uuid",
            "queue_expiry_date",
            "queue_assigned_staff_uuid",
            "badges",
            "job_address",
            "job_description",
            "work_done_description",
            "quote_date",
            "work_order_date",
            "completion_date",
            "completion_actioned_by_uuid",
            "unsuccessful_date",
            "lat",
            "lng",
        },
        "stamps": {"date", "quote_date", "work_order_date", "completion_date", "unsuccessful_date"},
    },
    "staff": {
        "fields": {
            "first",
            "last",
            "email",
            "mobile",
            "job_title",
            "color",
            "hide_from_schedule",
            "status_message",
            "security_role_uuid",
            "labour_material_uuid",
        },
        "stamps": set(),
    },
    # A fixed booking (``activity_was_scheduled`` 1) or time worked (``activity_was_recorded`` 1):
    # the JobActivity schema of the official spec (docs/servicem8-api.md#bookings).
    "jobactivity": {
        "fields": {
            "job_uuid",
            "staff_uuid",
            "start_date",
            "end_date",
            "activity_was_scheduled",
            "activity_was_recorded",
            "activity_was_automated",
            "has_been_opened",
            "has_been_opened_timestamp",
            "travel_time_in_seconds",
            "travel_distance_in_meters",
            "allocated_by_staff_uuid",
            "allocated_timestamp",
            "material_uuid",
        },
        "stamps": {"start_date", "end_date", "has_been_opened_timestamp", "allocated_timestamp"},
    },
    "allocationwindow": {
        "fields": {"name", "start_time", "end_time", "sort_priority"},
        "stamps": set(),
    },
    "vendor": {"fields": {"name", "timezone_name", "email"}, "stamps": set()},
}
UUID_FIELDS = {
    "job_uuid",
    "staff_uuid",
    "allocation_window_uuid",
    "allocated_by_staff_uuid",
    "company_uuid",
    "category_uuid",
    "queue_uuid",
    "created_by_staff_uuid",
    "queue_assigned_staff_uuid",
    "completion_actioned_by_uuid",
    "security_role_uuid",
    "labour_material_uuid",
    "material_uuid",
}
FLAGS = {"activity_was_scheduled", "activity_was_recorded", "activity_was_automated",
         "has_been_opened"}  # fmt: skip
# Opening a booking on the phone: the fields it sets, and the fields whose change resets them.
OPENED = {"jobactivity": ("has_been_opened", "has_been_opened_timestamp"),
          "joballocation": (None, "read_timestamp")}  # fmt: skip
RESETS_OPENED = {"staff_uuid", "start_date"}
JOB_STATUSES = {"Quote", "Work Order", "Unsuccessful", "Completed"}
READ_ONLY_OBJECTS = {"vendor"}
MAX_FILTER_CONDITIONS = 10
FILTER_OPS = {"eq", "ne", "gt", "lt"}
_TOKEN = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+(eq|ne|gt|lt)\s+('(?:[^']|'')*'|-?\d+(?:\.\d+)?)\s*", re.I
)


RecordUuidHeader = Literal["echo", "server"]
DayReset = Literal["utc", "account", "rolling"]
DuplicateUuid = Literal["conflict", "refused", "update"]
DeliveryTime = Literal["local", "utc"]
DUPLICATE_UUIDS = ("conflict", "refused", "update")
RECORD_EXISTS = "A record with this UUID already exists"
DAY_RESETS = ("utc", "account", "rolling")
NO_ALLOCATION_SUBSCRIPTION = "Object joballocation does not support subscription"


@dataclass(frozen=True)
class ServiceM8Dialect:
    """One reading of each ServiceM8 behaviour the documents leave open
    (docs/servicem8-api.md#open-questions). The defaults follow the evidence; for every switch
    but ``record_uuid_header`` that is also the reading harder for the bridge, so every test
    against the default simulator proves the bridge copes with it.

    - ``allocation_webhooks``: whether job allocations can be subscribed. The webhooks overview
      does not list them, and an object it does not list is refused with a 400 "Object ... does
      not support subscription" (docs/servicem8-api.md#webhooks): off by default.
    - ``delete_restores``: a DELETE of a record that is already deleted makes it active again, as
      a client checked against the live API saw (docs/servicem8-api.md#delete): on by default.
    - ``lost_delete_answer_rate``: the chance that a DELETE is applied and its answer then lost
      (the connection closes with no reply), so the caller cannot tell it landed. A property of
      the network rather than of the API: 0 by default, raised by the tests of the delete rule.
    - ``record_uuid_header``: on a create with a client-supplied uuid, ``echo`` keeps it and
      returns it in ``x-record-uuid`` (the official spec: the default); ``server`` ignores it and
      makes one of its own, the case nothing documents.
    - ``refusal_as_success``: a record write refused for a bad value answers HTTP 200 with
      ``{"success": false, "message": ...}`` instead of a 400. Seen on the developer forum, and the
      official integration code tests ``success`` (docs/servicem8-api.md#writes): on by default.
    - ``null_clears``: whether a JSON ``null`` for a date clears it. Real data read back
      ``0000-00-00 00:00:00`` for an empty date and the official integration clears with ``""``;
      what ``null`` does is not known (docs/servicem8-api.md#writes). Off by default: ``null``
      for a date is refused as a bad value, while ``""`` and the empty stamp always clear.
    - ``day_reset``: when the day limit's count restarts, which is not documented
      (docs/servicem8-api.md#limits). A public client probes at the earlier of UTC midnight and
      the account's midnight: ``utc`` (the default) and ``account`` restart the count at that
      midnight, by the simulator's clock; ``rolling`` is a window of the last 24 hours, the
      simulator's first reading.
    - ``deactivate_after_failures``: consecutive failed deliveries (not a 2xx, a timeout, no
      connection) after which an object subscription is deactivated. The documents say repeated
      failures, timeouts included, can deactivate a subscription, but not after how many
      (docs/servicem8-api.md#webhooks): 3 by default, 0 for never.
    - ``duplicate_uuid``: how a create whose client-supplied uuid already exists is answered
      (docs/servicem8-api.md#writes). ``conflict`` (the default): HTTP 409, as the most careful
      live client expects for a repeat of its own create; ``refused``: a refusal saying the
      record exists (a 400, or a 200 ``success: false`` under ``refusal_as_success``);
      ``update``: the create updates that record (the simulator's first reading).
    - ``lost_create_answer_rate``: the chance that a create which made a record has its answer
      lost (the connection closes with no reply), like ``lost_delete_answer_rate``: 0 by default.
    - ``delivery_time``: how an object delivery's ``entry[].time`` is written: ``local`` (the
      default) as the record's ``edit_date``, in the account's time with no offset; ``utc`` as
      an ISO UTC stamp ending in ``Z``, as one third party saw (docs/servicem8-api.md#webhooks).
    - ``edit_date_filter_ignored``: the one object (or "" for none, the default) whose list
      accepts a ``$filter`` on ``edit_date`` and ignores that condition, answering as if it were
      not there: a live probe found filters accepted and ignored (docs/servicem8-api.md#paging).
    - ``edit_date_filter_refused``: the one object (or "" for none) whose list refuses a
      ``$filter`` on ``edit_date`` with ``400 Unsupported $filter field``, as live probes found
      for fields an object cannot filter.
    - ``wire_types``: how values are spelt in the records served (docs/servicem8-api.md#types).
      ``strings`` (the default) as real account data show them: numbers as strings, ``""`` for an
      empty one; ``spec`` as the official spec types them, which its TypeScript SDK checks: JSON
      numbers, 0/1 enums as numbers, ``0`` for an empty number, and a 429 always as JSON
      (``servicem8_types``).
    """

    allocation_webhooks: bool = False
    delete_restores: bool = True
    lost_delete_answer_rate: float = 0.0
    record_uuid_header: RecordUuidHeader = "echo"
    refusal_as_success: bool = True
    null_clears: bool = False
    day_reset: DayReset = "utc"
    deactivate_after_failures: int = 3
    wire_types: WireTypes = "strings"
    duplicate_uuid: DuplicateUuid = "conflict"
    lost_create_answer_rate: float = 0.0
    delivery_time: DeliveryTime = "local"
    edit_date_filter_ignored: str = ""
    edit_date_filter_refused: str = ""

    def __post_init__(self) -> None:
        for name in ("allocation_webhooks", "delete_restores", "refusal_as_success",
                     "null_clears"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"dialect {name} must be true or false, not {value!r}")
        after = self.deactivate_after_failures
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(
                f"dialect deactivate_after_failures must be a whole number >= 0, not {after!r}"
            )
        if self.day_reset not in DAY_RESETS:
            raise ValueError(
                f"dialect day_reset must be one of {', '.join(DAY_RESETS)}, not {self.day_reset!r}"
            )
        for name in ("lost_delete_answer_rate", "lost_create_answer_rate"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
                raise ValueError(f"dialect {name} must be within 0..1, not {rate!r}")
        for name in ("edit_date_filter_ignored", "edit_date_filter_refused"):
            if getattr(self, name) not in ("", *OBJECTS):
                raise ValueError(
                    f"dialect {name} must be an object or '', not {getattr(self, name)!r}"
                )
        if self.delivery_time not in ("local", "utc"):
            raise ValueError(
                f"dialect delivery_time must be 'local' or 'utc', not {self.delivery_time!r}"
            )
        if self.duplicate_uuid not in DUPLICATE_UUIDS:
            raise ValueError(
                f"dialect duplicate_uuid must be one of {', '.join(DUPLICATE_UUIDS)}, "
                f"not {self.duplicate_uuid!r}"
            )
        if self.wire_types not in WIRE_TYPES:
            raise ValueError(
                f"dialect wire_types must be one of {', '.join(WIRE_TYPES)}, "
                f"not {self.wire_types!r}"
            )
        if self.record_uuid_header not in ("echo", "server"):
            raise ValueError(
                f"dialect record_uuid_header must be 'echo' or 'server', "
                f"not {self.record_uuid_header!r}"
            )

    @classmethod
    def first_reading(cls) -> ServiceM8Dialect:
        """The reading the simulator played before it had dialects (``FIRST_READING``)."""
        return FIRST_READING


# Allocations can be subscribed, a second DELETE leaves a record deleted, refusals are 400s,
# null clears a date, the day limit is a rolling 24 hours, failed deliveries never deactivate,
# and a create with a uuid that exists updates that record.
FIRST_READING = ServiceM8Dialect(
    duplicate_uuid="update",
    allocation_webhooks=True,
    delete_restores=False,
    refusal_as_success=False,
    null_clears=True,
    day_reset="rolling",
    deactivate_after_failures=0,
)
# The defaults (the evidence's readings, each the harder one but the echoed uuid) with DELETE
# and create answers lost as well, values typed as the spec types them, webhook delivery times in
# UTC, the job list's ``edit_date`` filter accepted and ignored and the job activity list's
# refused: what the chaos run plays while its faults are on.
HOSTILE_DIALECT = ServiceM8Dialect(
    lost_delete_answer_rate=0.3,
    lost_create_answer_rate=0.3,
    wire_types="spec",
    delivery_time="utc",
    edit_date_filter_ignored="job",
    edit_date_filter_refused="jobactivity",
)


def parse_filter(text: str) -> list[tuple[str, str, Any]]:
    """``field op value [and field op value]...``; strings in single quotes with '' for a quote.

    ASSUMPTION: the quote escape. ServiceM8 documents single-quoted strings but no escape; ''
    is the OData rule its filter syntax follows.
    """
    conditions: list[tuple[str, str, Any]] = []
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        if match is None:
            raise SimError(400, f"Invalid filter near {text[pos : pos + 30]!r}")
        field, op, raw = match.group(1), match.group(2).lower(), match.group(3)
        value: Any = raw[1:-1].replace("''", "'") if raw.startswith("'") else float(raw)
        conditions.append((field, op, value))
        pos = match.end()
        if pos == len(text):
            break
        joiner = re.compile(r"and\s+", re.I).match(text, pos)
        if joiner is None:
            raise SimError(400, f"Invalid filter near {text[pos : pos + 30]!r}: only 'and' joins")
        pos = joiner.end()
    if len(conditions) > MAX_FILTER_CONDITIONS:
        raise SimError(400, f"A filter may have at most {MAX_FILTER_CONDITIONS} conditions")
    return conditions


def _matches(record: dict[str, Any], conditions: list[tuple[str, str, Any]]) -> bool:
    for field, op, wanted in conditions:
        have = record.get(field)
        if isinstance(wanted, float):
            try:
                left: Any = float(have)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
        else:
            left = "" if have is None else str(have)
        ok = {
            "eq": left == wanted,
            "ne": left != wanted,
            "gt": left > wanted,
            "lt": left < wanted,
        }[op]
        if not ok:
            return False
    return True


class ServiceM8Simulator(SimServer):
    name = "servicem8"

    def __init__(
        self,
        *,
        api_keys: tuple[str, ...] = ("sim-servicem8-key",),
        timezone_name: str = "Australia/Sydney",
        page_size: int = 1000,  # as live probes found (the pagination page says 5,000)
        rate_limit_body: str = "text",
        seed: int | None = None,
        clock: Any = None,
        dialect: ServiceM8Dialect | None = None,
        bearer_account: Callable[[str], str | None] | None = None,
        tenants: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        self.api_keys = set(api_keys)
        # API key → a vendor uuid of its own: many accounts that share this simulator's records
        # and limits, each known by its own ``/vendor.json`` (the ``fleet`` benchmark's idle
        # accounts, which hold no records). A key here needs no place in ``api_keys``.
        self.tenants = dict(tenants or {})
        self._tenant = threading.local()
        # OAuth access token → the account it is for (``OAuthSimulator.account_of``): a bearer
        # token is good here when it is for this simulator's account (docs/servicem8-oauth.md).
        self.bearer_account = bearer_account
        self.dialect = dialect or ServiceM8Dialect()
        self._answer = threading.local()  # per request: whether its answer is to be lost
        self.page_size = page_size
        self.rate_limit_body = rate_limit_body  # "text" (the docs) or "json" (the SDK examples)
        self.records: dict[str, dict[str, dict[str, Any]]] = {obj: {} for obj in OBJECTS}
        self.order: dict[str, dict[str, int]] = {obj: {} for obj in OBJECTS}
        self._seq = 0
        # Object subscriptions as listed: uuid, object, fields, callback_url, unique_id, active,
        # last_failure_reason, last_failure_at. Consecutive failed deliveries by uuid beside them.
        self.subscriptions: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}
        self.deactivated = 0  # subscriptions deactivated for failed deliveries
        self.restored: dict[str, int] = {}  # object → records a DELETE restored (delete_restores)
        # record uuid → when a person (not an API client) last changed a field other than the
        # opened flag and stamps (epoch ms): for the checker, which must tell an office change
        # from the bridge's own write or a booking opened on the phone
        self.changed_ms: dict[str, int] = {}
        # Every write to a booking, by a person or an API client (when, which, by whom, what
        # changed): what a chaos run's verdict quotes for a record it finds wrong.
        self.journal: deque[tuple[int, str, str, str, bool, tuple[str, ...]]] = deque(
            maxlen=200_000
        )
        # Bookings an API client was answered with while they were active: one made and
        # removed again between two reads never was, and no client can know of it.
        self.served_active: set[str] = set()
        # For the checker, which judges by what a client could have read: every version of each
        # booking (when written, its object, the record) and when a client was answered with it.
        self.versions: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.served_ms: dict[str, list[int]] = {}
        self._api = threading.local()  # set while a request from an API client writes
        self.event_subscriptions: list[dict[str, Any]] = []
        # Each simulator is an account of its own (its budget is keyed by it), even when seeded.
        self.vendor_uuid = str(uuidlib.uuid4())
        self.tz = ZoneInfo(timezone_name)
        self._put(
            "vendor",
            {
                "uuid": self.vendor_uuid,
                "active": 1,
                "edit_date": self.stamp(),
                "name": "Simulated Plumbing Pty Ltd",
                "timezone_name": timezone_name,
                "email": "office@example.com",
            },
        )
        self._routes_api()
        self._routes_admin()

    # --- wire conventions --------------------------------------------------------------------
    def stamp(self) -> str:
        return datetime.fromtimestamp(self.now(), self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def day_start(self, now: float) -> float | None:
        """The last midnight, in UTC or in the account's timezone, as the dialect's ``day_reset``
        says; None for a rolling day."""
        reset = self.dialect.day_reset
        if reset == "rolling":
            return None
        # Local midnight read as the bridge reads it: its first occurrence where it repeats.
        at = datetime.fromtimestamp(now, UTC)
        return day_start(at, UTC if reset == "utc" else self.tz).timestamp()

    def authenticate(self, request: SimRequest) -> bool:
        key = request.header("x-api-key")
        self._tenant.vendor = self.tenants.get(key) if key is not None else None
        if self._tenant.vendor is not None:
            return True
        if key is not None:
            return key in self.api_keys
        auth = request.header("authorization") or ""
        if not auth.startswith("Bearer "):
            return False
        token = auth[7:]
        if token in self.api_keys:
            return True
        return self.bearer_account is not None and self.bearer_account(token) == self.vendor_uuid

    def error_reply(self, status: int, message: str) -> SimReply:
        return SimReply(status, {"errorCode": status, "message": message})

    def unauthorized_reply(self) -> SimReply:
        # A number, as the spec's AuthenticationError types it; only its example has "401".
        return SimReply(
            401,
            {
                "errorCode": 401,
                "message": "Authentication failed. Please check your API key or OAuth token.",
            },
        )

    def rate_limited_reply(self, window: str) -> SimReply:
        """Plain text (the docs) or JSON (the spec), as ``rate_limit_body`` says; JSON always
        under the spec-typed dialect."""
        text = f"Number of allowed API requests per {window} exceeded"
        if self.rate_limit_body == "json" or self.dialect.wire_types == "spec":
            return SimReply(429, {"errorCode": 429, "message": text})
        return SimReply(429, text, content_type="text/plain; charset=utf-8")

    # --- state -------------------------------------------------------------------------------
    def _put(self, obj: str, record: dict[str, Any]) -> None:
        uuid = record["uuid"]
        if uuid not in self.order[obj]:
            self._seq += 1
            self.order[obj][uuid] = self._seq
        self.records[obj][uuid] = record

    def _validate(self, obj: str, data: dict[str, Any], creating: bool) -> dict[str, Any]:
        spec = OBJECTS[obj]
        clean: dict[str, Any] = {}
        for key, value in data.items():
            if key == "active":
                if str(value) not in {"0", "1", "True", "False", "true", "false"}:
                    raise SimError(400, "Invalid value for active")
                clean["active"] = 1 if str(value).lower() in {"1", "true"} else 0
                continue
            if key not in spec["fields"]:
                continue  # ASSUMPTION: unknown and read-only fields are ignored, not refused.
            if value is None:
                if key in spec["stamps"] and not self.dialect.null_clears:
                    raise SimError(400, f"Invalid date format for {key}: null")
                value = EMPTY_STAMP if key in spec["stamps"] else ""
            elif value == "" and key in spec["stamps"]:
                value = EMPTY_STAMP  # how the official integration clears a date
            if key in spec["stamps"]:
                if not isinstance(value, str) or not (value == EMPTY_STAMP or STAMP.match(value)):
                    raise SimError(
                        400, f"Invalid date format for {key}: expected YYYY-MM-DD HH:MM:SS"
                    )
                if len(value) == 10:
                    value += " 00:00:00"
            elif key in FLAGS:
                if str(value) not in {"0", "1", ""}:
                    raise SimError(400, f"Invalid value for {key}: expected 0 or 1")
                value = str(value or "0")
            elif (
                key in UUID_FIELDS
                and value not in ("", None)
                and (not isinstance(value, str) or not UUID.match(value))
            ):
                raise SimError(400, f"Invalid UUID for {key}")
            clean[key] = value
        if obj == "job":
            status = clean.get("status")
            if creating and status is None:
                raise SimError(400, "status is required")
            if status is not None and status not in JOB_STATUSES:
                raise SimError(400, f"Invalid status {status!r}")
        if obj in ("joballocation", "jobactivity") and creating and not clean.get("job_uuid"):
            raise SimError(400, "job_uuid is required")
        both = clean.get("activity_was_scheduled") == "1" == clean.get("activity_was_recorded")
        if obj == "jobactivity" and both:
            raise SimError(400, "An activity cannot be both scheduled and recorded")
        if obj == "staff" and creating:
            for required in ("first", "last", "email"):
                if not clean.get(required):
                    raise SimError(400, f"{required} is required")
        return clean

    def _blank(self, obj: str, uuid: str) -> dict[str, Any]:
        record: dict[str, Any] = {"uuid": uuid, "active": 1, "edit_date": EMPTY_STAMP}
        for key in OBJECTS[obj]["fields"]:
            record[key] = EMPTY_STAMP if key in OBJECTS[obj]["stamps"] else ""
        if obj == "job":
            record["generated_job_id"] = str(1000 + len(self.records["job"]) + 1)
        for flag in FLAGS & OBJECTS[obj]["fields"]:
            record[flag] = "0"
        return record

    def create(self, obj: str, data: dict[str, Any]) -> str:
        """Create (or, with a known client-supplied uuid, overwrite) a record; return its uuid.

        This method (the office, seeds) updates a record whose uuid exists; over the API a create
        with a uuid that exists is answered as the dialect's ``duplicate_uuid`` says.
        """
        uuid = str(data.get("uuid") or uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
        if not UUID.match(uuid):
            raise SimError(400, "Invalid UUID for uuid")
        uuid = uuid.lower()
        existing = self.records[obj].get(uuid)
        clean = self._validate(obj, data, creating=existing is None)
        before = dict(existing) if existing else {}
        record = dict(existing) if existing else self._blank(obj, uuid)
        record.update(clean)
        if existing is None and "active" not in clean:
            record["active"] = 1
        self._write(obj, record, before)
        return uuid

    def update(self, obj: str, uuid: str, data: dict[str, Any]) -> None:
        existing = self.records[obj].get(uuid.lower())
        if existing is None:
            raise SimError(404, "Resource not found")
        clean = self._validate(obj, data, creating=False)
        record = dict(existing)
        record.update(clean)
        self._write(obj, record, existing)

    def delete(self, obj: str, uuid: str) -> None:
        """Soft delete. Under the dialect's ``delete_restores`` a record that is already deleted
        is restored instead: DELETE toggles ``active`` (docs/servicem8-api.md#delete)."""
        existing = self.records[obj].get(uuid.lower())
        if existing is None:
            raise SimError(404, "Resource not found")
        restore = self.dialect.delete_restores and str(existing.get("active")) == "0"
        if restore:  # counted: a chaos run reports how many records a repeated DELETE revived
            self.restored[obj] = self.restored.get(obj, 0) + 1
        self._write(obj, {**existing, "active": 1 if restore else 0}, existing)

    @contextlib.contextmanager
    def _api_write(self) -> Iterator[None]:
        self._api.writing = True
        try:
            yield
        finally:
            self._api.writing = False

    def open_booking(self, obj: str, uuid: str) -> None:
        """The booked person opens the booking on their phone: ServiceM8 records that it was
        opened, which edits the record and moves its ``edit_date`` (docs/servicem8-api.md#bookings),
        though nothing a sync reads has changed."""
        with self.lock:
            existing = self.records[obj].get(uuid.lower())
            if existing is None:
                raise SimError(404, "Resource not found")
            flag, stamp = OPENED[obj]
            record = {**existing, stamp: self.stamp()}
            if flag is not None:
                record[flag] = "1"
            self._write(obj, record, existing)

    def _write(self, obj: str, record: dict[str, Any], before: dict[str, Any]) -> None:
        if (
            obj == "jobactivity"
            and before
            and any(record.get(k) != before.get(k) for k in RESETS_OPENED)
        ):  # another person or another start: nobody has opened this booking yet
            record["has_been_opened"] = "0"
            record["has_been_opened_timestamp"] = EMPTY_STAMP
        record["edit_date"] = self.stamp()
        self._put(obj, record)
        changed = sorted(k for k, v in record.items() if before.get(k) != v and k != "edit_date")
        by_person = not getattr(self._api, "writing", False)
        if by_person and set(changed) - {"has_been_opened", "has_been_opened_timestamp",
                                         "read_timestamp"}:  # fmt: skip
            self.changed_ms[record["uuid"]] = int(self.now() * 1000)
        if obj in ("joballocation", "jobactivity"):
            self.versions.setdefault(record["uuid"], []).append(
                (int(self.now() * 1000), obj, dict(record))
            )
            self.journal.append((int(self.now() * 1000), record["uuid"],
                                 str(record.get("job_uuid") or ""),
                                 str(record.get("staff_uuid") or ""), by_person,
                                 tuple(changed)))  # fmt: skip
        self._notify(obj, record, changed)

    def _refusal(self, exc: SimError) -> SimReply:
        """A refused record write as the dialect answers it: a 400, or under
        ``refusal_as_success`` a 200 whose body says ``success: false``
        (docs/servicem8-api.md#writes). Other errors (404, 405) are not refusals of a value."""
        if exc.status == 400 and self.dialect.refusal_as_success:
            return SimReply(200, {"success": False, "message": exc.message})
        raise exc

    def _maybe_lose_answer(self, rate: float) -> None:
        """Mark this request's answer as lost, with the chance ``rate``. The rng is rolled only
        when the chance is set, so the seeded uuids of other tests stay as they were."""
        if rate and self.rng.random() < rate:
            self._answer.lost = True

    def dispatch(
        self, request: SimRequest, conn: BaseHTTPRequestHandler | None = None
    ) -> SimReply | None:
        """As the base, except that an answer the handler marked as lost is never sent: the
        change stands, and the connection closes without a reply."""
        self._answer.lost = False
        reply = super().dispatch(request, conn)
        if reply is None or not self._answer.lost:
            return reply
        with self.lock:
            self.injected["lost_answer"] += 1
        return None

    # --- webhooks ----------------------------------------------------------------------------
    def _notify(self, obj: str, record: dict[str, Any], changed: list[str]) -> None:
        for sub in self.subscriptions:
            if sub["object"] != obj or not sub["active"]:
                continue
            wanted = {f.strip() for f in sub.get("fields", "").split(",") if f.strip()}
            if wanted and not wanted.intersection(changed):
                continue
            when = self._delivery_time(record["edit_date"])
            body = {
                "object": obj,
                "entry": [{"uuid": record["uuid"], "changed_fields": changed, "time": when}],
                "resource_url": f"{self.root_url}/api_1.0/{obj}/{record['uuid']}.json",
            }
            self.deliverer.post(
                sub["callback_url"],
                json.dumps(body).encode(),
                on_result=partial(self._delivered, sub["uuid"]),
            )

    def _delivery_time(self, edit_date: str) -> str:
        if self.dialect.delivery_time == "local":
            return edit_date
        local = datetime.strptime(edit_date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=self.tz)
        return local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _delivered(self, sub_uuid: str, ok: bool, reason: str) -> None:
        """One delivery's outcome, from the deliverer's thread: a success resets the count of
        consecutive failures; a failure is recorded on the subscription, and the dialect's
        ``deactivate_after_failures``-th in a row deactivates it (docs/servicem8-api.md#webhooks).

        ASSUMPTION: deliveries are counted in the order they settle, and one already under way
        when its subscription is posted again counts against the renewed subscription.
        """
        with self.lock:
            sub = next((s for s in self.subscriptions if s["uuid"] == sub_uuid), None)
            if sub is None:  # deleted meanwhile
                return
            if ok:
                self.failures[sub_uuid] = 0
                return
            count = self.failures.get(sub_uuid, 0) + 1
            self.failures[sub_uuid] = count
            sub["last_failure_reason"] = reason
            sub["last_failure_at"] = self.stamp()
            limit = self.dialect.deactivate_after_failures
            if limit and count >= limit and sub["active"]:
                sub["active"] = 0
                self.deactivated += 1

    def _handshake(self, callback_url: str) -> None:
        challenge = uuidlib.uuid4().hex
        try:
            response = requests.post(
                callback_url, data={"mode": "subscribe", "challenge": challenge}, timeout=10
            )
        except requests.RequestException as exc:
            raise SimError(
                400, f"Callback URL did not respond to the challenge: {type(exc).__name__}"
            ) from None
        if response.status_code != 200 or response.text.strip() != challenge:
            raise SimError(400, "Callback URL did not answer the challenge")

    def _spelt(self, obj: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record as it goes out: its values spelt as the dialect's ``wire_types`` says."""
        return served(obj, record, self.dialect.wire_types)

    def _served(self, obj: str, rows: list[dict[str, Any]]) -> None:
        if obj in ("joballocation", "jobactivity"):
            self.served_active.update(r["uuid"] for r in rows if str(r.get("active", 1)) == "1")
            now_ms = int(self.now() * 1000)
            for row in rows:
                self.served_ms.setdefault(row["uuid"], []).append(now_ms)

    # --- routes ------------------------------------------------------------------------------
    def _routes_api(self) -> None:
        objects = "|".join(OBJECTS)

        def list_(req: SimRequest, p: dict[str, str]) -> SimReply:
            obj = p["obj"]
            raw_filter = req.arg("$filter")
            conditions = parse_filter(raw_filter) if raw_filter else []
            if obj == self.dialect.edit_date_filter_refused and any(
                c[0] == "edit_date" for c in conditions
            ):
                raise SimError(400, "Unsupported $filter field: edit_date")
            if obj == self.dialect.edit_date_filter_ignored:  # accepted, then ignored
                conditions = [c for c in conditions if c[0] != "edit_date"]
            rows = [r for r in self._ordered(obj) if _matches(r, conditions)]
            cursor = req.arg("cursor")
            headers: dict[str, str] = {}
            if cursor is not None and cursor != "-1":
                seq = self.order[obj].get(cursor.lower())
                if seq is None:
                    raise SimError(400, "Invalid cursor")
                rows = [r for r in rows if self.order[obj][r["uuid"]] > seq]
            page = rows[: self.page_size]
            # ASSUMPTION: without a cursor the API answers the first page and no header.
            if cursor is not None and len(rows) > self.page_size:
                headers["x-next-cursor"] = page[-1]["uuid"]
            self._served(obj, page)
            tenant = getattr(self._tenant, "vendor", None)
            if obj == "vendor" and tenant is not None:
                page = [{**row, "uuid": tenant} for row in page]
            return SimReply(200, [self._spelt(obj, row) for row in page], headers)

        def get(req: SimRequest, p: dict[str, str]) -> SimReply:
            record = self.records[p["obj"]].get(p["uuid"].lower())
            if record is None:
                raise SimError(404, "Resource not found")
            self._served(p["obj"], [record])
            return SimReply(200, self._spelt(p["obj"], record))

        def create(req: SimRequest, p: dict[str, str]) -> SimReply:
            if p["obj"] in READ_ONLY_OBJECTS:
                raise SimError(405, "Method not allowed")
            data = req.fields()
            if self.dialect.record_uuid_header == "server":  # a uuid of its own, whatever is sent
                data = {k: v for k, v in data.items() if k != "uuid"}
            taken = str(data.get("uuid") or "").lower() in self.records[p["obj"]]
            try:
                if taken and self.dialect.duplicate_uuid != "update":
                    raise SimError(
                        409 if self.dialect.duplicate_uuid == "conflict" else 400, RECORD_EXISTS
                    )
                with self._api_write():
                    uuid = self.create(p["obj"], data)
            except SimError as exc:
                return self._refusal(exc)
            if not taken:
                self._maybe_lose_answer(self.dialect.lost_create_answer_rate)
            return SimReply(200, {"errorCode": 0, "message": "OK"}, {"x-record-uuid": uuid})

        def update(req: SimRequest, p: dict[str, str]) -> SimReply:
            if p["obj"] in READ_ONLY_OBJECTS:
                raise SimError(405, "Method not allowed")
            data = req.fields()
            try:
                with self._api_write():
                    self.update(p["obj"], p["uuid"], data)
            except SimError as exc:
                return self._refusal(exc)
            return SimReply(200, {"errorCode": 0, "message": "OK"})

        def delete(req: SimRequest, p: dict[str, str]) -> SimReply:
            if p["obj"] in READ_ONLY_OBJECTS:
                raise SimError(405, "Method not allowed")
            with self._api_write():
                self.delete(p["obj"], p["uuid"])
            self._maybe_lose_answer(self.dialect.lost_delete_answer_rate)
            return SimReply(200, {"errorCode": 0, "message": "OK"})

        def subscribe_object(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.fields()
            obj = str(data.get("object") or "").lower()
            callback = str(data.get("callback_url") or "")
            if not obj:
                raise SimError(400, "Please specify an object for subscription")
            if obj not in OBJECTS:
                raise SimError(400, f"{obj} is not an authorised object type")
            if obj == "joballocation" and not self.dialect.allocation_webhooks:
                raise SimError(400, NO_ALLOCATION_SUBSCRIPTION)
            if not callback.startswith(("http://", "https://")):
                raise SimError(400, "Please specify a valid callback_url")
            self.lock.release()  # the handshake calls back into a server that may call us
            try:
                self._handshake(callback)
            finally:
                self.lock.acquire()
            self._store_subscription(
                obj, str(data.get("fields") or ""), callback, str(data.get("unique_id") or "")
            )
            return SimReply(200, {"success": True})

        def subscribe_event(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.fields()
            if not data.get("event") or not data.get("callback_url"):
                raise SimError(400, "Please specify an event and a callback_url")
            # ASSUMPTION: event subscriptions have a uuid and are active like object ones; the
            # simulator sends no events, so nothing deactivates them.
            sub = {
                "uuid": str(uuidlib.uuid4()),
                "event": str(data["event"]),
                "callback_url": str(data["callback_url"]),
                "unique_id": str(data.get("unique_id") or ""),
                "active": 1,
            }
            self.event_subscriptions.append(sub)
            return SimReply(200, {"success": True})

        def bare_post(req: SimRequest, p: dict[str, str]) -> SimReply:
            raise SimError(400, "Please specify an object for subscription")

        def list_subs(req: SimRequest, p: dict[str, str]) -> SimReply:
            """Active subscriptions; with ``status=all`` the deactivated ones too
            (docs/servicem8-api.md#webhooks).

            ASSUMPTION: object subscriptions list with the fields they were made with, and any
            other ``status`` lists as none does.
            """
            every = (req.arg("status") or "").lower() == "all"
            rows = self.subscriptions + self.event_subscriptions
            return SimReply(200, [dict(s) for s in rows if every or s.get("active", 1)])

        def delete_sub_by_uuid(req: SimRequest, p: dict[str, str]) -> SimReply:
            wanted = p["uuid"].lower()
            before = len(self.subscriptions) + len(self.event_subscriptions)
            self.subscriptions = [s for s in self.subscriptions if s["uuid"] != wanted]
            self.event_subscriptions = [s for s in self.event_subscriptions if s["uuid"] != wanted]
            if before == len(self.subscriptions) + len(self.event_subscriptions):
                raise SimError(404, "Subscription not found")
            self.failures.pop(wanted, None)
            return SimReply(200, {"success": True})

        def delete_sub(req: SimRequest, p: dict[str, str]) -> SimReply:
            data = req.fields() or {k: v[0] for k, v in req.query.items()}
            before = len(self.subscriptions) + len(self.event_subscriptions)

            def keep(s: dict[str, Any]) -> bool:
                return not all(str(s[k]) == str(v) for k, v in data.items() if k in s)

            self.subscriptions = [s for s in self.subscriptions if keep(s)]
            self.event_subscriptions = [s for s in self.event_subscriptions if keep(s)]
            if before == len(self.subscriptions) + len(self.event_subscriptions):
                raise SimError(404, "Subscription not found")
            return SimReply(200, {"success": True})

        self.route("GET", rf"/api_1\.0/(?P<obj>{objects})\.json", "{obj}.list", list_)
        self.route("POST", rf"/api_1\.0/(?P<obj>{objects})\.json", "{obj}.create", create)
        self.route("GET", rf"/api_1\.0/(?P<obj>{objects})/(?P<uuid>[^/]+)\.json", "{obj}.get", get)
        self.route(
            "POST", rf"/api_1\.0/(?P<obj>{objects})/(?P<uuid>[^/]+)\.json", "{obj}.update", update
        )
        self.route(
            "DELETE", rf"/api_1\.0/(?P<obj>{objects})/(?P<uuid>[^/]+)\.json", "{obj}.delete", delete
        )
        self.route("POST", "/webhook_subscriptions/object", "webhook.subscribe", subscribe_object)
        self.route(
            "POST", "/webhook_subscriptions/event", "webhook.subscribe_event", subscribe_event
        )
        self.route("POST", "/webhook_subscriptions", "webhook.subscribe", bare_post)
        self.route("GET", "/webhook_subscriptions", "webhook.list", list_subs)
        self.route("DELETE", "/webhook_subscriptions", "webhook.delete", delete_sub)
        self.route(
            "DELETE", "/webhook_subscriptions/(?P<uuid>[^/]+)", "webhook.delete", delete_sub_by_uuid
        )

    def _store_subscription(self, obj: str, fields: str, callback: str, unique_id: str) -> None:
        """Create or update an object subscription whose callback has answered the challenge.

        A non-empty ``unique_id`` names the subscription it replaces; without one (or with one
        nothing has yet), the same object and callback URL do, as before. The replaced one keeps
        its uuid and is active again with no failures counted: posting a deactivated subscription
        again is how it is reactivated (docs/servicem8-api.md#webhooks).

        ASSUMPTION: ``last_failure_reason`` / ``last_failure_at`` are kept as history through a
        reactivation; nothing says whether ServiceM8 clears them.
        """
        target = next(
            (s for s in self.subscriptions if unique_id and s["unique_id"] == unique_id), None
        ) or next(
            (s for s in self.subscriptions if (s["object"], s["callback_url"]) == (obj, callback)),
            None,
        )
        row = {"object": obj, "fields": fields, "callback_url": callback, "unique_id": unique_id,
               "active": 1}  # fmt: skip
        if target is None:
            target = {"uuid": str(uuidlib.uuid4()), **row, "last_failure_reason": "",
                      "last_failure_at": EMPTY_STAMP}  # fmt: skip
            self.subscriptions.append(target)
        target.update(row)
        self.failures[target["uuid"]] = 0

    def _ordered(self, obj: str) -> list[dict[str, Any]]:
        order = self.order[obj]
        return sorted(self.records[obj].values(), key=lambda r: order[r["uuid"]])

    # --- admin -------------------------------------------------------------------------------
    def _routes_admin(self) -> None:
        def seed(req: SimRequest, p: dict[str, str]) -> SimReply:
            created = self.seed(req.json() or {})
            return SimReply(200, {"created": created})

        def state(req: SimRequest, p: dict[str, str]) -> SimReply:
            return SimReply(200, self.snapshot())

        def reset(req: SimRequest, p: dict[str, str]) -> SimReply:
            self.reset()
            return SimReply(200, {"ok": True})

        def dialect(req: SimRequest, p: dict[str, str]) -> SimReply:
            if req.method == "POST":
                self.set_dialect(**(req.json() or {}))
            return SimReply(200, asdict(self.dialect))

        self.route("POST", "/_admin/seed", "admin", seed, api=False)
        self.route("GET", "/_admin/state", "admin", state, api=False)
        self.route("POST", "/_admin/reset", "admin", reset, api=False)
        for method in ("GET", "POST"):
            self.route(method, "/_admin/dialect", "admin", dialect, api=False)

    def seed(self, data: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        """Load records as a user of the ServiceM8 app would create them (webhooks fire)."""
        created: dict[str, int] = {}
        with self.lock:
            for obj, rows in data.items():
                if obj not in OBJECTS:
                    raise SimError(400, f"unknown object {obj!r}")
                for row in rows:
                    if obj == "vendor":
                        self._put(
                            "vendor",
                            {
                                **self.records["vendor"][self.vendor_uuid],
                                **row,
                                "uuid": self.vendor_uuid,
                            },
                        )
                        if row.get("timezone_name"):
                            self.tz = ZoneInfo(str(row["timezone_name"]))
                    else:
                        self.create(obj, row)
                    created[obj] = created.get(obj, 0) + 1
        return created

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            return {obj: [dict(r) for r in self._ordered(obj)] for obj in OBJECTS}

    def reset(self) -> None:
        with self.lock:
            vendor = self.records["vendor"][self.vendor_uuid]
            self.records = {obj: {} for obj in OBJECTS}
            self.order = {obj: {} for obj in OBJECTS}
            self.subscriptions.clear()
            self.event_subscriptions.clear()
            self.changed_ms.clear()
            self.journal.clear()
            self.served_active.clear()
            self.versions.clear()
            self.served_ms.clear()
            self.failures.clear()
            self.deactivated = 0
            self._put("vendor", vendor)
            self.reset_counts()
            self.limiter.clear()

    def api_url(self) -> str:
        """The value for SERVICEM8_BASE_URL."""
        return f"{self.root_url}/api_1.0"
