"""How ServiceM8 answers are read: one pure function from (status, headers, body, exception) to an
``Outcome`` that ``bridge.http.raise_for`` turns into the error tree."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from bridge.errors import ApiError, NotFound, Rejected, Window
from bridge.http.transport import Outcome, by_status, message_of, transport_failure

# A 403 that names a missing scope: ``insufficient_scope: manage_schedule scope required`` in
# the body, or RFC 6750's ``WWW-Authenticate: Bearer error="insufficient_scope",
# scope="manage_schedule"`` (docs/servicem8-api.md#errors).
_INSUFFICIENT = re.compile(r"insufficient[_ ]scope|scope required", re.IGNORECASE)
_SCOPE_NAMED = (
    re.compile(r"scope\s*=\s*\"?([a-z][a-z_]*)", re.IGNORECASE),
    re.compile(r"\b([a-z]+(?:_[a-z]+)+)\s+scope\b", re.IGNORECASE),
)


def missing_scope(headers: Mapping[str, str] | None, message: str) -> str | None:
    """The scope a 403 says is missing (``?`` when it says one is but not which), or None."""
    challenge = next((v for k, v in (headers or {}).items()
                      if k.lower() == "www-authenticate"), "")  # fmt: skip
    for text in (challenge, message):
        if not _INSUFFICIENT.search(text):
            continue
        for pattern in _SCOPE_NAMED:
            found = [m for m in pattern.findall(text) if m.lower() != "insufficient_scope"]
            if found:
                return str(found[0]).lower()
        return "?"
    return None


def classify_servicem8(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: str = "",
    exc: BaseException | None = None,
    operation: str = "",
) -> Outcome:
    """ServiceM8 (docs/servicem8-api.md#errors). ``operation`` (``job.list``,
    ``jobactivity.create``) says what a 401/402/403 refused (``bridge.http.transport.refusal``);
    a 403 naming a scope blocks that kind of operation.

    429 comes as plain text ("Number of allowed API requests per minute exceeded") or as JSON
    ``{"errorCode":429,"message":"... per day exceeded"}``; the window is read from the words.
    A 200 whose JSON ``errorCode`` is not 0, or whose ``success`` is false, is a rejection: writes
    answer ``{"errorCode":0,...}``.
    """
    if exc is not None or status is None:
        return transport_failure(exc or RuntimeError("no response"))
    message = message_of(body)
    if status == 429:
        lowered = message.lower()
        window: Window | None = (
            "day" if "per day" in lowered else "minute" if "per minute" in lowered else None
        )
        return Outcome("rate_limited", message[:120] or "HTTP 429", window)
    if _names_existing_record(status, body, message):
        # A create whose uuid is taken, which the writer reads back (docs/servicem8-api.md#writes)
        return Outcome("exists", f"HTTP {status}: {message[:120] or 'the record exists'}")
    if status == 200 and body.lstrip().startswith("{"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and str(data.get("errorCode", "0")) not in ("0", ""):
            return Outcome("rejected", f"errorCode {data['errorCode']}: {message[:120]}")
        # A refusal can come as a 200 that says so (docs/servicem8-api.md#writes).
        if isinstance(data, dict) and data.get("success") in (False, "false", "0"):
            return Outcome("rejected", f"success false: {message[:120]}")
    scope = missing_scope(headers, message) if status == 403 else None
    return by_status(status, message, operation, scope=scope)


# How a refusal says the record exists (a create repeating a uuid that landed), besides a 409.
_EXISTS = re.compile(r"already exists|already in use|duplicate (?:uuid|record|entry)", re.I)


def _names_existing_record(status: int, body: str, message: str) -> bool:
    """409, or a 400 or refusing 200 whose message says the record exists."""
    if status == 409:
        return True
    if status not in (200, 400) or not _EXISTS.search(message):
        return False
    if status == 400:
        return True
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and (
        data.get("success") in (False, "false", "0")
        or str(data.get("errorCode", "0")) not in ("0", "")
    )


# Objects that exist only with an add-on the account may lack (docs/servicem8-api.md#bookings).
ADD_ON_OBJECTS = frozenset({"joballocation"})


def refused_for_good(obj: str, exc: ApiError) -> bool:
    """The account has no such object: a list of an add-on object the account lacks answers
    400 (or 404) (docs/how-it-works.md#refusals). A refused filter is no such answer."""
    return (
        obj in ADD_ON_OBJECTS
        and isinstance(exc, Rejected | NotFound)
        and "filter" not in exc.reason.lower()
    )
