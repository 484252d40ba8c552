"""The ``bridge`` command. Every subcommand turns the error tree into one line and an exit code:
2 for configuration, 1 for anything else the bridge raised; never a traceback for those."""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from bridge.config import Settings, load_settings
from bridge.errors import ApiError, BridgeError, ConfigError
from bridge.log import configure_logging

if TYPE_CHECKING:
    from bridge.runtime import Runtime

app = typer.Typer(
    help="Keeps ServiceM8 job allocations and Coredination job resources in step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _fail(str(exc), 2)
        except BridgeError as exc:
            _fail(str(exc), 1)

    return wrapper  # type: ignore[return-value]


def settings_and_logging() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    return settings


@app.command()
@handles_errors
def check() -> None:
    """Validate the settings and call each API once (ServiceM8 vendor, Coredination users)."""
    from bridge.coredination import CoredinationClient
    from bridge.servicem8 import ServiceM8Client

    settings = settings_and_logging()
    vendor = ServiceM8Client.from_settings(settings).vendor()
    out.print(f"ServiceM8: account {vendor.name!r}, timezone {vendor.timezone_name}")
    try:
        users = CoredinationClient.from_settings(settings).list_users()
    except ApiError as exc:
        _fail(f"Coredination: {exc}", 1)
    out.print(f"Coredination: {len(users)} users")


# A command waits for its budget slots rather than fail while the workers hold the budget.
COMMAND_BUDGET_WAIT = 300.0


def _runtime() -> Runtime:
    """The bridge's wiring from the settings; use as ``with _runtime() as rt:``."""
    from bridge.runtime import build

    return build(settings_and_logging(), budget_wait=COMMAND_BUDGET_WAIT)


def _print_report(counts: dict[str, int]) -> None:
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


@app.command()
@handles_errors
def sync(
    once: Annotated[
        bool, typer.Option("--once", help="Run one full cycle both ways, then exit.")
    ] = False,
) -> None:
    """One complete cycle both ways without Celery: staff map, both polls, every changed job.

    For cron, debugging and tests. Exit 0 when every job went through, 1 when any failed (it
    stays marked and is tried again next time).
    """
    if not once:
        _fail("say --once (continuous syncing is 'bridge run')", 2)
    with _runtime() as rt:
        report = rt.engine.run_cycle()
    _print_report(dict(report.counts))
    failed = sum(n for k, n in report.counts.items() if k.startswith("failed."))
    if failed:
        _fail(f"{failed} job(s) failed; they stay queued for the next cycle", 1)


staff_app = typer.Typer(help="The staff ⇄ user map (matched by e-mail, overridable by hand).")
app.add_typer(staff_app, name="staff")


@staff_app.command("list")
@handles_errors
def staff_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every ServiceM8 staff member, the Coredination user they map to, and how."""
    import json

    from rich.table import Table

    with _runtime() as rt:
        staff = rt.store.directory("staff")
        users = rt.store.directory("users")
        mapping = rt.store.staff_map()
    rows = []
    for uuid, info in sorted(staff.items(), key=lambda kv: str(kv[1].get("name"))):
        user = mapping.s2u.get(uuid)
        how = "manual" if uuid in mapping.manual else "e-mail" if user is not None else "unmapped"
        rows.append({
            "sm8_staff_uuid": uuid,
            "name": info.get("name"),
            "email": info.get("email"),
            "cd_user_id": user,
            "cd_user": (users.get(str(user)) or {}).get("email") if user is not None else None,
            "how": how,
        })  # fmt: skip
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="Staff ⇄ users")
    columns = ("name", "email", "cd_user_id", "cd_user", "how", "sm8_staff_uuid")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row[c]) if row[c] is not None else "-" for c in columns))
    out.print(table)
    if not rows:
        out.print("No staff known yet: run 'bridge staff match' first.")


@staff_app.command("match")
@handles_errors
def staff_match() -> None:
    """Read both directories now and link staff to users by e-mail (case-insensitive)."""
    with _runtime() as rt:
        report = rt.engine.match_staff()
    _print_report(dict(report.counts))


@staff_app.command("link")
@handles_errors
def staff_link(
    sm8_staff_uuid: Annotated[str, typer.Argument(help="ServiceM8 staff uuid.")],
    cd_user_id: Annotated[int, typer.Argument(help="Coredination user id.")],
) -> None:
    """Link a staff member to a user by hand; automatic matching will leave it alone."""
    with _runtime() as rt:
        rt.engine.link_staff(sm8_staff_uuid, cd_user_id)
    out.print(f"linked {sm8_staff_uuid} → {cd_user_id}; parked allocations will be retried")


@staff_app.command("unlink")
@handles_errors
def staff_unlink(
    sm8_staff_uuid: Annotated[str, typer.Argument(help="ServiceM8 staff uuid.")],
) -> None:
    """Remove a link by hand; the staff member's allocations are parked until linked again."""
    with _runtime() as rt:
        rt.engine.unlink_staff(sm8_staff_uuid)
    out.print(f"unlinked {sm8_staff_uuid}")


@app.command()
@handles_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Links, parked pairs, dead letters, pauses, budget use and cursors. Makes no API call."""
    import json

    from bridge.ops import status as read_status

    with _runtime() as rt:
        data = read_status(rt)
    if as_json:
        out.print_json(json.dumps(data))
        return
    out.print(f"[bold]connection[/] {data['connection']}")
    out.print(
        f"links {data['links']}   staff mapped {data['staff_mapped']}   dirty {data['dirty_jobs']}"
        f"   pending {data['pending']}   unreadable {data['invalid_records']}"
        f"   dead letters {data['dead_letters']}"
        f"   deferred {data['deferred']}"
    )
    for api, pause in data["paused"].items():
        out.print(
            f"[bold red]PAUSED[/] {api}: {pause['reason']} ({pause['kind']}, "
            f"{pause['seconds_left']}s left)",
        )
    for api, rows in data["budget"].items():
        used = ", ".join(f"{r['used']}/{r['limit']} per {r['window']}" for r in rows)
        out.print(f"budget {api}: {used}")
    for name, value in data["cursors"].items():
        out.print(f"cursor {name}: {value or '-'}")
    for row in data["pending_examples"]:
        out.print(f"pending {row['pair']}: {row['reason']}")
    for row in data["invalid_examples"]:
        out.print(f"unreadable {row['record']}: {row['reason']}", highlight=False)


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

    from bridge.errors import BridgeError

    with _runtime() as rt:
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


dlq_app = typer.Typer(help="Dead letters: operations given up on, with the reason.")
app.add_typer(dlq_app, name="dlq")


def _dlq_rows(rt: Any, count: int) -> list[dict[str, Any]]:
    return [{"id": entry_id, **fields} for entry_id, fields in rt.store.dead_letters(count)]


@dlq_app.command("list")
@handles_errors
def dlq_list(
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The dead letters, oldest first."""
    import json

    from rich.table import Table

    with _runtime() as rt:
        rows = _dlq_rows(rt, limit)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"Dead letters ({len(rows)})")
    for column in ("id", "task", "args", "error", "status", "why", "attempts"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "-")) for c in
                        ("id", "task", "args", "error", "status", "why", "attempts")))  # fmt: skip
    out.print(table)


@dlq_app.command("show")
@handles_errors
def dlq_show(
    entry_id: Annotated[str, typer.Argument(help="The entry's id (from 'bridge dlq list').")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One dead letter in full."""
    import json

    with _runtime() as rt:
        entry = rt.store.get_dead_letter(entry_id)
    if entry is None:
        _fail(f"no dead letter {entry_id}", 1)
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
        _fail(f"no dead letter {', '.join(sorted(missing))}", 1)
    if not found:
        _fail("name entry ids, or say --all", 2)
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

    with _runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        from bridge.queues import sender

        celery_app = sender(rt.redis_url, rt.settings.bridge_connection_id)
        replayed = []
        for row in rows:
            celery_app.send_task(
                row["task"], args=json.loads(row.get("args", "[]")),
                kwargs=json.loads(row.get("kwargs", "{}")),
            )  # fmt: skip
            rt.store.drop_dead_letter(row["id"])
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

    with _runtime() as rt:
        rows = _selected(rt, entry_ids or [], everything)
        dropped = [row["id"] for row in rows if rt.store.drop_dead_letter(row["id"])]
    if as_json:
        out.print_json(json.dumps({"dropped": dropped}))
    else:
        out.print(f"dropped {len(dropped)} dead letter(s)")


@app.command()
@handles_errors
def web(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run only the webhook receiver with /healthz and /metrics (needs REDIS_URL)."""
    import uvicorn

    from bridge.web import create_app

    settings = settings_and_logging()
    if settings.redis_url is None:
        _fail("REDIS_URL is required for 'bridge web' ('bridge run' sets it for its parts)", 2)
    if settings.webhook_token is None:
        err.print("warning: WEBHOOK_TOKEN is not set; webhook endpoints answer 404", style="yellow")
    # access_log off: uvicorn's access log prints request paths, and paths carry the token.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None,
                timeout_graceful_shutdown=5)  # fmt: skip


@app.command()
@handles_errors
def run(
    host: Annotated[str, typer.Option(help="Interface for the webhook server.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the webhook server.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Worker, beat and webhook server together, on REDIS_URL or an embedded Redis in the state
    folder. Ctrl-C or SIGTERM stops everything cleanly."""
    from bridge.runtime import resolve_redis
    from bridge.supervisor import Supervisor

    settings = settings_and_logging()
    redis_url, embedded = resolve_redis(settings)
    where = f"embedded, data in {embedded.state_dir}" if embedded else "REDIS_URL"
    out.print(f"bridge: Redis {where}; webhook server on http://{host}:{port} "
              f"(/healthz, /metrics); Ctrl-C stops", highlight=False)  # fmt: skip
    supervisor = Supervisor(settings, redis_url, host=host, port=port, concurrency=concurrency,
                            embedded=embedded)  # fmt: skip
    code = supervisor.run()
    out.print("bridge: stopped" if code == 0 else "bridge: a part exited; everything stopped")
    raise typer.Exit(code)


@app.command()
@handles_errors
def demo(
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the stack up to explore.")
    ] = False,
    state_dir: Annotated[
        Path | None, typer.Option(help="Keep the demo's Redis and logs here (default: temporary).")
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="Also write the summary (and both simulators' state) here.")
    ] = None,
) -> None:
    """Both simulators, a small business, the whole bridge, four live changes and a summary."""
    from bridge.demo import run_demo

    configure_logging("WARNING", "console")
    ok = run_demo(out, keep_running=keep_running, state_dir=state_dir, summary_json=summary_json)
    raise typer.Exit(0 if ok else 1)


@app.command()
@handles_errors
def backfill(
    since: Annotated[
        datetime | None,
        typer.Option(
            formats=["%Y-%m-%d", "%Y-%m-%d %H:%M:%S"],
            help="Allocations edited after this (account time). Default: every active.",
        ),
    ] = None,
) -> None:
    """Read ServiceM8 allocations (edited since DATE) and queue their sync as bulk work, which may
    not take the share of the budget kept for webhooks and polls. Workers do the writing."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bridge.budget import priority
    from bridge.queues import queue_name, sender

    rt = _runtime()
    token = priority.set("bulk")
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=err) as progress:  # fmt: skip
            reading = progress.add_task("reading allocations", total=None)
            dirty = rt.engine.backfill(since, lambda n: progress.advance(reading, n))
            progress.update(reading, total=progress.tasks[reading].completed)
            queueing = progress.add_task("queueing job syncs", total=len(dirty))
            celery_app = sender(rt.redis_url, rt.settings.bridge_connection_id)
            bulk = queue_name(rt.settings.bridge_connection_id, "bulk")
            queued = 0
            for job in sorted(dirty):
                if rt.store.claim_enqueue(job):
                    celery_app.send_task("bridge.sync.job", args=[job], queue=bulk)
                    queued += 1
                progress.advance(queueing)
    finally:
        priority.reset(token)
        rt.close()
    out.print(f"backfill: {len(dirty)} job(s) with changes, {queued} sync(s) queued as bulk work")


webhooks_app = typer.Typer(help="Webhook subscriptions in ServiceM8 and Coredination.")
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("subscribe")
@handles_errors
def webhooks_subscribe() -> None:
    """Point both systems' webhooks at WEBHOOK_PUBLIC_URL (the receiver must be running: ServiceM8
    checks it with a challenge). Safe to repeat."""
    from bridge.ops import subscribe_webhooks

    with _runtime() as rt:
        done = subscribe_webhooks(rt)
    out.print("subscribed: " + ", ".join(done))


@webhooks_app.command("list")
@handles_errors
def webhooks_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every subscription in both systems (the token in URLs is masked)."""
    import json

    from bridge.ops import list_webhooks

    with _runtime() as rt:
        rows = list_webhooks(rt)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    for row in rows:
        out.print(f"{row['system']:<13} {row['what']:<14} {row['url']}", highlight=False)


@webhooks_app.command("unsubscribe")
@handles_errors
def webhooks_unsubscribe() -> None:
    """Remove the subscriptions that point at this bridge."""
    from bridge.ops import unsubscribe_webhooks

    with _runtime() as rt:
        done = unsubscribe_webhooks(rt)
    out.print("unsubscribed: " + (", ".join(done) or "nothing"))


@app.command()
def simulate(
    servicem8_port: Annotated[int, typer.Option(help="Port for the ServiceM8 simulator.")] = 8081,
    coredination_port: Annotated[
        int, typer.Option(help="Port for the Coredination simulator.")
    ] = 8082,
    servicem8_key: Annotated[str, typer.Option(help="API key it accepts.")] = "sim-servicem8-key",
    coredination_key: Annotated[
        str, typer.Option(help="API key it accepts.")
    ] = "sim-coredination-key",
    per_minute: Annotated[
        int, typer.Option(help="ServiceM8 requests per minute before 429 (0: no limit).")
    ] = 180,
    per_day: Annotated[
        int, typer.Option(help="ServiceM8 requests per day (0: no limit).")
    ] = 20_000,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (0.0.0.0 inside a container).")
    ] = "127.0.0.1",
    seed_business: Annotated[
        bool, typer.Option("--seed-business", help="Start with the demo's small business.")
    ] = False,
) -> None:
    """Run both simulators on loopback until Ctrl-C. Admin surface at /_admin/... on each."""
    from bridge.simulators import CoredinationSimulator, ServiceM8Simulator

    sm8 = ServiceM8Simulator(api_keys=(servicem8_key,))
    sm8.set_limits(per_minute=per_minute or None, per_day=per_day or None)
    cd = CoredinationSimulator(api_keys=(coredination_key,))
    sm8.start(host=host, port=servicem8_port)
    cd.start(host=host, port=coredination_port)
    if seed_business:
        from bridge.simulators.scenario import seed_business as seed

        seed(sm8, cd, staff=4, jobs=6, allocations=8)
    out.print("Simulators running. Point the bridge at them with:")
    out.print(f"  SERVICEM8_BASE_URL={sm8.api_url()}", highlight=False)
    out.print(f"  SERVICEM8_API_KEY={servicem8_key}", highlight=False)
    out.print(f"  COREDINATION_BASE_URL={cd.api_url()}", highlight=False)
    out.print(f"  COREDINATION_API_KEY={coredination_key}", highlight=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sm8.stop()
        cd.stop()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
