"""Coredination's unsettled behaviours, each played by the simulator over loopback, and the bridge
under every reading (docs/coredination-api.md#guesses): the stamps' names, the resource shape, a
missing ``unassign``, ``schedule`` on a finished resource and a missing users list."""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import pytest
import requests
from celery.exceptions import Retry

from bridge.coredination import CoredinationClient
from bridge.coredination.client import UsersListMissing
from bridge.errors import NotFound
from bridge.queues import MATCH_STAFF
from bridge.simulators.base import SimError
from bridge.simulators.coredination import (
    LEGACY_DIALECT,
    CoredinationDialect,
    CoredinationSimulator,
)
from bridge.simulators.scenario import seed_business
from bridge.sync import Engine, SyncContext
from bridge.sync.context import CURSOR_CD_JOBS
from mappings.ids import cd_job_uuid
from mappings.stamps import to_epoch_ms
from tests.conftest import CD_KEY

STAMPS = ("modified", "lastModified", "none")
SHAPES = ("userId", "user")


@pytest.fixture
def engine(store: Any, sm8: Any, cd: CoredinationClient) -> Engine:
    """The sync engine over both simulators and real Redis, as in tests/sync (no Celery)."""
    return Engine(SyncContext(store, sm8, cd, store.jobs.ns))


@pytest.fixture
def ava(cd_sim: CoredinationSimulator) -> dict[str, Any]:
    return cd_sim.add_user("ava@example.com", "Ava", "Nguyen")


def raw(cd_sim: CoredinationSimulator, method: str, path: str) -> requests.Response:
    """One API call as it goes over the wire, without the bridge's client."""
    return requests.request(
        method, f"{cd_sim.api_url()}/{path}", headers={"API-Key": CD_KEY}, timeout=5
    )


def new_job(cd: CoredinationClient, **fields: Any) -> str:
    uuid = str(uuidlib.uuid4())
    cd.upsert_job(uuid, {"title": "Hot water unit", **fields})
    return uuid


def unassign_calls(cd_sim: CoredinationSimulator) -> tuple[int, int]:
    return cd_sim.count("PUT", "job.unassign"), cd_sim.count("PUT", "job.unschedule")


def warnings_named(caplog: pytest.LogCaptureFixture, event: str) -> list[Any]:
    return [r for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == event]


# --- the dialect itself ------------------------------------------------------------------------


def test_the_default_reading_and_the_legacy_one():
    assert CoredinationDialect() == CoredinationDialect(
        stamps="lastModified",
        resource_shape="user",
        unassign=False,
        schedule_finished="ignored",
        users_endpoint=True,
        missing_status=404,
    )
    assert (LEGACY_DIALECT.stamps, LEGACY_DIALECT.resource_shape, LEGACY_DIALECT.unassign) == (
        "modified",
        "userId",
        True,
    )
    assert CoredinationSimulator(dialect=LEGACY_DIALECT).dialect is LEGACY_DIALECT


@pytest.mark.parametrize(
    "switches",
    [{"stamps": "updated"}, {"resource_shape": "owner"}, {"unassign": 1}, {"missing_status": 400}],
)
def test_a_dialect_refuses_a_reading_it_does_not_know(switches):
    with pytest.raises(ValueError, match="dialect"):
        CoredinationDialect(**switches)


def test_the_dialect_can_be_switched_through_the_admin_surface(cd_sim):
    answer = requests.post(f"{cd_sim.root_url}/_admin/dialect", json={"unassign": True}, timeout=5)
    assert answer.json()["unassign"] is True and cd_sim.dialect.unassign
    bad = requests.post(f"{cd_sim.root_url}/_admin/dialect", json={"colour": 1}, timeout=5)
    assert bad.status_code == 400
    with pytest.raises(SimError):
        cd_sim.set_dialect(stamps="updated")


# --- the simulator honours each switch ---------------------------------------------------------


@pytest.mark.parametrize("stamps", STAMPS)
def test_stamps_go_out_under_the_dialects_names(cd, cd_sim, stamps):
    cd_sim.set_dialect(stamps=stamps)
    uuid = new_job(cd)
    internal = cd_sim.jobs[cd_sim.by_uuid[uuid]]
    names = {
        "modified": ("modified", "created"),
        "lastModified": ("lastModified", "creationTimeStamp"),
        "none": (),
    }[stamps]
    every = {"modified", "created", "lastModified", "creationTimeStamp"}
    single, listed = raw(cd_sim, "GET", f"job/{uuid}").json(), raw(cd_sim, "GET", "job?untimed")
    for row in (single, listed.json()[0]):
        assert every & set(row) == set(names)
        if names:
            assert (row[names[0]], row[names[1]]) == (internal["modified"], internal["created"])


@pytest.mark.parametrize("stamps", STAMPS)
def test_the_modified_parameter_filters_by_the_change_time_whatever_the_stamps_are_called(
    cd, cd_sim, stamps
):
    cd_sim.set_dialect(stamps=stamps)
    old, changed = new_job(cd), new_job(cd)
    cd_sim.clock_offset += 10
    since = cd_sim.now_ms()
    cd.upsert_job(changed, {"title": "Hot water unit (urgent)"})
    assert [j.uuid for j in cd.iter_changed_jobs(since)] == [changed]
    assert {j.uuid for j in cd.iter_changed_jobs(since - 20_000)} == {old, changed}


@pytest.mark.parametrize("shape", SHAPES)
def test_resources_go_out_in_the_dialects_shape(cd, cd_sim, ava, shape):
    cd_sim.set_dialect(resource_shape=shape)
    uuid = new_job(cd)
    cd.resource_op("schedule", uuid, ava["id"])
    (resource,) = raw(cd_sim, "GET", f"job/{uuid}").json()["resources"]
    if shape == "userId":
        assert (resource["userId"], resource["userUuid"]) == (ava["id"], ava["uuid"])
        assert "user" not in resource
    else:
        assert resource["user"] == {
            "id": ava["id"],
            "uuid": ava["uuid"],
            "firstName": "Ava",
            "lastName": "Nguyen",
        }
        assert "userId" not in resource and "userUuid" not in resource
    assert resource["state"] == "SCHEDULED"
    assert cd_sim.snapshot()["jobs"][0]["resources"][0]["userId"] == ava["id"]  # admin: canonical


@pytest.mark.parametrize(("unassign", "status"), [(True, 200), (False, 404), (False, 405)])
def test_unassign_exists_or_answers_as_a_missing_operation(cd, cd_sim, ava, unassign, status):
    cd_sim.set_dialect(unassign=unassign, missing_status=404 if status == 200 else status)
    uuid = new_job(cd)
    cd.resource_op("assign", uuid, ava["id"])
    answer = raw(cd_sim, "PUT", f"job/{uuid}/unassign?userId={ava['id']}")
    assert answer.status_code == status
    assert _resources(cd_sim, uuid) == ({} if unassign else {ava["id"]: "ASSIGNED"})


@pytest.mark.parametrize(("reading", "after"), [("applied", "SCHEDULED"), ("ignored", "FINISHED")])
def test_schedule_on_a_finished_resource_does_what_the_dialect_says(
    cd, cd_sim, ava, reading, after
):
    cd_sim.set_dialect(schedule_finished=reading)
    uuid = new_job(cd)
    cd.resource_op("schedule", uuid, ava["id"])
    cd_sim.user_action(uuid, str(ava["id"]), "FINISHED")
    cd.resource_op("schedule", uuid, ava["id"])
    assert _resources(cd_sim, uuid) == {ava["id"]: after}
    schedules = [e for e in cd.get_job(uuid).events or [] if e.type == "SCHEDULE"]
    assert len(schedules) == (2 if reading == "applied" else 1)


def test_a_started_resource_stays_at_work_under_either_reading(cd, cd_sim, ava):
    cd_sim.set_dialect(schedule_finished="applied")
    uuid = new_job(cd)
    cd.resource_op("schedule", uuid, ava["id"])
    cd_sim.user_action(uuid, str(ava["id"]), "STARTED")
    cd.resource_op("schedule", uuid, ava["id"])
    assert _resources(cd_sim, uuid) == {ava["id"]: "STARTED"}


@pytest.mark.parametrize(("exists", "status"), [(True, 200), (False, 404), (False, 405)])
def test_the_users_list_exists_or_answers_as_missing(cd_sim, ava, exists, status):
    cd_sim.set_dialect(users_endpoint=exists, missing_status=404 if exists else status)
    answer = raw(cd_sim, "GET", "user")
    assert answer.status_code == status
    if exists:
        assert [u["email"] for u in answer.json()] == ["ava@example.com"]


def test_each_list_call_counts_the_jobs_it_returned(cd, cd_sim):
    for _ in range(3):
        new_job(cd)
    list(cd.iter_changed_jobs(0, page_size=2))
    assert list(cd_sim.listed) == [2, 1]
    list(cd.iter_changed_jobs(cd_sim.now_ms() + 1))
    assert list(cd_sim.listed)[-1] == 0
    cd_sim.reset_counts()
    assert list(cd_sim.listed) == []


# --- the client reads every reading -------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stamps", STAMPS)
def test_the_client_reads_jobs_under_every_stamp_name_and_resource_shape(
    cd, cd_sim, ava, stamps, shape
):
    cd_sim.set_dialect(stamps=stamps, resource_shape=shape)
    uuid = new_job(cd)
    cd.resource_op("schedule", uuid, ava["id"])
    internal = cd_sim.jobs[cd_sim.by_uuid[uuid]]
    stamped = stamps != "none"
    for job in (cd.get_job(uuid), *cd.iter_changed_jobs(0)):
        assert to_epoch_ms(job.modified) == (internal["modified"] if stamped else None)
        assert to_epoch_ms(job.created) == (internal["created"] if stamped else None)
        assert [(r.user_id, r.user_uuid, r.state) for r in job.resources] == [
            (ava["id"], ava["uuid"], "SCHEDULED")
        ]
        assert job.resource_for(ava["id"]) is not None


def test_a_change_poll_says_when_its_listing_started(cd, cd_sim):
    new_job(cd)
    cd.clock = lambda: 1_800_000_000.25
    jobs = cd.iter_changed_jobs(0)
    assert jobs.listed_at_ms is None  # nothing asked yet
    assert len(list(jobs)) == 1
    assert jobs.listed_at_ms == 1_800_000_000_250


def test_a_missing_unassign_falls_back_to_unschedule_once_learnt(cd, cd_sim, ava, caplog):
    first, second = new_job(cd), new_job(cd)
    for uuid in (first, second):
        cd.resource_op("assign", uuid, ava["id"])
    cd.resource_op("unassign", first, ava["id"])
    assert _resources(cd_sim, first) == {} and cd.unassign_missing
    assert unassign_calls(cd_sim) == (1, 1)  # the 404, then unschedule on the same job and user
    cd.resource_op("unassign", second, ava["id"])
    assert _resources(cd_sim, second) == {}
    assert unassign_calls(cd_sim) == (1, 2)  # remembered: unassign is not tried again
    assert len(warnings_named(caplog, "coredination.unassign_missing")) == 1


def test_a_405_on_unassign_is_learnt_at_once(cd, cd_sim, ava):
    cd_sim.set_dialect(missing_status=405)
    uuid = new_job(cd)
    cd.resource_op("assign", uuid, ava["id"])
    cd.resource_op("unassign", uuid, ava["id"])
    assert _resources(cd_sim, uuid) == {} and cd.unassign_missing


def test_a_404_for_a_missing_job_is_not_taken_for_a_missing_unassign(cd, cd_sim, ava):
    with pytest.raises(NotFound):
        cd.resource_op("unassign", str(uuidlib.uuid4()), ava["id"])
    assert not cd.unassign_missing  # unschedule failed too: the job is what is missing


def test_where_unassign_exists_it_is_used(cd, cd_sim, ava):
    cd_sim.set_dialect(unassign=True)
    uuid = new_job(cd)
    cd.resource_op("assign", uuid, ava["id"])
    cd.resource_op("unassign", uuid, ava["id"])
    assert unassign_calls(cd_sim) == (1, 0) and not cd.unassign_missing
    assert [e.type for e in cd.get_job(uuid).events or []][-1] == "UNASSIGN"


@pytest.mark.parametrize("status", [404, 405])
def test_a_missing_users_list_is_a_clear_error(cd, cd_sim, status):
    cd_sim.set_dialect(users_endpoint=False, missing_status=status)
    with pytest.raises(UsersListMissing, match="sm8cd staff link") as caught:
        cd.list_users()
    assert caught.value.status == status and caught.value.operation == "user.list"


# --- the sync under each reading -----------------------------------------------------------------


def _resources(cd_sim: CoredinationSimulator, job_uuid: str) -> dict[int, str]:
    job = cd_sim.jobs[cd_sim.by_uuid[job_uuid]]
    return {r["userId"]: r["state"] for r in job["resources"]}


def _settle(engine: Any) -> None:
    engine.run_cycle()
    engine.run_cycle(match_staff=False)  # the first re-read sees the bridge's own job writes


@pytest.mark.parametrize("stamps", ["modified", "lastModified"])
def test_the_poll_cursor_reaches_the_newest_change_under_either_stamp_name(
    engine, sm8_sim, cd_sim, stamps
):
    cd_sim.set_dialect(stamps=stamps)
    seed_business(sm8_sim, cd_sim, staff=3, jobs=5, allocations=5)
    _settle(engine)
    cursor = engine.ctx.stores.activity.cursor(CURSOR_CD_JOBS)
    assert cursor is not None
    assert int(cursor) >= max(j["modified"] for j in cd_sim.jobs.values())


@pytest.mark.parametrize("stamps", STAMPS)
def test_a_quiet_poll_lists_no_job_once_the_overlap_has_passed(engine, sm8_sim, cd_sim, cd, stamps):
    cd_sim.set_dialect(stamps=stamps)
    cd.clock = cd_sim.now  # the bridge's clock in step with Coredination's
    engine.ctx.options.cd_census_seconds = 0  # the cursor alone (a census lists every job)
    seed_business(sm8_sim, cd_sim, staff=3, jobs=5, allocations=5)
    _settle(engine)
    cd_sim.clock_offset += 300  # five quiet minutes, well past the cursor's overlap
    engine.poll_coredination()  # the last changes are still inside the old window: once more
    cd_sim.reset_counts()
    assert engine.poll_coredination() == set()
    assert list(cd_sim.listed) == [0]


def test_without_stamps_a_coredination_change_still_flows_back(engine, sm8_sim, cd_sim, cd):
    cd_sim.set_dialect(stamps="none")
    cd.clock = cd_sim.now
    engine.ctx.options.pull_booking = "flexible"
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2)
    _settle(engine)
    cd_sim.clock_offset += 300
    engine.run_cycle(match_staff=False)  # a quiet cycle, whatever the cursor does with it
    cd_sim.clock_offset += 30
    row = biz.allocations[0]
    cd_sim.resource_op(
        cd_job_uuid(engine.ctx.ns, row["job_uuid"]),
        "unschedule",
        str(biz.user_for(row["staff_uuid"])["id"]),
    )
    engine.run_cycle(match_staff=False)
    assert sm8_sim.records["joballocation"][row["uuid"]]["active"] == 0


def test_the_sync_unassigns_through_unschedule_where_unassign_is_missing(engine, sm8_sim, cd_sim):
    # allocations 4 and 9 have no date (assigned), both on job 4, for two different people
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=5, allocations=10)
    engine.run_cycle()
    undated = [biz.allocations[4], biz.allocations[9]]
    cd_job = cd_job_uuid(engine.ctx.ns, undated[0]["job_uuid"])
    users = [biz.user_for(row["staff_uuid"])["id"] for row in undated]
    assert _resources(cd_sim, cd_job) == dict.fromkeys(users, "ASSIGNED")
    for n, row in enumerate(undated, start=1):
        sm8_sim.delete("joballocation", row["uuid"])
        engine.run_cycle(match_staff=False)
        assert users[n - 1] not in _resources(cd_sim, cd_job)
        assert unassign_calls(cd_sim) == (1, n)  # one refusal, then unschedule every time
    assert _resources(cd_sim, cd_job) == {}
    assert sm8_sim.write_count() == 0


def test_without_a_users_list_staff_are_linked_by_hand_and_the_sync_goes_on(
    engine, sm8_sim, cd_sim, store, caplog
):
    cd_sim.set_dialect(users_endpoint=False)
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    row = biz.allocations[0]
    report = engine.run_cycle()
    assert report.counts["staff.users_list_missing"] == 1
    assert report.counts["pending.unmapped_staff"] == 1
    assert warnings_named(caplog, "staff.users_list_missing")
    assert store.activity.stats()["staff.users_list_missing"] == 1  # shown by 'sm8cd status'
    assert set(store.staff.directory("staff")) == {s["uuid"].lower() for s in biz.staff}
    assert [k for k in store.parked.pending() if k.endswith(row["staff_uuid"].lower())]

    user = biz.user_for(row["staff_uuid"])["id"]
    engine.link_staff(row["staff_uuid"], user)  # what 'sm8cd staff link' does
    report = engine.run_cycle()  # the matching still cannot run; the manual link stands
    assert report.counts["staff.users_list_missing"] == 1
    assert store.staff.staff_map().s2u[row["staff_uuid"].lower()] == user
    assert _resources(cd_sim, cd_job_uuid(engine.ctx.ns, row["job_uuid"])) == {user: "SCHEDULED"}
    assert not [k for k in store.parked.pending() if k.endswith(row["staff_uuid"].lower())]


def test_a_users_list_gone_missing_undoes_no_automatic_link(engine, sm8_sim, cd_sim, store):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.match_staff()
    before = store.staff.staff_map().s2u
    assert len(before) == 2
    cd_sim.set_dialect(users_endpoint=False)
    report = engine.match_staff()
    assert report.counts["staff.users_list_missing"] == 1 and "staff.unlinked" not in report.counts
    assert store.staff.staff_map().s2u == before


def test_the_staff_task_neither_retries_nor_dead_letters_a_missing_users_list(app, sm8_sim, cd_sim):
    cd_sim.set_dialect(users_endpoint=False)
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    task = app.tasks[MATCH_STAFF]
    task.push_request(id="task-users", args=[], kwargs={}, retries=0, called_directly=False,
                      delivery_info={"routing_key": "q"})  # fmt: skip
    try:
        assert task() is None  # returned, not raised: beat sends the next one in its turn
    except Retry:
        pytest.fail("the staff task retried a missing users list")
    finally:
        task.pop_request()
    stores = app.bridge_runtime().stores
    assert stores.work.dead_letter_count() == 0
    assert stores.activity.stats()["staff.users_list_missing"] == 1


def test_asked_staff_matches_failing_alike_hold_one_dead_letter(app, sm8_sim, cd_sim):
    """Two asked matches differ only in when they were asked: one cause, one dead letter."""
    from bridge.errors import Rejected

    task = app.tasks[MATCH_STAFF]
    refused = Rejected("refused", api="coredination", status=400, operation="user.list")
    for n, asked in enumerate((1000.0, 1060.0)):
        task.push_request(id=f"asked-{n}", args=[], kwargs={"asked_at": asked}, retries=0,
                          called_directly=False, delivery_info={"routing_key": "q"})  # fmt: skip
        try:
            task._dead_letter(refused, asked, asked, "permanent error", 1)
        finally:
            task.pop_request()
    assert app.bridge_runtime().stores.work.dead_letter_count() == 1
