"""``sm8cd preview``: what the next sync would write to either system, without writing it
(docs/preview.md). Per connection: ``-c ID``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from bridge.cli.base import app, command_runtime, handles_errors, out, span

if TYPE_CHECKING:
    from bridge.sync.preview import PlannedWrite, Preview

SHOWN = 10  # rows of each group printed unless --limit says otherwise


@app.command()
@handles_errors
def preview(
    as_json: Annotated[
        bool, typer.Option("--json", help="Everything as one JSON document, every row.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Rows printed of each group (0: counts only).")
    ] = SHOWN,
) -> None:
    """What the first (or next) sync would do, with nothing written to either system or to the
    bridge's store: pairs already in step to link, Coredination jobs to create, update or
    delete, people to put on or take off them, ServiceM8 bookings to create, update or delete,
    staff with no Coredination user, jobs left out and why, and the calls the sync makes with
    the time they take at the account's budget.

    It runs the sync itself (the same code the workers run) on a scratch copy of the
    connection's state, reading both APIs at bulk priority; beside a live bridge it reads what
    the workers may already be writing, so run it before 'sm8cd run' for the exact first sync.
    """
    from bridge.process.preview import run_preview

    with command_runtime() as rt:
        seen = run_preview(rt)
        connection = rt.connection
    if as_json:
        out.print_json(json.dumps({"connection": connection, **seen.to_dict()}, default=str))
        return
    render(seen, connection, limit)


def render(seen: Preview, connection: str, limit: int = SHOWN) -> None:
    """The preview as an operator reads it: a line of counts for each group, then its rows."""
    say = out.print
    say(f"[bold]Preview of the next sync of {connection}[/] (nothing was written)")
    _group(
        "Pairs already in step, linked without a write",
        [
            f"job {_job(seen, link.job)}: {_staff(seen, link.staff)} = user {link.user}"
            for link in seen.links
        ],
        limit,
    )
    for kind in ("create", "update", "delete"):
        _group(
            f"Coredination jobs to {kind}", [_cd_job(seen, w) for w in seen.cd_jobs(kind)], limit
        )
    for op in ("schedule", "assign", "unschedule", "unassign"):
        _group(
            f"People to {op} in Coredination",
            [
                f"{_user(seen, w.user)} on job {_job(seen, w.job)}"
                for w in seen.of("coredination", op)
            ],
            limit,
        )
    for kind in ("create", "update", "delete"):
        _group(
            f"ServiceM8 bookings to {kind}",
            [_booking(seen, w) for w in seen.of("servicem8", kind)],
            limit,
        )
    if seen.users_listed:
        _group(
            "Staff with no Coredination user",
            [
                f"{u.member.name or u.member.id} <{u.member.email or 'no e-mail'}>: {u.why}"
                + (f" (nearest: {u.nearest.email})" if u.nearest is not None else "")
                for u in seen.unmatched
            ],
            limit,
        )
    else:
        say("Staff with no Coredination user: not known (Coredination's user list was not read)")
    left = seen.left_out()
    say(
        f"Jobs left out: {sum(len(v) for v in left.values())}"
        + "".join(f"; {why} {len(jobs)}" for why, jobs in sorted(left.items())),
        highlight=False,
    )
    others = seen.other_skips()
    if others:
        say(
            "Left for another reason (sm8cd status says more): "
            + ", ".join(f"{name} {count}" for name, count in others.items()),
            highlight=False,
        )
    for job, why in seen.failed().items():
        say(f"[red]Failed[/] job {_job(seen, job)}: {why} (the sync would try it again)")
    for api, calls in seen.calls.items():
        say(
            f"{api}: {calls.total} calls ({calls.reads} reads, {calls.writes} writes), about "
            f"{span(calls.seconds)} at the account's budget",
            highlight=False,
        )


def _group(title: str, rows: list[str], limit: int) -> None:
    out.print(f"{title}: {len(rows)}", highlight=False)
    for row in rows[:limit]:
        out.print(f"  {row}", highlight=False, markup=False)
    if len(rows) > limit > 0:
        out.print(f"  … and {len(rows) - limit} more (--limit, or --json for every row)")


def _job(seen: Preview, job: str | None) -> str:
    number = seen.job_numbers.get(job or "")
    return f"#{number} ({job})" if number else str(job)


def _staff(seen: Preview, staff: object) -> str:
    row = seen.names.get(str(staff), {})
    return str(row.get("name") or staff)


def _user(seen: Preview, user: int | None) -> str:
    row = seen.names.get(f"u:{user}", {})
    return f"{row.get('name') or 'user'} ({user})"


def _cd_job(seen: Preview, write: PlannedWrite) -> str:
    title = write.fields.get("title") or write.fields.get("name")
    return f"{title} (ServiceM8 job {write.job})" if title else f"job {_job(seen, write.job)}"


def _booking(seen: Preview, write: PlannedWrite) -> str:
    kind = write.operation.split(".", 1)[0]
    staff = write.fields.get("staff_uuid")
    who = f" for {_staff(seen, staff)}" if staff else ""
    return f"{kind} {write.target} on job {_job(seen, write.job)}{who}"
