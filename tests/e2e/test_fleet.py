"""Two connections on two ServiceM8 accounts in one deployment (docs/connections.md#shared-lanes):
one worker and one beat run both from the registry on the deployment's shared lanes, each within
its own account's budget, and no record crosses from one to the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.harness import Stack, book_and_wait, cd_resources, eventually, expected_resources
from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, new_key
from bridge.connections.models import Connection
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Simulator
from bridge.store import Stores
from bridge.store.keys import FleetKeys, budget_key
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days

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
    """A deployment with two registry connections added beside the environment's own account
    (the default simulators), which joins the registry at the worker's first task and keeps
    syncing."""
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
    own_biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=3, allocations=3)  # the environment's
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
    # Each account's bookings, and nothing else, reached its own Coredination; adding the two
    # registry connections stopped nothing of the environment's own.
    own_wanted = expected_resources(own_biz, connection_namespace(fleet_stack.connection))
    eventually(lambda: cd_resources(cd_sim) == own_wanted, timeout=60)
    assert not set(wanted["north"]) & set(wanted["south"])
    assert not set(own_wanted) & (set(wanted["north"]) | set(wanted["south"]))
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


def test_adding_a_connection_by_the_cli_leaves_the_environments_connection_syncing(
    tmp_path, redis_url, sm8_sim, cd_sim, accounts
):
    """The first start with the environment's keys alone, then `connections add` of a second
    account while it syncs: a booking made after the addition still reaches the first account's
    Coredination within its usual poll time, and the new connection syncs too."""
    import os
    import subprocess
    import sys

    from tests.conftest import CD_KEY, SM8_KEY

    stack = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
                  BRIDGE_SECRET_KEYS=new_key())  # fmt: skip
    added = f"{stack.connection}-north"
    try:
        biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
        stack.worker()
        stack.beat()
        ns = connection_namespace(stack.connection)
        eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns), timeout=60)

        north_sm8, north_cd = accounts["north"]
        seed_business(north_sm8, north_cd, staff=2, jobs=2, allocations=2)
        env = {**os.environ, **stack.env, "NORTH_SM8": KEYS["north"][0],
               "NORTH_CD": KEYS["north"][1]}  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "connections", "add", added,
             "--servicem8-base-url", north_sm8.api_url(),
             "--coredination-base-url", north_cd.api_url(),
             "--servicem8-api-key-env", "NORTH_SM8", "--coredination-api-key-env", "NORTH_CD"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

        took = book_and_wait(sm8_sim, cd_sim, biz, ns, days.stamp(13, 9), days.stamp(13, 11))
        print(f"\nthe environment's change reached Coredination in {took:.1f} s")
        eventually(lambda: len(north_cd.jobs) == 2, timeout=60)  # the new one syncs as well
    finally:
        stack.stop()
        Stores.connect(stack.client, added).wipe()
        keys = FleetKeys.for_deployment(stack.connection)
        stack.client.delete(keys.connections, keys.secrets, keys.due, keys.every)
        stack.wipe()
