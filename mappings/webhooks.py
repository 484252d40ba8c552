"""What a webhook delivery says changed, as *hints*: "look at record X now". Pure parsing, no I/O.

Webhooks are never trusted for values: the bridge re-reads every hinted record through the REST API
(ARCHITECTURE section 1), so a forged or garbled delivery can cost one read, never corrupt a record.

ServiceM8 shapes (API-NOTES A6), all accepted:

1. the documented object webhook: ``{"object", "entry": [{"uuid", "changed_fields", "time"}],
   "resource_url"}``, as JSON or as form fields (``entry`` then holds JSON text);
2. an add-on SDK event: ``{"eventName": "webhook_subscription", "eventArgs": {"object"?, "entry",
   "resource_url"?}}``, possibly as a JWT (only its payload is read: the token in the callback URL
   is the authentication, and the record is re-read anyway);
3. the event webhook observed in real traffic: ``{"id", "type": "job.updated", "data": {...}}``;
4. the SDK's unused ``WebhookEvent`` schema: ``{"event_type", "timestamp", "data"}``.

Coredination (API-NOTES B6; the body is not documented). ASSUMPTION, kept here and in the
simulator: ``{"channel": "job", "type", "jobId", "jobUuid", "eventTimeStamp", "event": {"id"}}``.
Parsed defensively: the job reference is taken from ``jobUuid``, ``jobId``, ``job.{uuid,id}``,
``data.{uuid,id}`` or a top-level ``uuid``/``id`` when the channel or type says "job".
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

HintKind = Literal["servicem8.joballocation", "servicem8.job", "coredination.job"]

SM8_OBJECTS: dict[str, HintKind] = {
    "joballocation": "servicem8.joballocation",
    "job": "servicem8.job",
}
MAX_ENTRIES = 500  # ServiceM8 batches entries; more than this in one delivery is not a delivery
MAX_DEPTH = 32  # JSON nesting deeper than any real body

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CD_ID = re.compile(r"^[0-9]{1,18}$")
_CHALLENGE = re.compile(r"^[\x21-\x7e]{1,512}$")  # printable ASCII, no spaces
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*$")


class BadPayload(ValueError):
    """The body cannot be read as any known shape (bad encoding, not JSON, too deep)."""


@dataclass(frozen=True)
class Hint:
    kind: HintKind
    ref: str  # ServiceM8 uuid (lower case), or a Coredination job uuid or numeric id
    stamp: str  # what tells this change from another of the same record ("" when unknown)
    # Coredination only: (event type, user id, new resource state), "" where the body is silent.
    # Lets the bridge skip re-reading a job when the event only echoes its own write.
    event: tuple[str, str, str] = ("", "", "")


@dataclass(frozen=True)
class Handshake:
    challenge: str


@dataclass
class Parsed:
    hints: list[Hint]
    ignored: list[str]  # why parts of the body were acknowledged and ignored


# --- decoding ----------------------------------------------------------------------------------
def decode_body(raw: bytes, content_type: str) -> Any:
    """Bytes → a JSON-like value, by content type (sniffed when missing). Raises BadPayload."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadPayload("body is not UTF-8") from None
    media = content_type.split(";", 1)[0].strip().lower()
    stripped = text.strip()
    sniff_form = not media and not stripped.startswith(("{", "[")) and "=" in stripped[:200]
    if media == "application/x-www-form-urlencoded" or sniff_form:
        return _decode_form(stripped)
    if media in {"application/jwt", "text/plain", ""} and _JWT.match(stripped):
        return _decode_jwt(stripped)
    return _loads(stripped)


def _loads(text: str) -> Any:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadPayload("body is not valid JSON") from None
    if _depth(value) > MAX_DEPTH:
        raise BadPayload(f"body nests deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _decode_form(text: str) -> dict[str, Any]:
    try:
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except ValueError:
        raise BadPayload("form body has too many fields") from None
    out: dict[str, Any] = {}
    for key, values in fields.items():
        value: Any = values[-1]
        if isinstance(value, str) and value[:1] in "{[":
            value = _loads(value)
        out[key] = value
    # A single field that holds the whole JSON body (payload=..., data=...).
    if "object" not in out and "mode" not in out and len(out) == 1:
        (only,) = out.values()
        if isinstance(only, dict):
            return only
    return out


def _decode_jwt(token: str) -> Any:
    match = _JWT.match(token)
    assert match is not None
    payload = match.group(1)
    try:
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPayload("JWT payload is not base64 JSON") from None
    return _loads(text)


# --- shapes ------------------------------------------------------------------------------------
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


def coredination_hints(body: Any) -> Parsed:
    """The job a Coredination event names (ASSUMPTION: see the module docstring)."""
    parsed = Parsed([], [])
    if not isinstance(body, Mapping):
        parsed.ignored.append("body is not an object")
        return parsed
    channel = body.get("channel")
    event_type = body.get("type")
    if isinstance(channel, str) and channel.lower() != "job":
        parsed.ignored.append(f"channel {channel[:40]!r} is not synced")
        return parsed
    ref = _cd_job_ref(body, job_channel=channel == "job" or _says_job(event_type))
    if ref is None:
        parsed.ignored.append("no job reference")
        return parsed
    event = body.get("event")
    event = event if isinstance(event, Mapping) else {}
    stamp = "|".join(
        str(v)
        for v in (event_type, body.get("eventTimeStamp"), event.get("id"))
        if isinstance(v, str | int) and not isinstance(v, bool)
    )
    kind = event.get("type") or event_type
    user = event.get("toUserId") if event.get("toUserId") is not None else event.get("userId")
    state = event.get("newResourceState")
    detail = (
        kind[:40] if isinstance(kind, str) else "",
        str(user) if isinstance(user, int) and not isinstance(user, bool) else "",
        state[:20] if isinstance(state, str) and state.isalpha() else "",
    )
    parsed.hints.append(Hint("coredination.job", ref, stamp[:200], detail))
    return parsed


def _says_job(event_type: Any) -> bool:
    return isinstance(event_type, str) and event_type.lower().startswith("job")


def _cd_job_ref(body: Mapping[str, Any], *, job_channel: bool) -> str | None:
    candidates: list[Any] = [body.get("jobUuid"), body.get("jobId")]
    for nested in ("job", "data"):
        inner = body.get(nested)
        if isinstance(inner, Mapping):
            candidates += [inner.get("uuid"), inner.get("id")]
    if job_channel:
        candidates += [body.get("uuid"), body.get("id")]
    for value in candidates:
        if isinstance(value, bool):
            continue
        text = str(value).strip().lower() if isinstance(value, str | int) else ""
        if _UUID.match(text) or _CD_ID.match(text):
            return text
    return None
