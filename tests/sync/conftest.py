from __future__ import annotations

import json
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
