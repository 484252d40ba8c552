"""Connections that come in by ServiceM8 OAuth (docs/servicem8-oauth.md#activation): the registry
as the token keeper's ``GrantStore``, and ``Activation``, which turns an approved callback into an
*authorised* connection holding the account's grant.

Nothing here lets a grant sync: a new connection waits as ``authorised`` until an operator pairs
it with a Coredination account (``sm8cd connections pair``). An account that has a connection
already gets its new grant stored on that connection and keeps its status (a paused one stays
paused until an operator resumes it); a connection on the account by an API key is not that
connection (``Activation._connection_of``). Imports the registry and the OAuth pieces; never
``tasks``.

Anyone may load the activation page, and each start stores a state until it expires (ten
minutes), so starts are bounded: ``STARTS_PER_MINUTE`` per client address and
``MAX_PENDING_STATES`` pending per deployment; a start over either is ``TooManyActivations``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import requests
from pydantic import SecretStr

from bridge.config import Settings
from bridge.connections.models import (
    Connection,
    ConnectionSecrets,
    ServiceM8Grant,
    make_connection,
)
from bridge.connections.registry import ConnectionRegistry
from bridge.errors import BridgeError, ConfigError, UnknownConnection
from bridge.http import OpenGate, Transport
from bridge.log import get_logger, redactor
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.client import ServiceM8Client
from bridge.servicem8.oauth import (
    Grant,
    OAuthConfig,
    Pending,
    StateStore,
    activation_url,
    complete_activation,
)
from bridge.servicem8.tokens import TokenKeeper

log = get_logger(__name__)

ID_PREFIX = "sm8-"  # a connection made by an activation is named by its account
# invalid_grant on a refresh: the add-on was removed, or the same add-on was authorised again on
# the account (a second deployment sharing the App ID), which ends the first grant's tokens
# (docs/servicem8-oauth.md#revocation).
REVOKED_REASON = (
    "grant no longer valid (add-on removed in ServiceM8, or authorised again elsewhere)"
)
MAX_LABEL = 100
REDACTOR_SLOT = "oauth-activation"  # the last few activations' tokens, until each is stored

# The activation page is public and anonymous, and each load stores a state for ten minutes: these
# bound what loads can make Redis hold (docs/servicem8-oauth.md#activation).
MAX_PENDING_STATES = 1_000  # activations started and not finished, per deployment
STARTS_PER_MINUTE = 10  # activation starts per client address (an IPv6 client's /64)
STARTS_WINDOW_SECONDS = 60
PENDING_KEY = "oauth:pending"  # sorted set: pending state -> when it expires; expires itself
STARTS_KEY = "oauth:starts:{client}"  # string: starts in the client's current window; expires


class TooManyActivations(BridgeError):
    """An activation start refused, nothing stored: its client started ``STARTS_PER_MINUTE``
    already (``why="rate"``), or ``MAX_PENDING_STATES`` wait to be finished (``why="pending"``).
    Answered 429; ``retry_after`` is when a start may succeed again, in seconds."""

    def __init__(self, why: Literal["rate", "pending"], retry_after: float) -> None:
        super().__init__(f"activation start refused ({why}); retry in {retry_after:.0f} s")
        self.why = why
        self.retry_after = max(1, math.ceil(retry_after))


class BoundedStates(StateStore):
    """The activation's ``StateStore`` with at most ``cap`` states pending at once. Each issued
    state is listed with its expiry in one sorted set, pruned as states expire and shed as they
    are taken back, so the count costs O(log n) and never a scan of the keys."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        cap: int = MAX_PENDING_STATES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(redis, prefix=prefix, clock=clock)
        self.cap = cap
        self.pending = prefix + PENDING_KEY

    def issue(self, label: str | None = None) -> str:
        """A fresh state, or ``TooManyActivations`` (and the state taken back) when ``cap`` are
        pending. The prune, the add and the count are one MULTI: two starts at once near the cap
        may both be refused, never both let past it."""
        state = super().issue(label)
        now = self.clock()
        pipe = self.r.pipeline()
        pipe.zremrangebyscore(self.pending, "-inf", now)
        pipe.zadd(self.pending, {state: now + self.ttl})
        pipe.zcard(self.pending)
        pipe.expire(self.pending, self.ttl)  # every member expires within ttl of the newest
        count = pipe.execute()[2]
        if count <= self.cap:
            return state
        pipe = self.r.pipeline()
        pipe.zrem(self.pending, state)
        pipe.delete(self.key(state))
        pipe.zrange(self.pending, 0, 0, withscores=True)
        oldest = pipe.execute()[2]
        raise TooManyActivations("pending", oldest[0][1] - now if oldest else self.ttl)

    def consume(self, state: str) -> Pending:
        try:
            return super().consume(state)
        finally:  # used, expired or unknown: pending no longer either way
            self.r.zrem(self.pending, state)


def client_key(host: str) -> str:
    """The name a client's starts are counted under: its address, or an IPv6 client's /64 (one
    host commonly holds a whole /64); a host that is no address (a test client's) as it is."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RegistryGrants:
    """``bridge.servicem8.oauth.GrantStore`` over the registry: grants kept encrypted with the
    connection's other secrets, a refreshed one stored whole under WATCH/MULTI."""

    def __init__(self, registry: ConnectionRegistry) -> None:
        self.registry = registry

    def load(self, connection_id: str) -> Grant | None:
        try:
            held = self.registry.secrets(connection_id).servicem8_grant
        except UnknownConnection:
            return None
        if held is None:
            return None
        return Grant(held.access_token, held.refresh_token, held.expires_at)

    def save(self, connection_id: str, grant: Grant) -> None:
        self.registry.update_grant(
            connection_id,
            grant.access_token.get_secret_value(),
            grant.refresh_token.get_secret_value(),
            grant.expires_at,
        )


def pause_revoked(registry: ConnectionRegistry) -> Callable[[str, str], None]:
    """The keeper's ``on_revoked``: the connection is paused, saying its grant is no longer
    valid (``REVOKED_REASON``)."""

    def on_revoked(connection_id: str, reason: str) -> None:
        try:
            registry.pause(connection_id, f"{REVOKED_REASON} ({reason})"[:500])
        except (UnknownConnection, ConfigError) as exc:  # removed, or not paired yet
            log.warning("connection.revoked_not_paused", connection=connection_id, reason=str(exc))
        else:
            log.warning("connection.paused_revoked", connection=connection_id)

    return on_revoked


def token_keeper(
    settings: Settings, redis: Any, registry: ConnectionRegistry
) -> TokenKeeper | None:
    """A process's token keeper for the registry's grants (refreshes single-flight across
    processes, the rotated grant stored, a revoked one pausing its connection), or None without
    an OAuth registration (``SERVICEM8_OAUTH_*``)."""
    config = OAuthConfig.from_settings(settings)
    if config is None:
        return None
    return TokenKeeper(
        redis,
        RegistryGrants(registry),
        config,
        on_revoked=pause_revoked(registry),
        margin=settings.servicem8_oauth_refresh_margin_seconds,
    )


@dataclass(frozen=True)
class Activated:
    connection: Connection
    new: bool  # False: an account with a connection already, its grant replaced


class Activation:
    """The add-on's activation: the URL that starts it, and its callback."""

    def __init__(
        self,
        registry: ConnectionRegistry,
        config: OAuthConfig,
        *,
        servicem8_base_url: str,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING_STATES,
        starts_per_minute: int = STARTS_PER_MINUTE,
    ) -> None:
        self.registry, self.config = registry, config
        self.states = BoundedStates(registry.r, registry.keys.prefix, cap=max_pending, clock=clock)
        self.starts_per_minute = starts_per_minute
        self.servicem8_base_url = servicem8_base_url
        self.session = session or requests.Session()
        self.clock = clock

    def url(self, label: str | None = None, client: str | None = None) -> str:
        """The authorize page to send a person to, with a fresh single-use state.
        ``TooManyActivations``, nothing stored, over either bound: ``client`` (the address the
        request came from; None: no web request, not counted) has started ``starts_per_minute``
        in its current minute, or ``max_pending`` states wait to be finished."""
        if client is not None:
            self._count_start(client)
        return activation_url(self.config, self.states, _label(label))

    def _count_start(self, client: str) -> None:
        """One start for ``client`` in its fixed one-minute window: the counter is created with
        its expiry in the same MULTI as the increment, so no crash leaves it without one."""
        key = self.registry.keys.prefix + STARTS_KEY.format(client=client_key(client))
        pipe = self.registry.r.pipeline()
        pipe.set(key, 0, ex=STARTS_WINDOW_SECONDS, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, count, left = pipe.execute()
        if count > self.starts_per_minute:
            raise TooManyActivations("rate", left if left > 0 else STARTS_WINDOW_SECONDS)

    def complete(self, state: str, code: str) -> Activated:
        """The callback: the state is taken back first (``InvalidState``, and no code is spent,
        for a forged, used or expired one), the code exchanged, the account read with the new
        token, and the grant stored."""
        pending, grant = complete_activation(
            self.session, self.config, self.states, state, code, clock=self.clock
        )
        redactor.add(
            [grant.access_token.get_secret_value(), grant.refresh_token.get_secret_value()],
            slot=REDACTOR_SLOT,
        )
        account = self._account(grant)
        secrets = ConnectionSecrets(
            servicem8_grant=ServiceM8Grant(
                access_token=grant.access_token,
                refresh_token=grant.refresh_token,
                expires_at=grant.expires_at,
            )
        )
        for _ in range(2):  # a second callback for the same account may add it between
            existing = self._connection_of(account)
            if existing is not None:
                self.registry.update_grant(
                    existing.id,
                    grant.access_token.get_secret_value(),
                    grant.refresh_token.get_secret_value(),
                    grant.expires_at,
                )
                log.info("connection.grant_renewed", connection=existing.id,
                         status=existing.status)  # fmt: skip
                return Activated(self.registry.get(existing.id), new=False)
            connection = make_connection(
                id=ID_PREFIX + account,
                label=pending.label,
                servicem8_account=account,
                servicem8_base_url=self.servicem8_base_url,
                status="authorised",
            )
            try:
                added = self.registry.add(connection, secrets)
            except ConfigError:
                continue  # added meanwhile: store the grant on it
            log.info("connection.authorised", connection=added.id)
            return Activated(added, new=True)
        raise ConfigError(f"ServiceM8 account {account}: its connection cannot be stored")

    def _account(self, grant: Grant) -> str:
        """The vendor uuid the grant is for: one read of ``vendor.json`` with its token, outside
        any budget (one call per activation)."""
        transport = Transport(
            api="servicem8",
            base_url=self.servicem8_base_url,
            credentials=_Bearer(grant.access_token),
            classify=classify_servicem8,
            gate=OpenGate(),
            session=self.session,
        )
        return ServiceM8Client(transport, "UTC").vendor().uuid.lower()

    def _connection_of(self, account: str) -> Connection | None:
        """The account's connection that takes its grants: one holding a grant already, or none
        yet (added as authorised to wait for one). A connection on the account by an API key,
        or by the environment's, keeps its key: the activation then makes a connection of its
        own, which pairing refuses with the Coredination group of one of those
        (docs/connections.md#one-account-pair-one-connection)."""
        found, _ = self.registry.readable()
        for connection in found:
            if connection.servicem8_account != account or connection.keys != "stored":
                continue
            try:
                held = self.registry.secrets(connection.id)
            except ConfigError:  # unreadable secrets: not a connection to store a grant on
                continue
            if held.servicem8_api_key is None:
                return connection
        return None


@dataclass(frozen=True)
class _Bearer:
    token: SecretStr

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.get_secret_value()}"}


def _label(label: str | None) -> str | None:
    """A label from the activation link, kept only when it is short printable text."""
    if not label:
        return None
    label = label.strip()
    if not label or len(label) > MAX_LABEL or not label.isprintable():
        return None
    return label
