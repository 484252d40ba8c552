"""Webhook deliveries as *hints*: "look at record X now". Pure decoding, no I/O.

Webhooks are never trusted for values: the bridge re-reads every hinted record through the REST API,
so a forged or garbled delivery can cost one read, never corrupt a record. Each system's own shapes
are parsed next to its client (``bridge.servicem8.webhooks``, ``bridge.coredination.webhooks``);
this module holds what they share: the hint, the body decoding (JSON, form, JWT) and its limits,
and the test that a Coredination event only echoes what the bridge already holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

HintKind = Literal[
    "servicem8.joballocation", "servicem8.jobactivity", "servicem8.job", "coredination.job"
]

MAX_DEPTH = 32  # JSON nesting deeper than any real body

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


# Job-field events: the fields flow ServiceM8 → Coredination only, so these never change a pair.
JOB_FIELD_EVENTS = {"CREATE", "UPDATE"}


def cd_event_known(
    event_type: str, user: int | None, new_state: str | None, held: dict[int, str]
) -> bool:
    """Whether a Coredination event says nothing beyond the resources the bridge holds (``held``:
    user id → state), typically the echo of the bridge's own write. Unknown events are not."""
    kind = event_type.upper()
    if kind in JOB_FIELD_EVENTS:
        return True
    if not kind or user is None:
        return False
    state = held.get(user)
    if not new_state or new_state.upper() == "UNASSIGNED":
        return state is None or state == "UNASSIGNED"
    return state == new_state.upper()
