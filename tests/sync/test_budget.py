"""The shared budget on real Redis: moving windows, pauses, the bulk reserve, deferral."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.budget import Budget, Window, priority, servicem8_windows
from bridge.errors import BudgetExhausted
from bridge.http import Outcome


@pytest.fixture
def budget(redis_url, store):
    def make(windows, **kw):
        return Budget(redis_url=redis_url, store=store, windows={"servicem8": windows}, **kw)

    return make


def test_limit_holds_in_every_span_not_only_per_window(budget):
    """Hammer a 6-per-second budget for 2.5 s: no one-second span ever holds more than 6."""
    b = budget([Window("1s", 6, 1, margin=0)])
    admitted = []
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        try:
            b.before_call("servicem8")
            admitted.append(time.monotonic())
        except BudgetExhausted as exc:
            assert 0 < exc.retry_in <= 1.05
            time.sleep(0.01)
    assert len(admitted) >= 12  # it kept granting as the window moved
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 1.0) <= 6


def test_margin_widens_the_window(budget):
    b = budget([Window("1s", 2, 1, margin=1)])
    b.before_call("servicem8")
    b.before_call("servicem8")
    with pytest.raises(BudgetExhausted) as caught:
        b.before_call("servicem8")
    assert 1.5 < caught.value.retry_in <= 2.05


def test_every_window_must_have_room(budget):
    b = budget(servicem8_windows(per_minute=100, per_day=3))
    for _ in range(3):
        b.before_call("servicem8")
    with pytest.raises(BudgetExhausted, match="day"):
        b.before_call("servicem8")


def test_bulk_work_leaves_the_reserve_to_interactive_work(budget):
    b = budget([Window("minute", 10, 60)], bulk_reserve_share=0.3)
    token = priority.set("bulk")
    try:
        for _ in range(7):
            b.before_call("servicem8")
        with pytest.raises(BudgetExhausted, match="interactive"):
            b.before_call("servicem8")
    finally:
        priority.reset(token)
    for _ in range(3):  # interactive work still finds tokens
        b.before_call("servicem8")
    with pytest.raises(BudgetExhausted):
        b.before_call("servicem8")


def test_429_per_minute_pauses_the_whole_connection_then_resumes(budget, store):
    b = budget([Window("minute", 100, 60)])
    b.after_call("servicem8", Outcome("rate_limited", "per minute", "minute"))
    with pytest.raises(BudgetExhausted, match="paused") as caught:
        b.before_call("servicem8")
    assert 55 < caught.value.retry_in <= 61
    assert store.pause("servicem8")["kind"] == "rate_limited"
    store.clear_pause("servicem8")  # the pause expires by itself; here, at once
    b.before_call("servicem8")


def test_429_per_day_pauses_until_midnight_in_the_account_timezone(budget, store):
    sydney = ZoneInfo("Australia/Sydney")
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=sydney).timestamp()
    b = budget([Window("minute", 100, 60)], day_reset_tz=lambda: sydney, clock=lambda: noon)
    b.after_call("servicem8", Outcome("rate_limited", "per day", "day"))
    pause = store.pause("servicem8")
    assert pause["until"] - time.time() == pytest.approx(12 * 3600, abs=5)


def test_bad_credentials_pause_the_api_and_say_why(budget, store):
    b = budget([Window("minute", 100, 60)], auth_pause_seconds=300)
    b.after_call("servicem8", Outcome("auth", "HTTP 401: Authentication failed"))
    with pytest.raises(BudgetExhausted, match="401"):
        b.before_call("servicem8")
    assert store.pause("servicem8")["kind"] == "auth"


def test_deferred_work_is_handed_out_once_when_due(store):
    now = time.time()
    store.defer(now - 1, {"task": "bridge.sync.job", "args": ["a"]})
    store.defer(now + 3600, {"task": "bridge.sync.job", "args": ["b"]})
    assert [m["args"] for m in store.take_due(now)] == [["a"]]
    assert store.take_due(now) == []
    assert store.deferred_count() == 1
