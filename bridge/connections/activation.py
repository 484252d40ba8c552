"""Connections that come in by ServiceM8 OAuth (docs/servicem8-oauth.md#activation): the registry
as the token keeper's ``GrantStore``, and ``Activation``, which turns an approved callback into an
*authorised* connection holding the account's grant.

Nothing here lets a grant sync: a new connection waits as ``authorised`` until an operator pairs
it with a Coredination account (``sm8cd connections pair``). An account that has a connection
already gets its new grant stored on that connection and keeps its status (a paused one stays
paused until an operator resumes it). Imports the registry and the OAuth pieces; never ``tasks``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from bridge.errors import ConfigError, UnknownConnection
from bridge.http import OpenGate, Transport
from bridge.log import get_logger, redactor
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.client import ServiceM8Client
from bridge.servicem8.oauth import (
    Grant,
    OAuthConfig,
    StateStore,
    activation_url,
    complete_activation,
)
from bridge.servicem8.tokens import TokenKeeper

log = get_logger(__name__)

ID_PREFIX = "sm8-"  # a connection made by an activation is named by its account
REVOKED_REASON = "add-on removed in ServiceM8"
MAX_LABEL = 100
REDACTOR_SLOT = "oauth-activation"  # the last few activations' tokens, until each is stored


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
    """The keeper's ``on_revoked``: the connection is paused, saying the add-on was removed."""

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
    ) -> None:
        self.registry, self.config = registry, config
        self.states = StateStore(registry.r, prefix=registry.keys.prefix, clock=clock)
        self.servicem8_base_url = servicem8_base_url
        self.session = session or requests.Session()
        self.clock = clock

    def url(self, label: str | None = None) -> str:
        """The authorize page to send a person to, with a fresh single-use state."""
        return activation_url(self.config, self.states, _label(label))

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
        found, _ = self.registry.readable()
        return next((c for c in found if c.servicem8_account == account), None)


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
