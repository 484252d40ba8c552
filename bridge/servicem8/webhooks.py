"""What a ServiceM8 delivery says changed (docs/servicem8-api.md#webhooks), and the fields the
bridge subscribes to. Pure parsing, no I/O. Shapes accepted:

1. the documented object webhook: ``{"object", "entry": [{"uuid", "changed_fields", "time"}],
   "resource_url"}``, as JSON or as form fields (``entry`` then holds JSON text);
2. an add-on SDK event: ``{"eventName": "webhook_subscription", "eventArgs": {"object"?, "entry",
   "resource_url"?}}``, possibly as a JWT (only its payload is read: the token in the callback URL
   is the authentication, and the record is re-read anyway);
3. the event webhook observed in real traffic: ``{"id", "type": "job.updated", "data": {...}}``;
4. the SDK's unused ``WebhookEvent`` schema: ``{"event_type", "timestamp", "data"}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from mappings.stamps import SM8_STAMP, format_sm8_stamp
from mappings.webhooks import BadPayload, Handshake, Hint, HintKind, Parsed

SM8_OBJECTS: dict[str, HintKind] = {
    "joballocation": "servicem8.joballocation",
    "jobactivity": "servicem8.jobactivity",
    "job": "servicem8.job",
}
MAX_ENTRIES = 500  # ServiceM8 batches entries; more than this in one delivery is not a delivery
# The fields whose change matters to the rules that read them (``bridge.servicem8.translate``):
# a subscription names them, so ServiceM8 does not call for changes the bridge ignores.
# Job activities (fixed bookings) and jobs first: ServiceM8 may refuse a subscription to job
# allocations (docs/servicem8-api.md#webhooks), and the polls cover them in any case.
SUBSCRIBED_FIELDS = {
    "jobactivity": ["job_uuid", "staff_uuid", "start_date", "end_date", "activity_was_scheduled",
                    "activity_was_recorded", "activity_was_automated", "active"],
    "job": ["job_address", "job_description", "generated_job_id", "lat", "lng", "active"],
    "joballocation": ["job_uuid", "staff_uuid", "allocation_date", "allocation_window_uuid",
                      "expiry_timestamp", "completion_timestamp", "active"],
}  # fmt: skip

# An ISO instant with its offset: ``Z`` (UTC) or ``±hh:mm``, as a delivery's ``time`` may be.
_INSTANT = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})$", re.I
)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CHALLENGE = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces


def handshake(body: Any) -> Handshake | None:
    """ServiceM8's subscription check (``mode=subscribe``, ``challenge``), or None."""
    if not isinstance(body, Mapping) or body.get("mode") != "subscribe":
        return None
    challenge = body.get("challenge")
    if not isinstance(challenge, str) or not _CHALLENGE.match(challenge):
        raise BadPayload("subscribe handshake without a usable challenge")
    return Handshake(challenge)


def servicem8_hints(body: Any) -> Parsed:
    """Every (object, uuid) a ServiceM8 delivery names, in any of the shapes above."""
    parsed = Parsed([], [])
    if not isinstance(body, Mapping):
        parsed.ignored.append("body is not an object")
        return parsed
    if isinstance(body.get("eventArgs"), Mapping):  # add-on SDK event
        args = body["eventArgs"]
        obj = args.get("object") or _object_from_url(args.get("resource_url"))
        _entries(parsed, obj, args.get("entry"))
    elif "entry" in body:  # documented object webhook
        obj = body.get("object") or _object_from_url(body.get("resource_url"))
        _entries(parsed, obj, body.get("entry"))
    elif isinstance(body.get("type") or body.get("event_type"), str):  # event webhooks
        event = str(body.get("type") or body.get("event_type"))
        obj = event.split(".", 1)[0]
        data = body.get("data")
        uuid = data.get("uuid") if isinstance(data, Mapping) else None
        stamp = str(body.get("id") or body.get("createdAt") or body.get("timestamp") or "")
        _add(parsed, obj, uuid, f"{event}|{stamp}" if stamp else "")
    else:
        parsed.ignored.append("no entry, eventArgs or event type")
    return parsed


def _object_from_url(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    match = re.search(r"/api_1\.0/([a-z]+)/", url, re.IGNORECASE)
    return match.group(1) if match else None


def _entries(parsed: Parsed, obj: Any, entries: Any) -> None:
    if not isinstance(entries, list):
        parsed.ignored.append("entry is not a list")
        return
    if len(entries) > MAX_ENTRIES:
        raise BadPayload(f"more than {MAX_ENTRIES} entries")
    for entry in entries:
        if not isinstance(entry, Mapping):
            parsed.ignored.append("entry item is not an object")
            continue
        fields = entry.get("changed_fields")
        changed = ",".join(sorted(str(f) for f in fields)) if isinstance(fields, list) else ""
        time = entry.get("time")
        stamp = f"{time}|{changed}" if isinstance(time, str | int) and time != "" else ""
        _add(parsed, obj, entry.get("uuid"), stamp)


def _add(parsed: Parsed, obj: Any, uuid: Any, stamp: str) -> None:
    kind = SM8_OBJECTS.get(obj.strip().lower()) if isinstance(obj, str) else None
    if kind is None:
        parsed.ignored.append(f"object {str(obj)[:40]!r} is not synced")
        return
    if not isinstance(uuid, str) or not _UUID.match(uuid.strip().lower()):
        parsed.ignored.append(f"{obj} entry without a valid uuid")
        return
    parsed.hints.append(Hint(kind, uuid.strip().lower(), stamp[:200]))


def delivery_time(text: str, tz: tzinfo | None) -> str:
    """The change time a delivery's ``time`` names, as the account's stamp (its local
    ``YYYY-MM-DD HH:MM:SS``, what ``edit_date`` filters take), or "" when it names none.

    A documented delivery carries the account's local time without an offset, taken as it is.
    One may carry an ISO UTC instant ending in ``Z`` (or with an offset) instead
    (docs/servicem8-api.md#webhooks): read as that instant, never as local time, and written in
    the account's zone; with the zone not known yet it names nothing (the record is then read by
    id, which needs no time)."""
    text = text.strip()
    if SM8_STAMP.match(text):
        return text.replace("T", " ")
    if not _INSTANT.match(text) or tz is None:
        return ""
    try:
        instant = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        return ""
    return format_sm8_stamp(instant.astimezone(UTC), tz)
