"""``/healthz`` and ``/metrics`` are read at every scrape: each costs a fixed number of Redis
commands, however many links, workers and other keys the store holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.connection import Connection

from bridge.store.codec import id_bytes


class Commands:
    """Counts the Redis commands this process sends (pipelined ones one by one)."""

    def __init__(self) -> None:
        self.n = 0


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[Commands]:
    counter = Commands()
    single, many = Connection.send_command, Connection.pack_commands

    def send_command(self: Connection, *args: Any, **kwargs: Any) -> Any:
        counter.n += 1
        return single(self, *args, **kwargs)

    def pack_commands(self: Connection, commands: Any) -> Any:
        commands = list(commands)
        counter.n += len(commands)
        return many(self, commands)

    monkeypatch.setattr(Connection, "send_command", send_command)
    monkeypatch.setattr(Connection, "pack_commands", pack_commands)
    yield counter


def _links(stores: Any, n: int) -> None:
    """``n`` job records straight into the buckets (their bytes do not matter here), counted as
    a store written before the count existed would be."""
    buckets = stores.keys.job_buckets()
    with stores.redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            field = id_bytes(str(uuid.UUID(int=i + 1)))
            assert field is not None
            pipe.hset(buckets[i % len(buckets)], field, b"x")
            if i % 5000 == 4999:
                pipe.execute()
        pipe.execute()
    stores.redis.delete(stores.keys.links_count)
    assert stores.jobs.recount() == n


def _cost(web: Any, commands: Commands, path: str) -> int:
    before = commands.n
    assert web.get(path).status_code in (200, 503)
    return commands.n - before


def test_health_and_metrics_cost_the_same_with_ten_or_a_hundred_thousand_links(web, commands):
    stores = web.runtime.stores
    stores.activity.heartbeat("w1@host", time.time(), 30)
    _links(stores, 10)
    web.get("/metrics")  # scripts loaded, the account read: the steady state
    small = {path: _cost(web, commands, path) for path in ("/healthz", "/metrics")}
    _links(stores, 100_000)
    for i in range(200):  # more workers and unrelated keys: nothing scans them
        stores.activity.heartbeat(f"w{i}@host", time.time(), 30)
        stores.redis.set(stores.keys.key(f"unrelated:{i}"), "x")
    large = {path: _cost(web, commands, path) for path in ("/healthz", "/metrics")}
    print(f"\nRedis commands per scrape, 10 links → 100,000 links: {small} → {large}")
    assert large == small
    assert small["/healthz"] <= 7 and small["/metrics"] <= 42
    assert stores.jobs.count() == 100_000


def _lateness(web: Any, fleet: Any, n: int) -> None:
    """``n`` lateness entries, newest first, as ``ProcessFleet.note_lateness`` writes them."""
    from bridge.queues import POLL_CYCLE

    now = time.time()
    entries = [f"{now - i * 0.01:.3f} {POLL_CYCLE} {0.001 * (i % 900):.3f}" for i in range(n)]
    with web.runtime.redis.pipeline(transaction=False) as pipe:
        for i in range(0, n, 1000):
            pipe.rpush(fleet.keys.lateness, *entries[i : i + 1000])
        pipe.execute()


def test_health_and_metrics_cost_the_same_with_ten_or_two_thousand_connections(
    web, fleet, commands
):
    """The fleet's figures are kept by the fleet tick as it claims work; a scrape reads a fixed
    number of them, names at most five connections per figure, and the newest 1,000 lateness
    entries of the 20,000 kept, however many connections the registry holds."""
    stores = web.runtime.stores
    stores.activity.heartbeat("w1@host", time.time(), 30)
    stores.redis.set(stores.keys.beat_lock, "token", ex=30)
    fleet.add(9)
    fleet.add(1, polled_ago=2_000, prefix="stopped")  # its polls stopped: named in both
    fleet.watched_since(3_600)
    _lateness(web, fleet, 20_000)
    assert fleet.tick() == 11  # the environment's connection joined at the first tick
    web.get("/metrics")
    paths = ("/healthz", "/healthz/connections", "/metrics")
    small = {path: _cost(web, commands, path) for path in paths}
    assert web.get("/healthz").json()["stale_connections"] == 1

    fleet.add(1_990, prefix="more")
    fleet.watched_since(3_600)
    assert fleet.tick() == 2_001
    large = {path: _cost(web, commands, path) for path in paths}
    print(f"\nRedis commands per scrape, 10 → 2,000 connections: {small} → {large}")
    assert large == small
    assert small["/healthz"] <= 7 and small["/metrics"] <= 42
    text = web.get("/metrics").text
    assert 'bridge_fleet_connections{status="active"} 2001.0' in text
    assert "bridge_fleet_stale_connections 1.0" in text
    named = {line.split('connection="')[1].split('"')[0] for line in text.splitlines()
             if 'connection="' in line}  # fmt: skip
    assert len(named) <= 3 * 5  # three figures, at most five connections each
    assert web.get("/healthz").status_code == 200  # the deployment's parts answer
    assert web.get("/healthz/connections").status_code == 503  # one tenant's polls stopped
