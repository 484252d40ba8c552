"""``sm8cd probe``: how this account's APIs answer the questions the documents leave open."""

from __future__ import annotations

from typing import Annotated

import typer

from bridge.cli.base import app, command_runtime, handles_errors, out


@app.command()
@handles_errors
def probe(
    writes: Annotated[
        bool,
        typer.Option(
            "--writes",
            help="Also settle what needs writing: a scratch ServiceM8 job (created, refused a "
            "bad value, its date cleared, deleted twice, left deleted), subscriptions with a "
            "callback of their own (needs WEBHOOK_PUBLIC_URL and the receiver running), and a "
            "scratch Coredination job with one user scheduled without a message, then removed. "
            "No other record is touched.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Ask both APIs each open question (docs/probe.md), print what was seen and which reading
    (dialect) that is, and store the readings: the bridge then uses them, and 'sm8cd status'
    shows them. Read-only unless --writes. Exit 1 if a scratch record could not be removed."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from bridge.probe import probe as run_probe

    with command_runtime() as rt:
        report = run_probe(rt, writes=writes)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        table = Table(title="What the APIs answered" + (" (with writes)" if writes else ""))
        for column in ("system", "question", "what it saw", "reading"):
            table.add_column(column)
        for f in report.findings:
            reading = "unsettled" if f.reading is None else repr(f.reading)
            if not f.dialect:
                reading += " (fact)"
            note = f" ({f.why})" if f.why else ""
            table.add_row(
                f.system, escape(f"{f.question} [{f.name}]"), escape(f.saw + note), escape(reading)
            )
        out.print(table)
        out.print("stored: 'sm8cd status' shows these readings, and the bridge uses them.")
    if report.left_behind:
        for record in report.left_behind:
            out.print(f"[bold red]left behind[/] {escape(record)}", highlight=False)
        raise typer.Exit(1)
