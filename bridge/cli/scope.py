"""``sm8cd exclude JOB`` / ``sm8cd include JOB``: leave one ServiceM8 job out of the sync, or take
it back (docs/scope.md#one-job-left-alone). Per connection: ``-c ID``."""

from __future__ import annotations

import getpass
import time
from typing import Annotated

import typer

from bridge.cli.base import app, command_runtime, fail, handles_errors, out

JobArg = Annotated[str, typer.Argument(metavar="SM8_JOB_UUID", help="The ServiceM8 job's uuid.")]


def _job(text: str) -> str:
    from bridge.store.codec import id_bytes

    job = text.strip().lower()
    if id_bytes(job) is None:
        fail(f"{text[:60]!r} is not a ServiceM8 job uuid", 2)
    return job


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


@app.command()
@handles_errors
def exclude(
    job: JobArg,
    by: Annotated[
        str | None, typer.Option("--by", help="Who excludes it (default: your login name).")
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="Why, for 'sm8cd status'.")] = None,
) -> None:
    """Leave one ServiceM8 job out of the sync: from its next sync on nothing of it syncs, either
    way, and nothing already synced is undone. 'sm8cd status' lists it with who and when."""
    job = _job(job)
    with command_runtime() as rt:
        who = (by or _who()).strip()[:100] or "unknown"
        new = rt.stores.scope.exclude(job, who, time.time(), (note or "").strip()[:300] or None)
        held = rt.stores.scope.excluded().get(job, {})
    if new:
        out.print(f"excluded job {job} (by {who}): it is left as it is on both sides",
                  highlight=False)  # fmt: skip
    else:
        out.print(f"job {job} was already excluded (by {held.get('by')} at "
                  f"{_when(held.get('at'))})", highlight=False)  # fmt: skip


@app.command()
@handles_errors
def include(job: JobArg) -> None:
    """Sync an excluded ServiceM8 job again: it is marked to sync, and the workers (or the next
    'sm8cd sync --once') bring both sides in step."""
    job = _job(job)
    with command_runtime() as rt:
        was = rt.stores.scope.include(job)
        if was:
            rt.stores.jobs.mark_dirty([job])
    if was:
        out.print(f"included job {job}: it syncs again from its next sync", highlight=False)
    else:
        out.print(f"job {job} was not excluded", highlight=False)


def _when(at: object) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(str(at))))
    except ValueError:
        return "?"
