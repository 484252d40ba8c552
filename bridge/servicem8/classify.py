"""How ServiceM8 answers are read: one pure function from (status, headers, body, exception) to an
``Outcome`` that ``bridge.http.raise_for`` turns into the error tree."""

from __future__ import annotations

import json
from collections.abc import Mapping

from bridge.errors import Window
from bridge.http.transport import Outcome, by_status, message_of, transport_failure


def classify_servicem8(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: str = "",
    exc: BaseException | None = None,
) -> Outcome:
    """ServiceM8 (docs/servicem8-api.md#errors).

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
    return by_status(status, message)
