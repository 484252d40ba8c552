"""The exception tree. Each branch tells the caller what to do, not what went wrong::

    BridgeError
    ├── ConfigError                 fix the settings; nothing will work until then
    │   └── UnknownConnection       no connection of that id in the registry: check the id
    │                               ('sm8cd connections list') or add it
    ├── ConnectionPaused            the connection is paused or not paired yet: its work waits
    │                               (dirty marks stay) until it is resumed; skip, do not retry
    └── ApiError                    a call to ServiceM8 or Coredination did not succeed
        ├── RetryableError          try again later, the same request can succeed
        │   ├── RateLimited         429: wait for the window (``window`` = minute | day | None)
        │   ├── Unavailable         5xx, timeout, connection reset
        │   │   └── Unconfirmed     a write that must not be repeated lost its answer: its
        │   │                       effect is read again, no sooner than ``settle`` seconds
        │   └── BudgetExhausted     our own budget has no token now: defer, do not send
        └── PermanentError          do not retry the same request
            ├── AuthError           401, or 403 on the account or a whole list: the credential's;
            │   │                   that API is paused, the operator told
            │   ├── GrantRevoked    invalid_grant on a token refresh: the account removed the
            │   │                   add-on; pause the connection as removed until re-activated
            │   └── NotInGoodStanding  402: the account's standing; the API is held for hours
            ├── Refused             a 403 narrower than the credential: the rest goes on
            │   ├── Forbidden       one record refused: park that pair or job with the message
            │   ├── ScopeMissing    a named scope is missing: that kind of operation is blocked
            │   │                   for the connection until it is granted (``scope``)
            │   └── WebhooksRefused 401 / 403 on a webhook subscription call: the object is
            │                       polled only, nothing is paused
            ├── NotFound            404
            ├── Rejected            400 / 406 / other 4xx: the request itself is wrong
            │   └── AlreadyExists   409, or a refusal saying the record exists: a create whose
            │                       uuid is taken; read the record back before deciding
            └── InvalidRecord       the API answered a record we cannot read (impossible date,
                                    wrong type): park it with the reason, keep the rest going

Messages and fields never carry a secret: body excerpts pass through the log redactor.
"""

from __future__ import annotations

from typing import Any, Literal

Api = Literal["servicem8", "coredination"]
Window = Literal["minute", "day"]


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A setting is missing or malformed. The message is one line naming the variable."""


class UnknownConnection(ConfigError):
    """The connection registry holds no connection of this id."""

    def __init__(self, connection_id: str) -> None:
        super().__init__(
            f"no connection {connection_id!r} in the registry "
            "(see 'sm8cd connections list', or add it with 'sm8cd connections add')"
        )
        self.connection_id = connection_id


class ConnectionPaused(BridgeError):
    """Work for a connection that is not active: paused (with its reason) or authorised and not
    paired yet. Nothing is lost by skipping it: what it would have synced stays dirty in the
    connection's keys, and its polls find the rest once it is resumed."""

    def __init__(self, connection_id: str, status: str, reason: str | None) -> None:
        why = f": {reason}" if reason else ""
        super().__init__(f"connection {connection_id!r} is {status}{why}")
        self.connection_id = connection_id
        self.status = status


class ApiError(BridgeError):
    def __init__(
        self,
        message: str,
        *,
        api: Api,
        status: int | None = None,
        operation: str | None = None,
        body_excerpt: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.api = api
        self.status = status
        self.operation = operation
        self.body_excerpt = body_excerpt
        self.request_id = request_id

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__

    def describe(self) -> dict[str, object]:
        """Fields for logs and dead letters (already secret-free)."""
        return {
            "error": type(self).__name__,
            "api": self.api,
            "status": self.status,
            "operation": self.operation,
            "reason": self.reason,
            "body_excerpt": self.body_excerpt,
        }


class RetryableError(ApiError):
    """The same request may succeed later."""


class RateLimited(RetryableError):
    def __init__(self, message: str, *, window: Window | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.window = window


class Unavailable(RetryableError):
    """5xx, a timeout or a broken connection."""


class UuidMoved(RetryableError):
    """A booking create's derived uuid is held by a booking the office has since given to
    another person: that booking is now read and recorded, and the next try derives the
    person's next uuid (``mappings.ids.free_derived``)."""


class Unconfirmed(Unavailable):
    """A write that must not be sent twice (a ServiceM8 DELETE, which a second time restores
    the record) lost its answer, and the record still reads as before. The request may still be
    on its way at the server, so it is neither sent again nor read again until ``settle``
    seconds have passed: the retry starts from a read."""

    def __init__(self, message: str, *, settle: float, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.settle = settle


class BudgetExhausted(RetryableError):
    """Our shared budget had no token: nothing was sent. ``retry_in`` says when to try again."""

    def __init__(self, message: str, *, retry_in: float, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_in = retry_in


class PermanentError(ApiError):
    """Retrying the same request cannot help."""


class AuthError(PermanentError):
    """The credential's refusal (docs/how-it-works.md#refusals): a 401, or a 403 on the
    account's own record or a whole list. The API is paused for the key."""


class NotInGoodStanding(AuthError):
    """402: the account is not in good standing. Nothing the bridge sends can succeed until the
    account is settled, so the API is held for hours, not probed every few minutes."""


class Refused(PermanentError):
    """A 403 that refuses less than the credential (docs/how-it-works.md#refusals): one record,
    one kind of operation, or webhooks. Nothing is paused; only what was refused waits."""


class Forbidden(Refused):
    """403 on one record (a job, a booking): that pair or job is parked with the message."""


class ScopeMissing(Refused):
    """403 naming a scope the credential lacks: every call of this kind of operation
    (``operation``) is refused without being sent until the scope is granted."""

    def __init__(self, message: str, *, scope: str | None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.scope = scope

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "scope": self.scope}


class WebhooksRefused(Refused):
    """401 / 403 on a webhook subscription call: webhooks are unavailable for this credential,
    so the object is polled only (shown in ``sm8cd status``); the API is not paused."""


class NotFound(PermanentError):
    pass


class Rejected(PermanentError):
    """400 / 406 / other 4xx: validation or a malformed request."""


class AlreadyExists(Rejected):
    """A create refused because a record with its uuid exists (HTTP 409, or a refusal whose
    message says so). For a create with the bridge's own uuid it may be the answer to a repeat
    of a create that landed: the writer reads the record back (bridge/servicem8/creates.py)."""


class InvalidRecord(PermanentError):
    """A record the API returned does not fit its documented shape. Retrying reads the same."""

    def __init__(self, message: str, *, record: str | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.record = record


class GrantRevoked(AuthError):
    """A token refresh answered ``invalid_grant``: the account removed the add-on, which revokes
    its tokens (there is no removal event, docs/servicem8-oauth.md#revocation). Every retry gets
    the same answer; only a new activation brings the connection back."""


def invalid_record(api: Api, operation: str, row: object, exc: Exception) -> InvalidRecord:
    """An ``InvalidRecord`` for a pydantic ``ValidationError`` on ``row``: the record's id and
    the first problem, short."""
    ident = None
    if isinstance(row, dict):
        ident = row.get("uuid") or row.get("id")
    errors: list[dict[str, Any]] = list(getattr(exc, "errors", list)())
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ())) or "record"
    why = str(first.get("msg") or type(exc).__name__)[:160]
    return InvalidRecord(
        f"{api} {operation}: record {str(ident)[:64] if ident else '?'} is unreadable: "
        f"{where}: {why}",
        api=api,
        operation=operation,
        record=str(ident)[:64] if ident else None,
    )
