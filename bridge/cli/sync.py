"""Commands that sync, report and repair: ``sync --once``, ``status``, ``reconcile``,
``backfill`` (``check`` and ``doctor``: ``bridge.cli.doctor``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from bridge.cli.base import (
    SELECTED,
    app,
    command_enqueuer,
    command_runtime,
    err,
    fail,
    handles_errors,
    out,
    print_report,
    span,
)
from bridge.errors import ApiError, BridgeError


@app.command()
@handles_errors
def sync(
    once: Annotated[
        bool, typer.Option("--once", help="Run one full cycle both ways, then exit.")
    ] = False,
    job: Annotated[
        str | None,
        typer.Option(
            "--job",
            metavar="SM8_JOB_UUID",
            help="Sync this one ServiceM8 job now. A job whose Coredination job a dispatcher "
            "deleted is created there again.",
        ),
    ] = None,
) -> None:
    """One complete cycle both ways without Celery: staff map, both polls, every changed job;
    or, with --job, one job.

    For cron, debugging and tests. Exit 0 when every job went through, 1 when any failed (it
    stays marked and is tried again next time).
    """
    if not once and job is None:
        fail("say --once or --job SM8_JOB_UUID (continuous syncing is 'sm8cd run')", 2)
    if job is not None:
        _sync_one(job.strip().lower())
        return
    with command_runtime() as rt:
        report = rt.engine.run_cycle()
    print_report(dict(report.counts))
    failed = sum(n for k, n in report.counts.items() if k.startswith("failed."))
    if failed:
        fail(f"{failed} job(s) failed; they stay queued for the next cycle", 1)


def _sync_one(job: str) -> None:
    from bridge.store.codec import id_bytes
    from bridge.sync.context import CD_DELETED

    if id_bytes(job) is None:
        fail(f"--job: {job[:60]!r} is not a ServiceM8 job uuid", 2)
    with command_runtime() as rt:
        parked = rt.stores.parked
        if parked.pending_entry(job, CD_DELETED) is not None:
            parked.clear_pending(job, CD_DELETED)  # the operator's choice: create it again
            out.print("deleted in Coredination: creating it again")
        try:
            report = rt.engine.sync_job(job)
        except ApiError as exc:
            rt.stores.jobs.mark_dirty([job])  # tried again by the next cycle
            fail(f"job {job} failed: {exc}", 1)
    print_report(dict(report.counts))


@app.command()
@handles_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Links, parked pairs, dead letters, pauses, budget use and cursors. Makes no API call.
    With more than one connection and no -c: the fleet (every connection, the paused ones and
    why, the worst poll age, dead letters by connection)."""
    import json

    from bridge.ops.status import status as read_status

    if SELECTED.connection is None and _fleet(as_json):
        return
    with command_runtime() as rt:
        data = read_status(rt)
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"[bold]connection[/] {data['connection']}   bookings made from Coredination: "
              f"{data['pull_booking']} (SERVICEM8_PULL_BOOKING)")  # fmt: skip
    accounts = ", ".join(f"{api} {account}" for api, account in data["accounts"].items())
    out.print(f"accounts (whose budgets it draws from): {accounts}", highlight=False)
    out.print(
        f"links {data['links']}   staff mapped {data['staff_mapped']}   dirty {data['dirty_jobs']}"
        f"   pending {data['pending']}   unreadable {data['invalid_records']}"
        f"   dead letters {data['dead_letters']}"
        f"   deferred {data['deferred']}"
    )
    backlog = data["catch_up"]
    if backlog is not None:
        left = backlog["eta_seconds"]
        eta = "time left not known yet" if left is None else f"about {span(left)} left"
        share = 100 * backlog["done"] // max(1, backlog["of"])
        out.print(f"[bold]catching up[/]: {backlog['done']:,} of {backlog['of']:,} jobs synced "
                  f"({share} %), {eta}", highlight=False)  # fmt: skip
    for api, pause in data["paused"].items():
        out.print(
            f"[bold red]PAUSED[/] {api}: {pause['reason']} ({pause['kind']}, "
            f"{pause['seconds_left']}s left)",
        )
    for api, blocked in data["blocked"].items():
        for operation, row in blocked.items():
            out.print(f"[bold red]BLOCKED[/] {api} {operation}: grant the {row['scope']} scope "
                      f"({row['reason']}; tried again in {row['seconds_left']}s)",
                      highlight=False)  # fmt: skip
    for name, row in data["objects"].items():
        if row.get("state") == "unavailable":
            out.print(f"[bold]UNAVAILABLE[/] {name}: {row.get('reason')}; not polled (asked "
                      f"again every few hours); bookings made from Coredination: "
                      f"{data['pull_booking_now']}", highlight=False)  # fmt: skip
        elif row.get("state") == "read-in-full":
            out.print(f"[bold]READ IN FULL[/] {name.removesuffix('.filter')}: {row.get('reason')};"
                      f" every poll reads the whole list, polled less often within the budget",
                      highlight=False)  # fmt: skip
    for api, rows in data["budget"].items():
        used = ", ".join(f"{r['used']}/{r['limit']} per {r['window']}" for r in rows)
        out.print(f"budget {api}: {used}")
    plan = data.get("poll_plan")
    if plan:
        every = ", ".join(
            f"{name.split('.')[-1]} {s:.0f}s" for name, s in plan["intervals"].items()
        )
        out.print(f"polls ({'busy' if plan['busy'] else 'quiet'} hours): every {every}; today "
                  f"{plan['spent']} spent, {plan['projected']} projected of "
                  f"{plan['poll_budget']} (POLL_BUDGET_SHARE)", highlight=False)  # fmt: skip
    _print_scope(data["scope"])
    for name, value in data["cursors"].items():
        out.print(f"cursor {name}: {value or '-'}")
    for name, sub in data["subscriptions"].items():
        out.print(f"webhooks {name}: {_subscription_line(sub)}", highlight=False)
    for row in data["pending_examples"]:
        out.print(f"pending {row['pair']}: {row['reason']}")
    for row in data["invalid_examples"]:
        out.print(f"unreadable {row['record']}: {row['reason']}", highlight=False)
    for job, row in data["failed_jobs"].items():
        out.print(f"parked job {job}: {row['reason']} (dead letter {row['dlq']}; synced again "
                  "at its next change, or by 'sm8cd dlq replay')", highlight=False)  # fmt: skip


def _print_scope(scope: dict[str, Any]) -> None:
    """What syncs (docs/scope.md), and each job excluded by hand with who and when."""
    horizon = scope["horizon"] or "not known yet (the account's timezone is read at first sync)"
    statuses = scope["job_statuses"]
    categories = scope["job_categories"]
    out.print(
        f"scope: bookings from {horizon} on (SCOPE_HORIZON_DAYS={scope['horizon_days']}, "
        f"{scope['timezone'] or '-'}); job statuses "
        f"{'every' if statuses == '*' else ', '.join(statuses)}; categories "
        f"{'every' if categories == '*' else ', '.join(categories)}; staff left out "
        f"{len(scope['staff_left_out'])}; jobs excluded {scope['excluded_count']}",
        highlight=False,
    )
    for job, entry in scope["excluded"].items():
        at = datetime.fromtimestamp(float(entry.get("at") or 0)).isoformat(timespec="seconds")
        note = f": {entry['note']}" if entry.get("note") else ""
        out.print(f"excluded job {job} by {entry.get('by')} at {at}{note} "
                  "('sm8cd include' takes it back)", highlight=False)  # fmt: skip


def _subscription_line(sub: dict[str, Any]) -> str:
    if not sub["state"]:
        return "not subscribed by this bridge"
    parts = [sub["state"]]
    if sub["active"] is False:
        parts.append("ServiceM8 shows it INACTIVE")
    if sub["last_failure_reason"]:
        at = sub["last_failure_at"] or "?"
        parts.append(f"last failure {sub['last_failure_reason']} at {at}")
    if sub["last_delivery_seconds_ago"] is not None:
        parts.append(f"last delivery {sub['last_delivery_seconds_ago']}s ago")
    if sub["checked_seconds_ago"] is not None:
        parts.append(f"checked {sub['checked_seconds_ago']}s ago")
    return "; ".join(parts)


@app.command()
@handles_errors
def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report drift, change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Read both systems whole and list every pair whose sides disagree; without --dry-run, sync
    those jobs now through the normal path (here, without the workers). Exit 1 when a dry run
    finds drift or a repair fails."""
    import json
    from dataclasses import asdict

    with command_runtime() as rt:
        drifts, dirty = rt.engine.reconcile(repair=not dry_run)
        failed = []
        for job in sorted(dirty):
            try:
                rt.engine.sync_job(job)
            except BridgeError as exc:
                failed.append(f"{job}: {exc}")
    if as_json:
        out.print_json(json.dumps({"drift": [asdict(d) for d in drifts], "repaired": sorted(dirty),
                                   "failed": failed}))  # fmt: skip
    else:
        for d in drifts:
            out.print(f"drift job {d.sm8_job_uuid} staff {d.sm8_staff_uuid} (user {d.cd_user_id}): "
                      f"ServiceM8 {d.servicem8}, Coredination {d.coredination}; {d.reason}",
                      highlight=False)  # fmt: skip
        verb = "reported" if dry_run else f"repaired {len(dirty) - len(failed)} job(s)"
        out.print(f"reconcile: {len(drifts)} drifted pair(s), {verb}")
        for line in failed:
            out.print(f"failed {line}", highlight=False)
    raise typer.Exit(1 if failed or (dry_run and drifts) else 0)


@app.command()
@handles_errors
def backfill(
    since: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"],
            help="Bookings edited after this (account time). Default: every active.",
        ),
    ] = None,
) -> None:
    """Read ServiceM8 bookings of both kinds, job allocations and job activities (edited since
    DATE), and queue their sync as bulk work, which may not take the share of the budget kept for
    webhooks and polls. Workers do the writing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bridge.http.budget import priority

    rt = command_runtime()
    token = priority.set("bulk")
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=err) as progress:  # fmt: skip
            reading = progress.add_task("reading bookings", total=None)
            dirty = rt.engine.backfill(since, lambda n: progress.advance(reading, n))
            progress.update(reading, total=progress.tasks[reading].completed)
            queueing = progress.add_task("queueing job syncs", total=len(dirty))
            enqueue = command_enqueuer(rt)
            queued = 0
            for job in sorted(dirty):
                queued += enqueue.syncs([job], rt.stores.work.claim_enqueue, "bulk")
                progress.advance(queueing)
    finally:
        priority.reset(token)
        rt.close()
    out.print(f"backfill: {len(dirty)} job(s) with changes, {queued} sync(s) queued as bulk work")


def _fleet(as_json: bool) -> bool:
    """Print the fleet's status; False (nothing printed) while the registry holds one connection
    at most (the deployment's own: its status is the one to show)."""
    import json

    from rich.table import Table

    from bridge.cli.base import open_registry
    from bridge.ops.fleet_status import fleet_status

    with open_registry() as (registry, _settings):
        if registry.r.hlen(registry.keys.connections) <= 1:
            return False
        fleet = fleet_status(registry)
    data = fleet.to_dict()
    if as_json:
        out.print_json(json.dumps(data))
        return True
    counts = ", ".join(f"{n} {state}" for state, n in sorted(data["by_status"].items()))
    out.print(f"[bold]fleet[/] {len(fleet.connections)} connection(s): {counts}", highlight=False)
    worst = data["worst_poll_age_seconds"]
    p99 = data["poll_lateness_p99_seconds"]
    out.print(f"worst poll age {'-' if worst is None else f'{worst:.0f}s'}   claimed polls' "
              f"lateness p99 {'-' if p99 is None else f'{p99:.2f}s'} (last 5 min, "
              f"{data['poll_lateness_polls']} polls)   dead letters {data['dead_letters']}   "
              f"waiting for a slot {data['waiting']}", highlight=False)  # fmt: skip
    for bad in fleet.unreadable:
        out.print(f"[bold red]UNREADABLE[/] {bad}: its registry entry cannot be read")
    for row in fleet.connections:
        if row.status != "active":
            out.print(f"[bold]{row.status.upper()}[/] {row.id}: {row.reason or '-'}",
                      highlight=False)  # fmt: skip
    table = Table(title="Connections (sm8cd -c ID status: one in full)")
    for column in ("id", "label", "status", "polled", "dirty", "dlq", "deferred", "waiting"):
        table.add_column(column, overflow="fold")
    for row in fleet.connections:
        age = "-" if row.poll_age_seconds is None else f"{row.poll_age_seconds:.0f}s ago"
        table.add_row(row.id, row.label or "-", row.status, age, str(row.dirty),
                      str(row.dead_letters), str(row.deferred), str(row.waiting))  # fmt: skip
    out.print(table)
    return True
