"""The x-speakeasy-retries schedule: 0.5 s x 1.5^n, capped at 60 s, for one hour at most."""

from __future__ import annotations

import pytest

from bridge.http.retry import RetryPolicy, full_jitter, no_jitter

EXACT = RetryPolicy(jitter=no_jitter)


def test_exact_intervals_without_jitter():
    assert [round(EXACT.delay(n), 4) for n in range(6)] == [
        0.5,
        0.75,
        1.125,
        1.6875,
        2.5312,
        3.7969,
    ]


def test_cap_at_sixty_seconds():
    assert EXACT.delay(11) == pytest.approx(43.2494, rel=1e-4)
    assert EXACT.delay(12) == 60.0
    assert EXACT.delay(40) == 60.0


def test_gives_up_once_an_hour_has_passed_since_the_first_failure():
    first = 1_000_000.0
    now, attempt, total = first, 0, 0.0
    while (delay := EXACT.next_delay(attempt, first, now)) is not None:
        now += delay
        total += delay
        attempt += 1
    assert total <= 3600.0
    assert total > 3600.0 - 60.0  # it used (nearly) the whole hour
    assert EXACT.next_delay(attempt, first, first + 3600.0) is None
    # 12 growing waits sum to 1.5^12 - 1 = 128.75 s; 57 waits of 60 s fit in the 3471.25 s left.
    assert attempt == 12 + 57


def test_jitter_stays_between_half_and_the_full_delay():
    for n in range(15):
        planned = EXACT.delay(n)
        for _ in range(20):
            assert planned / 2 <= RetryPolicy(jitter=full_jitter).delay(n) <= planned


def test_jitter_is_injectable():
    assert RetryPolicy(jitter=lambda d: d / 10).delay(0) == 0.05
