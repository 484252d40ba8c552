"""The poll planner: intervals from the day's budget, busy hours and webhooks
(docs/operations.md#poll-plan)."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

import pytest

from mappings.pollplan import PollBudget, is_busy, plan_polls

SYDNEY = ZoneInfo("Australia/Sydney")
BUDGET = PollBudget(day_limit=20_000, share=0.5, busy_from=time(6), busy_to=time(19),
                    min_seconds=5, max_seconds=300)  # fmt: skip
OBJECTS = {"servicem8.joballocation": False, "servicem8.jobactivity": True, "servicem8.job": True}


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 1, hour, minute, tzinfo=SYDNEY)


def test_from_midnight_the_plan_spends_the_share_and_no_more():
    plan = plan_polls(at(0), OBJECTS, BUDGET, polls_spent_today=0, calls_last_day=0)
    assert plan.poll_budget == 10_000
    assert 9_000 <= plan.projected <= 10_000
    assert plan.intervals["servicem8.jobactivity"] == plan.intervals["servicem8.job"] == 300


def test_busy_hours_poll_the_poll_only_object_within_seconds_and_quiet_hours_slower():
    busy = plan_polls(at(9), OBJECTS, BUDGET, polls_spent_today=1_500, calls_last_day=4_000)
    # By 21:00 the busy hours have spent most of the share; the rest spreads over the evening.
    quiet = plan_polls(at(21), OBJECTS, BUDGET, polls_spent_today=9_600, calls_last_day=12_000)
    assert busy.busy and not quiet.busy
    assert 5 <= busy.intervals["servicem8.joballocation"] <= 8
    assert (
        quiet.intervals["servicem8.joballocation"] > 3 * busy.intervals["servicem8.joballocation"]
    )
    assert busy.projected <= busy.poll_budget and quiet.projected <= quiet.poll_budget


def test_without_webhooks_every_object_shares_the_polls():
    none = {name: False for name in OBJECTS}
    plan = plan_polls(at(9), none, BUDGET, polls_spent_today=0, calls_last_day=0)
    assert len(set(plan.intervals.values())) == 1
    hooked = plan_polls(at(9), OBJECTS, BUDGET, polls_spent_today=0, calls_last_day=0)
    assert hooked.intervals["servicem8.joballocation"] < plan.intervals["servicem8.joballocation"]


def test_a_spent_share_or_a_nearly_full_day_slows_polls_to_the_longest_interval():
    spent = plan_polls(at(9), OBJECTS, BUDGET, polls_spent_today=10_000, calls_last_day=10_000)
    assert spent.intervals["servicem8.joballocation"] == 300
    writes = plan_polls(at(9), OBJECTS, BUDGET, polls_spent_today=100, calls_last_day=19_000)
    assert writes.intervals["servicem8.joballocation"] == 300  # writes keep what is left


def test_intervals_never_go_below_the_minimum():
    small_day = plan_polls(at(23, 59), OBJECTS, BUDGET, polls_spent_today=0, calls_last_day=0)
    assert small_day.intervals["servicem8.joballocation"] == 5


@pytest.mark.parametrize(("hour", "busy"), [(5, False), (6, True), (18, True), (19, False)])
def test_busy_hours_are_half_open(hour, busy):
    assert is_busy(at(hour), BUDGET) is busy


def test_busy_hours_may_run_over_midnight():
    night_shift = PollBudget(20_000, 0.5, time(22), time(6), 5, 300)
    assert is_busy(at(23), night_shift) and is_busy(at(2), night_shift)
    assert not is_busy(at(12), night_shift)
    plan = plan_polls(at(12), OBJECTS, night_shift, polls_spent_today=0, calls_last_day=0)
    assert not plan.busy and plan.projected <= plan.poll_budget
