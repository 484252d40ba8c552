"""``sm8cd explain JOB``: why a job is as it is. The job's trail (``mappings.trail``), oldest
first, in plain sentences with times in the account's zone, then where each pair stands now.
Reads the store only: no call to either API. Per connection: ``-c ID``."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Annotated

import typer

from bridge.cli.base import app, command_runtime, fail, handles_errors, out

_SINCE = re.compile(r"(\d+)\s*([mhd])")
_UNITS = {"m": 60, "h": 3600, "d": 86_400}


@app.command()
@handles_errors
def explain(
    job: Annotated[
        str,
        typer.Argument(
            metavar="JOB",
            help="A ServiceM8 job uuid or number, or a Coredination job uuid or id.",
        ),
    ],
    staff: Annotated[
        str | None,
        typer.Option("--staff", help="Only this person: a name, or a staff uuid's start."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only entries this recent: 30m, 6h, 2d, or a date."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The entries as JSON.")] = False,
) -> None:
    """Why a job is as it is: each sync that decided something (what triggered it, what each
    side said, the rule that decided, each write and its answer), then each pair now. Answers
    for jobs the bridge never touched too (excluded, out of scope, unknown)."""
    from bridge.config import scope as scope_of
    from bridge.ops.explain import UnknownJob, tell

    cutoff = _cutoff(since)
    with command_runtime() as rt:
        try:
            story = tell(rt.stores, job, scope=scope_of(rt.settings), tz=rt.engine.ctx.tz,
                         staff=staff, since=cutoff)  # fmt: skip
        except UnknownJob as exc:
            fail(str(exc), 2)
            raise AssertionError from None  # fail() exits
    if as_json:
        out.print_json(json.dumps(story.to_json()))
        return
    out.print(story.heading, markup=False, highlight=False, soft_wrap=True)
    if story.excluded:
        out.print("Excluded by hand: nothing of it syncs ('sm8cd include' takes it back).")
    if story.note is not None:
        out.print(story.note, highlight=False)
    for told in story.told():
        out.print("")
        for line in told:
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    now = story.now()
    if now:
        out.print("\nNow:")
    for line in now:
        out.print(f"  {line}", markup=False, highlight=False)


def _cutoff(since: str | None) -> float:
    if since is None:
        return 0.0
    match = _SINCE.fullmatch(since.strip())
    if match is not None:
        return time.time() - int(match[1]) * _UNITS[match[2]]
    try:
        return datetime.fromisoformat(since.strip()).timestamp()
    except ValueError:
        fail(f"--since {since[:30]!r}: give 30m, 6h, 2d, or a date such as 2026-12-01", 2)
        raise AssertionError from None
