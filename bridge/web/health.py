"""``/healthz`` and ``/metrics``: what the deployment says of itself (docs/operations.md#health,
docs/operations.md#metrics).

Both are read at every scrape, so each costs a fixed number of Redis commands however many links,
workers and connections there are (``tests/sync/test_scrape_cost.py`` counts them): heartbeats
are one sorted set, the link count a counter, and the fleet's figures are kept by the fleet tick
as it works (``bridge.store.fleet_health``), not gathered from every connection's keys here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.connections import ConnectionRegistry, SecretBox
from bridge.ops.fleet_status import fleet_metrics, stale_connections
from bridge.process.runtime import Runtime
from bridge.store import ALIVE_SECONDS
from bridge.store.keys import FleetKeys


def health(
    runtime: Runtime, now: float | None = None, *, named: bool = True, connections: bool = False
) -> tuple[bool, dict[str, Any]]:
    """Redis reachable, beat holding its lock (so ticking), a worker heartbeat in the last
    ``ALIVE_SECONDS``, and no active connection stale: each one's last whole poll of both
    systems within three times its longest poll interval (``ProcessFleet.watch_polls``).
    ``stale_connections`` counts them all; with ``named`` (a caller /metrics would answer: the
    names are the operator's, like /metrics' figures) at most ``WORST`` are named with why.

    Healthy means the deployment's parts answer; a stale connection is reported but makes it
    unhealthy only with ``connections`` (``/healthz/connections``): one tenant's stopped polls
    must not take the receiver out of a load balancer, or restart it, for every tenant."""
    now = time.time() if now is None else now
    checks: dict[str, Any] = {}
    try:
        runtime.stores.activity.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure to answer is "down", whatever the client raised
        checks["redis"] = f"down ({type(exc).__name__})"
        return False, checks
    checks["beat"] = (
        "ok" if runtime.stores.activity.beat_alive() else "no beat holds the schedule lock"
    )
    alive = {
        w: t for w, t in runtime.stores.activity.live_workers().items() if now - t < ALIVE_SECONDS
    }
    checks["workers"] = len(alive)
    polls = stale_connections(runtime.redis, FleetKeys.for_deployment(runtime.lanes), now)
    if not polls.stale:
        checks["polls"] = f"ok ({polls.watched} connection(s) watched)"
    else:
        checks["polls"] = f"{polls.stale} active connection(s) with no whole poll in time" + (
            "" if named else " (named to the clients /metrics answers)"
        )
    checks["stale_connections"] = polls.stale
    if named:
        checks["stale"] = [{"connection": s.connection, "why": s.why(),
                            "polled_seconds_ago": s.polled_seconds_ago,
                            "allowed_seconds": s.allowed_seconds}
                           for s in polls.named]  # fmt: skip
    healthy = checks["beat"] == "ok" and bool(alive) and not (connections and polls.stale)
    return healthy, checks


class StatusCollector:
    """Prometheus metrics read from Redis at scrape time (every process's work shows, not only
    this one's). Makes no API call."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # The registry's public part only (no key is decrypted for metrics).
        keys = FleetKeys.for_deployment(runtime.lanes)
        self.fleet = ConnectionRegistry(runtime.redis, SecretBox(()), keys=keys)

    def collect(self) -> Sequence[Metric]:
        from bridge.ops.status import status

        data = status(self.runtime)
        gauges: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            gauges.append(g)

        gauge("bridge_links", "Linked ServiceM8 jobs.", data["links"])
        gauge("bridge_staff_mapped", "ServiceM8 staff mapped to Coredination users.",
              data["staff_mapped"])  # fmt: skip
        gauge("bridge_pending_mappings", "Pairs parked until their staff member is mapped.",
              data["pending"])  # fmt: skip
        gauge("bridge_dead_letters", "Operations given up on (sm8cd dlq list).",
              data["dead_letters"])  # fmt: skip
        gauge("bridge_deferred", "Tasks waiting for budget or a long retry.", data["deferred"])
        gauge("bridge_invalid_records", "Records an API returned that cannot be read, parked.",
              data["invalid_records"])  # fmt: skip
        gauge("bridge_dirty_jobs", "Jobs with changes not yet synced.", data["dirty_jobs"])
        # The same heartbeats and lock /healthz reads (see health()).
        activity, now = self.runtime.stores.activity, time.time()
        alive = sum(1 for t in activity.live_workers().values() if now - t < ALIVE_SECONDS)
        gauge("bridge_live_workers", f"Workers with a heartbeat in the last {ALIVE_SECONDS} s.",
              alive)  # fmt: skip
        gauge("bridge_beat_up", "1 while a beat holds the schedule lock (celery-redbeat), else 0.",
              1.0 if activity.beat_alive() else 0.0)  # fmt: skip
        lag = GaugeMetricFamily(
            "bridge_cursor_lag_seconds",
            "Seconds since the last complete poll of each system (its cursor covers changes up "
            "to then).",
            labels=["system"],
        )
        for system, age in data["poll_age_seconds"].items():
            if age is not None:
                lag.add_metric([system], age)
        gauges.append(lag)
        used = GaugeMetricFamily("bridge_budget_used", "API calls taken in the current window.",
                                 labels=["api", "window"])  # fmt: skip
        limit = GaugeMetricFamily("bridge_budget_limit", "API calls allowed per window.",
                                  labels=["api", "window"])  # fmt: skip
        for api, rows in data["budget"].items():
            for row in rows:
                used.add_metric([api, row["window"]], row["used"])
                limit.add_metric([api, row["window"]], row["limit"])
        gauges += [used, limit]
        paused = GaugeMetricFamily("bridge_api_paused", "1 while an API is paused (429, auth).",
                                   labels=["api"])  # fmt: skip
        for api in ("servicem8", "coredination"):
            paused.add_metric([api], 1.0 if api in data["paused"] else 0.0)
        gauges.append(paused)
        subscribed = GaugeMetricFamily(
            "bridge_webhook_subscription_active",
            "1 while ServiceM8 shows the bridge's subscription for the object active, 0 while it "
            "is deactivated or missing (read by the health check).",
            labels=["object"],
        )
        delivered = GaugeMetricFamily(
            "bridge_webhook_last_delivery_age_seconds",
            "Seconds since a webhook about the object last arrived.",
            labels=["object"],
        )
        for name, sub in data["subscriptions"].items():
            if sub["active"] is not None:
                subscribed.add_metric([name], 1.0 if sub["active"] else 0.0)
            if sub["last_delivery_seconds_ago"] is not None:
                delivered.add_metric([name], sub["last_delivery_seconds_ago"])
        gauges += [subscribed, delivered]
        syncs = CounterMetricFamily("bridge_sync", "Sync outcomes by direction.",
                                    labels=["direction", "outcome"])  # fmt: skip
        hooks = CounterMetricFamily("bridge_webhooks", "Webhook deliveries by source and result.",
                                    labels=["source", "result"])  # fmt: skip
        for name, value in sorted(data["counters"].items()):
            parts = name.split(".")
            if parts[0] == "webhook" and len(parts) == 3:
                hooks.add_metric(parts[1:], value)
            elif len(parts) == 2:
                syncs.add_metric(parts, value)
        return [*gauges, syncs, hooks, *fleet_metrics(self.fleet)]
