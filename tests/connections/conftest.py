"""Fixtures of the connection registry: Fernet keys, a registry of its own under a key prefix of
its own on the test Redis (wiped afterwards), and the environment a ``sm8cd connections``
command reads."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, new_key
from bridge.store.keys import FleetKeys

SM8_KEY = "sm8-acme-7f3e91c2d4"
CD_KEY = "cd-acme-5b8a20e6f1"
ENV_SM8_KEY = "sm8-env-4c1d9e7a02"
ENV_CD_KEY = "cd-env-9e2f6b3c81"
ACCESS = "sm8-access-2d7c4b9e1a"
REFRESH = "sm8-refresh-8a1f5c3d70"


@pytest.fixture(scope="session")
def key() -> str:
    return new_key()


@pytest.fixture
def box(key: str) -> SecretBox:
    return SecretBox([key])


@pytest.fixture
def fleet_keys(redis_client: Any) -> Iterator[FleetKeys]:
    keys = FleetKeys(prefix=f"b:fleettest{uuid.uuid4().hex[:8]}:")
    yield keys
    redis_client.delete(keys.connections, keys.secrets)


@pytest.fixture
def registry(redis_client: Any, box: SecretBox, fleet_keys: FleetKeys) -> ConnectionRegistry:
    return ConnectionRegistry(redis_client, box, keys=fleet_keys)


@pytest.fixture
def keys_of_acme() -> ConnectionSecrets:
    return ConnectionSecrets(servicem8_api_key=SM8_KEY, coredination_api_key=CD_KEY)


@pytest.fixture
def fleet_env(
    redis_url: str, fleet_keys: FleetKeys, key: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> dict[str, str]:
    """What a ``sm8cd connections`` command reads, in a scratch folder (no stray ``.env``), with
    the registry under the test's own prefix."""
    import bridge.cli.base as base
    import bridge.cli.connections as cli

    for name in list(os.environ):
        if name.startswith(("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "SERVICEM8_API_KEY": ENV_SM8_KEY,
        "COREDINATION_API_KEY": ENV_CD_KEY,
        "BRIDGE_SECRET_KEYS": key,
        "LOG_LEVEL": "DEBUG",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def registry(
        redis: Any, box: SecretBox, keys: Any = None, environment: Any = None
    ) -> ConnectionRegistry:
        # the test's own keys, not ``keys``
        return ConnectionRegistry(redis, box, keys=fleet_keys, environment=environment)

    monkeypatch.setattr(cli, "ConnectionRegistry", registry)
    monkeypatch.setattr(base, "ConnectionRegistry", registry)
    return env
