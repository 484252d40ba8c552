from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bridge.config import Settings
from bridge.process.runtime import build
from bridge.store import Stores
from bridge.sync import Engine, SyncContext
from bridge.web.app import create_app
from tests.conftest import CD_KEY, SM8_KEY


@pytest.fixture
def engine(store: Any, sm8: Any, cd: Any) -> Engine:
    return Engine(SyncContext(store, sm8, cd, store.jobs.ns))


# --- the webhook receiver over HTTP (FastAPI's test client), enqueues recorded -------------
TOKEN = "whk-test-61d0c9a4b7e2"
ALLOCATION = "3f0b9c1e-5a7d-4c2b-9e8f-1a2b3c4d5e6f"
JOB = "8d2e4f6a-1b3c-4d5e-8f9a-0b1c2d3e4f5a"


class Sent(list[tuple[str, list[str]]]):
    """The tasks the receiver queued (with ``countdowns`` beside, for the coalesced reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.countdowns: list[float | None] = []

    def __call__(self, task: str, args: list[str], *, countdown: float | None = None) -> None:
        self.append((task, args))
        self.countdowns.append(countdown)


def _web(redis_url: str, **overrides: Any) -> Iterator[Any]:
    settings = Settings(
        servicem8_api_key=SM8_KEY,
        coredination_api_key=CD_KEY,
        redis_url=redis_url,
        webhook_token=TOKEN,
        webhook_max_body_bytes=4096,
        bridge_connection_id=f"web{uuid.uuid4().hex[:8]}",
        _env_file=None,
        **overrides,
    )
    runtime = build(settings, redis_url)
    sent = Sent()
    # From loopback: /metrics answers only loopback while METRICS_TOKEN is unset.
    client = TestClient(create_app(settings, runtime, sent), client=("127.0.0.1", 50000))
    client.sent = sent  # type: ignore[attr-defined]
    client.runtime = runtime  # type: ignore[attr-defined]
    yield client
    runtime.stores.wipe()
    runtime.close()


@pytest.fixture
def web(redis_url: str) -> Iterator[Any]:
    """The receiver with one task queued per hint (HINT_COALESCE_MS=0)."""
    yield from _web(redis_url, hint_coalesce_ms=0)


@pytest.fixture
def gathering_web(redis_url: str) -> Iterator[Any]:
    """The receiver as deployed: ServiceM8 hints gathered, one reader per object and window."""
    yield from _web(redis_url, hint_coalesce_ms=500)


def documented(
    obj: str = "joballocation", uuid_: str = ALLOCATION, time: str = "2026-11-23 10:00:00"
):
    return {
        "object": obj,
        "entry": [{"uuid": uuid_, "changed_fields": ["staff_uuid"], "time": time}],
        "resource_url": f"https://api.servicem8.com/api_1.0/{obj}/{uuid_}.json",
    }


def post(web: TestClient, body: Any, *, token: str | None = TOKEN, source: str = "servicem8",
         content_type: str = "application/json") -> Any:  # fmt: skip
    url = f"/webhooks/{source}/{token}" if token is not None else f"/webhooks/{source}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return web.post(url, content=data, headers={"content-type": content_type})


@pytest.fixture
def cli_env(redis_url, sm8_sim, cd_sim, redis_client, monkeypatch, tmp_path):
    """The environment a ``bridge`` command reads, for a connection of its own against both
    simulators, in a scratch folder; the connection's keys are wiped afterwards."""
    connection = f"cli{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "BRIDGE_CONNECTION_ID": connection,
        "SERVICEM8_API_KEY": SM8_KEY,
        "SERVICEM8_BASE_URL": sm8_sim.api_url(),
        "COREDINATION_API_KEY": CD_KEY,
        "COREDINATION_BASE_URL": cd_sim.api_url(),
        "LOG_LEVEL": "WARNING",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    Stores.connect(redis_client, connection).wipe()


# --- a deployment's fleet as the fleet tick sees it (bridge/connections/process.py) ---------------
class Fleet:
    """Registry connections of the ``web`` fixture's deployment, their cursors, and the fleet
    tick's part that keeps their health figures (``ProcessFleet.due``): every poll cycle due is
    claimed and its connection observed."""

    def __init__(self, runtime: Any) -> None:
        from bridge.connections.process import ProcessFleet
        from bridge.store.keys import FleetKeys

        self.runtime = runtime
        self.keys = FleetKeys.for_deployment(runtime.lanes)
        self.process = ProcessFleet(runtime.settings, runtime.redis_url)
        self.ids: list[str] = [runtime.connection]  # the environment's joins at the first tick
        self.clock = time.time()
        self.polled(self.ids, self.clock - 20)

    def add(self, count: int, polled_ago: float = 20.0, *, prefix: str = "c") -> list[str]:
        """``count`` active connections, each last polled whole ``polled_ago`` s ago."""
        from bridge.connections import stored
        from bridge.connections.models import Connection

        ids = [f"{self.runtime.connection}-{prefix}{n:04d}" for n in range(count)]
        entries = {c: stored.encode(Connection(id=c)) for c in ids}
        self.runtime.redis.hset(self.keys.connections, mapping=entries)
        self.ids += ids
        self.polled(ids, time.time() - polled_ago)
        return ids

    def polled(self, ids: list[str], at: float) -> None:
        """Both systems of ``ids`` polled whole at ``at`` (as ``sync.cycle.poll_due`` records)."""
        from bridge.store.keys import Keys
        from bridge.sync.context import SYSTEMS, polled

        with self.runtime.redis.pipeline(transaction=False) as pipe:
            for connection in ids:
                pipe.hset(Keys(connection).cursor, mapping={polled(s): repr(at) for s in SYSTEMS})
            pipe.execute()

    def watched_since(self, seconds_ago: float) -> None:
        """As if the tick had been watching every connection for ``seconds_ago`` s (a connection
        is stale only after its allowance has passed since it was first watched)."""
        self.process.health.watch(
            {c: 900.0 for c in self.ids}, {"active": len(self.ids)}, time.time() - seconds_ago
        )

    def tick(self) -> int:
        """The fleet tick, a second further each time, until every active connection's poll
        cycle was claimed (and so observed) at least once: how many connections were."""
        from bridge.queues import POLL_CYCLE

        seen: set[str] = set()
        for _ in range(20):
            self.clock = max(self.clock + 1.0, time.time())
            found = self.process.due(self.clock, lambda _settings: {POLL_CYCLE: 1.0})
            seen |= {item.connection for item in found if item.task == POLL_CYCLE}
            active = {c.id for c in self.process.view.entries().values() if c.status == "active"}
            if active and active <= seen:
                break
        return len(seen)

    def wipe(self) -> None:
        from bridge.store.keys import Keys

        redis = self.runtime.redis
        fleet_keys = list(redis.scan_iter(match=self.keys.prefix + "*", count=1000))
        own = [key for c in self.ids for key in (Keys(c).cursor, Keys(c).dlq)]
        for i in range(0, len(fleet_keys + own), 500):
            redis.delete(*(fleet_keys + own)[i : i + 500])
        self.process.view.client.close()


@pytest.fixture
def fleet(web: Any) -> Iterator[Fleet]:
    made = Fleet(web.runtime)
    yield made
    made.wipe()
