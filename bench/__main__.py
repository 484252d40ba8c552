"""``python -m bench [--quick] [--only NAME …]``: run the scenarios, print the table, write
``figures.json`` and the plots (skipped, with a notice, without matplotlib), exit 1 if any figure
misses its target."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bench.catalog import SCENARIOS
from bench.scenarios import Bench, Result

LOCAL_REDIS = "redis://127.0.0.1:6379/13"
console = Console()


def _redis(stack: list[object]) -> str:
    import os

    from bridge.redis.server import EmbeddedRedis, reachable

    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if reachable(LOCAL_REDIS):
        return LOCAL_REDIS
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start()
    stack.append(server)
    return server.url


def table(result: Result) -> Table:
    t = Table(title="ServiceM8 ⇄ Coredination bridge: benchmark", header_style="bold")
    for column in ("scenario", "figure", "value", "target", ""):
        t.add_column(column, justify="right" if column == "value" else "left")
    for f in result.figures:
        value = f"{f.value:,.3f}" if abs(f.value) < 10 else f"{f.value:,.1f}"
        mark = "" if f.ok is None else ("[green]ok[/]" if f.ok else "[red]MISSED[/]")
        t.add_row(f.scenario, f.name, f"{value} {f.unit}".strip(), f.target, mark)
    return t


def plots(result: Result, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    latencies = result.series.get("latencies_ms")
    if latencies:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(latencies, bins=40, color="#3a7ca5")
        ax.set_xlabel("webhook delivered → user scheduled in Coredination (ms)")
        ax.set_ylabel("allocations")
        ax.set_title("Latency at 5 webhooks/s")
        written.append(out / "latency.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    over_time = [
        (
            "freshness_latency",
            "Allocation changes (poll only): change → Coredination",
            "freshness.png",
        )
    ]
    over_time += [(f"burst_latency_{c}", f"Burst at 5 hints/s, {label}", f"burst-{name}.png")
                  for c, label, name in (("500", "hints gathered", "gathered"),
                                         ("0", "one read per hint", "one-read-each"))]  # fmt: skip
    for key, title, filename in over_time:
        series = result.series.get(key)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(series["t"], series["latency_s"], ".", color="#3a7ca5", markersize=3)
        ax.set_xlabel("seconds since the first change")
        ax.set_ylabel("seconds until it was in Coredination")
        ax.set_title(title)
        written.append(out / filename)
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    for strategy in ("shared", "celery-rate-limit"):
        series = result.series.get(f"calls_{strategy}")
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4))
        ok = [t for t, s in zip(series["t"], series["status"], strict=True) if s != 429]
        bad = [t for t, s in zip(series["t"], series["status"], strict=True) if s == 429]
        width = max(1.0, series["window"] / 15)
        end = max(series["t"], default=1.0) + width
        bins = [i * width for i in range(int(end / width) + 1)]
        ax.hist([ok, bad], bins=bins, stacked=True, color=["#3a7ca5", "#d1495b"],
                label=["answered", "429"])  # fmt: skip
        ax.axhline(series["limit"] / series["window"] * width, color="black", linestyle="--",
                   label="limit (average rate)")  # fmt: skip
        ax.set_xlabel("seconds since the backlog appeared")
        ax.set_ylabel(f"ServiceM8 requests per {width:.0f} s")
        ax.set_title("Shared Redis budget" if strategy == "shared"
                     else "Celery's per-worker rate_limit, four workers")  # fmt: skip
        ax.legend()
        written.append(out / f"requests-{strategy}.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return written


def main(
    quick: Annotated[
        bool, typer.Option(help="Small sizes: every scenario in well under 2 min.")
    ] = False,
    only: Annotated[
        list[str] | None, typer.Option(help=f"Run only these: {', '.join(SCENARIOS)}.")
    ] = None,
    skip: Annotated[list[str] | None, typer.Option(help="Run all but these.")] = None,
    out: Annotated[Path, typer.Option(help="Where figures.json and the plots go.")] = Path(
        "bench/out"
    ),
) -> None:
    """Measure the bridge on the real path and print every figure against its target."""
    from bridge.log import configure_logging

    configure_logging("WARNING", "console")
    names = [n for n in (only or list(SCENARIOS)) if n not in (skip or [])]
    unknown = (set(names) | set(skip or [])) - set(SCENARIOS)
    if unknown:
        console.print(f"error: unknown scenario {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    servers: list[object] = []
    redis_url = _redis(servers)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(redis_url, workdir, quick)
    started = time.monotonic()
    try:
        for name in names:
            t0 = time.monotonic()
            console.print(f"[bold]{name}[/] …", end=" ")
            try:
                SCENARIOS[name](bench)
            except Exception as exc:
                console.print(f"[red]failed[/]: {type(exc).__name__}: {exc}")
                console.print(f"  logs under {workdir / name}")
                bench.result.add(name, f"failed: {type(exc).__name__}", 0, "", ">= 1")
                continue
            console.print(f"{time.monotonic() - t0:.0f} s")
    finally:
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
    console.print(table(bench.result))
    console.print(f"{'quick' if quick else 'full'} run in {time.monotonic() - started:.0f} s")
    data = {
        "quick": quick,
        "figures": [vars(f) for f in bench.result.figures],
        "series": bench.result.series,
    }
    (out / "figures.json").write_text(json.dumps(data, indent=1))
    console.print(f"wrote {out / 'figures.json'}")
    if importlib.util.find_spec("matplotlib") is None:
        notice = "plots skipped: matplotlib is not installed (pip install -e '.[test]')"
        console.print(notice, markup=False)
    else:
        for path in plots(bench.result, out):
            console.print(f"wrote {path}")
    missed = [f for f in bench.result.figures if f.ok is False]
    if missed:
        console.print(f"[red]{len(missed)} figure(s) missed their target[/]")
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
