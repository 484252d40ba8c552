"""ServiceM8 OAuth for connections that hold a grant instead of an API key
(docs/servicem8-oauth.md).

Owns the activation URL and its single-use ``state``, the two token requests (code and refresh),
and ``TokenKeeper``, which hands out a valid access token per connection and refreshes it at most
once at a time across every process. Where grants are kept is not its business: ``GrantStore`` is
the seam (the connection registry implements it; ``MemoryGrantStore`` is for tests). It must not
import ``tasks`` or the link store, and it never logs or raises a token, a code or the secret.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol
from urllib.parse import quote, urlencode, urlsplit

import requests
from pydantic import SecretStr
from redis.exceptions import LockError

from bridge.errors import (
    ApiError,
    AuthError,
    BridgeError,
    ConfigError,
    GrantRevoked,
    InvalidRecord,
    Rejected,
    Unavailable,
)
from bridge.http import Outcome, raise_for
from bridge.http.transport import new_session
from bridge.log import REDACTED, get_logger
from bridge.servicem8.classify import classify_servicem8
from bridge.store.keys import FLEET_PREFIX, Keys

log = get_logger(__name__)

AUTHORIZE_URL = "https://go.servicem8.com/oauth/authorize"
TOKEN_URL = "https://go.servicem8.com/oauth/access_token"  # noqa: S105 (a URL, not a secret)
SCOPES = "read_schedule manage_schedule read_jobs read_staff vendor"
# Redis keys (docs/servicem8-oauth.md#redis-keys). A state belongs to no connection yet: its key
# goes under the registry's prefix ``b:fleet:``, which no connection id may take.
STATE_PREFIX = FLEET_PREFIX
STATE_KEY = "oauth:state:{state}"  # string: JSON {"label", "issued_at"}, expires, read once
REFRESH_LOCK_KEY = "lock:oauth"  # under b:{connection}: (``Keys.key``), a redis-py Lock
STATE_SECONDS = 600
REFRESH_MARGIN_SECONDS = 300.0
TOKEN_TIMEOUT = (5.0, 20.0)  # connect, read: seconds for one token request
DEFAULT_EXPIRES_IN = 3600  # about an hour is what ServiceM8 grants; used if the answer is silent
_STATE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
OnRevoked = Callable[[str, str], None]


class InvalidState(BridgeError):
    """The ``state`` of a callback was never issued, was used already or has expired: refuse the
    callback and let the person start the activation again. No code is exchanged."""


@dataclass(frozen=True)
class OAuthConfig:
    """The add-on's registration. ``redirect_uri`` is the one registered with ServiceM8: it comes
    from configuration only, never from a request (docs/servicem8-oauth.md#activation)."""

    client_id: str
    client_secret: SecretStr
    redirect_uri: str
    authorize_url: str = AUTHORIZE_URL
    token_url: str = TOKEN_URL
    scopes: str = SCOPES

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret.get_secret_value():
            raise ConfigError("ServiceM8 OAuth: a client id and a client secret are required")
        for name in ("redirect_uri", "authorize_url", "token_url"):
            parts = urlsplit(getattr(self, name))
            if parts.scheme not in ("https", "http") or not parts.netloc:
                raise ConfigError(f"ServiceM8 OAuth: {name} must be an absolute http(s) URL")

    def secret_values(self) -> list[str]:
        """For the log redactor."""
        return [self.client_secret.get_secret_value()]


@dataclass(frozen=True)
class Grant:
    """One account's tokens; ``expires_at`` is when the access token ends (epoch seconds)."""

    access_token: SecretStr
    refresh_token: SecretStr
    expires_at: int
    scope: str = ""

    def fresh(self, now: float, margin: float = REFRESH_MARGIN_SECONDS) -> bool:
        return self.expires_at - now > margin


class GrantStore(Protocol):
    """Where each connection's grant is kept (the connection registry, encrypted)."""

    def load(self, connection_id: str) -> Grant | None: ...

    def save(self, connection_id: str, grant: Grant) -> None: ...


@dataclass
class MemoryGrantStore:
    """A ``GrantStore`` in a dict, safe across threads: the registry's stand-in in tests."""

    grants: dict[str, Grant] = field(default_factory=dict)
    saves: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self, connection_id: str) -> Grant | None:
        with self._lock:
            return self.grants.get(connection_id)

    def save(self, connection_id: str, grant: Grant) -> None:
        with self._lock:
            self.grants[connection_id] = grant
            self.saves += 1


# --- activation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pending:
    """What was remembered when a state was issued."""

    label: str | None
    issued_at: float


class StateStore:
    """Issues random ``state`` values and takes each back once (docs/servicem8-oauth.md#state)."""

    def __init__(
        self,
        redis: Any,
        prefix: str = STATE_PREFIX,
        ttl: int = STATE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.r, self.prefix, self.ttl, self.clock = redis, prefix, ttl, clock

    def key(self, state: str) -> str:
        return self.prefix + STATE_KEY.format(state=state)

    def issue(self, label: str | None = None) -> str:
        state = secrets.token_urlsafe(32)
        record = json.dumps({"label": label, "issued_at": self.clock()})
        self.r.set(self.key(state), record, ex=self.ttl)
        return state

    def consume(self, state: str) -> Pending:
        """What ``issue`` stored, once: GETDEL reads and deletes in one step, so two callbacks
        with one state cannot both pass, and Redis's expiry ends a state nobody used."""
        if not isinstance(state, str) or not _STATE.match(state):
            raise InvalidState("OAuth callback refused: the state is malformed")
        raw = self.r.getdel(self.key(state))
        if raw is None:
            raise InvalidState("OAuth callback refused: the state is unknown, used or expired")
        data = json.loads(raw)
        return Pending(label=data.get("label"), issued_at=float(data["issued_at"]))


def activation_url(config: OAuthConfig, states: StateStore, label: str | None = None) -> str:
    """Where to send the person who adds the add-on: the authorize page, with a fresh state."""
    query = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": config.redirect_uri,
        "scope": config.scopes,
        "state": states.issue(label),
    }
    return f"{config.authorize_url}?{urlencode(query, quote_via=quote)}"


def complete_activation(
    session: requests.Session,
    config: OAuthConfig,
    states: StateStore,
    state: str,
    code: str,
    clock: Callable[[], float] = time.time,
) -> tuple[Pending, Grant]:
    """The callback: the state first (a forged one never spends a code), then the exchange."""
    pending = states.consume(state)
    return pending, exchange_code(session, config, code, clock=clock)


# --- token requests (docs/servicem8-oauth.md#token-requests) -------------------------------------
def exchange_code(
    session: requests.Session,
    config: OAuthConfig,
    code: str,
    *,
    clock: Callable[[], float] = time.time,
) -> Grant:
    """Code → grant. A refused code (``invalid_grant``: used or expired) is ``Rejected``."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": config.redirect_uri}
    data, now = _token_request(session, config, form, "oauth.exchange", clock)
    return _grant(data, now, None, config.scopes, "oauth.exchange")


def refresh(
    session: requests.Session,
    config: OAuthConfig,
    refresh_token: SecretStr,
    *,
    scope: str = "",
    clock: Callable[[], float] = time.time,
) -> Grant:
    """Refresh token → grant with a new access token and a rotated refresh token.
    ``invalid_grant`` is ``GrantRevoked`` (docs/servicem8-oauth.md#revocation)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token.get_secret_value()}
    data, now = _token_request(session, config, form, "oauth.refresh", clock)
    return _grant(data, now, refresh_token, scope or config.scopes, "oauth.refresh")


def _token_request(
    session: requests.Session,
    config: OAuthConfig,
    form: dict[str, str],
    operation: str,
    clock: Callable[[], float],
) -> tuple[dict[str, Any], float]:
    """One form POST, classified as every ServiceM8 answer is (``classify_servicem8``) but for
    ``invalid_grant``. Sent once: a refresh token is spent by its first use."""
    secret = config.client_secret.get_secret_value()
    form = {**form, "client_id": config.client_id, "client_secret": secret}
    now = clock()  # before sending: the token's life counts from no later than this
    try:
        response = session.post(
            config.token_url,
            data=form,
            headers={"Accept": "application/json"},
            timeout=TOKEN_TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        _fail(classify_servicem8(None, None, "", exc), operation, None, "")
    status, body = response.status_code, _scrub(response.text, form)
    data = _json_object(body)
    if status in (400, 401) and data.get("error") == "invalid_grant":
        revoked = operation == "oauth.refresh"
        log.warning("servicem8.oauth_failed", operation=operation, status=status,
                    outcome="invalid_grant")  # fmt: skip
        raise (GrantRevoked if revoked else Rejected)(
            f"servicem8 {operation}: invalid_grant: "
            + ("the add-on was removed or its grant revoked" if revoked else "the code is spent"),
            api="servicem8",
            status=status,
            operation=operation,
        )
    outcome = classify_servicem8(status, response.headers, body, None)
    if not outcome.ok:
        _fail(outcome, operation, status, body)
    return data, now


def _fail(outcome: Outcome, operation: str, status: int | None, body: str) -> NoReturn:
    log.warning("servicem8.oauth_failed", operation=operation, status=status,
                outcome=outcome.kind, reason=outcome.reason)  # fmt: skip
    raise_for(outcome, api="servicem8", status=status, operation=operation, body=body)
    raise AssertionError("unreachable")  # pragma: no cover


def _grant(
    data: dict[str, Any], now: float, old: SecretStr | None, scope: str, operation: str
) -> Grant:
    """The grant in a token answer. Problems are named, the body never quoted: it holds tokens."""
    access, rotated = data.get("access_token"), data.get("refresh_token")
    if not isinstance(rotated, str) or not rotated:
        rotated = None  # a refresh answer without one keeps the old (a server that does not rotate)
    try:
        lifetime = int(data.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (TypeError, ValueError):
        lifetime = -1
    kept = SecretStr(rotated) if rotated else old
    if not isinstance(access, str) or not access or kept is None or lifetime < 0:
        problem = "expires_in is not a number" if lifetime < 0 else "a token is missing"
        raise InvalidRecord(f"servicem8 {operation}: unreadable token answer: {problem}",
                            api="servicem8", operation=operation)  # fmt: skip
    return Grant(SecretStr(access), kept, int(now) + lifetime, str(data.get("scope") or scope))


def _json_object(body: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _scrub(body: str, sent: Mapping[str, str]) -> str:
    """The body without any value we sent (the secret, the code, the refresh token)."""
    for key in ("client_secret", "code", "refresh_token"):
        if len(sent.get(key, "")) >= 4:
            body = body.replace(sent[key], REDACTED)
    return body


# --- tokens for calls (docs/servicem8-oauth.md#refresh) ------------------------------------------
class TokenKeeper:
    """A valid access token per connection, refreshed single-flight across processes.

    A token with more than ``margin`` seconds left is handed out as stored. Otherwise the
    connection's refresh lock is taken (waiting at most ``lock_wait`` seconds), the grant is read
    again (another worker may have refreshed it meanwhile: then nothing is sent), the refresh is
    sent once and the rotated grant saved before the lock is released. ``invalid_grant`` calls
    ``on_revoked(connection_id, reason)`` and raises ``GrantRevoked``.
    """

    def __init__(
        self,
        redis: Any,
        grants: GrantStore,
        config: OAuthConfig,
        *,
        on_revoked: OnRevoked,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN_SECONDS,
        lock_timeout: float = 60.0,
        lock_wait: float = 15.0,
        lock_sleep: float = 0.05,
    ) -> None:
        if lock_timeout <= sum(TOKEN_TIMEOUT):
            # A lock that lapses mid-request would let a second worker spend the same token.
            raise ConfigError("ServiceM8 OAuth: the refresh lock must outlast a token request")
        self.r, self.grants, self.config, self.on_revoked = redis, grants, config, on_revoked
        self.session = session or new_session(pool_size=4)
        self.clock, self.margin = clock, margin
        self.lock_timeout, self.lock_wait, self.lock_sleep = lock_timeout, lock_wait, lock_sleep

    def access_token(self, connection_id: str) -> str:
        grant = self._load(connection_id)
        if grant.fresh(self.clock(), self.margin):
            return grant.access_token.get_secret_value()
        lock = self.r.lock(
            Keys(connection_id).key(REFRESH_LOCK_KEY),
            timeout=self.lock_timeout,
            sleep=self.lock_sleep,
            blocking_timeout=self.lock_wait,
        )
        if not lock.acquire():
            grant = self._load(connection_id)
            if grant.fresh(self.clock(), margin=0):  # still valid, if not for long
                return grant.access_token.get_secret_value()
            raise _error(Unavailable, "another worker holds the refresh lock")
        try:
            grant = self._load(connection_id)
            if not grant.fresh(self.clock(), self.margin):  # else refreshed by another meanwhile
                grant = self._refresh(connection_id, grant)
            return grant.access_token.get_secret_value()
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("servicem8.refresh_lock_lapsed", connection_id=connection_id)

    def _refresh(self, connection_id: str, grant: Grant) -> Grant:
        try:
            new = refresh(self.session, self.config, grant.refresh_token, scope=grant.scope,
                          clock=self.clock)  # fmt: skip
        except GrantRevoked as exc:
            latest = self._load(connection_id)
            if latest.refresh_token != grant.refresh_token and latest.fresh(self.clock(), 0):
                return latest  # rotated by a worker that took the lock after ours lapsed
            log.warning("servicem8.grant_revoked", connection_id=connection_id, reason=exc.reason)
            self.on_revoked(connection_id, exc.reason)
            raise
        # The old refresh token is spent now: keep the new one before another worker may look.
        self.grants.save(connection_id, new)
        log.info("servicem8.token_refreshed", connection_id=connection_id,
                 expires_at=new.expires_at)  # fmt: skip
        return new

    def _load(self, connection_id: str) -> Grant:
        grant = self.grants.load(connection_id)
        if grant is None:
            raise _error(AuthError, f"no grant for connection {connection_id!r}")
        return grant


def _error(kind: type[ApiError], why: str) -> ApiError:
    return kind(f"servicem8 oauth.refresh: {why}", api="servicem8", operation="oauth.refresh")


@dataclass(frozen=True)
class BearerAuth:
    """``bridge.http.Credentials`` for one connection: ``Authorization: Bearer <access token>``."""

    keeper: TokenKeeper
    connection_id: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keeper.access_token(self.connection_id)}"}
