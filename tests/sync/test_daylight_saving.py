"""Syncs across a real daylight-saving change, both simulators and the bridge playing the same
instant (docs/servicem8-api.md#local-time): a booking made and one deleted in the hour after the
clocks change reach Coredination within one poll, a booking timed in a repeated or missing hour
lands at its stated instant, and quiet cycles afterwards write nothing to either side."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bridge.http import Outcome
from bridge.http.accounts import AccountIds
from bridge.http.budget import Budget, Window
from bridge.simulators import ServiceM8Simulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Dialect
from bridge.sync.context import CURSOR_SM8_ALLOCATIONS
from mappings import localtime
from mappings.ids import cd_job_uuid, sm8_activity_uuid

ZONES = ("Australia/Sydney", "Pacific/Auckland", "Europe/London", "America/New_York")
CHANGES = [(zone, way) for zone in ZONES for way in ("end", "start")]
STAMP = "%Y-%m-%d %H:%M:%S"


def _change(zone: str, way: str) -> localtime.Transition:
    """The zone's change in 2027 that ends (clocks back) or starts (forward) daylight saving."""
    year = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    found = [
        t for t in localtime.transitions(ZoneInfo(zone), *year) if t.backward == (way == "end")
    ]
    assert len(found) == 1
    return found[0]


def _play_at(engine, sm8_sim, cd_sim, at: datetime) -> None:
    """Both simulators and the bridge at the instant ``at``, their clocks running on from it."""
    for sim in (sm8_sim, cd_sim):
        sim.play_at(at.timestamp())
    engine.ctx.clock = sm8_sim.now


def _cycle(engine):
    return engine.run_cycle(match_staff=False)


def _resources(cd_sim, uuid):
    job = next(j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == uuid)
    return {r["userId"]: r["state"] for r in job["resources"]}


def _cd_job(cd_sim, uuid):
    return next(j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == uuid)


def _ms(wall: datetime, tz: ZoneInfo) -> int:
    return int(localtime.instant(wall, tz).timestamp() * 1000)


def _quiet(engine, sm8_sim, cd_sim) -> None:
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    _cycle(engine)
    assert (sm8_sim.write_count(), cd_sim.write_count()) == (0, 0), (sm8_sim.counts, cd_sim.counts)


def _business(engine, sm8_sim, cd_sim, zone: str, change: localtime.Transition):
    """An account in ``zone`` at 20 minutes before ``change``: four jobs, the first three with
    a flexible booking (staff 0, 1, 2), the fourth with nobody; synced once."""
    sm8_sim.seed({"vendor": [{"timezone_name": zone}]})
    _play_at(engine, sm8_sim, cd_sim, change.at - timedelta(minutes=20))
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=4, allocations=3)
    engine.run_cycle()  # the staff matched too
    users = [biz.user_for(s["uuid"])["id"] for s in biz.staff]
    return biz, users, [cd_job_uuid(engine.ctx.ns, j) for j in biz.jobs]


@pytest.mark.parametrize(("zone", "way"), CHANGES)
def test_changes_made_just_after_the_clocks_change_reach_coredination_within_one_poll(
    engine, sm8_sim, cd_sim, zone, way
):
    tz, change = ZoneInfo(zone), _change(zone, way)
    biz, users, cd_jobs = _business(engine, sm8_sim, cd_sim, zone, change)
    staff = [s["uuid"] for s in biz.staff]
    tomorrow = (localtime.wall(change.at, tz) + timedelta(days=1)).strftime("%Y-%m-%d 00:00:00")

    # Just before the change the office books someone: the cursor is now the newest stamp, late
    # in the hour that (when the clocks go back) is about to repeat.
    _play_at(engine, sm8_sim, cd_sim, change.at - timedelta(minutes=5))
    sm8_sim.create("joballocation", {"job_uuid": biz.jobs[2], "staff_uuid": staff[3],
                                     "allocation_date": tomorrow})  # fmt: skip
    _cycle(engine)
    assert _resources(cd_sim, cd_jobs[2])[users[3]] == "SCHEDULED"

    # Ten minutes after the change: a booking made, one deleted, and a fixed booking timed half
    # an hour into the repeated (or missing) span of wall time.
    _play_at(engine, sm8_sim, cd_sim, change.at + timedelta(minutes=10))
    sm8_sim.create("joballocation", {"job_uuid": biz.jobs[0], "staff_uuid": staff[3],
                                     "allocation_date": tomorrow})  # fmt: skip
    sm8_sim.delete("joballocation", biz.allocations[1]["uuid"])  # staff 1 on job 1
    start = change.span()[0] + timedelta(minutes=30)
    end = start + timedelta(hours=2)
    sm8_sim.create("jobactivity", {
        "job_uuid": biz.jobs[3], "staff_uuid": staff[1], "activity_was_scheduled": 1,
        "start_date": start.strftime(STAMP), "end_date": end.strftime(STAMP),
    })  # fmt: skip
    deleted = sm8_sim.records["joballocation"][biz.allocations[1]["uuid"]]["edit_date"]
    cursor = engine.ctx.stores.activity.cursor(CURSOR_SM8_ALLOCATIONS)
    assert (deleted < cursor) == (way == "end")  # going back, the change looks older
    _cycle(engine)  # one poll

    assert _resources(cd_sim, cd_jobs[0]).get(users[3]) == "SCHEDULED"
    assert users[1] not in _resources(cd_sim, cd_jobs[1])
    assert _resources(cd_sim, cd_jobs[3]) == {users[1]: "SCHEDULED"}
    # Repeated: the first occurrence; missing: shifted forward by the gap (stated readings).
    job = _cd_job(cd_sim, cd_jobs[3])
    assert (job["startTime"], job["endTime"]) == (_ms(start, tz), _ms(end, tz))
    if way == "end":
        assert localtime.is_repeated(start, tz)
        assert job["startTime"] == int(localtime.occurrences(start, tz)[0].timestamp() * 1000)
    else:
        assert localtime.is_missing(start, tz)
        assert job["startTime"] == int((start - change.before).replace(tzinfo=UTC).timestamp()
                                       * 1000)  # fmt: skip

    # Quiet cycles: in the repeated hour (the poll reaches back and re-reads it) and after it.
    _play_at(engine, sm8_sim, cd_sim, change.at + timedelta(minutes=20))
    _quiet(engine, sm8_sim, cd_sim)
    _play_at(engine, sm8_sim, cd_sim, change.at + timedelta(hours=2))
    _quiet(engine, sm8_sim, cd_sim)


@pytest.mark.parametrize("zone", ZONES)
def test_a_booking_made_from_coredination_in_the_repeated_hour_is_written_once(
    engine, sm8_sim, cd_sim, zone
):
    """A dispatcher times a job in the second pass of the repeated hour: the bridge's booking
    holds its wall time, which reads back as the first pass (the stated reading), and is not
    written again and again to chase the hour it cannot name."""
    tz, change = ZoneInfo(zone), _change(zone, "end")
    biz, users, cd_jobs = _business(engine, sm8_sim, cd_sim, zone, change)
    staff = [s["uuid"] for s in biz.staff]
    job, cd_job = biz.jobs[3], cd_jobs[3]
    office = change.span()[0] + timedelta(days=1, hours=9)  # the office's booking, a day later
    sm8_sim.create("jobactivity", {
        "job_uuid": job, "staff_uuid": staff[0], "activity_was_scheduled": 1,
        "start_date": office.strftime(STAMP),
        "end_date": (office + timedelta(hours=1)).strftime(STAMP),
    })  # fmt: skip
    _cycle(engine)
    cd_sim.resource_op(cd_job, "schedule", str(users[2]))
    _cycle(engine)
    mine = sm8_activity_uuid(engine.ctx.ns, cd_job, users[2])
    assert sm8_sim.records["jobactivity"][mine]["active"] == 1

    second = localtime.occurrences(change.span()[0] + timedelta(minutes=30), tz)[1]
    with cd_sim.lock:
        cd_sim.update_job(cd_sim._job(cd_job), {
            "startTime": int(second.timestamp() * 1000),
            "endTime": int((second + timedelta(hours=1)).timestamp() * 1000),
        })  # fmt: skip
    _cycle(engine)
    wall = localtime.wall(second, tz)
    assert sm8_sim.records["jobactivity"][mine]["start_date"] == wall.strftime(STAMP)
    _quiet(engine, sm8_sim, cd_sim)
    _play_at(engine, sm8_sim, cd_sim, change.at + timedelta(hours=2))
    _quiet(engine, sm8_sim, cd_sim)


# --- the day budget and the simulator's day follow the zone ---------------------------------------
def test_a_day_limit_429_pauses_until_the_accounts_midnight_counted_in_elapsed_hours(store):
    """Beirut goes back from midnight to 23:00: at 22:00 that evening its midnight is three
    hours away (23:00 comes twice), not two; UTC midnight is five."""
    beirut = ZoneInfo("Asia/Beirut")
    evening = datetime(2027, 10, 30, 22, 0, tzinfo=beirut).timestamp()
    account = f"acct-{store.keys.connection}"
    store.activity.set_account("servicem8", account)
    accounts = AccountIds(store.activity, {"servicem8": account, "coredination": account})
    windows = {"servicem8": [Window("minute", 100, 60)]}
    b = Budget(store=store.budget, accounts=accounts, windows=windows,
               day_reset_tz=lambda: beirut, clock=lambda: evening)  # fmt: skip
    b.after_call("servicem8", Outcome("rate_limited", "per day", "day"))
    assert b.pause("servicem8")["until"] - time.time() == pytest.approx(3 * 3600, abs=5)


def test_the_simulators_day_limit_restarts_at_the_first_of_two_midnights():
    havana = ZoneInfo("America/Havana")  # 01:00 becomes 00:00 on 2027-11-07: midnight repeats
    back = _change("America/Havana", "end")
    sim = ServiceM8Simulator(timezone_name="America/Havana",
                             dialect=ServiceM8Dialect(day_reset="account"))  # fmt: skip
    try:
        sim.play_at((back.at + timedelta(minutes=30)).timestamp())  # 00:30, the second pass
        assert localtime.wall(datetime.fromtimestamp(sim.now(), UTC), havana).hour == 0
        assert sim.stamp().startswith("2027-11-07 00:3")
        assert sim.day_start(sim.now()) == (back.at - timedelta(hours=1)).timestamp()
    finally:
        sim.stop()
