"""The API budget belongs to the account the limit belongs to, not to one connection of ours:
ServiceM8 limits "per add-on per account" (docs/servicem8-api.md#limits)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import SecretStr

from bridge.errors import BudgetExhausted
from bridge.process.runtime import build
from bridge.simulators import ServiceM8Simulator
from tests.conftest import SM8_KEY


def connection(settings, redis_url, **changes):
    changed = settings.model_copy(
        update={
            "bridge_connection_id": f"acct{uuid.uuid4().hex[:8]}",
            "servicem8_rate_per_minute": 4,
            "budget_max_sleep_seconds": 0.0,
            **changes,
        }
    )
    return build(changed, redis_url)


@pytest.fixture
def runtimes():
    made = []
    yield made
    for rt in made:
        rt.stores.wipe()
        rt.close()


def test_two_connections_on_one_servicem8_account_share_one_budget(
    settings, redis_url, sm8_sim, runtimes
):
    first = connection(settings, redis_url, servicem8_rate_per_minute=5)
    second = connection(settings, redis_url, servicem8_rate_per_minute=5)
    runtimes += [first, second]
    for _ in range(4):  # the vendor read, then four: the account's five for the minute
        first.sm8.list_staff()
    assert first.budget.accounts("servicem8") == sm8_sim.vendor_uuid
    with pytest.raises(BudgetExhausted, match="minute budget spent"):
        second.sm8.list_staff()  # its vendor read tells the account, whose budget is spent
    assert second.budget.accounts("servicem8") == sm8_sim.vendor_uuid
    [minute, _] = second.budget.usage()["servicem8"]
    assert minute.used == 5  # the other connection's calls, seen from this one
    assert sm8_sim.count("GET", "staff.list") == 4  # nothing went past the shared limit
    assert sm8_sim.count() == 6  # and the second vendor read, the only call not checked


def test_a_connection_on_another_account_has_a_budget_of_its_own(
    settings, redis_url, sm8_sim, runtimes
):
    other_sim = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=8).start()
    try:
        first = connection(settings, redis_url)
        other = connection(settings, redis_url, servicem8_base_url=other_sim.api_url())
        runtimes += [first, other]
        for _ in range(3):  # with the vendor read: the account's four for the minute
            first.sm8.list_staff()
        other.sm8.list_staff()  # its own account: its own 180 a minute
        assert other.budget.accounts("servicem8") == other_sim.vendor_uuid != sm8_sim.vendor_uuid
    finally:
        other_sim.stop()


def test_the_account_comes_with_the_timezone_read_and_is_shown_without_a_call(
    settings, redis_url, sm8_sim, runtimes
):
    from bridge.ops.status import status

    rt = connection(settings, redis_url, servicem8_rate_per_minute=100)
    runtimes.append(rt)
    before = status(rt)["accounts"]["servicem8"]
    assert before.startswith("key-") and settings.servicem8_api_key.get_secret_value() not in before
    assert sm8_sim.count("GET", "vendor.list") == 0  # status made no call
    rt.sm8.list_staff()
    rt.sm8.list_staff()
    assert sm8_sim.count("GET", "vendor.list") == 1  # timezone and account in one read
    assert status(rt)["accounts"]["servicem8"] == sm8_sim.vendor_uuid
    configured = rt.settings.model_copy(update={"servicem8_timezone": "Australia/Sydney"})
    again = build(configured, redis_url)  # another process, the timezone configured
    runtimes.append(again)
    again.sm8.list_staff()
    assert sm8_sim.count("GET", "vendor.list") == 1  # the account was known: no read at all
    assert again.budget.accounts("servicem8") == sm8_sim.vendor_uuid
    # A process started later, the timezone not configured: both are known from Redis.
    later = build(rt.settings, redis_url)
    runtimes.append(later)
    later.sm8.list_staff()
    assert sm8_sim.count("GET", "vendor.list") == 1
    assert later.sm8.known_tz == rt.sm8.known_tz


def test_a_day_limit_answered_while_the_account_is_unknown_pauses_after_one_call(
    settings, redis_url, sm8_sim, runtimes
):
    """With the timezone configured the account is read on the first call; a 429 for the day
    on that very read must pause the API, not read the account again to learn the timezone."""
    from bridge.errors import RateLimited

    sm8_sim.set_limits(per_day=0)  # the day's budget already spent elsewhere
    rt = connection(settings, redis_url, servicem8_timezone="Australia/Sydney",
                    servicem8_rate_per_minute=100)  # fmt: skip
    runtimes.append(rt)
    with pytest.raises((RateLimited, BudgetExhausted)):
        rt.sm8.list_staff()
    assert sm8_sim.count() == 1
    assert rt.budget.pause("servicem8")["kind"] == "rate_limited"
    with pytest.raises(BudgetExhausted, match="paused"):
        rt.sm8.list_staff()
    assert sm8_sim.count() == 1


def test_bad_credentials_pause_that_key_not_the_account(settings, redis_url, sm8_sim, runtimes):
    from bridge.errors import AuthError

    sm8_sim.api_keys.add("second-key-7d41")
    first = connection(settings, redis_url, servicem8_rate_per_minute=100)
    second = connection(settings, redis_url, servicem8_rate_per_minute=100,
                        servicem8_api_key=SecretStr("second-key-7d41"))  # fmt: skip
    runtimes += [first, second]
    first.sm8.list_staff()
    second.sm8.list_staff()
    assert first.budget.accounts("servicem8") == second.budget.accounts("servicem8")
    sm8_sim.api_keys.discard("second-key-7d41")  # that key revoked
    with pytest.raises(AuthError):
        second.sm8.list_staff()
    with pytest.raises(BudgetExhausted, match="paused"):
        second.sm8.list_staff()
    first.sm8.list_staff()  # the other key on the same account goes on


def test_calls_counted_per_connection_before_accounts_count_once_the_account_is_known(
    settings, redis_url, sm8_sim, runtimes
):
    """An upgrade: the connection's budget of the layout before accounts is carried over."""
    import time

    rt = connection(settings, redis_url)
    runtimes.append(rt)
    now = time.time()
    legacy = rt.stores.keys.key("budget:servicem8:minute")
    rt.stores.redis.rpush(legacy, *[f"{now - i:.6f}" for i in range(3)])
    rt.stores.redis.expire(legacy, 120)
    with pytest.raises(BudgetExhausted, match="minute budget spent"):
        rt.sm8.list_staff()  # the vendor read is the 4th of 4: nothing else goes this minute
    assert sm8_sim.count() == 1 and sm8_sim.count("GET", "vendor.list") == 1
