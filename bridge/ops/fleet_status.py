"""What ``sm8cd status`` (without ``-c``) and ``/metrics`` show of a deployment's registry: every
connection's state and the fleet's aggregates (docs/connections.md#fleet-status). Reads Redis
only, one pipelined round trip per ``BATCH`` connections; makes no API call and decrypts no key.
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
from bridge.store.keys import Keys
from bridge.sync.context import SYSTEMS, polled

BATCH = 500
WORST = 5  # the connections /metrics names, per figure: the worst few, never all of them
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


@dataclass
class FleetStatus:
    connections: list[ConnectionRow] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    lateness_p99: float | None = None
    lateness_polls: int = 0

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
            "dead_letters": self.total("dead_letters"),
            "waiting": self.total("waiting"),
            "poll_lateness_p99_seconds": self.lateness_p99,
            "poll_lateness_polls": self.lateness_polls,
        }


def fleet_status(registry: ConnectionRegistry, now: float | None = None) -> FleetStatus:
    now = time.time() if now is None else now
    found, bad = registry.readable()
    status = FleetStatus(unreadable=bad)
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
        per = 4 + len(LANES)
        for n, connection in enumerate(chunk):
            dirty, dead, deferred, *waiting, polls = answers[n * per : (n + 1) * per]
            ages = [now - float(at) for at in polls if at]
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
                )
            )
    late = _recent_lateness(registry, now)
    status.lateness_polls = len(late)
    if late:
        status.lateness_p99 = sorted(late)[min(len(late) - 1, round(0.99 * (len(late) - 1)))]
    return status


def _recent_lateness(registry: ConnectionRegistry, now: float) -> list[float]:
    """How late the claimed polls of the last ``LATENESS_WINDOW`` seconds started."""
    out = []
    for raw in registry.r.lrange(registry.keys.lateness, 0, -1):
        at, task, late = (raw.decode() if isinstance(raw, bytes) else raw).split(" ")
        if float(at) < now - LATENESS_WINDOW:
            break  # newest first: the rest are older still
        if task == POLL_CYCLE:
            out.append(float(late))
    return out


def fleet_metrics(registry: ConnectionRegistry) -> list[Metric]:
    """The fleet for ``/metrics``: aggregates, and each per-connection figure for the ``WORST``
    connections only (a label per connection on every series would not scale). None while the
    registry is empty (one Redis command)."""
    if not registry.r.hlen(registry.keys.connections):
        return []
    fleet = fleet_status(registry)
    data = fleet.to_dict()
    out: list[Metric] = []
    states = GaugeMetricFamily("bridge_fleet_connections", "Registry connections by status.",
                               labels=["status"])  # fmt: skip
    for state in STATUSES:
        states.add_metric([state], data["by_status"].get(state, 0))
    out.append(states)
    for name, doc, value in (
        ("bridge_fleet_dead_letters", "Dead letters of every registry connection.",
         data["dead_letters"]),
        ("bridge_fleet_waiting_tasks", "Tasks waiting for a connection's slot on the lanes.",
         data["waiting"]),
        ("bridge_fleet_worst_poll_age_seconds", "The oldest last whole poll of an active "
         "connection.", data["worst_poll_age_seconds"]),
        ("bridge_fleet_poll_lateness_p99_seconds", "How late the fleet tick's claimed polls "
         "started, 99th percentile over the last 5 minutes.", data["poll_lateness_p99_seconds"]),
    ):  # fmt: skip
        if value is not None:
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            out.append(gauge)
    for figure, name, doc in (
        ("poll_age_seconds", "bridge_fleet_worst_connection_poll_age_seconds",
         "Last whole poll's age, for the connections where it is oldest."),
        ("dead_letters", "bridge_fleet_worst_connection_dead_letters",
         "Dead letters, for the connections with the most."),
    ):  # fmt: skip
        gauge = GaugeMetricFamily(name, doc + f" At most {WORST} connections.",
                                  labels=["connection"])  # fmt: skip
        for row in fleet.worst(figure):
            gauge.add_metric([row.id], float(getattr(row, figure)))
        out.append(gauge)
    return out
