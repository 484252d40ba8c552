"""The shared budget on real Redis: moving windows, pauses, the bulk reserve, deferral."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.errors import BudgetExhausted, ScopeMissing
from bridge.http import Outcome
from bridge.http.accounts import AccountIds
from bridge.http.budget import Budget, Window, priority, servicem8_windows


class Clock:
    """Time as a parameter: the budget's clock and its sleep share it, so nothing really waits."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def accounts(store):
    """This test's own account, so no other test's budget is in view."""
    account = f"acct-{store.keys.connection}"
    store.activity.set_account("servicem8", account)
    return AccountIds(store.activity, {"servicem8": account, "coredination": account})


@pytest.fixture
def budget(store, clock, accounts):
    def make(windows, **kw):
        kw.setdefault("clock", clock)
        kw.setdefault("sleep", clock.sleep)
        return Budget(store=store.budget, accounts=accounts, windows={"servicem8": windows}, **kw)

    return make


def test_limit_holds_in_every_span_not_only_per_window(budget, clock):
    """Callers arriving every 50 ms for 5 s at 6 per second: no one-second span ever holds more
    than 6 calls, and calls go as soon as the window lets them (waits are slept, not deferred)."""
    b = budget([Window("1s", 6, 1, margin=0)], max_sleep=10)
    sent = []
    for i in range(100):
        clock.now = max(clock.now, 1_800_000_000.0 + i * 0.05)
        b.before_call("servicem8")
        sent.append(clock.now)
    for start in sent:
        assert sum(1 for t in sent if start <= t < start + 1.0) <= 6
    # Each call goes the moment the call six before it leaves the window: never later.
    for k, t in enumerate(sent):
        assert t - sent[0] == pytest.approx(k // 6 + (k % 6) * 0.05, abs=1e-4)


def test_a_wait_longer_than_the_sleep_limit_is_deferred_and_reserves_nothing(budget, clock, store):
    b = budget([Window("10s", 2, 10, margin=0)], max_sleep=2)
    b.before_call("servicem8")
    b.before_call("servicem8")
    with pytest.raises(BudgetExhausted, match="10s budget spent") as caught:
        b.before_call("servicem8")
    assert caught.value.retry_in == pytest.approx(10 - 1)  # back a little before the slot frees
    assert b.usage()["servicem8"][0].used == 2  # nothing reserved by the refusal
    clock.now += 8.5  # the slot frees in 1.5 s: reserve it and sleep until then
    b.before_call("servicem8")
    assert clock.slept == [pytest.approx(1.5)]


def test_margin_widens_the_window(budget, clock):
    b = budget([Window("1s", 2, 1, margin=0.25)], max_sleep=0)
    b.before_call("servicem8")
    b.before_call("servicem8")
    with pytest.raises(BudgetExhausted) as caught:
        b.before_call("servicem8")
    clock.now += 1.0
    with pytest.raises(BudgetExhausted):  # 1 s later is not enough: the window is 1.25 s
        b.before_call("servicem8")
    clock.now += 0.25
    b.before_call("servicem8")
    assert caught.value.retry_in == pytest.approx(1.25)


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
    for _ in range(3):  # interactive work still finds slots
        b.before_call("servicem8")
    with pytest.raises(BudgetExhausted):
        b.before_call("servicem8")


def test_usage_counts_the_calls_in_the_moving_window(budget, clock):
    b = budget([Window("minute", 10, 60, margin=1)])
    for _ in range(4):
        b.before_call("servicem8")
        clock.now += 20
    [usage] = b.usage()["servicem8"]
    assert (usage.used, usage.limit) == (3, 10)  # the first call is 80 s old: out of the window
    assert usage.frees_in == pytest.approx(61 - 60)


def test_429_per_minute_pauses_the_whole_connection_then_resumes(budget, store):
    b = budget([Window("minute", 100, 60)], clock=time.time)
    b.after_call("servicem8", Outcome("rate_limited", "per minute", "minute"))
    with pytest.raises(BudgetExhausted, match="paused") as caught:
        b.before_call("servicem8")
    assert 55 < caught.value.retry_in <= 61
    assert b.pause("servicem8")["kind"] == "rate_limited"
    store.budget.clear_pause("servicem8", b.accounts("servicem8"))  # it expires; here, at once
    b.before_call("servicem8")


def test_429_per_day_pauses_until_midnight_in_the_account_timezone(budget, store):
    sydney = ZoneInfo("Australia/Sydney")
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=sydney).timestamp()
    b = budget([Window("minute", 100, 60)], day_reset_tz=lambda: sydney, clock=lambda: noon)
    b.after_call("servicem8", Outcome("rate_limited", "per day", "day"))
    pause = b.pause("servicem8")
    assert pause["until"] - time.time() == pytest.approx(12 * 3600, abs=5)


def test_429_per_day_probes_at_utc_midnight_when_that_comes_first(budget, store):
    """Which midnight resets ServiceM8's day limit is not documented: the earlier one."""
    new_york = ZoneInfo("America/New_York")
    noon = datetime(2026, 11, 23, 12, 0, tzinfo=new_york).timestamp()  # 17:00 UTC
    b = budget([Window("minute", 100, 60)], day_reset_tz=lambda: new_york, clock=lambda: noon)
    b.after_call("servicem8", Outcome("rate_limited", "per day", "day"))
    assert b.pause("servicem8")["until"] - time.time() == pytest.approx(7 * 3600, abs=5)


def test_bad_credentials_pause_the_api_and_say_why(budget, store):
    b = budget([Window("minute", 100, 60)], auth_pause_seconds=300, clock=time.time)
    b.after_call("servicem8", Outcome("auth", "HTTP 401: Authentication failed"))
    with pytest.raises(BudgetExhausted, match="401"):
        b.before_call("servicem8")
    assert b.pause("servicem8")["kind"] == "auth"


def test_a_402_holds_the_api_for_hours_not_minutes(budget):
    b = budget([Window("minute", 100, 60)], auth_pause_seconds=300, clock=time.time)
    b.after_call("servicem8", Outcome("unpaid", "HTTP 402: Account not in good standing"))
    pause = b.pause("servicem8")
    assert pause["kind"] == "unpaid" and "held for 4 h" in pause["reason"]
    assert pause["until"] - time.time() == pytest.approx(4 * 3600, abs=5)


def test_refusals_of_one_record_or_of_webhooks_pause_nothing(budget):
    b = budget([Window("minute", 100, 60)], clock=time.time)
    for kind in ("forbidden", "webhooks_refused"):
        b.after_call("servicem8", Outcome(kind, "HTTP 403: Access forbidden."))
    assert b.pause("servicem8") is None
    b.before_call("servicem8", "job.get")


def test_a_missing_scope_blocks_that_operation_alone_and_says_which_scope(budget):
    b = budget([Window("minute", 100, 60)], clock=time.time)
    b.after_call("servicem8", Outcome("scope_missing", "HTTP 403: insufficient_scope",
                                      scope="manage_schedule",
                                      operation="jobactivity.create"))  # fmt: skip
    with pytest.raises(ScopeMissing, match="manage_schedule") as refused:
        b.before_call("servicem8", "jobactivity.create")  # refused unsent
    assert refused.value.scope == "manage_schedule"
    b.before_call("servicem8", "jobactivity.list")  # the rest goes on
    b.before_call("servicem8", "joballocation.create")
    assert b.pause("servicem8") is None
    (row,) = b.blocks("servicem8").values()
    assert row["scope"] == "manage_schedule"
    assert list(b.blocks("servicem8")) == ["jobactivity.create"]


def test_deferred_work_is_handed_out_once_when_due(store):
    now = time.time()
    store.work.defer(now - 1, {"task": "bridge.sync.job", "args": ["a"]})
    store.work.defer(now + 3600, {"task": "bridge.sync.job", "args": ["b"]})
    assert [m["args"] for m in store.work.take_due(now)] == [["a"]]
    assert store.work.take_due(now) == []
    assert store.work.deferred_count() == 1


def test_a_lists_later_pages_wait_for_their_window_instead_of_giving_up(
    budget, clock, settings, sm8_sim
):
    """A first poll of a large account reads more pages than a window allows: each page after
    the first waits in place for its slot (up to a minute), so the pages read are not thrown
    away and read again; the first page still defers at once, as any call does."""
    import uuid as uuidlib

    from bridge.servicem8 import ServiceM8Client

    b = budget([Window("10s", 2, 10, margin=0)], max_sleep=0.5)
    client = ServiceM8Client.from_settings(settings)
    client.transport.gate = b
    client.tz  # noqa: B018 - the account's timezone read first: it is a call too
    worked = [{"uuid": str(uuidlib.uuid4()), "activity_was_recorded": "1",
               "job_uuid": str(uuidlib.uuid4())} for _ in range(2_100)]  # fmt: skip
    sm8_sim.seed({"jobactivity": worked})
    clock.now += 20  # a fresh window
    started = clock.now
    assert len(list(client.iter_activities())) == 2_100  # three pages, two slots a window
    assert clock.now - started >= 9.5  # the third page waited for the window
    clock.now += 20
    b.before_call("servicem8")
    b.before_call("servicem8")  # the window spent by other work
    with pytest.raises(BudgetExhausted):  # a first page does not wait: its task defers
        list(client.iter_activities())
