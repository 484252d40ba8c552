"""The fleet's status (bridge/ops/fleet_status.py): every connection's state and the aggregates, in
``sm8cd status`` without ``-c`` and in ``/metrics``, with a bounded number of labels."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from bridge.connections.admission import LANES
from bridge.connections.models import Connection
from bridge.ops.fleet_status import WORST, fleet_metrics, fleet_status
from bridge.queues import POLL_CYCLE
from bridge.store import Stores
from bridge.store.fleet_health import FleetHealth
from bridge.store.keys import Keys
from bridge.sync.context import SYSTEMS, polled
from tests.connections.conftest import CD_KEY, SM8_KEY
from tests.connections.test_cli import Runs


def _fill(registry: Any, redis_client: Any, count: int) -> list[str]:
    from bridge.connections import ConnectionSecrets

    ids = [f"fs{n:02d}" for n in range(count)]
    secrets = ConnectionSecrets(servicem8_api_key=SM8_KEY, coredination_api_key=CD_KEY)
    for connection in ids:
        registry.add(Connection(id=connection), secrets)
    now = time.time()
    for n, connection in enumerate(ids):
        keys = Keys(connection)
        # Connection n polled n minutes ago, has n dead letters and one dirty job.
        redis_client.hset(keys.cursor, mapping={"polled:servicem8": now - 60 * n,
                                                "polled:coredination": now - 30})  # fmt: skip
        for m in range(n):
            redis_client.xadd(keys.dlq, {"task": "t", "n": str(m)})
        redis_client.hset(keys.dirty, "job-1", 1)
    return ids


def _wipe(redis_client: Any, ids: list[str]) -> None:
    for connection in ids:
        Stores.connect(redis_client, connection).wipe()


def test_the_fleet_shows_each_connection_and_the_worst(registry, redis_client):
    ids = _fill(registry, redis_client, 8)
    try:
        registry.pause(ids[1], "customer asked")
        redis_client.rpush(Keys(ids[2]).key("admission:waiting:bulk"), "{}", "{}")
        now = time.time()
        for late in (0.1, 0.2, 3.0):
            redis_client.lpush(registry.keys.lateness, f"{now:.3f} {POLL_CYCLE} {late}")
        fleet = fleet_status(registry)
        data = fleet.to_dict()
        assert data["by_status"] == {"active": 7, "paused": 1}
        assert [r.reason for r in fleet.connections if r.status == "paused"] == ["customer asked"]
        assert data["dead_letters"] == sum(range(8)) and data["waiting"] == 2
        assert 60 * 7 - 5 < data["worst_poll_age_seconds"] < 60 * 7 + 5
        assert data["poll_lateness_p99_seconds"] == 3.0 and data["poll_lateness_polls"] == 3
        assert [r.id for r in fleet.worst("dead_letters", 3)] == [ids[7], ids[6], ids[5]]
    finally:
        _wipe(redis_client, ids)
        redis_client.delete(registry.keys.lateness)


def _observed(registry: Any, redis_client: Any, ids: list[str], now: float) -> FleetHealth:
    """What the fleet tick keeps (``ProcessFleet.watch_polls``): every connection watched for an
    hour, with an allowance of 900 s, and observed now."""
    health = FleetHealth(redis_client, registry.keys, lanes=LANES,
                         poll_fields=[polled(system) for system in SYSTEMS])  # fmt: skip
    active = {c.id: 900.0 for c in registry.list() if c.status == "active"}
    health.watch(active, {"active": len(active), "paused": len(ids) - len(active)}, now - 3600)
    health.observe({c: 900.0 for c in ids if c in active}, now)
    return health


def _scrape(registry: Any) -> str:
    class Collector:
        def collect(self) -> Any:
            return fleet_metrics(registry)

    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(Collector())
    return generate_latest(scrape).decode()


def test_metrics_name_at_most_the_worst_few_connections(registry, redis_client):
    ids = _fill(registry, redis_client, 20)
    try:
        _observed(registry, redis_client, ids, time.time())
        text = _scrape(registry)
        assert 'bridge_fleet_connections{status="active"} 20.0' in text
        assert f"bridge_fleet_dead_letters {float(sum(range(20)))}" in text
        # Polled 15 minutes ago or more: connections 15 to 19, the oldest named first.
        assert "bridge_fleet_stale_connections 5.0" in text
        named = {line.split('connection="')[1].split('"')[0] for line in text.splitlines()
                 if 'connection="' in line}  # fmt: skip
        assert 0 < len(named) <= 3 * WORST  # three figures, the worst few each
        assert ids[19] in named and ids[1] not in named
        assert f'bridge_fleet_worst_connection_dead_letters{{connection="{ids[19]}"}} 19.0' in text
    finally:
        _wipe(redis_client, ids)
        _forget(redis_client, registry)


def test_the_figures_follow_the_connections_and_forget_those_no_longer_active(
    registry, redis_client
):
    ids = _fill(registry, redis_client, 4)
    try:
        now = time.time()
        health = _observed(registry, redis_client, ids, now)
        redis_client.rpush(Keys(ids[1]).key("admission:waiting:bulk"), "{}", "{}", "{}")
        health.observe({ids[1]: 900.0}, now)
        figures = health.figures(now, ["active", "paused"])
        assert (figures.dead_letters, figures.waiting) == (0 + 1 + 2 + 3, 3)
        assert figures.most_dead_letters == ((ids[3], 3), (ids[2], 2), (ids[1], 1))
        assert figures.polls.watched == 4 and figures.polls.stale == 0
        # ids[3] paused: it is no longer watched, its figures leave the totals.
        health.watch({c: 900.0 for c in ids[:3]}, {"active": 3, "paused": 1}, now)
        figures = health.figures(now, ["active", "paused"])
        assert (figures.dead_letters, figures.waiting, figures.polls.watched) == (3, 3, 3)
        assert figures.statuses == {"active": 3, "paused": 1}
        redis_client.delete(Keys(ids[1]).key("admission:waiting:bulk"))
        health.observe({ids[1]: 900.0}, now)
        assert health.figures(now, ["active"]).waiting == 0
        # A whole poll never moves back: an older stamp read later changes nothing.
        redis_client.hset(Keys(ids[0]).cursor, "polled:servicem8", now - 5000)
        health.observe({ids[0]: 900.0}, now + 10)
        assert health.poll_health(now + 10).stale == 0
        assert health.poll_health(now + 901).stale == 3
    finally:
        _wipe(redis_client, ids)
        _forget(redis_client, registry)


def _forget(redis_client: Any, registry: Any) -> None:
    k = registry.keys
    redis_client.delete(k.polled, k.stale_at, k.dead_letters, k.health, k.lateness)


def test_status_without_c_shows_the_fleet(fleet_env, registry, redis_client):
    ids = _fill(registry, redis_client, 3)
    try:
        registry.pause(ids[0], "billing")
        shown = Runs()("status").output
        assert "fleet 3 connection(s): 2 active, 1 paused" in shown
        assert "billing" in shown and all(i in shown for i in ids)
    finally:
        _wipe(redis_client, ids)


def test_an_empty_registry_has_every_fleet_family_and_names_no_connection(registry):
    text = _scrape(registry)
    assert "bridge_fleet_stale_connections 0.0" in text
    assert "# TYPE bridge_fleet_connections gauge" in text
    assert "bridge_fleet_connections{" not in text and 'connection="' not in text
