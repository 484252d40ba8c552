"""The shared API budget: every HTTP call, from any worker process on any host, takes a slot in
Redis first (docs/operations.md#budget). Implements ``bridge.http.CallGate``.

- Windows are *moving*: no span of the window's length ever holds more calls than the limit, not
  only each calendar minute (a fixed window would let 2 x 180 calls through across a minute
  boundary). One Lua script (``BudgetStore.take_slot``) checks and records a call in every window
  of an API at once, to the microsecond.
- Each window is the API's window plus a margin (``BUDGET_MARGIN_SECONDS``): the slot is taken a
  moment before ServiceM8 counts the request, and a request that travels slower than the next one
  must not make two calls a window apart look closer than a window to ServiceM8.
- A call whose slot frees within ``BUDGET_MAX_SLEEP_SECONDS`` *reserves* it and sleeps until then:
  the waiters queue in time order and each goes the moment its slot opens, which is what lets a
  backlog use the whole budget. A longer wait reserves nothing and raises
  ``BudgetExhausted(retry_in)``; the task layer defers the work (a countdown, or the deferred set
  for long waits) to come back just before its slot frees.
- Bulk work (backfill) may not fill the last ``BULK_RESERVE_SHARE`` of a window: interactive work
  always finds a slot within a few seconds.
- Slots and pauses belong to the API *account* (``accounts(api)``: the ServiceM8 vendor uuid,
  a digest of the Coredination key), not to one connection of ours: ServiceM8 limits "per
  add-on per account" (docs/servicem8-api.md#limits), so two connections on one account share it.
- A 429 pauses that account's use of the API until its window resets: a minute, or for the
  day limit the earlier of UTC midnight and midnight in the account's timezone (which one
  ServiceM8 uses is not documented: a probe too early costs one 429). A refusal of the
  credential (401, or 403 on the account or a whole list) pauses it for ``AUTH_PAUSE_SECONDS``;
  the first call after that is the probe that resumes or re-pauses. A 402 (the account not in
  good standing) holds it for ``unpaid_hold_seconds`` (hours). A 403 naming a missing scope
  blocks that operation alone for ``scope_block_seconds``: its calls are refused here, unsent;
  a 403 on one record or on webhook calls pauses nothing (docs/how-it-works.md#refusals).

Why not the ``limits`` library (used until the benchmark measured it): it counts whole seconds
(so the margin could not be under a second) and cannot reserve, so waiters polled for a slot and
reached it late; the achieved rate was about 90 % of the limit on short windows.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal

from bridge.errors import Api, BudgetExhausted, ScopeMissing
from bridge.http.accounts import AccountIds
from bridge.http.transport import Outcome
from bridge.log import get_logger
from bridge.store import BudgetStore, SlotWindow
from bridge.store.budget import short_window
from mappings.localtime import day_start

log = get_logger(__name__)

Priority = Literal["interactive", "normal", "bulk"]
# A 402 (account not in good standing) holds the API this long: settling an account takes hours
# or days, and asking every few minutes only adds failures (docs/how-it-works.md#refusals).
UNPAID_HOLD_SECONDS = 4 * 3600.0
# A 403 naming a missing scope blocks its operation this long: granting a scope means a new
# authorisation, so the operation is tried again once an hour, not at every sync.
SCOPE_BLOCK_SECONDS = 3600.0
priority: contextvars.ContextVar[Priority] = contextvars.ContextVar("priority", default="normal")
# How long a call may wait in place for its slot, beyond the budget's own ``max_sleep``: set
# for a list's later pages, which wait for the window rather than give up the pages read (a
# first poll of a large account reads more pages than a minute's budget allows).
page_wait: contextvars.ContextVar[float] = contextvars.ContextVar("page_wait", default=0.0)


@dataclass(frozen=True)
class Window:
    name: str  # "minute", "day", or e.g. "10s" in tests
    limit: int
    seconds: float  # the API's own window
    margin: float = 1.0  # seconds added against request timing jitter

    @property
    def span(self) -> float:
        return self.seconds + self.margin


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
        store: BudgetStore,
        accounts: AccountIds,
        windows: dict[Api, list[Window]],
        bulk_reserve_share: float = 0.2,
        auth_pause_seconds: float = 300.0,
        unpaid_hold_seconds: float = UNPAID_HOLD_SECONDS,
        scope_block_seconds: float = SCOPE_BLOCK_SECONDS,
        day_reset_tz: Callable[[], tzinfo] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_sleep: float = 2.0,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.windows = windows
        self.bulk_reserve_share = bulk_reserve_share
        self.auth_pause_seconds = auth_pause_seconds
        self.unpaid_hold_seconds = unpaid_hold_seconds
        self.scope_block_seconds = scope_block_seconds
        self.day_reset_tz = day_reset_tz
        self.clock = clock
        self.sleep = sleep
        self.max_sleep = max_sleep

    # --- CallGate ----------------------------------------------------------------------------
    def before_call(self, api: Api, operation: str = "") -> None:
        now = self.clock()
        accounts = [self.accounts(api), self.accounts.stand_in(api)]
        pause, block = self.store.gate_state(api, accounts, accounts[1], operation, now)
        if block is not None:
            raise ScopeMissing(
                f"{api} {operation}: not sent, blocked until the {block['scope']} scope is "
                f"granted ({block['reason']})",
                scope=block["scope"],
                api=api,
                status=403,
                operation=operation,
            )
        if pause is not None:
            raise BudgetExhausted(
                f"{api} paused: {pause['reason']}",
                api=api,
                retry_in=max(0.05, float(pause["until"]) - self.clock()),
            )
        bulk = priority.get() == "bulk"
        slots = [
            SlotWindow(
                w.name,
                int(w.limit * (1 - self.bulk_reserve_share)) if bulk else w.limit,
                w.limit,
                w.span,
            )
            for w in self.windows.get(api, [])
        ]
        max_sleep = max(self.max_sleep, page_wait.get())
        slot = self.store.take_slot(api, self.accounts(api), slots, self.clock(), max_sleep)
        if not slot.taken:
            reserve = " (the rest is kept for interactive work)" if bulk else ""
            raise BudgetExhausted(
                f"{api} {slot.window} budget spent{reserve}",
                api=api,
                # Back a little before the slot frees, to reserve it and sleep the rest.
                retry_in=max(0.05, slot.wait - max_sleep / 2),
            )
        if slot.wait > 0:
            self.sleep(slot.wait)

    def after_call(self, api: Api, outcome: Outcome) -> None:
        if outcome.kind == "rate_limited":
            seconds = self._until_reset(api, outcome.window)
            self.store.set_pause(
                api,
                self.accounts(api),
                seconds,
                f"HTTP 429 ({outcome.window or 'unknown'} limit)",
                "rate_limited",
            )
            log.warning("budget.paused", api=api, seconds=round(seconds, 1), window=outcome.window)
        elif outcome.kind == "unpaid":  # the account's standing: no use asking every 5 minutes
            hours = self.unpaid_hold_seconds / 3600
            reason = f"{outcome.reason}: held for {hours:g} h, then one call checks again"
            self.store.set_pause(api, self.accounts(api), self.unpaid_hold_seconds, reason,
                                 "unpaid")  # fmt: skip
            log.error("budget.unpaid_held", api=api, seconds=self.unpaid_hold_seconds,
                      reason=outcome.reason)  # fmt: skip
        elif outcome.kind == "scope_missing" and outcome.operation:
            self.store.set_block(api, self.accounts.stand_in(api), outcome.operation,
                                 self.scope_block_seconds, outcome.reason, outcome.scope,
                                 self.clock())  # fmt: skip
            log.error("budget.operation_blocked", api=api, operation=outcome.operation,
                      scope=outcome.scope, seconds=self.scope_block_seconds)  # fmt: skip
        elif outcome.kind == "auth":  # the key's, not the account's (bridge.http.accounts)
            self.store.set_pause(
                api, self.accounts.stand_in(api), self.auth_pause_seconds, outcome.reason, "auth"
            )
            log.error(
                "budget.auth_paused",
                api=api,
                seconds=self.auth_pause_seconds,
                reason=outcome.reason,
            )

    # --- reporting ---------------------------------------------------------------------------
    def pause(self, api: Api) -> dict[str, Any] | None:
        """The API's pause in force, if any: the account's (429) or the key's (bad credentials).
        One Redis round trip; no API call."""
        return self.store.first_pause(api, [self.accounts(api), self.accounts.stand_in(api)])

    def blocks(self, api: Api) -> dict[str, dict[str, Any]]:
        """The operations blocked for a missing scope, with the scope to grant (status)."""
        return self.store.blocks(api, self.accounts.stand_in(api), self.clock())

    def adopt(self, api: Api, account: str, legacy: list[str]) -> None:
        """The account is now known: merge what was counted for it under the stand-in and under
        the connection's keys of the layout before accounts (``legacy``: their key prefix)."""
        stand_in = self.accounts.stand_in(api)
        windows = [(w.name, w.limit) for w in self.windows.get(api, [])]
        self.store.merge_into(api, account, [stand_in], legacy, windows)

    def usage(self) -> dict[str, list[Usage]]:
        now = self.clock()
        out: dict[str, list[Usage]] = {}
        for api, windows in self.windows.items():
            rows = []
            for w in windows:
                window = SlotWindow(w.name, w.limit, w.limit, w.span)
                used, frees_at = self.store.slots_used(api, self.accounts(api), window, now)
                rows.append(Usage(w.name, w.limit, used, max(0.0, (frees_at or now) - now)))
            out[api] = rows
        return out

    # --- helpers -----------------------------------------------------------------------------
    def _to_midnight(self, tz: tzinfo) -> float:
        """Seconds until the next local midnight in ``tz``, counted as elapsed time: a day the
        clocks change on is 23 or 25 hours long (``localtime.day_start``)."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        return (day_start(now, tz, days=1) - now).total_seconds()

    def _until_reset(self, api: Api, window: str | None) -> float:
        if window == "day":
            # When the day limit resets is not documented: probe at the earlier of UTC midnight
            # and the account's midnight (a probe too early costs one 429 and pauses again).
            zones = [UTC, self.day_reset_tz()] if self.day_reset_tz else [UTC]
            return max(60.0, min(self._to_midnight(tz) for tz in zones))
        # A minute window whose start we cannot see: wait one whole window (plus the margin).
        short = [w for w in self.windows.get(api, []) if w.seconds < 86_400]
        return float(short[0].span) if short else 61.0


def servicem8_windows(
    per_minute: int, per_day: int, minute_seconds: float = 60, margin: float = 1.0
) -> list[Window]:
    return [
        Window(
            short_window(minute_seconds),
            per_minute,
            minute_seconds,
            margin,
        ),
        Window("day", per_day, 86_400, margin),
    ]
