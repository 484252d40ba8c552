"""The shared API budget: every HTTP call, from any worker process on any host, takes a token from
Redis first (ARCHITECTURE section 2). Implements ``bridge.http.CallGate``.

- Windows are *moving* (the ``limits`` library's moving-window limiter on Redis): no span of the
  window's length ever holds more calls than the limit, not only each calendar minute. A fixed
  window would let 2 x 180 calls through across a minute boundary.
- Each window is the API's window plus a small margin (``*_BUDGET_MARGIN_SECONDS``): a token is
  taken a few milliseconds before ServiceM8 counts the request, and that jitter must not let two
  bursts a window apart look closer than a window to ServiceM8.
- ``before_call`` never sleeps: with no token it raises ``BudgetExhausted(retry_in)``, and the task
  layer defers the work (a countdown, or the deferred set for long waits).
- Bulk work (backfill) may not take the last ``BULK_RESERVE_SHARE`` of a window: interactive work
  always finds a token.
- A 429 pauses the whole connection's use of that API until its window resets: a minute, or
  midnight in the account's timezone for the day limit. 401/402/403 pause it for
  ``AUTH_PAUSE_SECONDS``; the first call after that is the probe that resumes or re-pauses.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Literal

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from bridge.errors import Api, BudgetExhausted
from bridge.http import Outcome
from bridge.log import get_logger
from bridge.store import Store

log = get_logger(__name__)

Priority = Literal["interactive", "normal", "bulk"]
priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("priority", default="normal")


@dataclass(frozen=True)
class Window:
    name: str  # "minute", "day", or e.g. "10s" in tests
    limit: int
    seconds: int  # the API's own window
    margin: int = 1  # whole seconds added (the limits library counts whole seconds)

    def item(self) -> RateLimitItem:
        return RateLimitItemPerSecond(self.limit, self.seconds + self.margin)


@dataclass
class Usage:
    window: str
    limit: int
    used: int
    frees_in: float


class Budget:
    def __init__(
        self,
        *,
        redis_url: str,
        store: Store,
        windows: dict[Api, list[Window]],
        bulk_reserve_share: float = 0.2,
        auth_pause_seconds: float = 300.0,
        day_reset_tz: Callable[[], tzinfo] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.windows = windows
        self.bulk_reserve_share = bulk_reserve_share
        self.auth_pause_seconds = auth_pause_seconds
        self.day_reset_tz = day_reset_tz
        self.clock = clock
        prefix = f"{store.prefix}limits"
        self.limiter = MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix=prefix))
        self._items = {api: [(w, w.item()) for w in ws] for api, ws in windows.items()}

    # --- CallGate ----------------------------------------------------------------------------
    def before_call(self, api: Api) -> None:
        pause = self.store.pause(api)
        if pause is not None:
            raise BudgetExhausted(
                f"{api} paused: {pause['reason']}",
                api=api,
                retry_in=max(0.05, float(pause["until"]) - self.clock()),
            )
        items = self._items.get(api, [])
        if priority.get() == "bulk":
            for window, item in items:
                stats = self.limiter.get_window_stats(item, api)
                if stats.remaining <= window.limit * self.bulk_reserve_share:
                    raise BudgetExhausted(
                        f"{api} {window.name} budget: the rest is kept for interactive work",
                        api=api,
                        retry_in=self._frees_in(stats.reset_time),
                    )
        for window, item in items:
            if not self.limiter.hit(item, api):
                stats = self.limiter.get_window_stats(item, api)
                raise BudgetExhausted(
                    f"{api} {window.name} budget spent",
                    api=api,
                    retry_in=self._frees_in(stats.reset_time),
                )

    def after_call(self, api: Api, outcome: Outcome) -> None:
        if outcome.kind == "rate_limited":
            seconds = self._until_reset(api, outcome.window)
            self.store.set_pause(
                api, seconds, f"HTTP 429 ({outcome.window or 'unknown'} limit)", "rate_limited"
            )
            log.warning("budget.paused", api=api, seconds=round(seconds, 1), window=outcome.window)
        elif outcome.kind == "auth":
            self.store.set_pause(api, self.auth_pause_seconds, outcome.reason, "auth")
            log.error(
                "budget.auth_paused",
                api=api,
                seconds=self.auth_pause_seconds,
                reason=outcome.reason,
            )

    # --- reporting ---------------------------------------------------------------------------
    def usage(self) -> dict[str, list[Usage]]:
        out: dict[str, list[Usage]] = {}
        for api, items in self._items.items():
            rows = []
            for window, item in items:
                stats = self.limiter.get_window_stats(item, api)
                used = window.limit - stats.remaining
                rows.append(
                    Usage(
                        window.name,
                        window.limit,
                        used,
                        self._frees_in(stats.reset_time) if used else 0.0,
                    )
                )
            out[api] = rows
        return out

    # --- helpers -----------------------------------------------------------------------------
    def _frees_in(self, reset_time: float) -> float:
        return max(0.05, reset_time - self.clock())

    def _until_reset(self, api: Api, window: str | None) -> float:
        if window == "day":
            tz = self.day_reset_tz() if self.day_reset_tz else None
            now = datetime.fromtimestamp(self.clock(), tz)
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            return max(60.0, (midnight - now).total_seconds())
        # A minute window whose start we cannot see: wait one whole window (plus the margin).
        short = [w for w in self.windows.get(api, []) if w.seconds < 86_400]
        return float(short[0].seconds + short[0].margin) if short else 61.0


def servicem8_windows(
    per_minute: int, per_day: int, minute_seconds: int = 60, margin: int = 1
) -> list[Window]:
    return [
        Window(
            "minute" if minute_seconds == 60 else f"{minute_seconds}s",
            per_minute,
            minute_seconds,
            margin,
        ),
        Window("day", per_day, 86_400, margin),
    ]
