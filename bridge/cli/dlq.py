"""``sm8cd dlq …``: dead letters, read, replayed or dropped."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bridge.cli.base import app, command_enqueuer, command_runtime, fail, handles_errors, out

dlq_app = typer.Typer(help="Dead letters: operations given up on, with the reason.")
app.add_typer(dlq_app, name="dlq")


def _dlq_rows(rt: Any, count: int) -> list[dict[str, Any]]:
    """Each dead letter, with ``count`` (how often its cause failed: one entry per cause) and
    ``resolved_at`` once its job synced after all."""
    resolved = rt.stores.work.resolved()
    return [
        {"id": entry_id, "count": "1", **fields,
         **({"resolved_at": str(resolved[entry_id])} if entry_id in resolved else {})}
        for entry_id, fields in rt.stores.work.dead_letters(count)
    ]  # fmt: skip


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
    rows = _dlq_rows(rt, 100_000)
    if everything:
        return rows
    wanted = set(entry_ids)
    found = [r for r in rows if r["id"] in wanted]
    missing = wanted - {r["id"] for r in found}
    if missing:
        fail(f"no dead letter {', '.join(sorted(missing))}", 1)
    if not found:
        fail("name entry ids, or say --all", 2)
    return found


@dlq_app.command("replay")
@handles_errors
def dlq_replay(
    entry_ids: Annotated[list[str] | None, typer.Argument(help="Entry ids.")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Queue the operations again (for the workers) and remove them from the dead letters."""
    import json

    with command_runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        enqueue = command_enqueuer(rt)
        replayed = []
        for row in rows:
            enqueue.send(row["task"], json.loads(row.get("args", "[]")),
                         kwargs=json.loads(row.get("kwargs", "{}")))  # fmt: skip
            rt.stores.work.drop_dead_letter(row["id"])
            replayed.append(row["id"])
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

    with command_runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        dropped = [row["id"] for row in rows if rt.stores.work.drop_dead_letter(row["id"])]
    if as_json:
        out.print_json(json.dumps({"dropped": dropped}))
    else:
        out.print(f"dropped {len(dropped)} dead letter(s)")
