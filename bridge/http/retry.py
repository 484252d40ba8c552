"""The retry policy, from the official ServiceM8 spec's ``x-speakeasy-retries``: on 5xx, 429,
timeouts and connection errors wait 0.5 s * 1.5^n, capped at 60 s, with jitter, until one hour has
passed since the first failure. 400/401/402/403/404/406 are never retried.

Pure: the clock and the jitter are parameters, so tests never sleep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

INITIAL = 0.5
EXPONENT = 1.5
MAX_INTERVAL = 60.0
MAX_ELAPSED = 3600.0


def full_jitter(delay: float) -> float:
    """A delay drawn from [delay/2, delay]: spread out, never much shorter than planned."""
    return random.uniform(delay / 2, delay)


def no_jitter(delay: float) -> float:
    return delay


@dataclass(frozen=True)
class RetryPolicy:
    initial: float = INITIAL
    exponent: float = EXPONENT
    max_interval: float = MAX_INTERVAL
    max_elapsed: float = MAX_ELAPSED
    jitter: Callable[[float], float] = full_jitter

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        return self.jitter(min(self.max_interval, self.initial * self.exponent**attempt))

    def next_delay(self, attempt: int, first_failure: float, now: float) -> float | None:
        """The wait before the next try, or ``None`` when the hour since the first failure is up."""
        delay = self.delay(attempt)
        if now + delay - first_failure > self.max_elapsed:
            return None
        return delay
