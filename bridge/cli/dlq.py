"""``sm8cd dlq …``: dead letters, read, replayed or dropped."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bridge.cli.base import app, command_enqueuer, command_runtime, fail, handles_errors, out

dlq_app = typer.Typer(help="Dead letters: operations given up on, with the reason.")
app.add_typer(dlq_app, name="dlq")


def _dlq_rows(rt: Any, count: int) -> list[dict[str, Any]]:
    from bridge.ops.actions import dead_letter_rows

    return dead_letter_rows(rt.stores, count)


@dlq_app.command("list")
@handles_errors
def dlq_list(
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The dead letters, oldest first."""
    import json

    from rich.table import Table

    with command_runtime() as rt:
        rows = _dlq_rows(rt, limit)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"Dead letters ({len(rows)})")
    columns = ("id", "task", "args", "error", "status", "why", "count", "resolved_at")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "-")) for c in columns))
    out.print(table)


@dlq_app.command("show")
@handles_errors
def dlq_show(
    entry_id: Annotated[str, typer.Argument(help="The entry's id (from 'sm8cd dlq list').")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One dead letter in full."""
    import json

    with command_runtime() as rt:
        entry = rt.stores.work.get_dead_letter(entry_id)
    if entry is None:
        fail(f"no dead letter {entry_id}", 1)
    if as_json:
        out.print_json(json.dumps({"id": entry_id, **(entry or {})}))
        return
    for key, value in (entry or {}).items():
        out.print(f"[bold]{key}[/]: {value}", highlight=False)


def _selected(rt: Any, entry_ids: list[str], everything: bool) -> list[dict[str, Any]]:
    from bridge.ops.actions import NoSuchEntry, selected

    if everything:
        return _dlq_rows(rt, 100_000)
    if not entry_ids:
        fail("name entry ids, or say --all", 2)
    try:
        return selected(rt.stores, entry_ids)
    except NoSuchEntry as exc:
        fail(str(exc), 1)
        raise AssertionError from None  # fail() exits


@dlq_app.command("replay")
@handles_errors
def dlq_replay(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="Entry ids.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queue the operations again (for the workers) and remove them from the dead letters."""
    import json

    from bridge.ops.actions import replay

    with command_runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        replayed = replay(rt.stores, command_enqueuer(rt).send, rows)
    if as_json:
        out.print_json(json.dumps({"replayed": replayed}))
    else:
        out.print(f"replayed {len(replayed)} dead letter(s)")


@dlq_app.command("drop")
@handles_errors
def dlq_drop(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="Entry ids.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Remove dead letters without replaying them."""
    import json

    from bridge.ops.actions import drop

    with command_runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        dropped = drop(rt.stores, rows)
    if as_json:
        out.print_json(json.dumps({"dropped": dropped}))
    else:
        out.print(f"dropped {len(dropped)} dead letter(s)")
