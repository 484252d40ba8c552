"""What ``sm8cd status`` (without ``-c``), ``/healthz`` and ``/metrics`` show of a deployment's
registry (docs/connections.md#fleet-status).

- ``fleet_status``: every connection's row for ``sm8cd status``, one pipelined round trip per
  ``BATCH`` connections (a listing of every connection grows with them, and is read by hand).
- ``fleet_metrics`` and ``stale_connections``: what every scrape reads, a fixed number of Redis
  commands however many connections there are: the figures the fleet tick keeps as it works
  (``bridge.store.fleet_health``), ``WORST`` connections named per figure.

Reads Redis only; makes no API call and decrypts no key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from bridge.connections.admission import LANES
from bridge.connections.models import STATUSES
from bridge.connections.registry import ConnectionRegistry
from bridge.queues import POLL_CYCLE
from bridge.store.fleet_health import WORST, FleetFigures, FleetHealth, PollHealth
from bridge.store.keys import FleetKeys, Keys
from bridge.sync.context import SYSTEMS, polled

__all__ = ["WORST", "fleet_metrics", "fleet_status", "stale_connections"]

BATCH = 500
LATENESS_WINDOW = 300.0  # seconds of claimed polls the lateness figures cover


@dataclass
class ConnectionRow:
    id: str
    status: str
    reason: str | None
    label: str | None
    dirty: int = 0
    dead_letters: int = 0
    deferred: int = 0
    waiting: int = 0  # tasks waiting for one of its slots on the lanes
    poll_age_seconds: float | None = None  # the older of its two systems' last whole polls
    stale: bool | None = None  # past its allowance without a whole poll (None: not watched)


@dataclass
class FleetStatus:
    connections: list[ConnectionRow] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    lateness_p99: float | None = None
    lateness_polls: int = 0
    listed: int = 0  # readable connections in all (a page's rows are some of them)

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.connections:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def worst(self, figure: str, k: int = WORST) -> list[ConnectionRow]:
        """The ``k`` rows with the highest ``figure`` (rows without it left out)."""
        rows = [r for r in self.connections if (getattr(r, figure) or 0) > 0]
        return sorted(rows, key=lambda r: getattr(r, figure) or 0, reverse=True)[:k]

    def total(self, figure: str) -> int:
        return sum(int(getattr(r, figure) or 0) for r in self.connections)

    def to_dict(self) -> dict[str, Any]:
        active = [r.poll_age_seconds for r in self.connections
                  if r.status == "active" and r.poll_age_seconds is not None]  # fmt: skip
        return {
            "connections": [vars(r) for r in self.connections],
            "unreadable": self.unreadable,
            "by_status": self.by_status(),
            "worst_poll_age_seconds": max(active, default=None),
            "stale_connections": sum(1 for r in self.connections if r.stale),
            "dead_letters": self.total("dead_letters"),
            "waiting": self.total("waiting"),
            "poll_lateness_p99_seconds": self.lateness_p99,
            "poll_lateness_polls": self.lateness_polls,
        }


def fleet_status(
    registry: ConnectionRegistry, now: float | None = None, rows: slice | None = None
) -> FleetStatus:
    """Every connection's row, or with ``rows`` those of that slice of them by id (a page)."""
    now = time.time() if now is None else now
    found, bad = registry.readable()
    listed = len(found)
    if rows is not None:
        found = sorted(found, key=lambda c: c.id)[rows]
    health = FleetHealth(registry.r, registry.keys)
    status = FleetStatus(unreadable=bad, listed=listed)
    for start in range(0, len(found), BATCH):
        chunk = found[start : start + BATCH]
        with registry.r.pipeline(transaction=False) as pipe:
            for connection in chunk:
                keys = Keys(connection.id)
                pipe.hlen(keys.dirty)
                pipe.xlen(keys.dlq)
                pipe.zcard(keys.deferred)
                for lane in LANES:
                    pipe.llen(keys.admission_waiting(lane))
                pipe.hmget(keys.cursor, [polled(system) for system in SYSTEMS])
            answers = pipe.execute()
        stale_at = health.stale_at([c.id for c in chunk])
        per = 4 + len(LANES)
        for n, connection in enumerate(chunk):
            dirty, dead, deferred, *waiting, polls = answers[n * per : (n + 1) * per]
            ages = [now - float(at) for at in polls if at]
            due = stale_at[n] if connection.status == "active" else None
            status.connections.append(
                ConnectionRow(
                    id=connection.id,
                    status=connection.status,
                    reason=connection.reason,
                    label=connection.label,
                    dirty=int(dirty),
                    dead_letters=int(dead),
                    deferred=int(deferred),
                    waiting=sum(int(w) for w in waiting),
                    poll_age_seconds=round(max(ages), 1) if len(ages) == len(SYSTEMS) else None,
                    stale=None if due is None else due <= now,
                )
            )
    late = _recent_lateness(health.figures(now, STATUSES), now)
    status.lateness_polls = len(late)
    status.lateness_p99 = _p99(late)
    return status


def _recent_lateness(figures: FleetFigures, now: float) -> list[float]:
    """How late the claimed polls among the newest lateness entries started, those of the last
    ``LATENESS_WINDOW`` seconds."""
    return [late for at, task, late in figures.lateness
            if task == POLL_CYCLE and at >= now - LATENESS_WINDOW]  # fmt: skip


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def stale_connections(redis: Any, keys: FleetKeys, now: float | None = None) -> PollHealth:
    """The active connections with no whole poll within their allowance: how many, and the
    ``WORST`` most overdue by name (``/healthz``). Three or four Redis commands."""
    return FleetHealth(redis, keys).poll_health(time.time() if now is None else now)


def fleet_metrics(registry: ConnectionRegistry, now: float | None = None) -> list[Metric]:
    """The fleet for ``/metrics``: aggregates, and each per-connection figure for the ``WORST``
    connections only (a label per connection on every series would not scale). A fixed number
    of Redis commands, whatever the fleet's size (``FleetHealth.figures``). Every family is
    there, without a sample while its figure is unknown."""
    now = time.time() if now is None else now
    figures = FleetHealth(registry.r, registry.keys).figures(now, STATUSES)
    polls = figures.polls
    out: list[Metric] = []
    states = GaugeMetricFamily("bridge_fleet_connections", "Registry connections by status, as "
                               "the fleet tick last counted them.", labels=["status"])  # fmt: skip
    for state in STATUSES if figures.statuses else ():
        states.add_metric([state], figures.statuses.get(state, 0))
    out.append(states)
    oldest = figures.oldest[0][1] if figures.oldest else None
    for name, doc, value in (
        ("bridge_fleet_stale_connections", "Active connections with no whole poll of both "
         "systems within three times their longest poll interval (/healthz fails).",
         polls.stale),
        ("bridge_fleet_dead_letters", "Dead letters of the active connections.",
         figures.dead_letters),
        ("bridge_fleet_waiting_tasks", "Tasks waiting for a connection's slot on the lanes.",
         figures.waiting),
        ("bridge_fleet_worst_poll_age_seconds", "The oldest last whole poll of an active "
         "connection.", oldest),
        ("bridge_fleet_poll_lateness_p99_seconds", "How late the fleet tick's claimed polls "
         "started, 99th percentile over the newest ones of the last 5 minutes.",
         _p99(_recent_lateness(figures, now))),
    ):  # fmt: skip
        gauge = GaugeMetricFamily(name, doc)
        if value is not None:
            gauge.add_metric([], float(value))
        out.append(gauge)
    for name, doc, rows in (
        ("bridge_fleet_stale_connection_poll_age_seconds",
         "Seconds since the last whole poll, for the stale connections most overdue.",
         [(s.connection, s.polled_seconds_ago) for s in polls.named]),
        ("bridge_fleet_worst_connection_poll_age_seconds",
         "Last whole poll's age, for the connections where it is oldest.", figures.oldest),
        ("bridge_fleet_worst_connection_dead_letters",
         "Dead letters, for the connections with the most.", figures.most_dead_letters),
    ):  # fmt: skip
        gauge = GaugeMetricFamily(name, doc + f" At most {WORST} connections.",
                                  labels=["connection"])  # fmt: skip
        for connection, value in rows:
            gauge.add_metric([connection], float(value))
        out.append(gauge)
    return out
