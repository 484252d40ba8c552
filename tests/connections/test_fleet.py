"""Many connections in one deployment's workers (docs/connections.md#shared-lanes): a task names
its connection, the process builds that connection's runtime from the registry, and the fleet
tick claims each connection's periodic work from one sorted set."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, fleet, new_key
from bridge.connections.models import Connection
from bridge.connections.schedule import FleetSchedule, offset
from bridge.errors import ConnectionPaused
from bridge.queues import MATCH_STAFF, POLL_CYCLE, RELEASE_DEFERRED, SWEEP, queue_name
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Simulator
from bridge.store import Stores
from bridge.store.keys import FleetKeys
from mappings.ids import cd_job_uuid

OTHER_SM8_KEY = "smk-other-5d1e9a3c70"
OTHER_CD_KEY = "cdk-other-2b8f4e6a19"


@pytest.fixture
def schedule(redis_client: Any) -> Iterator[FleetSchedule]:
    keys = FleetKeys(prefix=f"b:fleettest{uuid.uuid4().hex[:8]}:")
    yield FleetSchedule(redis_client, keys)
    redis_client.delete(keys.due, keys.every)


def test_each_due_item_is_claimed_once_and_booked_for_its_next_time(schedule):
    work = {f"c{n}|{POLL_CYCLE}": 10.0 for n in range(20)}
    schedule.plan(work, now=1000.0)
    assert schedule.claim(1000.0 + 10) and schedule.claim(1000.0 + 10) == []  # taken once
    assert len(schedule.claim(1000.0 + 20.001)) == 20  # each once per interval
    assert schedule.claim(1000.0 + 20.001) == []


def test_connections_first_times_are_spread_over_the_interval(schedule):
    work = {f"conn-{n}|{POLL_CYCLE}": 60.0 for n in range(200)}
    schedule.plan(work, now=0.0)
    firsts = [len(schedule.claim(float(second))) for second in range(0, 61, 10)]
    assert sum(firsts) == 200
    assert max(firsts) <= 60  # no second where they all fall
    assert len({offset(f"conn-{n}", 60.0) for n in range(200)}) > 150


def test_a_connection_no_longer_planned_loses_its_items(schedule):
    schedule.plan({f"a|{POLL_CYCLE}": 5.0, f"b|{POLL_CYCLE}": 5.0, f"b|{SWEEP}": 5.0}, now=0.0)
    schedule.plan({f"a|{POLL_CYCLE}": 5.0}, now=1.0)
    assert schedule.size() == 1
    assert [(c.connection, c.task) for c in schedule.claim(100.0)] == [("a", POLL_CYCLE)]


# --- the workers' side: one app, two connections -------------------------------------------------
@pytest.fixture
def other_sm8() -> Iterator[ServiceM8Simulator]:
    sim = ServiceM8Simulator(api_keys=(OTHER_SM8_KEY,), seed=11).start()
    yield sim
    sim.stop()


@pytest.fixture
def other_cd() -> Iterator[CoredinationSimulator]:
    sim = CoredinationSimulator(api_keys=(OTHER_CD_KEY,), seed=11).start()
    yield sim
    sim.stop()


@pytest.fixture
def deployment(redis_url, redis_client, sm8_sim, cd_sim, monkeypatch) -> Iterator[Any]:
    """A deployment (its environment's connection on the default simulators) whose workers
    read their registry at every task."""
    from tasks.app import create_app
    from tests.conftest import CD_KEY, SM8_KEY

    monkeypatch.setattr(fleet, "REFRESH_SECONDS", 0.0)
    settings = load_settings(
        _env_file=None,
        redis_url=redis_url,
        bridge_connection_id=f"dep{uuid.uuid4().hex[:8]}",
        servicem8_api_key=SM8_KEY,
        servicem8_base_url=sm8_sim.api_url(),
        coredination_api_key=CD_KEY,
        coredination_base_url=cd_sim.api_url(),
        bridge_secret_keys=new_key(),
        # Tasks run in place here (``apply``) while those they queue stay queued: no share
        # limit gets in the way (tests/connections/test_admission.py has it).
        connection_max_tasks=100,
    )
    app = create_app(settings)
    yield app
    keys = FleetKeys.for_deployment(settings.bridge_connection_id)
    for *_, runtime in list(app._runtimes.values()):
        runtime.stores.wipe()
        runtime.close()
    redis_client.delete(keys.connections, keys.secrets, keys.due, keys.every)
    for key in redis_client.scan_iter(f"b:{settings.bridge_connection_id}:celery:*"):
        redis_client.delete(key)


def _registry(app: Any) -> ConnectionRegistry:
    settings = app.bridge_settings()
    return ConnectionRegistry(
        app.fleet().view.client,
        SecretBox.from_settings(settings),
        keys=FleetKeys.for_deployment(settings.bridge_connection_id),
    )


def _add_other(app: Any, sm8: ServiceM8Simulator, cd: CoredinationSimulator) -> str:
    connection = f"other{uuid.uuid4().hex[:6]}"
    _registry(app).add(
        Connection(
            id=connection,
            servicem8_base_url=sm8.api_url(),
            coredination_base_url=cd.api_url(),
        ),
        ConnectionSecrets(servicem8_api_key=OTHER_SM8_KEY, coredination_api_key=OTHER_CD_KEY),
    )
    return connection


def test_with_an_empty_registry_the_environment_is_the_one_connection(deployment):
    rt = deployment.bridge_runtime()
    own = deployment.bridge_settings().bridge_connection_id
    assert rt.connection == own and rt.lanes == own
    assert _registry(deployment).get(own).keys == "environment"  # it joined the registry
    with pytest.raises(ConnectionPaused, match="not in the registry"):
        deployment.bridge_runtime("nobody")


def test_a_registry_connection_runs_on_the_deployments_lanes_with_its_own_keys_and_store(
    deployment, other_sm8, other_cd
):
    own = deployment.bridge_settings().bridge_connection_id
    other = _add_other(deployment, other_sm8, other_cd)
    rt = deployment.bridge_runtime(other)
    assert rt.connection == other and rt.lanes == own
    assert rt.stores.keys.prefix == f"b:{other}:"
    assert rt.settings.servicem8_api_key.get_secret_value() == OTHER_SM8_KEY
    assert deployment.bridge_runtime(other) is rt  # built once
    # The environment's connection stays one of them: adding another never stops it.
    own_rt = deployment.bridge_runtime()
    assert own_rt.connection == own and own_rt.lanes == own
    assert own_rt.settings.servicem8_api_key.get_secret_value() != OTHER_SM8_KEY
    assert _registry(deployment).get(own).keys == "environment"


def test_a_task_for_a_connection_syncs_that_account_only_and_queues_its_syncs_by_name(
    deployment, redis_client, sm8_sim, cd_sim, other_sm8, other_cd
):
    own = deployment.bridge_settings().bridge_connection_id
    other = _add_other(deployment, other_sm8, other_cd)
    biz = seed_business(other_sm8, other_cd, staff=2, jobs=2, allocations=2)
    seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    deployment.tasks[POLL_CYCLE].apply(kwargs={"connection": other})
    queued = [json.loads(m) for m in redis_client.lrange(
        f"b:{own}:celery:{queue_name(own, 'sync')}", 0, -1)]  # fmt: skip
    assert {m["headers"]["kwargsrepr"] for m in queued} == {repr({"connection": other})}
    assert sm8_sim.count("GET", "joballocation.list") == 0  # the other account only
    for job in biz.jobs:
        deployment.tasks["bridge.sync.job"].apply(args=[job], kwargs={"connection": other})
    ns = deployment.bridge_runtime(other).engine.ctx.ns
    assert {cd_job_uuid(ns, job) for job in biz.jobs} <= set(other_cd.by_uuid)
    assert not cd_sim.by_uuid  # nothing crossed to the deployment's own account


def test_a_paused_connection_is_skipped_and_its_work_waits(deployment, other_sm8, other_cd):
    other = _add_other(deployment, other_sm8, other_cd)
    _registry(deployment).pause(other, "invoice unpaid")
    with pytest.raises(ConnectionPaused, match="invoice unpaid"):
        deployment.bridge_runtime(other)
    result = deployment.tasks[POLL_CYCLE].apply(kwargs={"connection": other})
    assert result.successful() and other_sm8.count("GET", "joballocation.list") == 0
    _registry(deployment).resume(other)
    deployment.tasks[POLL_CYCLE].apply(kwargs={"connection": other})
    assert other_sm8.count("GET", "joballocation.list") >= 1


def test_the_fleet_tick_claims_the_other_connections_periodic_work(
    deployment, other_sm8, other_cd, redis_client
):
    import time

    other = _add_other(deployment, other_sm8, other_cd)
    now = time.time()
    deployment.fleet_due(now)  # plans: first times spread within each interval
    due = deployment.fleet_due(now + 3600)
    own = deployment.bridge_settings().bridge_connection_id
    assert {c for c, _, _ in due} == {other, own}  # one scheduler: the environment's too
    # Idle: the sweep and the release of deferred work would find nothing, and are not queued.
    tasks = {task for c, task, _ in due if c == other}
    assert {POLL_CYCLE, MATCH_STAFF} <= tasks and not {SWEEP, RELEASE_DEFERRED} & tasks
    assert deployment.fleet_due(now + 3600) == []
    # With a job dirty and deferred work due, they are.
    stores = Stores.connect(redis_client, other)
    redis_client.hset(stores.keys.dirty, "job-1", 1)
    stores.work.defer(now, {"task": POLL_CYCLE})
    try:
        due = deployment.fleet_due(now + 7200)
        assert {SWEEP, RELEASE_DEFERRED} <= {task for _, task, _ in due}
    finally:
        stores.wipe()


def test_deferred_work_is_released_by_the_tick_when_due_not_by_asking_every_connection(
    deployment, other_sm8, other_cd, redis_client
):
    """The tick reads the deployment's index of deferred work: a connection's release is queued
    once its earliest deferred task falls due, taken from the index as it is queued; the release
    indexes again what it leaves. The per-connection release is a safety net a minute apart."""
    import time

    other = _add_other(deployment, other_sm8, other_cd)
    now = time.time()
    deployment.fleet_due(now)  # plans
    index = deployment.fleet().view.keys.deferred
    stores = Stores.connect(redis_client, other)
    stores.work.defer(now + 5, {"task": POLL_CYCLE, "args": ["soon"]}, index)
    stores.work.defer(now + 50, {"task": POLL_CYCLE, "args": ["later"]}, index)
    try:
        assert redis_client.zscore(index, other) == pytest.approx(now + 5)
        released = [c for c, task, _ in deployment.fleet_due(now + 1) if task == RELEASE_DEFERRED]
        assert other not in released
        released = [c for c, task, _ in deployment.fleet_due(now + 6) if task == RELEASE_DEFERRED]
        assert other in released and redis_client.zscore(index, other) is None
        taken = stores.work.take_due(now + 6, index=index)
        assert [m["args"] for m in taken] == [["soon"]]
        assert redis_client.zscore(index, other) == pytest.approx(now + 50)
    finally:
        stores.wipe()
        redis_client.zrem(index, other)


def test_new_keys_reach_the_workers_runtime_at_the_next_task(deployment, other_sm8, other_cd):
    import time

    other = _add_other(deployment, other_sm8, other_cd)
    before = deployment.bridge_runtime(other)
    same_second = _registry(deployment)
    same_second.clock = lambda: float(int(time.time()))  # within the second it was built
    same_second.set_secrets(other, servicem8_api_key="smk-rotated-7e3a1c9d54")
    after = deployment.bridge_runtime(other)
    assert after is not before
    assert after.settings.servicem8_api_key.get_secret_value() == "smk-rotated-7e3a1c9d54"


def test_one_unreadable_registry_entry_stops_no_other_connection(
    deployment, redis_client, other_sm8, other_cd
):
    other = _add_other(deployment, other_sm8, other_cd)
    keys = FleetKeys.for_deployment(deployment.bridge_settings().bridge_connection_id)
    redis_client.hset(keys.connections, "broken", json.dumps({"v": 99, "id": "broken"}))
    assert deployment.bridge_runtime(other).connection == other
    with pytest.raises(ConnectionPaused, match="unreadable"):
        deployment.bridge_runtime("broken")
    assert deployment.tasks[POLL_CYCLE].apply(kwargs={"connection": other}).successful()


def test_a_shortened_interval_takes_effect_at_once(schedule):
    schedule.plan({f"a|{POLL_CYCLE}": 3600.0}, now=0.0)
    schedule.plan({f"a|{POLL_CYCLE}": 60.0}, now=10.0)
    assert [(c.connection, c.task) for c in schedule.claim(10.0 + 60.0)] == [("a", POLL_CYCLE)]


def test_registry_connections_check_their_own_webhook_subscriptions(deployment):
    """Each registry connection's callback URLs carry its own token, derived from the
    deployment's: its health check posts and finds those, never the deployment's own."""
    from pydantic import SecretStr

    from bridge.connections.models import connection_webhook_token
    from bridge.ops.subscriptions import callback_urls
    from bridge.queues import CHECK_SUBSCRIPTIONS
    from tasks.app import periodic_work

    settings = deployment.bridge_settings().model_copy(
        update={
            "webhook_public_url": "https://bridge.example.com",
            "webhook_health_seconds": 60,
            "webhook_token": SecretStr("deployment-webhook-token-7d1"),
        }
    )
    assert periodic_work(settings)[CHECK_SUBSCRIPTIONS] == 60
    acme = Connection(id="acme").settings(settings)
    urls = callback_urls(acme)
    token = connection_webhook_token("deployment-webhook-token-7d1", "acme")
    assert urls["servicem8"] == f"https://bridge.example.com/webhooks/servicem8/{token}"
    assert "deployment-webhook-token-7d1" not in str(urls)
    own = Connection(id=settings.bridge_connection_id).settings(settings)
    assert own.webhook_token == settings.webhook_token  # the deployment's own keeps its token
