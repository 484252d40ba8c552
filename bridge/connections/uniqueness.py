"""One account pair, one connection (docs/connections.md#one-account-pair-one-connection).

A connection derives the ids of the Coredination jobs it makes from its own id
(``mappings/ids.py``), so a second connection on the same ServiceM8 account and Coredination group
would make every job in Coredination once more. What identifies each side:

- the ServiceM8 account: its vendor uuid, one read of ``vendor.json`` with the key. A connection
  holds it in ``servicem8_account`` once learnt (at ``connections add``, or by the OAuth
  activation); otherwise its workers' ``account`` hash has it, once they have learnt it
  (``bridge.http.accounts``);
- the Coredination group: Coredination names none (docs/coredination-api.md#authentication), so
  the key stands for the group it is authorised for, by the digest of base URL and key that also
  names its budget (``key_digest``). The registry keeps it in ``coredination_group`` with the key;
  the environment's own connection's is its workers' stand-in, or the environment's key.

Two checks: ``refuse_new`` before a connection is added, paired or given new keys (a
``ConfigError``, nothing stored); and, for connections that reached the registry anyway,
``refuse_duplicates`` when a worker builds a connection's runtime, which pauses the later-added
one (``refuse_duplicate``). A side not known yet is never a duplicate: the workers check again
when they learn it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bridge.config import Settings
from bridge.connections import states, stored
from bridge.connections.models import Connection, ConnectionSecrets, default_connection
from bridge.connections.registry import ConnectionRegistry
from bridge.errors import (
    Api,
    ApiError,
    AuthError,
    BridgeError,
    ConfigError,
    ConnectionPaused,
    PermanentError,
    UnknownConnection,
)
from bridge.http import OpenGate
from bridge.http.accounts import AccountIds, key_digest
from bridge.http.transport import new_session
from bridge.log import get_logger
from bridge.servicem8.client import ServiceM8Client
from bridge.store.activity import resolved_accounts

log = get_logger(__name__)

SECTION = "docs/connections.md#one-account-pair-one-connection"
STAND_IN = "coredination~stand-in"  # the workers' digest of the Coredination key (AccountIds)


def duplicate_reason(earlier: str) -> str:
    """Why a later-added duplicate is paused."""
    return f"serves the same ServiceM8 account and Coredination group as connection {earlier}"


@dataclass(frozen=True)
class AccountPair:
    """What a connection serves: the ServiceM8 vendor uuid and the Coredination group (its
    key's digest); None where not known yet."""

    servicem8: str | None = None
    coredination: str | None = None

    @property
    def known(self) -> bool:
        return self.servicem8 is not None and self.coredination is not None


def pair_of(connection: Connection, secrets: ConnectionSecrets | None = None) -> AccountPair:
    """The pair ``connection`` says it serves, with the group of the Coredination key in
    ``secrets`` when one is given."""
    group = connection.coredination_group
    if secrets is not None and secrets.coredination_api_key is not None:
        key = secrets.coredination_api_key.get_secret_value()
        group = key_digest(connection.coredination_base_url, key)
    return AccountPair(connection.servicem8_account, group)


Served = dict[str, tuple[Connection, AccountPair]]


def served(
    registry: ConnectionRegistry,
    found: Iterable[Connection] | None = None,
    like: AccountPair | None = None,
) -> Served:
    """Every connection of the deployment (``found``: its entries as read already) with the pair
    it serves as far as known: what its entry says, else what its workers resolved. With
    ``like``, what the workers resolved is read only for entries that may serve that pair: one
    round trip, often of nothing. The environment's own connection counts before it joins the
    registry (an empty registry), when the registry knows the environment."""
    connections = list(registry.readable()[0] if found is None else found)
    environment = registry.environment
    if environment is not None and all(
        c.id != environment.bridge_connection_id for c in connections
    ):
        connections.append(default_connection(environment))  # created 0: the first of all
    lookup = [c.id for c in connections if _unsure(c, like)]
    resolved = resolved_accounts(registry.r, lookup) if lookup else {}
    result: Served = {}
    for connection in connections:
        learnt = resolved.get(connection.id, {})
        group = connection.coredination_group or learnt.get(STAND_IN)
        if group is None and connection.keys == "environment" and environment is not None:
            key = environment.coredination_api_key.get_secret_value()
            group = key_digest(connection.coredination_base_url, key)
        pair = AccountPair(connection.servicem8_account or learnt.get("servicem8"), group)
        result[connection.id] = (connection, pair)
    return result


def _unsure(connection: Connection, like: AccountPair | None) -> bool:
    """Whether ``connection``'s workers must be asked what it serves: its entry leaves a side
    open, and what it does say is ``like``'s."""
    account, group = connection.servicem8_account, connection.coredination_group
    if account is not None and group is not None:
        return False
    return like is None or (
        account in (None, like.servicem8) and group in (None, like.coredination)
    )


def _may_serve(connection: Connection, accounts: AccountPair) -> bool:
    """Whether ``connection`` may serve ``accounts``: its entry names neither side otherwise.
    The environment's own connection always may (its group is its key's, not in its entry), and
    stays in view so that ``served`` never counts it twice."""
    if connection.keys == "environment":
        return True
    return connection.servicem8_account in (None, accounts.servicem8) and (
        connection.coredination_group in (None, accounts.coredination)
    )


def _added(connection: Connection) -> tuple[int, bool, str]:
    """The order connections were added in: the environment's own first within a second (it is
    upserted before another is added), then by id."""
    return connection.created, connection.keys != "environment", connection.id


def _serving(known: Served, connection_id: str, accounts: AccountPair) -> list[Connection]:
    if not accounts.known:
        return []
    same = [c for c, pair in known.values() if c.id != connection_id and pair == accounts]
    return sorted(same, key=_added)


def duplicate_of(
    registry: ConnectionRegistry,
    connection_id: str,
    accounts: AccountPair,
    known: Served | None = None,
) -> str | None:
    """The earliest-added other connection that serves ``accounts`` (both sides the same), or
    None: also while either side of ``accounts`` is not known."""
    same = _serving(known if known is not None else served(registry), connection_id, accounts)
    return same[0].id if same else None


def refuse_new(
    registry: ConnectionRegistry,
    connection_id: str,
    accounts: AccountPair,
    outcome: str,
    known: Served | None = None,
) -> None:
    """A ``ConfigError`` naming the other connection when ``accounts`` is served already;
    ``outcome`` says what was not done (``not added``, ``not paired``, ``not changed``)."""
    other = duplicate_of(registry, connection_id, accounts, known)
    if other is not None:
        raise ConfigError(
            f"connection {connection_id!r} {outcome}: connection {other!r} already serves "
            f"ServiceM8 account {accounts.servicem8} and that Coredination group, and a second "
            f"connection on them would duplicate every job in Coredination ({SECTION})"
        )


def refuse_duplicate(
    registry: ConnectionRegistry,
    connection_id: str,
    accounts: AccountPair,
    found: Iterable[Connection] | None = None,
) -> None:
    """For the workers: when another connection serves ``accounts`` too, the later-added of
    them is paused in the registry with ``duplicate_reason`` (only an active one: a paused one
    keeps its reason, an authorised one does not sync). ``ConnectionPaused`` when that is
    ``connection_id``; when it is the earlier, every later one is paused and it goes on.
    ``found``: the registry's entries as read already (else read now)."""
    if not accounts.known:
        return
    if found is not None:  # a worker builds a runtime per connection: look only where it may be
        found = [c for c in found if c.id == connection_id or _may_serve(c, accounts)]
    known = served(registry, found, like=accounts)
    same = _serving(known, connection_id, accounts)
    if not same:
        return
    this = known.get(connection_id)
    if this is None or _added(same[0]) < _added(this[0]):
        reason = duplicate_reason(same[0].id)
        if this is not None:
            _pause(registry, this[0], reason, same[0].id)
        raise ConnectionPaused(connection_id, "paused", reason)
    for later in same:
        _pause(registry, later, duplicate_reason(connection_id), connection_id)


def _pause(registry: ConnectionRegistry, connection: Connection, reason: str, of: str) -> None:
    if connection.status != "active":
        return
    try:
        registry.pause(connection.id, reason)
    except (UnknownConnection, ConfigError):  # removed or changed meanwhile: nothing to pause
        return
    log.warning("connection.duplicate_paused", connection=connection.id, duplicate_of=of)


def refuse_duplicates(
    registry: ConnectionRegistry,
    connection: Connection,
    accounts: AccountIds,
    found: Iterable[Connection] | None = None,
) -> None:
    """A worker's check of a connection whose runtime it has just built (``accounts``: that
    runtime's, ``Runtime.budget.accounts``; ``found``: the process's view of the registry):
    ``refuse_duplicate`` now with what is known, and, while its ServiceM8 account is not, again
    the moment it is learnt, which is the first ServiceM8 call of the runtime, before it syncs
    anything (then against the registry as it is)."""
    learnt = accounts.activity.account("servicem8")
    pair = AccountPair(connection.servicem8_account or learnt, accounts.stand_in("coredination"))
    refuse_duplicate(registry, connection.id, pair, found)
    if pair.servicem8 is not None:
        return

    def on_learn(api: Api, account: str) -> None:
        if api == "servicem8":
            found = dataclasses.replace(pair, servicem8=account.lower())
            refuse_duplicate(registry, connection.id, found)

    accounts.on_learn.append(on_learn)


# --- the commands' side: learn what the new keys serve, refuse a duplicate ----------------------
def servicem8_account(settings: Settings, connection_id: str, outcome: str) -> str:
    """The vendor uuid of ``settings``' ServiceM8 key and base URL: one read of ``vendor.json``,
    outside any budget (whose account is what it finds out). A refusal is a ``ConfigError``, an
    API out of reach a ``BridgeError``; each says that nothing was done."""
    with new_session() as session:
        client = ServiceM8Client.from_settings(settings, gate=OpenGate(), session=session)
        try:
            return client.vendor().uuid.lower()
        except AuthError as exc:
            raise ConfigError(
                f"connection {connection_id!r} {outcome}: ServiceM8 refused its API key "
                f"({exc.status}) when asked which account it is for"
            ) from None
        except PermanentError as exc:
            url = settings.servicem8_base_url
            raise ConfigError(
                f"connection {connection_id!r} {outcome}: ServiceM8 at {url} answered "
                f"{exc.status} when asked which account the key is for"
            ) from None
        except ApiError as exc:
            raise BridgeError(
                f"connection {connection_id!r} {outcome}: ServiceM8 could not be asked which "
                f"account its key is for ({type(exc).__name__}); try again, or give "
                "--servicem8-account"
            ) from None


def admit(
    registry: ConnectionRegistry,
    connection: Connection,
    secrets: ConnectionSecrets,
    settings: Settings,
) -> Connection:
    """``connection`` about to be added (``sm8cd connections add``): its ServiceM8 account
    learnt with its API key unless given (``servicem8_account``), then ``refuse_new``. What the
    registry refuses without a call (an id that exists, missing credentials, no
    ``BRIDGE_SECRET_KEYS``) is refused before the call."""
    found, unreadable = registry.readable()
    if any(c.id == connection.id for c in found) or connection.id in unreadable:
        return connection  # ``ConnectionRegistry.add`` refuses it, saying why
    if connection.keys == "stored":
        states.check_new(connection, secrets)
    if not secrets.empty:
        stored.seal(registry.box, secrets)
    if connection.servicem8_account is None and secrets.servicem8_api_key is not None:
        own = connection.settings(settings, secrets)
        account = servicem8_account(own, connection.id, "not added")
        connection = connection.model_copy(update={"servicem8_account": account})
    accounts = pair_of(connection, secrets)
    refuse_new(registry, connection.id, accounts, "not added", served(registry, found, accounts))
    return connection


def check_pairing(
    registry: ConnectionRegistry, connection_id: str, coredination_base_url: str, key: str
) -> None:
    """``sm8cd connections pair``: refused when the connection's ServiceM8 account (learnt at
    its activation) is served with that Coredination group already."""
    known = served(registry)
    if connection_id not in known:
        raise UnknownConnection(connection_id)
    group = key_digest(coredination_base_url, key)
    accounts = AccountPair(known[connection_id][1].servicem8, group)
    refuse_new(registry, connection_id, accounts, "not paired", known)


def check_new_keys(
    registry: ConnectionRegistry,
    connection_id: str,
    settings: Settings,
    keys: Mapping[str, str | None],
) -> str | None:
    """``sm8cd connections set-secrets``: the pair the new keys would serve must be served by no
    other connection. A new ServiceM8 key's account is learnt (one call) and returned, for the
    registry to keep; None when the ServiceM8 key stays."""
    known = served(registry)
    if connection_id not in known:
        raise UnknownConnection(connection_id)
    connection, current = known[connection_id]
    account, group = current.servicem8, current.coredination
    sm8, cd = keys.get("servicem8_api_key"), keys.get("coredination_api_key")
    if sm8 is not None:
        own = connection.settings(settings, ConnectionSecrets(servicem8_api_key=sm8))
        account = servicem8_account(own, connection_id, "not changed")
    if cd is not None:
        group = key_digest(connection.coredination_base_url, cd)
    refuse_new(registry, connection_id, AccountPair(account, group), "not changed", known)
    return account if sm8 is not None else None
