"""ServiceM8 OAuth for connections that hold a grant instead of an API key
(docs/servicem8-oauth.md).

Owns the add-on's registration, the activation URL and its single-use ``state``, and the two
token requests (code and refresh); ``bridge.servicem8.tokens`` hands out the access tokens and
refreshes them. Where grants are kept is not its business: ``GrantStore`` is the seam (the
connection registry implements it; ``MemoryGrantStore`` is for tests). It must not import
``tasks`` or the link store, and it never logs or raises a token, a code or the secret.
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

from bridge.config import SERVICEM8_AUTHORIZE_URL, SERVICEM8_TOKEN_URL, Settings
from bridge.errors import (
    BridgeError,
    ConfigError,
    GrantRevoked,
    InvalidRecord,
    Rejected,
)
from bridge.http import Outcome, raise_for
from bridge.log import REDACTED, get_logger
from bridge.servicem8.classify import classify_servicem8
from bridge.store.keys import FLEET_PREFIX

log = get_logger(__name__)

SCOPES = "read_schedule manage_schedule read_jobs read_staff vendor"
# Redis keys (docs/servicem8-oauth.md#redis-keys). A state belongs to no connection yet: its key
# goes under the registry's prefix ``b:fleet:``, which no connection id may take.
STATE_PREFIX = FLEET_PREFIX
STATE_KEY = "oauth:state:{state}"  # string: JSON {"label", "issued_at"}, expires, read once
STATE_SECONDS = 600
REFRESH_MARGIN_SECONDS = 300.0  # a token with less left is refreshed before a call
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
    authorize_url: str = SERVICEM8_AUTHORIZE_URL
    token_url: str = SERVICEM8_TOKEN_URL
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

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthConfig | None:
        """The add-on's registration from ``SERVICEM8_OAUTH_*``; None when no client id is set
        (a deployment of API keys only). Half a registration is a ``ConfigError``."""
        given = {
            "SERVICEM8_OAUTH_CLIENT_ID": settings.servicem8_oauth_client_id,
            "SERVICEM8_OAUTH_CLIENT_SECRET": settings.servicem8_oauth_client_secret,
            "SERVICEM8_OAUTH_REDIRECT_URI": settings.servicem8_oauth_redirect_uri,
        }
        missing = [name for name, value in given.items() if not value]
        if len(missing) == len(given):
            return None
        if missing:
            raise ConfigError(f"ServiceM8 OAuth: {', '.join(missing)} must be set as well")
        assert settings.servicem8_oauth_client_id and settings.servicem8_oauth_redirect_uri
        assert settings.servicem8_oauth_client_secret is not None
        return cls(
            client_id=settings.servicem8_oauth_client_id,
            client_secret=settings.servicem8_oauth_client_secret,
            redirect_uri=settings.servicem8_oauth_redirect_uri,
            authorize_url=settings.servicem8_oauth_authorize_url,
            token_url=settings.servicem8_oauth_token_url,
        )


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
            + (
                "the grant is no longer valid (add-on removed, or authorised again elsewhere)"
                if revoked
                else "the code is spent"
            ),
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
