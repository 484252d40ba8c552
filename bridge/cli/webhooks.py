"""``sm8cd webhooks …``: subscriptions in both systems."""

from __future__ import annotations

from typing import Annotated

import typer

from bridge.cli.base import app, command_runtime, err, handles_errors, out

webhooks_app = typer.Typer(help="Webhook subscriptions in ServiceM8 and Coredination.")
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("subscribe")
@handles_errors
def webhooks_subscribe() -> None:
    """Point both systems' webhooks at WEBHOOK_PUBLIC_URL (the receiver must be running: ServiceM8
    checks it with a challenge). Safe to repeat. Exit 1 when any subscription failed for a reason
    other than ServiceM8 refusing that object (which is then polled, as every object is)."""
    from bridge.ops.subscriptions import failed, subscribe_webhooks

    with command_runtime() as rt:
        done = subscribe_webhooks(rt)
    for line in done:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if failed(done):
        err.print(f"error: {len(failed(done))} subscription(s) failed; is the receiver running "
                  "and reachable at WEBHOOK_PUBLIC_URL? The health check tries again.",
                  markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


@webhooks_app.command("list")
@handles_errors
def webhooks_list(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every subscription in both systems (the token in URLs is masked)."""
    import json

    from bridge.ops.subscriptions import list_webhooks

    with command_runtime() as rt:
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
    from bridge.ops.subscriptions import unsubscribe_webhooks

    with command_runtime() as rt:
        done = unsubscribe_webhooks(rt)
    out.print("unsubscribed: " + (", ".join(done) or "nothing"))
