"""How often to poll each ServiceM8 object, planned from the day's budget
(docs/operations.md#poll-plan).

ServiceM8 allows a number of calls a day per account; polls may spend a share of it, and what
they have not spent today is spread over the rest of the day (a local day: 23 or 25 hours when
the clocks change). Busy hours (the office's working
day, in the account's timezone) weigh more than quiet ones, so a change made while people work
is seen within seconds and a quiet night costs little. An object whose own webhooks arrive is
polled only as a safety net, at the longest interval; the rest of the share goes to the objects
that can only be polled (job allocations: ServiceM8 sends no webhooks for them).

Pure: the caller passes the time, the counts and the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time

from mappings.localtime import at_wall, day_start

QUIET_WEIGHT = 0.25  # a quiet second gets a quarter of the polls a busy second gets
DAY_HEADROOM = 0.95  # the plan never projects the account past this share of its day limit


@dataclass(frozen=True)
class PollBudget:
    day_limit: int  # the account's calls a day (SERVICEM8_RATE_PER_DAY)
    share: float  # of it, what polls may spend (POLL_BUDGET_SHARE)
    busy_from: time  # BUSY_HOURS, in the account's timezone
    busy_to: time
    min_seconds: float  # POLL_MIN_SECONDS
    max_seconds: float  # POLL_MAX_SECONDS


@dataclass(frozen=True)
class PollPlan:
    intervals: dict[str, float]  # seconds between polls of each object, now
    busy: bool  # whether now is in busy hours
    poll_budget: int  # calls polls may spend today
    spent: int  # calls polls spent today so far
    projected: int  # spent, plus what the plan spends by the end of the day
    seconds_left: float  # until the account's midnight


def _busy_seconds(now: datetime, end: datetime, budget: PollBudget) -> float:
    """Seconds between ``now`` (aware, in the account's timezone) and ``end`` (that day's end)
    that fall in busy hours. Busy hours are wall-clock times of ``now``'s local day, read as
    instants (``mappings.localtime``), so a span the clocks change in is as long as it lasts."""
    tz, day = now.tzinfo, now.date()
    assert tz is not None
    start, stop = at_wall(day, budget.busy_from, tz), at_wall(day, budget.busy_to, tz)
    if budget.busy_to <= budget.busy_from:  # busy hours over midnight, e.g. 22:00-06:00
        spans = [(day_start(now, tz), stop), (start, end)]
    else:
        spans = [(start, stop)]
    return sum(max(0.0, _seconds(max(a, now), min(b, end))) for a, b in spans)


def _seconds(a: datetime, b: datetime) -> float:
    """Elapsed seconds, right across a daylight-saving change (aware datetimes of one zone
    subtract as wall clocks)."""
    return b.timestamp() - a.timestamp()


def is_busy(now: datetime, budget: PollBudget) -> bool:
    at, start, stop = now.time(), budget.busy_from, budget.busy_to
    return start <= at < stop if start < stop else (at >= start or at < stop)


def plan_polls(
    now: datetime,
    objects: Mapping[str, bool],
    budget: PollBudget,
    *,
    polls_spent_today: int,
    calls_last_day: int,
    pages: Mapping[str, int] | None = None,
) -> PollPlan:
    """The interval of each object (``objects``: name -> whether its webhooks stand in for its
    poll) at ``now`` (aware, in the account's timezone). ``pages``: the calls one poll of each
    object takes (its last poll's pages of 1,000 records; 1 where not known): an object read in
    full, its change filter refused or ignored, costs a call per page, so it is polled that much
    less often and the day's calls stay within the plan (docs/operations.md#poll-plan).

    What polls may still spend today is the share of the day limit less what they spent, and
    never more than leaves the account ``DAY_HEADROOM`` of its limit given every call of the
    last day (``calls_last_day``): writes keep their budget. It is spread over the rest of the
    day, a quiet second weighing ``QUIET_WEIGHT`` of a busy one, the safety-net polls of objects
    with webhooks taken first. Intervals are bounded by ``min_seconds`` and ``max_seconds``."""
    assert now.tzinfo is not None
    midnight = day_start(now, now.tzinfo, days=1)  # 23 or 25 hours after the last across a change
    left = max(1.0, _seconds(now, midnight))
    busy_left = _busy_seconds(now, midnight, budget)
    quiet_left = left - busy_left
    poll_budget = int(budget.day_limit * budget.share)
    room = budget.day_limit * DAY_HEADROOM - calls_last_day
    remaining = max(0.0, min(poll_budget - polls_spent_today, room))
    hooked = [name for name, webhooks in objects.items() if webhooks]
    polled = [name for name, webhooks in objects.items() if not webhooks]
    cost = {name: max(1, (pages or {}).get(name, 1)) for name in objects}
    safety = sum(cost[name] for name in hooked) * left / budget.max_seconds
    per_object = max(0.0, remaining - safety) / max(1, len(polled))  # calls, shared evenly
    # per_object = rate_busy * busy_left + rate_busy * QUIET_WEIGHT * quiet_left
    weighted = busy_left + QUIET_WEIGHT * quiet_left
    rate_busy = per_object / weighted if weighted > 0 else 0.0
    busy = is_busy(now, budget)
    rate = rate_busy if busy else rate_busy * QUIET_WEIGHT

    def bounded(seconds: float) -> float:
        return min(budget.max_seconds, max(budget.min_seconds, seconds))

    def every(calls_per_second: float, name: str) -> float:
        """Seconds between polls of ``name`` spending ``calls_per_second``."""
        return (
            bounded(cost[name] / calls_per_second) if calls_per_second > 0 else budget.max_seconds
        )

    intervals = {name: budget.max_seconds for name in hooked} | {
        name: every(rate, name) for name in polled
    }
    projected = (
        polls_spent_today
        + safety
        + sum(
            cost[name] * (busy_left / every(rate_busy, name)
                          + quiet_left / every(rate_busy * QUIET_WEIGHT, name))
            for name in polled
        )
    )  # fmt: skip
    return PollPlan(intervals, busy, poll_budget, polls_spent_today, round(projected), left)
