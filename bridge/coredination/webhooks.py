"""What a Coredination delivery says changed. Pure parsing, no I/O.

The body is not documented (docs/coredination-api.md#webhooks). ASSUMPTION, kept here and in the
simulator: ``{"channel": "job", "type", "jobId", "jobUuid", "eventTimeStamp", "event": {"id"}}``.
Parsed defensively: the job reference is taken from ``jobUuid``, ``jobId``, ``job.{uuid,id}``,
``data.{uuid,id}`` or a top-level ``uuid``/``id`` when the channel or type says "job".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mappings.webhooks import Hint, Parsed

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CD_ID = re.compile(r"^[0-9]{1,18}$")


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
