"""Two connections on two ServiceM8 accounts in one deployment (docs/connections.md#shared-lanes):
one worker and one beat run both from the registry on the deployment's shared lanes, each within
its own account's budget, and no record crosses from one to the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.harness import Stack, cd_resources, eventually, expected_resources
from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, new_key
from bridge.connections.models import Connection
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Simulator
from bridge.store import Stores
from bridge.store.keys import FleetKeys, budget_key
from mappings.ids import cd_job_uuid, connection_namespace

pytestmark = pytest.mark.e2e

KEYS = {
    "north": ("smk-north-6a2d9f1c3e", "cdk-north-1e7b4c8a52"),
    "south": ("smk-south-3c8e1a7d94", "cdk-south-9d4f2b6e17"),
}
PER_MINUTE, WINDOW = 40, 10.0  # each account's limit: 40 calls per 10 s window


@pytest.fixture
def accounts() -> Iterator[dict[str, tuple[ServiceM8Simulator, CoredinationSimulator]]]:
    sims = {}
    for n, (name, (sm8_key, cd_key)) in enumerate(KEYS.items()):
        sm8 = ServiceM8Simulator(api_keys=(sm8_key,), seed=20 + n).start()
        sm8.set_limits(per_minute=PER_MINUTE, minute_window=WINDOW)
        sims[name] = (sm8, CoredinationSimulator(api_keys=(cd_key,), seed=20 + n).start())
    yield sims
    for sm8, cd in sims.values():
        sm8.stop()
        cd.stop()


@pytest.fixture
def fleet_stack(tmp_path, redis_url, sm8_sim, cd_sim, accounts) -> Iterator[Stack]:
    """A deployment whose environment's own account (the default simulators) is not in its
    registry: only the two registry connections may sync."""
    from tests.conftest import CD_KEY, SM8_KEY

    stack = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
                  BRIDGE_SECRET_KEYS=new_key(), SERVICEM8_RATE_PER_MINUTE=str(PER_MINUTE),
                  SERVICEM8_RATE_WINDOW_SECONDS=str(WINDOW))  # fmt: skip
    keys = FleetKeys.for_deployment(stack.connection)
    registry = ConnectionRegistry(stack.client, SecretBox([stack.env["BRIDGE_SECRET_KEYS"]]),
                                  keys=keys)  # fmt: skip
    for name, (sm8, cd) in accounts.items():
        sm8_key, cd_key = KEYS[name]
        registry.add(
            Connection(id=f"{stack.connection}-{name}", servicem8_base_url=sm8.api_url(),
                       coredination_base_url=cd.api_url()),
            ConnectionSecrets(servicem8_api_key=sm8_key, coredination_api_key=cd_key),
        )  # fmt: skip
    yield stack
    stack.stop()
    for name in accounts:
        Stores.connect(stack.client, f"{stack.connection}-{name}").wipe()
    stack.client.delete(keys.connections, keys.secrets, keys.due, keys.every)
    stack.wipe()


def test_two_accounts_sync_independently_in_one_deployment(fleet_stack, accounts, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=3, allocations=3)  # the environment's: left be
    wanted = {}
    for name, (sm8, cd) in accounts.items():
        biz = seed_business(sm8, cd, staff=3, jobs=6, allocations=10)
        wanted[name] = expected_resources(
            biz, connection_namespace(f"{fleet_stack.connection}-{name}")
        )
    fleet_stack.worker()
    fleet_stack.beat()
    for name, (_, cd) in accounts.items():
        eventually(lambda cd=cd, name=name: cd_resources(cd) == wanted[name], timeout=60)
    # Each account's bookings, and nothing else, reached its own Coredination.
    assert not set(wanted["north"]) & set(wanted["south"])
    assert not cd_sim.jobs and sm8_sim.count("GET", "joballocation.list") == 0
    for sm8, _ in accounts.values():
        assert sm8.counts_snapshot()["by_status"].get("429", 0) == 0
        assert sm8.write_count() == 0
    # Each within its own account's budget: one budget per vendor uuid.
    for sm8, _ in accounts.values():
        assert fleet_stack.client.exists(budget_key("servicem8", sm8.vendor_uuid, "day"))
    # A change on one account flows to its own Coredination only.
    north_sm8, north_cd = accounts["north"]
    row = next(iter(north_sm8.records["joballocation"].values()))
    north_sm8.update("joballocation", row["uuid"], {"active": 0})
    cd_job = cd_job_uuid(connection_namespace(f"{fleet_stack.connection}-north"), row["job_uuid"])
    south_before = cd_resources(accounts["south"][1])

    def taken_off() -> bool:
        job = north_cd.jobs[north_cd.by_uuid[cd_job]]
        return all(r["userId"] != _user(accounts["north"], row) for r in job["resources"])

    eventually(taken_off, timeout=30)
    assert cd_resources(accounts["south"][1]) == south_before


def _user(account: tuple[ServiceM8Simulator, CoredinationSimulator], row: dict[str, Any]) -> int:
    sm8, cd = account
    email = str(sm8.records["staff"][row["staff_uuid"]]["email"]).lower()
    return next(int(u["id"]) for u in cd.users.values() if str(u["email"]).lower() == email)
