"""``ConnectionRegistry``: the connections of one deployment, kept in Redis under keys of no single
connection (``FleetKeys``: ``b:fleet:connections``, ``b:fleet:secrets``;
docs/connections.md#the-registrys-keys).

Each connection is two hash fields under its id: its public part as JSON, and its secrets as one
Fernet token of their JSON (``SecretBox``), never as plain text. Every read-modify-write runs under
WATCH/MULTI on both hashes (redis-py's ``transaction`` retries when another writer came between),
so two operators, or an operator and a worker refreshing a grant, never lose each other's change.
The status rules themselves are the pure ``bridge.connections.states``.

Not wired into the workers yet: ``load`` is what the runtime will call, per connection id.
Imports the settings, the error tree, the log redactor, the key schema and the key digest that
names a Coredination group (``bridge.http.accounts``); never ``tasks``.
"""

from __future__ import annotations

import builtins  # ``list`` is a method here
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from bridge.config import Settings
from bridge.connections import states, stored
from bridge.connections.models import (
    Connection,
    ConnectionSecrets,
    ServiceM8Grant,
    default_connection,
    default_secrets,
    make_connection,
)
from bridge.connections.secrets import SecretBox
from bridge.errors import ConfigError, UnknownConnection
from bridge.http.accounts import key_digest
from bridge.log import redactor
from bridge.store.keys import RESERVED_CONNECTION_IDS, FleetKeys

Change = Callable[[Connection, ConnectionSecrets | None, int], "Changed"]


@dataclass(frozen=True)
class Changed:
    connection: Connection
    secrets: ConnectionSecrets | None = None  # None: the stored secrets stay as they are


@dataclass(frozen=True)
class Loaded:
    """What a process needs to run one connection: the settings it sees, and its keys."""

    connection: Connection
    secrets: ConnectionSecrets
    settings: Settings


class ConnectionRegistry:
    def __init__(
        self,
        redis: Any,
        box: SecretBox,
        *,
        keys: FleetKeys | None = None,
        clock: Callable[[], float] = time.time,
        environment: Settings | None = None,
    ) -> None:
        """``environment``: the deployment's settings, when this registry may add connections:
        the environment's own connection is then upserted before another is added, so the
        first addition never turns a single-account deployment's connection off."""
        self.r = redis
        self.box = box
        self.keys = keys or FleetKeys()
        self.clock = clock
        self.environment = environment

    # --- reading ---------------------------------------------------------------------------------
    def get(self, connection_id: str) -> Connection:
        raw = self.r.hget(self.keys.connections, connection_id)
        if raw is None:
            raise UnknownConnection(connection_id)
        return stored.decode(connection_id, raw)

    def list(self) -> list[Connection]:
        raw: dict[Any, Any] = self.r.hgetall(self.keys.connections)
        found = [stored.decode(stored.text(k), v) for k, v in raw.items()]
        return sorted(found, key=lambda c: c.id)

    def readable(
        self, raw: Mapping[Any, Any] | None = None
    ) -> tuple[builtins.list[Connection], builtins.list[str]]:
        """Every connection that can be read, and the ids of those that cannot (damaged, or
        written by a newer version): one bad entry must not stop the others. ``raw``: the
        public hash as read already (``raw_entries``)."""
        if raw is None:
            raw = self.raw_entries()
        found, bad = [], []
        for key, value in raw.items():
            try:
                found.append(stored.decode(stored.text(key), value))
            except ConfigError:
                bad.append(stored.text(key))
        return sorted(found, key=lambda c: c.id), sorted(bad)

    def raw_entries(self) -> dict[Any, Any]:
        """The public hash as stored (ids → JSON), undecoded."""
        raw: dict[Any, Any] = self.r.hgetall(self.keys.connections)
        return raw

    def secrets(self, connection_id: str) -> ConnectionSecrets:
        """The connection's keys, decrypted (and known to the log redactor from now on)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hexists(self.keys.connections, connection_id)
        pipe.hget(self.keys.secrets, connection_id)
        exists, token = pipe.execute()
        if not exists:
            raise UnknownConnection(connection_id)
        return self._open(connection_id, token)

    def resolve(self, settings: Settings) -> builtins.list[Connection]:
        """The registry's connections, or the environment's default connection when it holds
        none (a single-account deployment, docs/connections.md#the-default-connection)."""
        return self.list() or [default_connection(settings)]

    def load(self, connection_id: str, settings: Settings) -> Loaded:
        """A connection with its settings and decrypted keys, by id. The deployment's own
        connection takes its keys from the environment (never stored); with an empty registry it
        is the environment's alone."""
        if connection_id == settings.bridge_connection_id and not self.r.hlen(
            self.keys.connections
        ):
            connection, secrets = default_connection(settings), default_secrets(settings)
        else:
            connection = self.get(connection_id)
            secrets = (
                default_secrets(settings)
                if connection.keys == "environment"
                else self.secrets(connection_id)
            )
        return Loaded(connection, secrets, connection.settings(settings, secrets))

    def upsert_environment(self, settings: Settings) -> Connection:
        """The environment's connection (``BRIDGE_CONNECTION_ID`` with ``SERVICEM8_API_KEY`` and
        ``COREDINATION_API_KEY``) as a registry entry, added or brought up to date at start, so
        that it is one connection among the others and adding another never stops it
        (docs/connections.md#the-default-connection). Its keys stay in the environment. Its
        status is left as an operator set it; an entry of that id with stored keys (added by
        hand) is left alone."""
        wanted = default_connection(settings)

        def attempt(pipe: Any) -> Connection:
            raw = pipe.hget(self.keys.connections, wanted.id)
            now = self._now()
            if raw is None:
                new = wanted.model_copy(update={"created": now, "changed": now})
                pipe.multi()
                pipe.hset(self.keys.connections, wanted.id, stored.encode(new))
                return new
            current = stored.decode(wanted.id, raw)
            same = (current.servicem8_base_url, current.coredination_base_url) == (
                wanted.servicem8_base_url, wanted.coredination_base_url)  # fmt: skip
            if current.keys != "environment" or same:
                pipe.multi()
                return current
            urls = {"servicem8_base_url": wanted.servicem8_base_url,
                    "coredination_base_url": wanted.coredination_base_url}  # fmt: skip
            changed = _with(current, urls, now)
            pipe.multi()
            pipe.hset(self.keys.connections, wanted.id, stored.encode(changed))
            return changed

        result: Connection = self.r.transaction(
            attempt, self.keys.connections, value_from_callable=True
        )
        return result

    # --- adding and removing ---------------------------------------------------------------------
    def add(self, connection: Connection, secrets: ConnectionSecrets | None = None) -> Connection:
        """Store a new connection. An existing id is refused: ids never change, and every key and
        derived id of a connection is made from its id."""
        secrets = secrets or ConnectionSecrets()
        if connection.id in RESERVED_CONNECTION_IDS:
            raise ConfigError(
                f"connection id {connection.id!r} is reserved (its keys would be the registry's "
                "or the accounts'): choose another"
            )
        if connection.keys == "stored":  # the environment's keys are not the registry's to check
            states.check_new(connection, secrets)
        if self.environment is not None and connection.id != self.environment.bridge_connection_id:
            self.upsert_environment(self.environment)
        token = None if secrets.empty else self._seal(secrets)
        now = self._now()
        new = _grouped(connection, secrets).model_copy(update={"created": now, "changed": now})

        def attempt(pipe: Any) -> None:
            if pipe.hexists(self.keys.connections, connection.id):
                raise ConfigError(
                    f"connection {connection.id!r} exists: ids never change (every key and "
                    "derived id depends on them); remove it first, or choose another id"
                )
            pipe.multi()
            pipe.hset(self.keys.connections, connection.id, stored.encode(new))
            if token is not None:
                pipe.hset(self.keys.secrets, connection.id, token)
            else:
                pipe.hdel(self.keys.secrets, connection.id)

        self.r.transaction(attempt, self.keys.connections, self.keys.secrets)
        redactor.add(secrets.values(), slot=connection.id)
        return new

    def remove(self, connection_id: str) -> None:
        """Forget a connection and its keys. Its link store (``b:{id}:…``) stays, so adding it
        again under the same id finds its links."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.keys.connections, connection_id)
        pipe.hdel(self.keys.secrets, connection_id)
        removed, _ = pipe.execute()
        if not removed:
            raise UnknownConnection(connection_id)

    # --- status ----------------------------------------------------------------------------------
    def pause(self, connection_id: str, reason: str) -> Connection:
        return self._change(connection_id, lambda c, _s, now: Changed(states.pause(c, reason, now)))

    def resume(self, connection_id: str) -> Connection:
        return self._change(connection_id, lambda c, _s, now: Changed(states.resume(c, now)))

    def pair(
        self, connection_id: str, coredination_base_url: str, coredination_api_key: str
    ) -> Connection:
        """Authorised → active, with the Coredination account it syncs with."""

        def change(c: Connection, secrets: ConnectionSecrets | None, now: int) -> Changed:
            paired = states.pair(c, coredination_base_url, now)
            if secrets is None or not secrets.has_servicem8:
                raise ConfigError(f"connection {c.id!r} has no ServiceM8 key or grant to pair")
            key = SecretStr(coredination_api_key)
            held = secrets.model_copy(update={"coredination_api_key": key})
            return Changed(_grouped(paired, held), held)

        redactor.add([coredination_api_key], slot=connection_id)
        return self._change(connection_id, change, with_secrets=True)

    # --- settings and secrets --------------------------------------------------------------------
    def set_account(self, connection_id: str, account: str) -> Connection:
        """Remember the ServiceM8 vendor uuid once learnt."""
        change = {"servicem8_account": account.lower()}
        return self._change(connection_id, lambda c, _s, now: Changed(_with(c, change, now)))

    def configure(self, connection_id: str, overrides: Mapping[str, object | None]) -> Connection:
        """Set settings overrides (``OVERRIDABLE`` names); a None value removes one."""
        given = {k.lower(): v for k, v in overrides.items()}

        def change(c: Connection, _s: ConnectionSecrets | None, now: int) -> Changed:
            merged = {k: v for k, v in {**c.overrides, **given}.items() if v is not None}
            return Changed(_with(c, {"overrides": merged}, now))

        return self._change(connection_id, change)

    def set_secrets(
        self,
        connection_id: str,
        *,
        servicem8_api_key: str | None = None,
        coredination_api_key: str | None = None,
    ) -> None:
        """Replace the keys given; a ServiceM8 API key replaces a grant."""
        update: dict[str, Any] = {}
        if servicem8_api_key is not None:
            update |= {"servicem8_api_key": SecretStr(servicem8_api_key), "servicem8_grant": None}
        if coredination_api_key is not None:
            update["coredination_api_key"] = SecretStr(coredination_api_key)
        if not update:
            return
        redactor.add(
            [v for v in (servicem8_api_key, coredination_api_key) if v], slot=connection_id
        )
        self._change(connection_id, _secrets_update(update), with_secrets=True)

    def update_grant(
        self, connection_id: str, access_token: str, refresh_token: str, expires_at: int
    ) -> None:
        """Store a refreshed OAuth grant whole, at once (its refresh token changes every time,
        docs/servicem8-api.md#oauth); a grant replaces a ServiceM8 API key."""
        grant = ServiceM8Grant(
            access_token=SecretStr(access_token),
            refresh_token=SecretStr(refresh_token),
            expires_at=expires_at,
        )
        redactor.add([access_token, refresh_token], slot=connection_id)
        update = {"servicem8_grant": grant, "servicem8_api_key": None}
        self._change(connection_id, _secrets_update(update), with_secrets=True)

    def rotate(self) -> int:
        """Encrypt every stored secret again under the first key; how many there were. Running
        it again changes nothing but the tokens' bytes."""
        rotated = 0
        for field in self.r.hkeys(self.keys.secrets):
            connection_id = stored.text(field)

            def attempt(pipe: Any, connection_id: str = connection_id) -> bool:
                token = pipe.hget(self.keys.secrets, connection_id)
                if token is None:
                    return False  # removed meanwhile
                try:
                    fresh = self.box.rotate(token)
                except ConfigError as exc:
                    raise ConfigError(f"connection {connection_id!r}: {exc}") from None
                pipe.multi()
                pipe.hset(self.keys.secrets, connection_id, fresh)
                return True

            rotated += self.r.transaction(attempt, self.keys.secrets, value_from_callable=True)
        return rotated

    # --- the one read-modify-write ---------------------------------------------------------------
    def _change(
        self, connection_id: str, change: Change, *, with_secrets: bool = False
    ) -> Connection:
        def attempt(pipe: Any) -> Connection:
            raw = pipe.hget(self.keys.connections, connection_id)
            if raw is None:
                raise UnknownConnection(connection_id)
            current = stored.decode(connection_id, raw)
            secrets = None
            if with_secrets:
                secrets = self._open(connection_id, pipe.hget(self.keys.secrets, connection_id))
            changed = change(current, secrets, self._now())
            token = None if changed.secrets is None else self._seal(changed.secrets)
            pipe.multi()
            if changed.connection != current:
                pipe.hset(self.keys.connections, connection_id, stored.encode(changed.connection))
            if token is not None:
                pipe.hset(self.keys.secrets, connection_id, token)
            return changed.connection

        result: Connection = self.r.transaction(
            attempt, self.keys.connections, self.keys.secrets, value_from_callable=True
        )
        return result

    def _now(self) -> int:
        return int(self.clock())

    def _seal(self, secrets: ConnectionSecrets) -> str:
        return stored.seal(self.box, secrets)

    def _open(self, connection_id: str, token: Any) -> ConnectionSecrets:
        secrets = stored.unseal(self.box, connection_id, token)
        redactor.add(secrets.values(), slot=connection_id)
        return secrets


def _secrets_update(update: dict[str, Any]) -> Change:
    def change(c: Connection, secrets: ConnectionSecrets | None, now: int) -> Changed:
        held = ConnectionSecrets.model_validate({**dict(secrets or ConnectionSecrets()), **update})
        # ``changed`` moves too: the workers build a connection's runtime again when it does,
        # so new keys are used from the next task on (docs/connections.md#shared-lanes).
        return Changed(_grouped(_with(c, {}, now), held), held)

    return change


def _grouped(connection: Connection, secrets: ConnectionSecrets) -> Connection:
    """``connection`` with the Coredination group its stored key stands for: the key's digest
    (``bridge.connections.uniqueness``). Without a key in ``secrets``, as it was."""
    key = secrets.coredination_api_key
    if key is None:
        return connection
    group = key_digest(connection.coredination_base_url, key.get_secret_value())
    return connection.model_copy(update={"coredination_group": group})


def _with(connection: Connection, change: dict[str, Any], now: int) -> Connection:
    revision = connection.revision + 1
    return make_connection(
        **{**connection.model_dump(), **change, "changed": now, "revision": revision}
    )
