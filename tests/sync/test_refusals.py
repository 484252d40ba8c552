"""Refusals belong to what was refused, and one object's failure stops nothing else
(docs/how-it-works.md#refusals): against both simulators' per-path refusals, through the
runtime's own shared budget, so a pause would show."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.config import Settings
from bridge.ops.status import status
from bridge.ops.subscriptions import POLL_ONLY, check_subscriptions, subscribe_webhooks
from bridge.probe import _common
from bridge.probe.servicem8 import ServiceM8Probe, allocations_available
from bridge.process.runtime import Runtime, build
from bridge.simulators.scenario import seed_business
from bridge.sync.staff import match_staff
from mappings.ids import cd_job_uuid
from tests import days
from tests.conftest import CD_KEY, SM8_KEY

SYD = ZoneInfo("Australia/Sydney")
NO_ADD_ON = "The Job Allocations add-on is not enabled for this account"


@pytest.fixture
def rt(redis_url: str, sm8_sim: Any, cd_sim: Any) -> Iterator[Runtime]:
    settings = Settings(
        servicem8_api_key=SM8_KEY,
        servicem8_base_url=sm8_sim.api_url(),
        coredination_api_key=CD_KEY,
        coredination_base_url=cd_sim.api_url(),
        redis_url=redis_url,
        bridge_connection_id=f"ref{uuid.uuid4().hex[:8]}",
        webhook_public_url="http://127.0.0.1:9/",  # never called back: the refusal comes first
        webhook_token="whk-refusals-5c1e",
        http_read_timeout=2.0,
        _env_file=None,
    )
    runtime = build(settings, redis_url)
    yield runtime
    runtime.stores.wipe()
    runtime.close()


def _fixed(sm8_sim: Any, job: str, staff: str, day: int, start: int, end: int) -> str:
    return str(sm8_sim.create("jobactivity", {
        "job_uuid": job, "staff_uuid": staff, "activity_was_scheduled": 1,
        "start_date": days.stamp(day, start, tz=SYD), "end_date": days.stamp(day, end, tz=SYD),
    }))  # fmt: skip


def _resources(cd_sim: Any, cd_job: str) -> dict[int, str]:
    job = next((j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == cd_job), None)
    return {} if job is None else {r["userId"]: r["state"] for r in job["resources"]}


def _not_paused(rt: Runtime) -> None:
    assert rt.budget.pause("servicem8") is None
    assert rt.budget.pause("coredination") is None


def test_a_coredination_job_answering_403_parks_that_job_and_nothing_else(rt, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=0)
    ns = rt.engine.ctx.ns
    (refused, fine), (ava, ben) = biz.jobs, [s["uuid"] for s in biz.staff]
    cd_sim.faults.refusals[cd_job_uuid(ns, refused)] = (403, "No permission to this resource")
    _fixed(sm8_sim, refused, ava, 3, 9, 11)
    _fixed(sm8_sim, fine, ben, 3, 13, 15)

    report = rt.engine.run_cycle()

    assert report.counts["failed.Forbidden"] == 1
    assert _resources(cd_sim, cd_job_uuid(ns, fine)) == {biz.user_for(ben)["id"]: "SCHEDULED"}
    _not_paused(rt)
    # Later changes on other jobs keep syncing; the refused job alone waits.
    _fixed(sm8_sim, fine, ava, 4, 9, 10)
    rt.engine.run_cycle(match_staff=False)
    assert biz.user_for(ava)["id"] in _resources(cd_sim, cd_job_uuid(ns, fine))
    assert set(rt.stores.jobs.dirty()) == {refused}
    _not_paused(rt)


def test_a_refused_job_is_parked_with_the_message_by_its_task(app, sm8_sim, cd_sim):
    from bridge.queues import SYNC_JOB

    rt = app.bridge_runtime()
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    job, ava = biz.jobs[0], biz.staff[0]["uuid"]
    cd_sim.faults.refusals[cd_job_uuid(rt.engine.ctx.ns, job)] = (403, "No permission here")
    _fixed(sm8_sim, job, ava, 3, 9, 11)
    rt.engine.match_staff()
    assert job in rt.engine.poll_servicem8()
    app.tasks[SYNC_JOB].apply(kwargs={"sm8_job_uuid": job, "connection": rt.connection})
    failed = rt.stores.work.failed_jobs()
    assert "No permission here" in failed[job]["reason"]
    assert rt.budget.pause("coredination") is None


def test_a_403_on_the_users_list_leaves_manual_linking_working_with_no_pause(rt, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    cd_sim.faults.refusals["/1/user"] = (403, "This API is for selected partners only")
    report = match_staff(rt.engine.ctx)
    assert report.counts["staff.users_list_missing"] == 1
    _not_paused(rt)

    ava, user = biz.staff[0]["uuid"], biz.user_for(biz.staff[0]["uuid"])["id"]
    rt.stores.staff.link(ava, user, manual=True)  # what 'sm8cd staff link' does
    _fixed(sm8_sim, biz.jobs[0], ava, 3, 9, 11)
    rt.engine.run_cycle(match_staff=False)
    assert _resources(cd_sim, cd_job_uuid(rt.engine.ctx.ns, biz.jobs[0])) == {user: "SCHEDULED"}
    _not_paused(rt)


def test_a_403_on_webhook_subscription_leaves_polling_working_with_no_pause(rt, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    sm8_sim.faults.refusals["webhook_subscriptions"] = (403, "Webhooks need a public app")
    cd_sim.faults.refusals["/1/webhook"] = (401, "Not for this key")

    done = subscribe_webhooks(rt)

    assert all("webhooks unavailable for this credential" in line for line in done), done
    state = rt.stores.activity.subscription("servicem8.jobactivity")
    assert state is not None and state.startswith(POLL_ONLY)
    assert check_subscriptions(rt) == {}  # the health check's list refused too: no pause
    _not_paused(rt)
    shown = status(rt)["subscriptions"]["servicem8.jobactivity"]["state"]
    assert "webhooks unavailable for this credential" in shown

    ava = biz.staff[0]["uuid"]
    _fixed(sm8_sim, biz.jobs[0], ava, 3, 9, 11)
    rt.engine.run_cycle()
    user = biz.user_for(ava)["id"]
    assert _resources(cd_sim, cd_job_uuid(rt.engine.ctx.ns, biz.jobs[0])) == {user: "SCHEDULED"}
    _not_paused(rt)


def test_without_allocations_fixed_bookings_sync_both_ways_and_status_says_so(rt, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=0)
    sm8_sim.faults.refusals["joballocation.json"] = (400, NO_ADD_ON)
    timed, untimed = biz.jobs
    (ava, _), (_, ben_id), (cat, cat_id) = [
        (s["uuid"], biz.user_for(s["uuid"])["id"]) for s in biz.staff
    ]
    ns = rt.engine.ctx.ns
    _fixed(sm8_sim, timed, ava, 3, 9, 11)

    rt.engine.run_cycle()  # allocations refused: job activities are polled all the same

    assert _resources(cd_sim, cd_job_uuid(ns, timed)) == {biz.user_for(ava)["id"]: "SCHEDULED"}
    data = status(rt)
    assert data["objects"]["servicem8.joballocation"]["state"] == "unavailable"
    assert NO_ADD_ON in data["objects"]["servicem8.joballocation"]["reason"]
    assert data["pull_booking"] == "auto" and data["pull_booking_now"] == "fixed"
    _not_paused(rt)

    # Back from Coredination: a fixed booking, never an allocation the account would refuse.
    cd_sim.resource_op(cd_job_uuid(ns, timed), "schedule", str(cat_id))
    rt.engine.run_cycle(match_staff=False)
    mine = [a for a in sm8_sim.records["jobactivity"].values() if a["staff_uuid"] == cat]
    assert len(mine) == 1 and mine[0]["active"] == 1
    assert not sm8_sim.records["joballocation"]

    # The refused list is not asked again at every poll.
    sm8_sim.reset_counts()
    rt.engine.run_cycle(match_staff=False)
    assert sm8_sim.count("GET", "joballocation.list") == 0
    assert sm8_sim.count("GET", "jobactivity.list") == 1
    del untimed, ben_id


def test_an_operator_choice_of_flexible_stands_without_allocations(rt, sm8_sim, cd_sim):
    rt.engine.ctx.options.pull_booking = "flexible"
    seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    sm8_sim.faults.refusals["joballocation.json"] = (400, NO_ADD_ON)
    rt.engine.run_cycle()
    assert rt.engine.ctx.pull_booking() == "flexible"


def test_the_probe_says_allocations_are_unavailable(rt, sm8_sim):
    sm8_sim.faults.refusals["joballocation.json"] = (400, NO_ADD_ON)
    report = _common.Report(writes=False, probed_at=0.0)
    allocations_available(ServiceM8Probe(rt, report))
    (found,) = [f for f in report.findings if f.name == "allocations"]
    assert found.reading is False and "allocations unavailable" in found.saw
    _not_paused(rt)


def test_allocations_come_back_once_the_account_has_them(rt, sm8_sim, cd_sim):
    from bridge.sync import ingest

    seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    sm8_sim.faults.refusals["joballocation.json"] = (400, NO_ADD_ON)
    rt.engine.run_cycle()
    assert rt.engine.ctx.pull_booking() == "fixed"
    del sm8_sim.faults.refusals["joballocation.json"]
    clock = rt.engine.ctx.clock
    rt.engine.ctx.clock = lambda: clock() + ingest.RECHECK_SECONDS + 1
    try:
        rt.engine.run_cycle(match_staff=False)
    finally:
        rt.engine.ctx.clock = clock
    assert "servicem8.joballocation" not in rt.stores.activity.object_states()
    assert rt.engine.ctx.pull_booking() == "auto"


def test_the_beat_poll_leaves_refused_allocations_out(rt, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    sm8_sim.faults.refusals["joballocation.json"] = (400, NO_ADD_ON)
    rt.engine.poll_due({"servicem8": 0, "coredination": 0})
    assert rt.stores.activity.object_states()["servicem8.joballocation"]["state"] == "unavailable"
    sm8_sim.reset_counts()
    rt.engine.poll_due({"servicem8": 0, "coredination": 0})
    assert sm8_sim.count("GET", "joballocation.list") == 0
    _not_paused(rt)
