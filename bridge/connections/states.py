"""How a connection's status may change: pure functions from a ``Connection`` (and the time) to
the next one, or a ``ConfigError`` saying why not (docs/connections.md#states)::

    from \\ to    active        paused          authorised
    active        -             pause           never
    paused        resume        pause (reason)  never
    authorised    pair          never           -

Only ``pair`` makes an ``authorised`` connection active: an OAuth grant that no operator has
paired with a Coredination account must never sync. ``add`` (``check_new``) may start a
connection in any state, given the credentials that state needs.
"""

from __future__ import annotations

from bridge.connections.models import Connection, ConnectionSecrets
from bridge.errors import ConfigError

MAX_REASON = 500


def check_new(connection: Connection, secrets: ConnectionSecrets) -> None:
    """A new connection that is to sync (or to resume syncing) needs both systems' credentials;
    an ``authorised`` one needs none yet (its grant may be stored right after)."""
    if connection.status == "authorised":
        return
    missing = [
        name
        for name, present in (
            ("a ServiceM8 API key or grant", secrets.has_servicem8),
            ("a Coredination API key", secrets.has_coredination),
        )
        if not present
    ]
    if missing:
        raise ConfigError(
            f"connection {connection.id!r} cannot be {connection.status} without "
            f"{' and '.join(missing)}: give them, or add it as authorised and pair it later"
        )
    if connection.status == "paused" and not connection.reason:
        raise ConfigError(f"connection {connection.id!r}: a paused connection needs a reason")


def pause(connection: Connection, reason: str, now: int) -> Connection:
    """Active or paused → paused with ``reason`` (pausing again replaces the reason)."""
    reason = reason.strip()
    if not reason:
        raise ConfigError(f"connection {connection.id!r}: say why it is paused (--reason)")
    if len(reason) > MAX_REASON:
        raise ConfigError(f"connection {connection.id!r}: the reason is over {MAX_REASON} chars")
    if connection.status == "authorised":
        raise ConfigError(
            f"connection {connection.id!r} is authorised, not paired: it does not sync, so there "
            "is nothing to pause (pair it, or remove it)"
        )
    return connection.model_copy(update={"status": "paused", "reason": reason, "changed": now})


def resume(connection: Connection, now: int) -> Connection:
    """Paused → active. Active stays active (nothing to do); authorised is refused."""
    if connection.status == "authorised":
        raise ConfigError(
            f"connection {connection.id!r} is authorised, not paired: only "
            "'sm8cd connections pair' makes it active"
        )
    if connection.status == "active":
        return connection
    return connection.model_copy(update={"status": "active", "reason": None, "changed": now})


def pair(connection: Connection, coredination_base_url: str, now: int) -> Connection:
    """Authorised → active, now with a Coredination account."""
    if connection.status != "authorised":
        raise ConfigError(
            f"connection {connection.id!r} is {connection.status}, already paired: pairing is "
            "for authorised connections (to change its Coredination key use set-secrets)"
        )
    changed = Connection.model_validate(
        {**connection.model_dump(), "coredination_base_url": coredination_base_url}
    )  # the URL validated as at add
    return changed.model_copy(update={"status": "active", "reason": None, "changed": now})
