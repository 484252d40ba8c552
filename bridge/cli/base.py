"""What every command shares: the Typer app, the consoles, one line and an exit code for each
branch of the error tree (2 for configuration, 1 for anything else the bridge raised; never a
traceback for those), and the wiring a command runs on."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from bridge.config import Settings, load_settings
from bridge.connections.registry import ConnectionRegistry
from bridge.connections.secrets import SecretBox
from bridge.errors import BridgeError, ConfigError
from bridge.log import configure_logging

if TYPE_CHECKING:
    from bridge.process.runtime import Runtime
    from bridge.queues import Enqueuer


app = typer.Typer(
    help="Keeps ServiceM8 bookings (job allocations and fixed-time job activities) and "
    "Coredination job resources in step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), 2)
        except BridgeError as exc:
            fail(str(exc), 1)

    return wrapper  # type: ignore[return-value]


class _Selected:
    """The registry connection a command is for (``sm8cd -c ID …``); None: the deployment's."""

    connection: str | None = None


SELECTED = _Selected()


@app.callback()
def choose_connection(
    connection: Annotated[
        str | None,
        typer.Option(
            "--connection",
            "-c",
            help="The registry connection a command is for (sm8cd connections list); "
            "default: the deployment's own (BRIDGE_CONNECTION_ID).",
        ),
    ] = None,
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Run the command once for every registry connection, each as 'sm8cd -c ID "
            "…' (the exit code is the worst of them).",
        ),
    ] = False,
) -> None:
    """Keeps ServiceM8 bookings (job allocations and fixed-time job activities) and
    Coredination job resources in step."""
    if every:
        if connection is not None:
            fail("say -c ID or --all, not both", 2)
        raise typer.Exit(_for_every_connection())
    SELECTED.connection = connection


# Commands that are not one connection's: --all does not apply to them.
FLEET_COMMANDS = frozenset({"connections", "secrets", "run", "web", "demo", "simulate"})


def _for_every_connection() -> int:
    """``sm8cd --all CMD …``: ``sm8cd -c ID CMD …`` for each registry connection in turn, each
    in a process of its own (as a shell loop over ``sm8cd connections list --json`` would)."""
    import subprocess
    import sys

    rest = [a for a in sys.argv[1:] if a != "--all"]
    command = next((a for a in rest if not a.startswith("-")), None)
    if command is None or command in FLEET_COMMANDS:
        fail(f"--all runs a per-connection command (not {command or 'none'})", 2)
    with open_registry() as (registry, _settings):
        ids = [c.id for c in registry.list()]
    if not ids:
        fail("--all: the registry holds no connection (the environment's is the only one)", 2)
    worst = 0
    for connection in ids:
        err.print(f"[bold]== {connection}[/]")
        run = subprocess.run([sys.executable, "-m", "bridge", "-c", connection, *rest],  # noqa: S603
                             check=False)  # fmt: skip
        worst = max(worst, run.returncode)
    return worst


@contextmanager
def open_registry() -> Iterator[tuple[ConnectionRegistry, Settings]]:
    """The registry over the bridge's Redis (``REDIS_URL``, or the embedded one), and the
    settings. It may add connections: the environment's own joins it first."""
    import redis

    from bridge.process.runtime import resolve_redis
    from bridge.redis import conn as redis_conn
    from bridge.store.keys import FleetKeys

    settings = settings_and_logging()
    box = SecretBox.from_settings(settings)
    url, embedded = resolve_redis(settings)
    client = redis_conn.client(url)
    try:
        client.ping()
        keys = FleetKeys.for_deployment(settings.bridge_connection_id)
        yield ConnectionRegistry(client, box, keys=keys, environment=settings), settings
    except redis.RedisError as exc:
        raise ConfigError(f"REDIS_URL: cannot reach Redis ({type(exc).__name__})") from None
    finally:
        client.close()
        if embedded is not None:
            embedded.release()


def settings_and_logging() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    warn_unknown_settings()
    return settings


def warn_unknown_settings() -> None:
    """A warning line for each variable (environment or ``.env``) that looks like a setting but
    is none, with the nearest known name: a misspelt setting is otherwise silently unset."""
    import os

    from bridge.config import env_file_names, unknown_settings

    for name, near in unknown_settings([*os.environ, *env_file_names()]):
        hint = f"; did you mean {near}?" if near else ""
        err.print(f"warning: {name} is not a setting of the bridge{hint}", style="yellow",
                  markup=False, highlight=False, soft_wrap=True)  # fmt: skip


# A command waits for its budget slots rather than fail while the workers hold the budget.
COMMAND_BUDGET_WAIT = 300.0


def command_runtime() -> Runtime:
    """The bridge's wiring from the settings, for the deployment's own connection or the one
    chosen by ``-c``; use as ``with command_runtime() as rt:``."""
    from bridge.process.runtime import build

    settings = settings_and_logging()
    chosen = SELECTED.connection
    if chosen is None:
        return build(settings, budget_wait=COMMAND_BUDGET_WAIT)
    return _registry_runtime(settings, chosen)


def _registry_runtime(settings: Settings, connection: str) -> Runtime:
    """A registry connection's wiring, as the workers build it: its settings and keys (a grant
    through the token keeper), its store, the deployment's lanes. Its status does not matter to
    a command: a paused connection can be looked at and repaired."""
    from bridge.connections import ConnectionRegistry, SecretBox
    from bridge.connections.activation import token_keeper
    from bridge.connections.process import servicem8_credentials
    from bridge.errors import ConnectionPaused
    from bridge.process.runtime import build, resolve_redis
    from bridge.redis import conn as redis_conn
    from bridge.store.keys import FleetKeys

    redis_url, embedded = resolve_redis(settings)
    client = redis_conn.client(redis_url, health_check_interval=30)
    try:
        keys = FleetKeys.for_deployment(settings.bridge_connection_id)
        registry = ConnectionRegistry(client, SecretBox.from_settings(settings), keys=keys)
        loaded = registry.load(connection, settings)
        try:
            credentials = servicem8_credentials(loaded, token_keeper(settings, client, registry))
        except ConnectionPaused as exc:
            raise ConfigError(str(exc)) from None
        rt = build(loaded.settings, redis_url, budget_wait=COMMAND_BUDGET_WAIT, client=client,
                   deployment=settings.bridge_connection_id,
                   servicem8_credentials=credentials)  # fmt: skip
    except BaseException:
        client.close()
        if embedded is not None:
            embedded.release()
        raise
    rt.owns_redis, rt.embedded = True, embedded  # the command's own: closed with it
    return rt


def command_enqueuer(rt: Runtime) -> Enqueuer:
    """Sends a command's tasks for its connection to the deployment's lanes
    (``bridge.ops.actions.enqueuer``)."""
    from bridge.ops.actions import enqueuer

    return enqueuer(rt.redis, rt.redis_url, rt.lanes, rt.connection,
                    rt.settings.connection_max_tasks)  # fmt: skip


def print_report(counts: dict[str, int]) -> None:
    from rich.table import Table

    table = Table(title="What this cycle did", show_lines=False)
    table.add_column("side")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for name in sorted(counts):
        side, _, outcome = name.partition(".")
        table.add_row(side, outcome or "-", str(counts[name]))
    if not counts:
        table.add_row("-", "nothing to do", "0")
    out.print(table)


def span(seconds: float) -> str:
    """A length of time as an operator reads it: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
