"""The simulators' limits and faults, seen through the clients' error tree."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from bridge.errors import AuthError, RateLimited, Unavailable
from bridge.http import Transport
from bridge.servicem8 import ServiceM8Client


def _no_retry(client: ServiceM8Client) -> ServiceM8Client:
    client.transport.quick_retries = 0
    return client


@pytest.mark.parametrize("body", ["text", "json"])
def test_minute_limit_answers_429_like_servicem8(sm8, sm8_sim, body):
    sm8_sim.rate_limit_body = body
    sm8_sim.set_limits(per_minute=3, minute_window=60)
    for _ in range(3):
        sm8.vendor()
    with pytest.raises(RateLimited) as caught:
        sm8.vendor()
    assert caught.value.window == "minute" and caught.value.status == 429
    assert sm8_sim.statuses[429] == 1


def test_day_limit_is_told_apart(sm8, sm8_sim):
    sm8_sim.set_limits(per_day=2)
    sm8.vendor()
    sm8.vendor()
    with pytest.raises(RateLimited) as caught:
        sm8.vendor()
    assert caught.value.window == "day"


def test_sliding_window_never_passes_the_limit_in_any_span(sm8_sim):
    from bridge.simulators.base import Limits, SlidingLimiter

    limiter, limits = SlidingLimiter(), Limits(per_minute=10, minute_window=1.0)
    admitted = [t / 100 for t in range(300) if limiter.admit(t / 100, limits) is None]
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + 1.0) <= 10


def test_burst_429_then_recovers(sm8, sm8_sim):
    sm8_sim.set_faults(burst_429=2)
    for _ in range(2):
        with pytest.raises(RateLimited):
            sm8.vendor()
    assert sm8.vendor().name


def test_server_errors_and_resets_are_unavailable(sm8, sm8_sim):
    _no_retry(sm8)
    sm8_sim.set_faults(error_rate=1.0, error_status=503)
    with pytest.raises(Unavailable, match="503"):
        sm8.vendor()
    sm8_sim.set_faults(error_rate=0.0, reset_rate=1.0)
    with pytest.raises(Unavailable, match="connection"):
        sm8.vendor()


def test_slow_response_past_the_read_timeout_is_unavailable(sm8, sm8_sim):
    _no_retry(sm8)
    sm8.transport.timeout = (1.0, 0.3)
    sm8_sim.set_faults(timeout_rate=1.0, timeout_seconds=0.6)
    with pytest.raises(Unavailable, match="timeout"):
        sm8.vendor()


def test_quick_retry_rides_over_one_failure(sm8, sm8_sim):
    sleeps: list[float] = []
    sm8.transport.sleep = sleeps.append
    sm8_sim.set_faults(error_rate=1.0)
    calls = {"n": 0}
    original = sm8_sim._api_call

    def heal_after_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            sm8_sim.set_faults(error_rate=0.0)
        return original(*args, **kwargs)

    sm8_sim._api_call = heal_after_first
    assert sm8.vendor().name
    assert sleeps == [0.5]


def test_bad_key_is_auth_error(settings):
    client = ServiceM8Client.from_settings(
        settings.model_copy(update={"servicem8_api_key": SecretStr("nope")})
    )
    with pytest.raises(AuthError):
        client.vendor()


def test_admin_counts_by_endpoint(sm8, sm8_sim):
    sm8.vendor()
    list(sm8.iter_allocations())
    snap = sm8_sim.counts_snapshot()
    assert snap["by_endpoint"] == {"GET vendor.list": 1, "GET joballocation.list": 1}
    assert snap["reads"] == 2 and snap["writes"] == 0


def test_every_request_passes_the_gate(settings, sm8_sim):
    calls: list[tuple[str, str]] = []

    class Gate:
        def before_call(self, api, operation=""):
            calls.append(("before", api))

        def after_call(self, api, outcome):
            calls.append((outcome.kind, api))

    client = ServiceM8Client.from_settings(settings, gate=Gate())
    assert isinstance(client.transport, Transport)
    client.vendor()
    assert calls == [("before", "servicem8"), ("ok", "servicem8")]


def test_a_calendar_day_restarts_at_its_start_and_a_rolling_one_a_day_later():
    from bridge.simulators.base import Limits, SlidingLimiter

    limits = Limits(per_day=2)
    calendar, rolling = SlidingLimiter(), SlidingLimiter()
    for limiter, day_start in ((calendar, 0.0), (rolling, None)):
        assert [limiter.admit(t, limits, day_start) for t in (100.0, 200.0, 300.0)] == [
            None,
            None,
            "day",
        ]
    assert calendar.admit(1_000.0, limits, 1_000.0) is None  # a new day began at 1,000
    assert rolling.admit(1_000.0, limits) == "day"
    assert rolling.admit(86_500.0, limits) is None  # the first request has left the window
