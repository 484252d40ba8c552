"""``sm8cd connections …`` and ``sm8cd secrets …``: the connection registry and its keys at rest
(docs/connections.md).

A secret is given by option, by the name of an environment variable holding it, or as ``-`` to
read one line of stdin; it is never echoed, and every one read is handed to the log redactor
first. ``show`` says whether each key is set, never what it is.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from bridge.cli.base import app, handles_errors, open_registry, out
from bridge.connections import (
    OVERRIDABLE,
    STATUSES,
    Connection,
    ConnectionRegistry,
    ConnectionSecrets,
    SecretBox,
    default_connection,
    make_connection,
    new_key,
)
from bridge.connections.uniqueness import admit, check_new_keys, check_pairing
from bridge.errors import ConfigError, UnknownConnection
from bridge.log import redactor
from bridge.store.keys import FleetKeys

connections_app = typer.Typer(
    help="The connection registry: many ServiceM8 accounts, each paired with a Coredination "
    "group, in one deployment (docs/connections.md)."
)
secrets_app = typer.Typer(help="The keys that encrypt the registry's secrets (BRIDGE_SECRET_KEYS).")
app.add_typer(connections_app, name="connections")
app.add_typer(secrets_app, name="secrets")

IdArg = Annotated[str, typer.Argument(help="The connection's id (never changes once added).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
_FROM = "'-' reads one line of stdin (kinder to shell history than the key itself)"
_ENV = "Name of an environment variable holding the {} API key."
_SM8, _CD = "ServiceM8 API key; " + _FROM + ".", "Coredination API key; " + _FROM + "."
Sm8Key = Annotated[str | None, typer.Option(help=_SM8, show_default=False)]
Sm8KeyEnv = Annotated[str | None, typer.Option(help=_ENV.format("ServiceM8"), metavar="NAME")]
CdKey = Annotated[str | None, typer.Option(help=_CD, show_default=False)]
CdKeyEnv = Annotated[str | None, typer.Option(help=_ENV.format("Coredination"), metavar="NAME")]
_NAMES = ", ".join(n.upper() for n in OVERRIDABLE)
_SET = f"A setting of its own, NAME=VALUE (repeatable); NAME one of {_NAMES}."
SetOpt = Annotated[list[str] | None, typer.Option("--set", help=_SET, metavar="NAME=VALUE")]
_CD_URL = "Coredination REST base; default COREDINATION_BASE_URL's."
# ServiceM8 offers no revoke endpoint (docs/servicem8-oauth.md#removing-a-connection).
REMOVE_ADDON = (
    "Its OAuth grant is forgotten here but still valid in ServiceM8 (there is no revoke "
    "endpoint): ask the account's owner to remove the add-on in ServiceM8 to end it."
)
_STATUS = f"Its first state: {', '.join(STATUSES)} (authorised: not paired, does not sync)."


def unreadable_secrets(client: Any, box: SecretBox, deployment: str) -> list[str]:
    """The registry connections whose stored keys ``box`` cannot decrypt (``check``)."""
    registry = ConnectionRegistry(client, box, keys=FleetKeys.for_deployment(deployment))
    bad = []
    for connection in registry.list():
        if connection.keys != "stored":
            continue
        try:
            registry.secrets(connection.id)
        except ConfigError:
            bad.append(connection.id)
    return bad


def _secret(value: str | None, env: str | None, what: str) -> str | None:
    """A secret from its option, its environment variable, or stdin (``-``); told to the log
    redactor before anything else sees it."""
    if value is not None and env is not None:
        raise ConfigError(f"{what}: give the key or the name of its variable, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{what}: environment variable {env} is not set")
    elif value == "-":
        value = typer.get_text_stream("stdin").readline().strip()
        if not value:
            raise ConfigError(f"{what}: nothing on stdin")
    if value is not None:
        redactor.add([value])
    return value


def _overrides(pairs: list[str] | None) -> dict[str, str]:
    found = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {pair!r}: expected NAME=VALUE")
        found[name.strip().lower()] = value.strip()
    return found


def _print(connection: Connection, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    row = {**connection.model_dump(mode="json"), **(extra or {})}
    if as_json:
        out.print_json(json.dumps(row))
        return
    for key, value in row.items():
        text = json.dumps(value) if isinstance(value, dict) else "-" if value is None else value
        out.print(f"{key}: {text}", markup=False, highlight=False)


@connections_app.command("list")
@handles_errors
def connections_list(as_json: JsonOpt = False) -> None:
    """Every connection with its status; with an empty registry, the one the environment makes
    (BRIDGE_CONNECTION_ID, not stored)."""
    from rich.table import Table

    with open_registry() as (registry, settings):
        stored = registry.list()
    rows = [{**c.model_dump(mode="json"), "stored": True} for c in stored]
    if not rows:
        rows = [{**default_connection(settings).model_dump(mode="json"), "stored": False}]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"Connections ({len(stored)} stored)")
    columns = ("id", "label", "status", "reason", "servicem8_account", "coredination_base_url",
               "overrides")  # fmt: skip
    for column in columns:
        table.add_column(column)
    for row in rows:
        cells = [
            json.dumps(row[c]) if isinstance(row[c], dict) else str(row[c] or "-") for c in columns
        ]
        table.add_row(*cells)
    out.print(table)
    if not stored:
        out.print("The registry is empty: the bridge runs the environment's connection.")


@connections_app.command("show")
@handles_errors
def connections_show(connection_id: IdArg, as_json: JsonOpt = False) -> None:
    """One connection in full, and whether each of its keys is set (never the keys)."""
    with open_registry() as (registry, settings):
        if not registry.list() and connection_id == settings.bridge_connection_id:
            connection = default_connection(settings)
            secrets: dict[str, str] | str = "from the environment"
        else:
            connection = registry.get(connection_id)
            try:
                secrets = (
                    "from the environment"
                    if connection.keys == "environment"
                    else registry.secrets(connection_id).describe()
                )
            except ConfigError:
                secrets = "stored encrypted; BRIDGE_SECRET_KEYS is unset or lacks their key"
    _print(connection, as_json, {"secrets": secrets})


@connections_app.command("add")
@handles_errors
def connections_add(
    connection_id: IdArg,
    status: Annotated[str, typer.Option(help=_STATUS)] = "active",
    reason: Annotated[str | None, typer.Option(help="Why, when added paused.")] = None,
    servicem8_account: Annotated[
        str | None,
        typer.Option(help="The ServiceM8 vendor uuid, taken as said; else read with the key."),
    ] = None,
    servicem8_base_url: Annotated[
        str | None, typer.Option(help="ServiceM8 REST base; default SERVICEM8_BASE_URL's.")
    ] = None,
    coredination_base_url: Annotated[str | None, typer.Option(help=_CD_URL)] = None,
    servicem8_api_key: Sm8Key = None,
    servicem8_api_key_env: Sm8KeyEnv = None,
    coredination_api_key: CdKey = None,
    coredination_api_key_env: CdKeyEnv = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a new connection with its keys (encrypted; needs BRIDGE_SECRET_KEYS). An id that
    exists is refused: ids never change. The ServiceM8 key's account is read (one call) unless
    given; an account pair another connection serves already is refused."""
    sm8 = _secret(servicem8_api_key, servicem8_api_key_env, "--servicem8-api-key")
    cd = _secret(coredination_api_key, coredination_api_key_env, "--coredination-api-key")
    with open_registry() as (registry, settings):
        fields: dict[str, Any] = {
            "id": connection_id,
            "status": status,
            "reason": reason,
            "servicem8_account": servicem8_account,
            "servicem8_base_url": servicem8_base_url or settings.servicem8_base_url,
            "coredination_base_url": coredination_base_url or settings.coredination_base_url,
            "overrides": _overrides(overrides),
        }
        secrets = ConnectionSecrets(servicem8_api_key=sm8, coredination_api_key=cd)
        connection = admit(registry, make_connection(**fields), secrets, settings)
        connection = registry.add(connection, secrets)
    _print(connection, as_json, {"secrets": secrets.describe()})


@connections_app.command("pause")
@handles_errors
def connections_pause(
    connection_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why (shown in list, show and status).")],
    as_json: JsonOpt = False,
) -> None:
    """Stop a connection syncing until 'resume'; pausing again replaces the reason."""
    with open_registry() as (registry, _settings):
        _print(registry.pause(connection_id, reason), as_json)


@connections_app.command("resume")
@handles_errors
def connections_resume(connection_id: IdArg, as_json: JsonOpt = False) -> None:
    """A paused connection syncs again. An authorised one is made active only by 'pair'."""
    with open_registry() as (registry, _settings):
        _print(registry.resume(connection_id), as_json)


@connections_app.command("pair")
@handles_errors
def connections_pair(
    connection_id: IdArg,
    coredination_api_key: CdKey = None,
    coredination_api_key_env: CdKeyEnv = None,
    coredination_base_url: Annotated[str | None, typer.Option(help=_CD_URL)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Pair an authorised connection with a Coredination account; it becomes active. Refused
    when another connection serves its ServiceM8 account with that Coredination group."""
    cd = _secret(coredination_api_key, coredination_api_key_env, "--coredination-api-key")
    if cd is None:
        raise ConfigError("pair: give the Coredination API key (--coredination-api-key[-env])")
    with open_registry() as (registry, settings):
        url = coredination_base_url or settings.coredination_base_url
        check_pairing(registry, connection_id, url, cd)
        _print(registry.pair(connection_id, url, cd), as_json)


@connections_app.command("set-secrets")
@handles_errors
def connections_set_secrets(
    connection_id: IdArg,
    servicem8_api_key: Sm8Key = None,
    servicem8_api_key_env: Sm8KeyEnv = None,
    coredination_api_key: CdKey = None,
    coredination_api_key_env: CdKeyEnv = None,
) -> None:
    """Replace a connection's keys (a ServiceM8 API key replaces an OAuth grant). A new
    ServiceM8 key's account is read (one call); keys that would serve the account pair of
    another connection are refused."""
    sm8 = _secret(servicem8_api_key, servicem8_api_key_env, "--servicem8-api-key")
    cd = _secret(coredination_api_key, coredination_api_key_env, "--coredination-api-key")
    if sm8 is None and cd is None:
        raise ConfigError("set-secrets: give a key to replace")
    with open_registry() as (registry, settings):
        keys = {"servicem8_api_key": sm8, "coredination_api_key": cd}
        account = check_new_keys(registry, connection_id, settings, keys)
        registry.set_secrets(connection_id, **keys)
        if account is not None:
            registry.set_account(connection_id, account)
    out.print(f"{connection_id}: keys replaced", markup=False, highlight=False)


@connections_app.command("configure")
@handles_errors
def connections_configure(
    connection_id: IdArg,
    overrides: SetOpt = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="A setting of its own to drop (repeatable).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a connection's own settings; the others are the deployment's."""
    changes: dict[str, object | None] = {**_overrides(overrides)}
    changes |= {name.strip().lower(): None for name in unset or []}
    with open_registry() as (registry, _settings):
        _print(registry.configure(connection_id, changes), as_json)


@connections_app.command("remove")
@handles_errors
def connections_remove(
    connection_id: IdArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask first.")] = False,
) -> None:
    """Forget a connection and its keys. Its links in Redis stay (adding the same id again
    finds them). ServiceM8 has no endpoint that revokes an OAuth grant: forgetting it stops
    nothing on ServiceM8's side, so for such a connection the command says to remove the add-on
    there (docs/servicem8-oauth.md#removing-a-connection)."""
    if not yes:
        typer.confirm(f"Remove connection {connection_id!r} and its keys?", abort=True)
    with open_registry() as (registry, _settings):
        try:
            oauth = registry.secrets(connection_id).servicem8_grant is not None
        except ConfigError as exc:  # an unknown id is refused by the removal itself
            if isinstance(exc, UnknownConnection):
                raise
            oauth = True  # keys that cannot be read: it may hold a grant, so say it anyway
        registry.remove(connection_id)
    out.print(f"removed {connection_id}", markup=False, highlight=False)
    if oauth:
        out.print(REMOVE_ADDON, markup=False, highlight=False)


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a new Fernet key for BRIDGE_SECRET_KEYS (put it first to start encrypting with it)."""
    typer.echo(new_key())


@secrets_app.command("rotate")
@handles_errors
def secrets_rotate(as_json: JsonOpt = False) -> None:
    """Encrypt every stored secret again under the first of BRIDGE_SECRET_KEYS; then the other
    keys can be dropped. Safe to repeat."""
    with open_registry() as (registry, _settings):
        count = registry.rotate()
        keys = registry.box.key_count
    if as_json:
        out.print_json(json.dumps({"rotated": count}))
        return
    out.print(f"re-encrypted {count} connection(s)' secrets under the first of {keys} key(s)")
