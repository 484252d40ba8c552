"""What every command shares: the Typer app, the consoles, one line and an exit code for each
branch of the error tree (2 for configuration, 1 for anything else the bridge raised; never a
traceback for those), and the wiring a command runs on."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from bridge.config import Settings, load_settings
from bridge.errors import BridgeError, ConfigError
from bridge.log import configure_logging

if TYPE_CHECKING:
    from bridge.runtime import Runtime


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


def settings_and_logging() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    return settings


# A command waits for its budget slots rather than fail while the workers hold the budget.
COMMAND_BUDGET_WAIT = 300.0


def command_runtime() -> Runtime:
    """The bridge's wiring from the settings; use as ``with command_runtime() as rt:``."""
    from bridge.runtime import build

    return build(settings_and_logging(), budget_wait=COMMAND_BUDGET_WAIT)


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
