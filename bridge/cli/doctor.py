"""``sm8cd check`` and ``sm8cd doctor``: one line per part, ok / warn / fail, with what to do.

``check`` validates the settings and calls each API once. ``doctor`` runs the same lines, then
everything going live depends on (``bridge.ops.readiness``, ``bridge.probe.readings``): Redis
keeping its data, the probe's readings, the webhook receiver at its public URL, the
subscriptions, the staff map. Exit code: 0 with no fail (warnings said), 1 with any, 2 for a
setting that cannot be read."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer

from bridge.cli.base import SELECTED, app, command_runtime, handles_errors, out
from bridge.config import Settings
from bridge.coredination.client import UsersListMissing
from bridge.errors import BridgeError, ConfigError
from bridge.ops.readiness import Level, Line

if TYPE_CHECKING:
    from bridge.coredination.models import CdUser
    from bridge.process.runtime import Runtime

MARKS: dict[Level, str] = {
    "ok": "[green]ok[/]  ",
    "warn": "[yellow]warn[/]",
    "fail": "[red]fail[/]",
}


class Checklist:
    """The lines so far, printed as they come (or kept for ``--json``), and their tally."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.lines: list[Line] = []
        self.quiet = quiet

    def add(self, line: Line) -> None:
        self.lines.append(line)
        if self.quiet:
            return
        out.print(f"{MARKS[line.level]} {line.what}: ", end="")
        out.print(line.detail, markup=False, highlight=False, soft_wrap=True)
        if line.todo and line.level != "ok":
            out.print(f"     to do: {line.todo}", markup=False, highlight=False, soft_wrap=True)

    def extend(self, lines: Iterable[Line]) -> None:
        for line in lines:
            self.add(line)

    def tally(self) -> Counter[str]:
        return Counter(line.level for line in self.lines)


def basics(checks: Checklist, settings: Settings) -> tuple[Runtime, list[CdUser] | None]:
    """``check``'s lines: the settings, the secret keys, Redis and the connection, the stored
    secrets, ServiceM8 (the account) and Coredination (the users). Returns the runtime (the
    caller closes it) and the users as listed (None if they could not be). Without Redis or
    the connection nothing else can be checked: exit 2 for a setting, 1 otherwise."""
    from bridge.connections import SecretBox

    chosen = SELECTED.connection or settings.bridge_connection_id
    checks.add(Line("ok", "settings", f"read (connection {chosen})"))
    box = None
    try:
        box = SecretBox.from_settings(settings)
        keys = f"{box.key_count} key(s)" if box.ready else "not set (needed to add connections)"
        checks.add(Line("ok", "BRIDGE_SECRET_KEYS", keys))
    except BridgeError as exc:
        checks.add(Line("fail", "BRIDGE_SECRET_KEYS", str(exc),
                        "'sm8cd secrets new-key' makes a well-formed key"))  # fmt: skip
    try:
        rt = command_runtime()  # Redis, and the connection -c names with its keys
    except BridgeError as exc:
        todo = "check REDIS_URL, and the connection's id ('sm8cd connections list')"
        checks.add(Line("fail", "Redis and the connection", str(exc), todo))
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    where = rt.embedded.describe() if rt.embedded is not None else "REDIS_URL"
    checks.add(Line("ok", "Redis", f"reachable ({where})"))
    if box is not None and box.ready:
        from bridge.cli.connections import unreadable_secrets

        unreadable = unreadable_secrets(rt.redis, box, rt.lanes)
        checks.add(
            Line("ok", "stored secrets", "every one readable with these keys") if not unreadable
            else Line("fail", "stored secrets", "cannot be read with these keys: "
                      f"{', '.join(unreadable)}", "put back the key they were stored with "
                      "(docs/connections.md#rotating-the-keys)")
        )  # fmt: skip
    try:
        vendor = rt.sm8.vendor()
        checks.add(Line("ok", "ServiceM8", f"account {vendor.name!r}, timezone "
                        f"{vendor.timezone_name}"))  # fmt: skip
    except BridgeError as exc:
        todo = "check SERVICEM8_API_KEY (or the grant) and SERVICEM8_BASE_URL"
        checks.add(Line("fail", "ServiceM8", str(exc), todo))
    users: list[CdUser] | None = None
    try:
        users = rt.cd.list_users()
        checks.add(Line("ok", "Coredination", f"{len(users)} users"))
    except UsersListMissing:  # the key was taken (no 401): only the list is missing
        checks.add(Line("warn", "Coredination", "key accepted, but there is no users list: staff "
                        "cannot be matched by e-mail", "link each staff member: 'sm8cd staff "
                        "link STAFF_UUID USER_ID' (docs/coredination-api.md#users)"))  # fmt: skip
    except BridgeError as exc:
        checks.add(Line("fail", "Coredination", str(exc),
                        "check COREDINATION_API_KEY and COREDINATION_BASE_URL"))  # fmt: skip
    return rt, users


@app.command()
@handles_errors
def check() -> None:
    """Validate every setting and call each API once, for the connection -c names (default: the
    deployment's own): the settings, the secret keys (well formed, and able to read every stored
    secret), Redis (reachable), ServiceM8 (the account) and Coredination (the users; a warning
    where it has no users list). One line each; exit 0 when none failed, 1 when any failed, 2
    for a setting that cannot be read. 'sm8cd doctor' checks all going live depends on."""
    from bridge.cli.base import settings_and_logging

    checks = Checklist()
    rt, _users = basics(checks, settings_and_logging())
    rt.close()
    if checks.tally()["fail"]:
        raise typer.Exit(1)


Section = Callable[["Runtime", "list[CdUser] | None"], Iterable[Line]]


def _redis(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    from bridge.ops.readiness import redis_lines

    return redis_lines(rt)


def _probe(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    from bridge.probe.readings import reading_lines

    return reading_lines(rt.stores.activity.probe(), time.time())


def _webhooks(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    from bridge.ops.readiness import receiver_line, subscription_lines

    return [receiver_line(rt.settings), *subscription_lines(rt)]


def _staff(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    from bridge.ops.readiness import staff_lines

    return staff_lines(rt, users)


def _scope(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    from bridge.ops.status import scope_view

    scope = scope_view(rt, time.time())
    statuses = scope["job_statuses"]
    horizon = scope["horizon"] or f"{scope['horizon_days']} day(s) back (timezone not read yet)"
    return [Line("ok", "scope", f"bookings from {horizon} on; job statuses "
                 f"{'every' if statuses == '*' else ', '.join(statuses)}; staff left out "
                 f"{len(scope['staff_left_out'])}; jobs excluded {scope['excluded_count']} "
                 "(docs/scope.md)")]  # fmt: skip


def _next_sync(rt: Runtime, users: list[CdUser] | None) -> Iterable[Line]:
    """The preview's counts: the next sync run where nothing lands (docs/preview.md)."""
    from bridge.process.preview import run_preview

    seen = run_preview(rt)
    failed = seen.failed()
    if failed:
        return [Line("warn", "next sync", f"{seen.summary()}; {len(failed)} job(s) would fail",
                     "'sm8cd preview' names them and why")]  # fmt: skip
    return [Line("ok", "next sync", f"{seen.summary()} ('sm8cd preview' lists each)")]


# What doctor checks after check's lines, in order: a function (runtime, users) → lines.
SECTIONS: list[Section] = [_redis, _probe, _webhooks, _staff, _scope, _next_sync]


@app.command()
@handles_errors
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Everything going live depends on, for the connection -c names: check's lines (settings,
    keys, Redis, both APIs), then Redis keeping its data (append-only or a replica), the
    probe's stored readings and what each means, the webhook receiver at its public URL (the
    challenge ServiceM8 sends), the subscriptions, the staff with and without a Coredination
    user, the scope, and what the next sync would write (the preview's counts). One line each,
    ok / warn / fail with what to do. Reads only: nothing is written to either API or to the
    bridge's state. Exit 0 with no fail (warnings are said), 1 with any fail, 2 for a setting
    that cannot be read."""
    from bridge.cli.base import settings_and_logging

    checks = Checklist(quiet=as_json)
    try:
        rt, users = basics(checks, settings_and_logging())
    except typer.Exit:
        if as_json:  # nothing else can be checked: what was, and the code
            out.print_json(json.dumps({"lines": [asdict(line) for line in checks.lines]}))
        raise
    with rt:
        for section in SECTIONS:
            try:
                checks.extend(section(rt, users))
            except BridgeError as exc:  # one part out of reach stops no other
                what = section.__name__.strip("_")
                checks.add(Line("fail", what, f"could not be checked: {exc}", "see the lines "
                                "above, then run 'sm8cd doctor' again"))  # fmt: skip
    tally = checks.tally()
    if tally["fail"]:
        verdict = "not ready to go live: fix the fail lines first"
    elif tally["warn"]:
        verdict = f"ready to go live, with {tally['warn']} warning(s): read them first"
    else:
        verdict = "ready to go live"
    if as_json:
        out.print_json(json.dumps({
            "lines": [asdict(line) for line in checks.lines],
            "ok": tally["ok"], "warn": tally["warn"], "fail": tally["fail"], "verdict": verdict,
        }))  # fmt: skip
    else:
        out.print(f"doctor: {tally['ok']} ok, {tally['warn']} warn, {tally['fail']} fail: "
                  f"{verdict}. What no command can check: the README's 'Before you go live'.",
                  highlight=False, soft_wrap=True)  # fmt: skip
    raise typer.Exit(1 if tally["fail"] else 0)
