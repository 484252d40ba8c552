"""The task base class's handling of budget waits, run in-process against real Redis, on an app
the factory builds from this test's settings (no environment, no module reloads)."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import Retry

from bridge.errors import BudgetExhausted, Unconfirmed
from bridge.queues import MATCH_STAFF, SYNC_JOB


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


def test_the_tasks_runtime_comes_from_the_apps_settings(app):
    task = app.tasks[SYNC_JOB]
    assert task.runtime is app.bridge_runtime()
    # The environment's connection, as the registry holds it: the app's settings, keys included.
    settings, own = task.runtime.settings, app.bridge_settings()
    assert settings.bridge_connection_id == own.bridge_connection_id
    assert settings.servicem8_api_key == own.servicem8_api_key
    assert settings.servicem8_base_url == own.servicem8_base_url


def test_a_short_wait_is_a_countdown(app):
    with pytest.raises(Retry) as caught:
        _call(app.tasks[SYNC_JOB], BudgetExhausted("spent", api="servicem8", retry_in=3), "q")
    assert 3 <= caught.value.when <= 3.3


def test_budget_waits_are_not_counted_against_a_retry_limit(app):
    # Celery's default limit is 3: a fourth wait must still be a retry, not the error re-raised.
    with pytest.raises(Retry):
        _call(app.tasks[SYNC_JOB], BudgetExhausted("spent", api="servicem8", retry_in=3), "q",
              retries=50)  # fmt: skip


def test_a_wait_of_more_than_a_few_seconds_is_no_eta_message_but_deferred(app):
    """A countdown becomes an ETA message the worker holds outside its prefetch: a minute's wait
    for the budget goes to the deferred set instead."""
    stores = app.bridge_runtime().stores
    result, _ = _call(
        app.tasks[SYNC_JOB], BudgetExhausted("minute", api="servicem8", retry_in=40), "q"
    )
    assert result is None
    assert stores.redis.zcard(stores.keys.deferred) == 1


def test_a_long_wait_goes_to_the_deferred_set(app):
    stores = app.bridge_runtime().stores
    before = time.time()
    result, _ = _call(
        app.tasks[SYNC_JOB], BudgetExhausted("day", api="servicem8", retry_in=3600), "q"
    )
    assert result is None
    (message,) = stores.redis.zrange(stores.keys.deferred, 0, -1, withscores=True)
    payload, due = message
    assert b'"task":"bridge.sync.job"' in payload and b'"args":["job-1"]' in payload
    assert before + 3600 <= due <= time.time() + 3601


@pytest.mark.parametrize(
    ("routing_key", "expected"),
    [
        ("bridge.c.interactive", "interactive"),
        ("bridge.c.bulk", "bulk"),
        ("bridge.c.poll", "bulk"),
        ("bridge.c.sync", "normal"),
    ],
)
def test_priority_follows_the_queue(app, routing_key, expected):
    task = app.tasks[SYNC_JOB]
    with pytest.raises(Retry):
        _call(task, BudgetExhausted("x", api="servicem8", retry_in=1), routing_key)
    task.push_request(delivery_info={"routing_key": routing_key})
    try:
        assert task._priority() == expected
    finally:
        task.pop_request()


def test_a_staff_match_without_budget_waits_for_its_next_turn(app, monkeypatch):
    def spent():
        raise BudgetExhausted("spent", api="servicem8", retry_in=30)

    monkeypatch.setattr(app.bridge_runtime().engine, "match_staff", spent)
    task = app.tasks[MATCH_STAFF]
    task.push_request(id="task-2", args=[], kwargs={}, retries=0, called_directly=False,
                      delivery_info={"routing_key": "q"})  # fmt: skip
    try:
        assert task() is None  # no Retry raised: beat sends the next one
    finally:
        task.pop_request()


def test_a_write_whose_answer_was_lost_comes_back_no_sooner_than_its_settle_time(app, monkeypatch):
    """A retry of an unconfirmed DELETE starts from a read, and not before a DELETE still on its
    way could have landed: the settle time stands over the backoff's first short steps."""
    task = app.tasks[SYNC_JOB]

    def lost(*args, **kwargs):
        raise Unconfirmed("answer lost", settle=4.5, api="servicem8", operation="x.delete")

    monkeypatch.setattr(task, "run", lost)
    task.push_request(id="task-settle", args=["job-1"], kwargs={}, retries=0,
                      called_directly=False, delivery_info={"routing_key": "q"})  # fmt: skip
    try:
        with pytest.raises(Retry) as caught:
            task._run(["job-1"], {})
    finally:
        task.pop_request()
    assert caught.value.when >= 4.5
