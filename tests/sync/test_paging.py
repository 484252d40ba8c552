"""Paging as observed (docs/servicem8-api.md#paging): 1,000 records a page, ``$top`` never
relied on, and an object whose ``edit_date`` filter is accepted and ignored read in full at
every poll. The poll plan counts a poll's pages, so such an object is polled less often and the
day's calls stay within the plan (docs/operations.md#poll-plan)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import datetime
from datetime import time as clock_time

from bridge.simulators.scenario import seed_business
from mappings.pollplan import PollBudget
from tests import days

ACTIVITIES = 2_100  # three pages of 1,000


def _worked_time(biz, n):
    """``n`` rows of time worked (not bookings) on the first job."""
    return [{"uuid": str(uuid.uuid4()), "job_uuid": biz.jobs[0],
             "staff_uuid": biz.staff[0]["uuid"], "activity_was_recorded": "1",
             "start_date": "2026-12-07 09:00:00", "end_date": "2026-12-07 10:00:00"}
            for _ in range(n)]  # fmt: skip


def test_the_simulator_serves_1000_records_a_page_and_ignores_top(sm8, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    sm8_sim.seed({"jobactivity": _worked_time(biz, ACTIVITIES)})
    assert sm8_sim.page_size == 1000
    assert len(list(sm8.iter_activities())) == ACTIVITIES
    assert sm8.pages["jobactivity.list"] == 3
    assert sm8_sim.count("GET", "jobactivity.list") == 3


def test_with_an_ignored_filter_an_object_is_read_in_full_and_polled_within_the_plan(
    engine, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    booking = {**_worked_time(biz, 1)[0], "activity_was_recorded": "0",
               "activity_was_scheduled": "1"}  # fmt: skip
    sm8_sim.seed({"jobactivity": [booking]})  # a fixed booking: the poll has a cursor
    engine.run_cycle()
    sm8_sim.seed({"jobactivity": _worked_time(biz, ACTIVITIES)})
    sm8_sim.set_dialect(edit_date_filter_ignored="jobactivity")
    all_day = PollBudget(20_000, 0.5, clock_time(0), clock_time(23, 59), 5.0, 300.0)
    engine.ctx.options = replace(engine.ctx.options, poll_budget=all_day)
    # Noon in the account's zone today: the plan spreads what is left of the day, so near
    # midnight every interval would shrink to the floor and the pages could not show.
    activity = engine.ctx.stores.activity
    today = datetime.now(engine.ctx.tz).date()
    start = datetime.combine(today, clock_time(12), tzinfo=engine.ctx.tz).timestamp()
    for obj in ("joballocation", "jobactivity", "job"):  # every object polled only
        activity.set_subscription(f"servicem8.{obj}", "poll-only: refused (HTTP 400)")
    engine.ctx.clock = lambda: start
    engine.poll_due({"coredination": 3600.0})  # every object once: the pages are learnt
    spent_first = activity.polls_on(datetime.fromtimestamp(start, engine.ctx.tz).date().isoformat())
    sm8_sim.reset_counts()

    seconds, step = 120, 1.0
    for tick in range(1, int(seconds / step) + 1):
        engine.ctx.clock = lambda tick=tick: start + tick * step
        engine.poll_due({"coredination": 3600.0})

    plan = activity.poll_plan()
    every = plan["intervals"]
    assert every["servicem8.jobactivity"] >= 2.5 * every["servicem8.joballocation"]
    lists = {obj: sm8_sim.count("GET", f"{obj}.list") for obj in ("joballocation", "jobactivity")}
    # Each page is a read of 1,000 rows: the object read in full spends what the others spend
    # (the plan shares calls, not polls, between objects), give or take one poll.
    assert lists["jobactivity"] <= lists["joballocation"] + 3
    assert lists["jobactivity"] % 3 == 0  # whole polls of three pages
    # Every call is counted against the day's share, and no more were made than planned.
    day = datetime.fromtimestamp(start, engine.ctx.tz).date().isoformat()
    assert activity.polls_on(day) - spent_first == sm8_sim.count("GET")  # all reads are polls
    allowed = sum((seconds / every[f"servicem8.{o}"] + 1) * n
                  for o, n in (("joballocation", 1), ("jobactivity", 3), ("job", 1)))  # fmt: skip
    assert sm8_sim.count("GET") <= allowed


def test_a_refused_change_filter_reads_the_object_in_full_and_loses_no_change(
    engine, sm8_sim, cd_sim
):
    """``400 Unsupported $filter field`` on one object's change filter: that poll reads the
    object again without it, the object is recorded as read in full (status shows why), later
    polls read it in full without asking again, and the change reaches Coredination."""
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()  # the cursors are set
    sm8_sim.set_dialect(edit_date_filter_refused="joballocation")
    other = next(s for s in biz.staff if s["uuid"] != biz.allocations[0]["staff_uuid"])
    sm8_sim.create("joballocation", {"job_uuid": biz.jobs[0], "staff_uuid": other["uuid"],
                                     "allocation_date": days.stamp(3)})  # fmt: skip
    sm8_sim.reset_counts()
    engine.run_cycle(match_staff=False)
    assert sm8_sim.count("GET", "joballocation.list") == 2  # refused, then read in full
    state = engine.ctx.stores.activity.object_states()["servicem8.joballocation.filter"]
    assert state["state"] == "read-in-full" and state["refused"] is True
    assert "Unsupported $filter field" in state["reason"]
    cd_job = next(iter(cd_sim.jobs.values()))
    assert biz.user_for(other["uuid"])["id"] in {r["userId"] for r in cd_job["resources"]}
    assert "servicem8.joballocation" not in engine.ctx.stores.activity.object_states()
    sm8_sim.reset_counts()
    engine.poll_servicem8()
    assert sm8_sim.count("GET", "joballocation.list") == 1  # in full, not refused again
    assert sm8_sim.count() == sm8_sim.read_count()  # and it wrote nothing


def test_an_ignored_change_filter_is_recorded_and_cleared_once_it_works(engine, sm8_sim, cd_sim):
    """A filter accepted and ignored answers records older than its stamp: the poll records the
    object as read in full (status shows it); once the filter works again the record goes."""
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    engine.run_cycle()
    time.sleep(1.1)  # one booking changed a second later moves the cursor past the other
    sm8_sim.update("joballocation", biz.allocations[0]["uuid"], {"allocation_date": days.stamp(4)})
    engine.ctx.options = replace(engine.ctx.options, sm8_overlap=engine.ctx.options.sm8_overlap * 0)
    engine.poll_servicem8()
    assert "servicem8.joballocation.filter" not in engine.ctx.stores.activity.object_states()
    sm8_sim.set_dialect(edit_date_filter_ignored="joballocation")
    engine.poll_servicem8()
    state = engine.ctx.stores.activity.object_states()["servicem8.joballocation.filter"]
    assert state["refused"] is False and "accepted and ignored" in state["reason"]
    sm8_sim.set_dialect(edit_date_filter_ignored="")
    engine.poll_servicem8()
    assert "servicem8.joballocation.filter" not in engine.ctx.stores.activity.object_states()
