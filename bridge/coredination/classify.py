"""How Coredination answers are read: one pure function from (status, headers, body, exception) to
an ``Outcome`` that ``bridge.http.raise_for`` turns into the error tree."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.http.transport import Outcome, by_status, message_of, transport_failure


def classify_coredination(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: str = "",
    exc: BaseException | None = None,
) -> Outcome:
    """Coredination (docs/coredination-api.md#errors): 400/406 validation, 401/403 auth, 503
    retry later.

    No rate limit is documented; a 429 is honoured anyway, with no window known.
    """
    if exc is not None or status is None:
        return transport_failure(exc or RuntimeError("no response"))
    message = message_of(body)
    if status == 429:
        return Outcome("rate_limited", message[:120] or "HTTP 429", None)
    return by_status(status, message)
