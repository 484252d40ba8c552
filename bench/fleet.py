"""``python -m bench.fleet``: one deployment running many connections (docs/connections.md).

Real processes on the real path: one beat and one worker (prefork, ``--concurrency``) of the
bridge, the connection registry in Redis, and the simulators in this process.

1. **Idle fleet.** ``--connections`` small accounts, each its own ServiceM8 account (one
   simulator answering each key with a vendor uuid of its own, so each has its own budget) and
   its own Coredination key, polling every ``POLL_SECONDS``. After a warm-up (every connection
   has polled once) it measures, for ``--idle-seconds``: the beat's and the workers' CPU (their
   process groups, from ``/proc``), how late each claimed poll started (the ``bridge_due`` the
   fleet tick stamps on it, against when it began: ``b:fleet:{d}:lateness``), and Redis memory
   per connection (``used_memory`` after, less before the registry was filled, over N).
2. **One noisy connection.** Then one more connection on an account of its own (a simulator
   enforcing ServiceM8's 180 requests a minute) gets a backfill of ``--noisy-bookings`` bookings
   (``sm8cd -c noisy backfill``, the command an operator runs) and a burst of webhook tasks for
   its bookings, queued as the receiver queues them. Measured for ``--noisy-seconds``: the other
   connections' poll lateness against the idle figure, and the ServiceM8 requests the noisy one
   got answered against its budget, with its 429s.

Prints each figure against its target (issue 16) and exits 1 if one is missed. ``--json PATH``
writes them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.harness import Stack, eventually
from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, new_key
from bridge.connections.models import Connection
from bridge.queues import POLL_CYCLE, WEBHOOK_SERVICEM8_ALLOCATION, Enqueuer
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Simulator
from bridge.store import Stores
from bridge.store.keys import FleetKeys

POLL_SECONDS = 60  # a small account's poll, both systems (connection overrides)
WARM_UP_POLLS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NOISY = "noisy"
NOISY_SM8_KEY, NOISY_CD_KEY = "smk-noisy-7c2e9a41d3", "cdk-noisy-3f8b1d6e20"


def _key(n: int, system: str) -> str:
    return f"{system}-fleet-{n:05d}-k"


def _cpu_seconds(pgids: list[int]) -> float:
    """User plus system CPU of every process in these process groups (a worker and its pool)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _lateness(client: Any, keys: FleetKeys, since: float, until: float) -> list[float]:
    """Start delays of claimed polls that began between ``since`` and ``until``."""
    out = []
    for raw in client.lrange(keys.lateness, 0, -1):
        at, task, late = raw.decode().split(" ")
        if task == POLL_CYCLE and since <= float(at) <= until:
            out.append(float(late))
    return out


def _used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, value: float, unit: str, target: str, ok: bool | None) -> None:
        self.rows.append({"figure": name, "value": value, "unit": unit, "target": target,
                          "ok": ok})  # fmt: skip
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name:<58} {value:>10.3f} {unit:<8} {target:<14} {mark}", flush=True)


def run(
    redis_url: str,
    workdir: Path,
    connections: int,
    idle_seconds: float,
    noisy: bool,
    noisy_bookings: int,
    noisy_seconds: float,
    concurrency: int,
) -> Figures:
    figures = Figures()
    tenants = {_key(n, "smk"): str(uuid.uuid4()) for n in range(connections)}
    sm8 = ServiceM8Simulator(tenants=tenants, seed=5).start()
    cd = CoredinationSimulator(api_keys=tuple(_key(n, "cdk") for n in range(connections)),
                               seed=5).start()  # fmt: skip
    secret_key = new_key()
    stack = Stack(workdir, redis_url, sm8, cd, BRIDGE_SECRET_KEYS=secret_key,
                  SERVICEM8_POLL_SECONDS=str(POLL_SECONDS),
                  COREDINATION_POLL_SECONDS=str(POLL_SECONDS),
                  STAFF_MATCH_SECONDS="900",  # the default (the harness's is for tests)
                  LOG_LEVEL="WARNING")  # fmt: skip
    keys = FleetKeys.for_deployment(stack.connection)
    registry = ConnectionRegistry(stack.client, SecretBox([secret_key]), keys=keys)
    ids = [f"fleet-{n:05d}" for n in range(connections)]
    noisy_sims: list[Any] = []
    try:
        before = _used_memory(stack.client)
        overrides = {"servicem8_poll_seconds": POLL_SECONDS,
                     "coredination_poll_seconds": POLL_SECONDS}  # fmt: skip
        print(f"registry: {connections} connections …", flush=True)
        for n, connection in enumerate(ids):
            registry.add(
                Connection(id=connection, servicem8_base_url=sm8.api_url(),
                           coredination_base_url=cd.api_url(), overrides=overrides),
                ConnectionSecrets(servicem8_api_key=_key(n, "smk"),
                                  coredination_api_key=_key(n, "cdk")),
            )  # fmt: skip
        beat = stack.beat()
        worker = stack.worker("w1", concurrency=concurrency)
        pgids = [beat.pid, worker.pid]

        # Warm-up: every connection polls a few times, so each pool process has built most
        # connections' runtimes (a process builds one at the first task it runs for it).
        started = time.time()
        print(f"warm-up: {WARM_UP_POLLS} polls per connection …", flush=True)

        def polled() -> bool:
            found = len(_lateness(stack.client, keys, 0, time.time()))
            return found >= WARM_UP_POLLS * connections

        eventually(polled, timeout=POLL_SECONDS * (WARM_UP_POLLS + 3) + connections * 0.2,
                   interval=2)  # fmt: skip
        print(f"  warm-up took {time.time() - started:.0f} s", flush=True)

        print(f"idle: {idle_seconds:.0f} s …", flush=True)
        t0, cpu0 = time.time(), _cpu_seconds(pgids)
        time.sleep(idle_seconds)
        t1, cpu1 = time.time(), _cpu_seconds(pgids)
        idle_late = _lateness(stack.client, keys, t0, t1)
        share = (cpu1 - cpu0) / (t1 - t0)
        memory = (_used_memory(stack.client) - before) / max(1, connections)
        print(f"idle fleet ({connections} connections, polls every {POLL_SECONDS} s, "
              f"{len(idle_late)} polls measured):", flush=True)  # fmt: skip
        idle_p99 = _percentile(idle_late, 99)
        figures.add("poll lateness p50", _percentile(idle_late, 50), "s", "", None)
        figures.add("poll lateness p99", idle_p99, "s", "<= 2", idle_p99 <= 2.0)
        figures.add("poll lateness max", max(idle_late, default=float("nan")), "s", "", None)
        figures.add("beat + worker CPU, share of one core", share, "cores", "<= 0.25",
                    share <= 0.25)  # fmt: skip
        figures.add("Redis memory per idle small connection", memory / 1024, "KiB", "", None)
        figures.add("polls measured", float(len(idle_late)), "", "", None)

        if noisy:
            _noisy(stack, registry, keys, figures, idle_p99, noisy_bookings, noisy_seconds,
                   noisy_sims)  # fmt: skip
        return figures
    finally:
        stack.stop()
        for connection in [*ids, NOISY]:
            Stores.connect(stack.client, connection).wipe()
        for key in stack.client.scan_iter(f"{keys.prefix}*"):
            stack.client.delete(key)
        stack.wipe()
        for sim in (sm8, cd, *noisy_sims):
            sim.stop()


def _noisy(stack: Stack, registry: ConnectionRegistry, keys: FleetKeys, figures: Figures,
           idle_p99: float, bookings: int, seconds: float,
           sims: list[Any]) -> None:  # fmt: skip
    sm8 = ServiceM8Simulator(api_keys=(NOISY_SM8_KEY,), seed=6).start()
    cd = CoredinationSimulator(api_keys=(NOISY_CD_KEY,), seed=6).start()
    sims += [sm8, cd]
    sm8.set_limits(per_minute=180)  # ServiceM8's limit, as the bridge's budget counts it
    jobs = max(1, bookings // 5)
    print(f"noisy: {bookings} bookings on {jobs} jobs …", flush=True)
    seed_business(sm8, cd, staff=20, jobs=jobs, allocations=bookings)
    registry.add(
        Connection(id=NOISY, servicem8_base_url=sm8.api_url(), coredination_base_url=cd.api_url(),
                   overrides={"servicem8_poll_seconds": POLL_SECONDS,
                              "coredination_poll_seconds": POLL_SECONDS}),
        ConnectionSecrets(servicem8_api_key=NOISY_SM8_KEY, coredination_api_key=NOISY_CD_KEY),
    )  # fmt: skip
    t0 = time.time()
    answered0 = sm8.counts_snapshot()["by_status"].get("200", 0)
    backfill = subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bridge", "-c", NOISY, "backfill"],
        env=stack.env, cwd=stack.tmp, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if backfill.returncode != 0:
        raise RuntimeError(f"backfill failed: {backfill.stderr[-500:]}")
    # A burst of webhooks for its bookings, queued as the receiver queues them (within the
    # connection's share: the rest wait in Redis).
    from bridge.connections.admission import Admission

    admission = Admission(stack.client, keys, limit=int(stack.env.get("CONNECTION_MAX_TASKS", 2)))
    enqueue = Enqueuer.for_broker(stack.env["REDIS_URL"], stack.connection, NOISY,
                                  admission.offer)  # fmt: skip
    burst = list(sm8.records["joballocation"])[: max(1, bookings // 10)]
    for uuid_ in burst:
        enqueue.send(WEBHOOK_SERVICEM8_ALLOCATION, [uuid_])
    print(f"  backfill queued in {time.time() - t0:.0f} s, {len(burst)} webhook tasks sent; "
          f"measuring {seconds:.0f} s …", flush=True)  # fmt: skip
    time.sleep(seconds)
    t1 = time.time()
    counts = sm8.counts_snapshot()["by_status"]
    answered = counts.get("200", 0) - answered0
    # The most a sliding 60-second window of 180 lets through in the period (the simulator's
    # limiter and the bridge's budget are both such windows).
    budget = 180 * math.ceil((t1 - t0) / 60)
    late = _lateness(stack.client, keys, t0, t1)
    others_p99 = _percentile(late, 99)
    rise = others_p99 / idle_p99 - 1 if idle_p99 > 0 else float("nan")
    print(f"one noisy connection ({len(late)} polls of the others measured):", flush=True)
    figures.add("others' poll lateness p99 with the noisy one", others_p99, "s", "", None)
    figures.add("others' p99 rise over idle", rise, "x", "<= 0.20", rise <= 0.20)
    figures.add("noisy: ServiceM8 requests answered / its budget", answered / budget, "",
                ">= 0.95", answered / budget >= 0.95)  # fmt: skip
    figures.add("noisy: 429 answers", float(counts.get("429", 0)), "", "0",
                counts.get("429", 0) == 0)  # fmt: skip


def main(
    connections: Annotated[int, typer.Option(help="Idle small connections.")] = 1000,
    idle_seconds: Annotated[float, typer.Option(help="How long the idle fleet is measured.")] = 120,
    noisy: Annotated[bool, typer.Option(help="Add one noisy connection afterwards.")] = True,
    noisy_bookings: Annotated[int, typer.Option(help="Its backfill's size.")] = 10_000,
    noisy_seconds: Annotated[float, typer.Option(help="How long it is measured.")] = 150,
    concurrency: Annotated[int, typer.Option(help="The worker's pool processes.")] = 4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures.")] = None,
) -> None:
    """Many connections in one deployment: idle cost, poll lateness, fairness to a noisy one."""
    from bench.__main__ import _redis
    from bridge.log import configure_logging

    configure_logging("WARNING", "console")
    servers: list[object] = []
    redis_url = _redis(servers)
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        figures = run(redis_url, workdir, connections, idle_seconds, noisy, noisy_bookings,
                      noisy_seconds, concurrency)  # fmt: skip
    finally:
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
    print(f"logs: {workdir}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures.rows, indent=1))
    if any(row["ok"] is False for row in figures.rows):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
