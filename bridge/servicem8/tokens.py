"""Access tokens for the calls of connections that hold a ServiceM8 OAuth grant
(docs/servicem8-oauth.md#refresh): ``TokenKeeper`` hands out a valid access token per connection
and refreshes it at most once at a time across every process; ``BearerAuth`` puts it on each
request and renews it when an API refuses it early. The token requests themselves are
``bridge.servicem8.oauth``'s. Never logs or raises a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from redis.exceptions import LockError

from bridge.errors import ApiError, AuthError, ConfigError, GrantRevoked, Unavailable
from bridge.http.transport import new_session
from bridge.log import get_logger
from bridge.servicem8.oauth import (
    REFRESH_MARGIN_SECONDS,
    TOKEN_TIMEOUT,
    Grant,
    GrantStore,
    OAuthConfig,
    OnRevoked,
    refresh,
)
from bridge.store.keys import Keys

log = get_logger(__name__)

REFRESH_LOCK_KEY = "lock:oauth"  # under b:{connection}: (``Keys.key``), a redis-py Lock
RENEWED_SECONDS = 60.0  # a token renewed this recently and refused again is not renewed again


class TokenKeeper:
    """A valid access token per connection, refreshed single-flight across processes.

    A token with more than ``margin`` seconds left is handed out as this process last saw it
    (no Redis read). Otherwise the grant is read again (another worker may have refreshed it);
    if it is still stale the connection's refresh lock is taken (waiting at most ``lock_wait``
    seconds), the grant read once more, the refresh sent once and the rotated grant saved
    before the lock is released. ``renew`` does the same for a token an API refused (401)
    before its time. ``invalid_grant`` calls ``on_revoked(connection_id, reason)`` and raises
    ``GrantRevoked``.
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
        self._held: dict[str, Grant] = {}  # by connection: the grant this process last read
        self._renewed: dict[str, tuple[str, float]] = {}  # by connection: token, when (renew)

    def access_token(self, connection_id: str) -> str:
        grant = self._held.get(connection_id)
        if grant is None or not grant.fresh(self.clock(), self.margin):
            grant = self._load(connection_id)
        if grant.fresh(self.clock(), self.margin):
            return grant.access_token.get_secret_value()
        return self._refreshed(connection_id, refused=None)

    def renew(self, connection_id: str, refused: str) -> bool:
        """An API answered 401 to ``refused``: get another access token (unless another worker
        has already). False, and nothing sent, when ``refused`` is the token this process got
        by renewing within the last minute: a refusal that renewing does not cure is a real
        one (a missing scope, a suspended account) and is left to the auth pause."""
        token, at = self._renewed.get(connection_id, ("", 0.0))
        if token == refused and self.clock() - at < RENEWED_SECONDS:
            return False
        renewed = self._refreshed(connection_id, refused=refused)
        self._renewed[connection_id] = (renewed, self.clock())
        return True

    def _refreshed(self, connection_id: str, refused: str | None) -> str:
        """A fresh access token by the refresh lock: refreshed here unless the grant read under
        the lock is usable (someone else refreshed it meanwhile)."""

        def usable(grant: Grant, margin: float) -> bool:
            token = grant.access_token.get_secret_value()
            return token != refused and grant.fresh(self.clock(), margin)

        lock = self.r.lock(
            Keys(connection_id).key(REFRESH_LOCK_KEY),
            timeout=self.lock_timeout,
            sleep=self.lock_sleep,
            blocking_timeout=self.lock_wait,
        )
        if not lock.acquire():
            grant = self._load(connection_id)
            if usable(grant, 0):  # still valid, if not for long
                return grant.access_token.get_secret_value()
            raise _error(Unavailable, "another worker holds the refresh lock")
        try:
            grant = self._load(connection_id)
            if not usable(grant, self.margin if refused is None else 0):
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
            self._held.pop(connection_id, None)
            self.on_revoked(connection_id, exc.reason)
            raise
        # The old refresh token is spent now: keep the new one before another worker may look.
        self.grants.save(connection_id, new)
        self._held[connection_id] = new
        log.info("servicem8.token_refreshed", connection_id=connection_id,
                 expires_at=new.expires_at)  # fmt: skip
        return new

    def _load(self, connection_id: str) -> Grant:
        grant = self.grants.load(connection_id)
        if grant is None:
            self._held.pop(connection_id, None)
            raise _error(AuthError, f"no grant for connection {connection_id!r}")
        self._held[connection_id] = grant
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

    def refused(self, headers: Mapping[str, str]) -> bool:
        """A 401 for these headers (``bridge.http.transport.Renewable``): renew the token."""
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        return self.keeper.renew(self.connection_id, token)
