"""How Coredination answers are read: one pure function from (status, headers, body, exception) to
an ``Outcome`` that ``bridge.http.raise_for`` turns into the error tree."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.http.transport import Outcome, by_status, message_of, transport_failure

USERS_LIST = "user.list"


def classify_coredination(
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: str = "",
    exc: BaseException | None = None,
    operation: str = "",
) -> Outcome:
    """Coredination (docs/coredination-api.md#errors): 400/406 validation, 503 retry later;
    401, or 403 on a whole list, the key's; 403 on one job, that job's
    (``bridge.http.transport.refusal``). A 403 on the users list is no credential's: the
    account may keep it for partners, and staff are then linked by hand.

    No rate limit is documented; a 429 is honoured anyway, with no window known.
    """
    if exc is not None or status is None:
        return transport_failure(exc or RuntimeError("no response"))
    message = message_of(body)
    if status == 429:
        return Outcome("rate_limited", message[:120] or "HTTP 429", None)
    if status == 403 and operation == USERS_LIST:
        return Outcome("forbidden", f"HTTP 403: {message[:120] or 'HTTP 403'}")
    return by_status(status, message, operation)
