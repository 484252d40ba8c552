"""Commands that run parts: ``web``, ``run``, ``demo``, ``simulate``."""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from bridge.cli.base import app, err, fail, handles_errors, out, settings_and_logging
from bridge.log import configure_logging


@app.command()
@handles_errors
def web(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run only the webhook receiver with /healthz and /metrics (needs REDIS_URL)."""
    import uvicorn

    from bridge.web.app import create_app

    settings = settings_and_logging()
    if settings.redis_url is None:
        fail("REDIS_URL is required for 'sm8cd web' ('sm8cd run' sets it for its parts)", 2)
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
    folder (other commands use that same server while this runs). Ctrl-C or SIGTERM stops
    everything cleanly, the embedded Redis last."""
    from bridge.process.runtime import resolve_redis
    from bridge.process.supervisor import Supervisor

    settings = settings_and_logging()
    redis_url, embedded = resolve_redis(settings)
    try:
        _join_registry(settings, redis_url)
    except BaseException:
        if embedded is not None:
            embedded.release()
        raise
    where = embedded.describe() if embedded else "REDIS_URL"
    console = ", /console" if settings.console_password else ""
    out.print(f"bridge: Redis {where}; webhook server on http://{host}:{port} "
              f"(/healthz, /metrics{console}); Ctrl-C stops", highlight=False)  # fmt: skip
    supervisor = Supervisor(settings, redis_url, host=host, port=port, concurrency=concurrency,
                            embedded=embedded)  # fmt: skip
    code = supervisor.run()
    out.print("bridge: stopped" if code == 0 else "bridge: a part exited; everything stopped")
    raise typer.Exit(code)


def _join_registry(settings: Any, redis_url: str) -> None:
    """The environment's connection into the registry before any part starts, so `-c` names it
    and a connection added later never stops it (docs/connections.md#the-default-connection)."""
    import redis

    from bridge.connections import ConnectionRegistry, SecretBox
    from bridge.errors import ConfigError
    from bridge.redis import conn as redis_conn
    from bridge.store.keys import FleetKeys

    client = redis_conn.client(redis_url)
    try:
        keys = FleetKeys.for_deployment(settings.bridge_connection_id)
        ConnectionRegistry(client, SecretBox(()), keys=keys).upsert_environment(settings)
    except redis.RedisError as exc:
        raise ConfigError(f"REDIS_URL: cannot reach Redis ({type(exc).__name__})") from None
    finally:
        client.close()


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
    from bridge.cli.demo import run_demo

    configure_logging("WARNING", "console")
    ok = run_demo(out, keep_running=keep_running, state_dir=state_dir, summary_json=summary_json)
    raise typer.Exit(0 if ok else 1)


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
    servicem8_dialect: Annotated[
        list[str] | None,
        typer.Option(
            "--servicem8-dialect",
            help="A ServiceM8 dialect switch as NAME=VALUE (repeatable), e.g. "
            "allocation_webhooks=true, delete_restores=false, record_uuid_header=server, "
            "null_clears=true, day_reset=account; 'hostile' or 'first-reading' for a whole set "
            "(docs/probe.md).",
        ),
    ] = None,
    coredination_dialect: Annotated[
        list[str] | None,
        typer.Option(
            "--coredination-dialect",
            help="A Coredination dialect switch as NAME=VALUE (repeatable), e.g. stamps=modified, "
            "resource_shape=userId, unassign=true, users_endpoint=false, missing_status=405; "
            "'hostile' or 'first-reading' for a whole set.",
        ),
    ] = None,
) -> None:
    """Run both simulators on loopback until Ctrl-C. Admin surface at /_admin/... on each; the
    dialect can also be changed while they run (POST /_admin/dialect)."""
    from bridge.simulators import CoredinationSimulator, ServiceM8Simulator
    from bridge.simulators.base import SimError

    sm8 = ServiceM8Simulator(api_keys=(servicem8_key,))
    sm8.set_limits(per_minute=per_minute or None, per_day=per_day or None)
    cd = CoredinationSimulator(api_keys=(coredination_key,))
    for sim, given in ((sm8, servicem8_dialect), (cd, coredination_dialect)):
        try:
            sim.set_dialect(**_dialect_switches(sim.name, given or []))
        except (SimError, ValueError) as exc:
            fail(f"--{sim.name}-dialect: {getattr(exc, 'message', exc)}", 2)
    sm8.start(host=host, port=servicem8_port)
    cd.start(host=host, port=coredination_port)
    if seed_business:
        from bridge.simulators.scenario import seed_business as seed

        seed(sm8, cd, staff=4, jobs=6, allocations=8)
    out.print(f"ServiceM8 dialect: {asdict(sm8.dialect)}", highlight=False)
    out.print(f"Coredination dialect: {asdict(cd.dialect)}", highlight=False)
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


def _dialect_switches(system: str, given: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` switches, or a named set, as keyword arguments for ``set_dialect``; values
    read as JSON where they parse (true, 405, 0.3) and as text otherwise (server, account)."""
    import json

    from bridge.simulators import (
        FIRST_READING,
        HOSTILE_COREDINATION,
        HOSTILE_SERVICEM8,
        LEGACY_DIALECT,
    )

    named: dict[str, dict[str, Any]] = {
        "servicem8": {"hostile": HOSTILE_SERVICEM8, "first-reading": FIRST_READING},
        "coredination": {"hostile": HOSTILE_COREDINATION, "first-reading": LEGACY_DIALECT},
    }
    sets = named[system]
    switches: dict[str, Any] = {}
    for item in given:
        if item in sets:
            switches.update(asdict(sets[item]))
            continue
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected NAME=VALUE or one of {sorted(sets)}, not {item!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        switches[name.strip()] = value
    return switches
