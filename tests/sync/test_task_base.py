"""The task base class's handling of budget waits, run in-process against real Redis."""

from __future__ import annotations

import importlib
import sys
import time
import uuid

import pytest
from celery.exceptions import Retry

from bridge.errors import BudgetExhausted
from tests.conftest import CD_KEY, SM8_KEY


@pytest.fixture
def task_module(redis_url, monkeypatch, sm8_sim, cd_sim):
    connection = f"tb{uuid.uuid4().hex[:8]}"
    for key, value in {
        "REDIS_URL": redis_url, "BRIDGE_CONNECTION_ID": connection,
        "SERVICEM8_API_KEY": SM8_KEY, "SERVICEM8_BASE_URL": sm8_sim.api_url(),
        "COREDINATION_API_KEY": CD_KEY, "COREDINATION_BASE_URL": cd_sim.api_url(),
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    import tasks  # noqa: F401 - loads the submodules below

    # The settings are read when tasks.app is imported: reload it (and what uses it) under this
    # test's environment. ``tasks.app`` the attribute is the Celery app, so go by module name.
    for name in ("tasks.app", "tasks.base", "tasks.jobs"):
        importlib.reload(sys.modules[name])
    jobs = sys.modules["tasks.jobs"]
    yield jobs
    rt = sys.modules["tasks.base"].runtime()
    rt.store.wipe()
    rt.close()


def _call(task, exc, routing_key, retries=0):
    task.push_request(
        id="task-1",
        args=["job-1"],
        kwargs={},
        retries=retries,
        called_directly=False,
        delivery_info={"routing_key": routing_key},
    )
    try:
        return task._wait_for_budget(exc), task._priority()
    finally:
        task.pop_request()


def test_a_short_wait_is_a_countdown(task_module):
    with pytest.raises(Retry) as caught:
        _call(task_module.sync_job, BudgetExhausted("spent", api="servicem8", retry_in=5), "q")
    assert 5 <= caught.value.when <= 5.5


def test_budget_waits_are_not_counted_against_a_retry_limit(task_module):
    # Celery's default limit is 3: a fourth wait must still be a retry, not the error re-raised.
    with pytest.raises(Retry):
        _call(task_module.sync_job, BudgetExhausted("spent", api="servicem8", retry_in=5), "q",
              retries=50)  # fmt: skip


def test_a_long_wait_goes_to_the_deferred_set(task_module):
    store = task_module.runtime().store
    before = time.time()
    result, _ = _call(
        task_module.sync_job, BudgetExhausted("day", api="servicem8", retry_in=3600), "q"
    )
    assert result is None
    (message,) = store.r.zrange(store.key("deferred"), 0, -1, withscores=True)
    payload, due = message
    assert b'"task":"bridge.sync.job"' in payload and b'"args":["job-1"]' in payload
    assert before + 3600 <= due <= time.time() + 3601


@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("bridge.c.interactive", "interactive"),
        ("bridge.c.bulk", "bulk"),
        ("bridge.c.sync", "normal"),
    ],
)
def test_priority_follows_the_queue(task_module, routing_key, expected):
    with pytest.raises(Retry):
        _, _ = _call(
            task_module.sync_job, BudgetExhausted("x", api="servicem8", retry_in=1), routing_key
        )
    task = task_module.sync_job
    task.push_request(delivery_info={"routing_key": routing_key})
    try:
        assert task._priority() == expected
    finally:
        task.pop_request()


def test_a_staff_match_without_budget_waits_for_its_next_turn(task_module, monkeypatch):
    def spent():
        raise BudgetExhausted("spent", api="servicem8", retry_in=30)

    monkeypatch.setattr(task_module.runtime().engine, "match_staff", spent)
    task = task_module.match_staff
    task.push_request(id="task-2", args=[], kwargs={}, retries=0, called_directly=False,
                      delivery_info={"routing_key": "q"})  # fmt: skip
    try:
        assert task() is None  # no Retry raised: beat sends the next one
    finally:
        task.pop_request()
