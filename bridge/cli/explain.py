"""``sm8cd explain JOB``: why a job is as it is. The job's trail (``mappings.trail``), oldest
first, in plain sentences with times in the account's zone, then where each pair stands now.
Reads the store only: no call to either API. Per connection: ``-c ID``."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bridge.cli.base import app, command_runtime, fail, handles_errors, out
from bridge.store.codec import id_bytes
from mappings.scope import HISTORY
from mappings.trail import LEFT_OUT, VERDICTS, Entry, decode, sentences

if TYPE_CHECKING:
    from bridge.process.runtime import Runtime

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
    cutoff = _cutoff(since)
    with command_runtime() as rt:
        sm8_job = _resolve(rt, job)
        record = rt.stores.jobs.load(sm8_job)
        raw = rt.stores.trail.entries(sm8_job)
        names = _names(rt)
        tz = rt.engine.ctx.tz
        verdict = _scope_verdict(rt, record)
        excluded = rt.stores.scope.is_excluded(sm8_job)
        parked = {k.split("|", 1)[1]: v for k, v in rt.stores.parked.pending().items()
                  if k.startswith(f"{sm8_job}|")}  # fmt: skip
    readable = [e for e in map(decode, raw) if e is not None]
    entries = [e for e in readable if e.at_ms >= cutoff * 1000]
    if staff is not None:
        entries = [_only(e, staff, names) for e in entries]
    if as_json:
        out.print_json(json.dumps({
            "job": sm8_job, "excluded": excluded, "unreadable": len(raw) - len(readable),
            "entries": [asdict(e) for e in entries],
            "pairs": {s: {"servicem8": p.sm8.value, "coredination": p.cd.value, "held": p.held}
                      for s, p in record.pairs.items()},
            "parked": parked,
        }))  # fmt: skip
        return
    out.print(_heading(sm8_job, record), markup=False, highlight=False, soft_wrap=True)
    if excluded:
        out.print("Excluded by hand: nothing of it syncs ('sm8cd include' takes it back).")
    if not raw:
        out.print(_untouched(record, verdict), highlight=False)
    for entry in entries:
        out.print("")
        for line in sentences(entry, tz, names):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    if record.pairs or parked:
        out.print("\nNow:")
    for who, snap in sorted(record.pairs.items()):
        held = " (held)" if snap.held else ""
        out.print(f"  {names.get(who, who[:8])}: ServiceM8 {snap.sm8.value}, Coredination "
                  f"{snap.cd.value}{held}", markup=False, highlight=False)  # fmt: skip
    for who, held_by in sorted(parked.items()):
        out.print(f"  parked {names.get(who, who[:10])}: {held_by.get('reason')}",
                  markup=False, highlight=False)  # fmt: skip


def _resolve(rt: Runtime, text: str) -> str:
    """The ServiceM8 job uuid ``text`` names: the uuid itself, a Coredination job's uuid or id
    (by the reverse links), or a ServiceM8 job number (among jobs with a trail)."""
    ref = text.strip().lower()
    jobs = rt.stores.jobs
    if id_bytes(ref) is not None:
        if jobs.has(ref) or rt.stores.trail.entries(ref):
            return ref
        linked = jobs.job_for_cd(ref)
        return linked or ref  # a uuid the bridge never saw: said so below
    if ref.isdigit():
        found = rt.stores.trail.job_for_number(ref) or jobs.job_for_cd(ref)
        if found:
            return found
    fail(f"no job known by {text[:60]!r}: give a ServiceM8 job uuid, a Coredination job uuid or "
         "id, or the number of a ServiceM8 job the bridge has synced", 2)  # fmt: skip
    raise AssertionError  # fail() exits


def _names(rt: Runtime) -> dict[str, str]:
    staff = rt.stores.staff.directory("staff")
    return {k: str(v.get("name") or v.get("email") or k[:8]) for k, v in staff.items()}


def _heading(sm8_job: str, record: Any) -> str:
    number = record.details.number if record.details else None
    head = f"ServiceM8 job {number or '?'} ({sm8_job})"
    if record.cd is None:
        return head + ", no Coredination job"
    cd_id = f" (id {record.cd.id})" if record.cd.id is not None else ""
    return f"{head}, Coredination job {record.cd.uuid}{cd_id}"


def _scope_verdict(rt: Runtime, record: Any) -> str | None:
    """Why the job is out of scope as a whole now, as the sync decides it (None: it is not)."""
    from mappings.plan import in_scope

    ctx = rt.engine.ctx
    now_ms = ctx.now_ms()
    horizon = ctx.horizon(now_ms)
    reason = horizon.left_out(record.details)
    if reason is None and record.allocations and not in_scope(record, horizon, now_ms):
        reason = HISTORY
    return None if reason is None else VERDICTS.get(f"{LEFT_OUT}{reason}", reason)


def _untouched(record: Any, verdict: str | None) -> str:
    if record.empty:
        return "Unknown: the bridge has not seen this job (not polled yet, or not in ServiceM8)."
    if verdict is not None:
        return f"{verdict} No sync decides anything about it while it is."
    if record.cd is None:
        return "No sync has decided anything about it yet: it waits for its first sync."
    return "No trail kept for it (none since this release, or older than its keep time)."


def _only(entry: Entry, staff: str, names: dict[str, str]) -> Entry:
    want = staff.strip().lower()
    named = {s for s, name in names.items() if name.lower() == want}
    pairs = tuple(p for p in entry.pairs if p.staff.startswith(want) or p.staff in named)
    return Entry(entry.at_ms, entry.trigger, entry.verdicts, entry.job, pairs, entry.error)


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
