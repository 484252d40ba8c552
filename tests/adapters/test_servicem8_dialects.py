"""ServiceM8's unsettled behaviours, each played by the simulator over loopback, and the bridge
under every reading (docs/servicem8-api.md#open-questions): allocation webhooks refused, a DELETE
that restores a deleted record, a DELETE whose answer is lost, a create that does not keep the
supplied uuid, a refusal that answers 200 with ``success: false``, and the urgent window 0/0."""

from __future__ import annotations

import threading
import uuid as uuidlib
from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from bridge.errors import PermanentError, Rejected, RetryableError, Unavailable, Unconfirmed
from bridge.servicem8 import ServiceM8Client
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.client import UuidNotKept
from bridge.servicem8.models import AllocationWindow, JobAllocation
from bridge.servicem8.translate import allocation_facts
from bridge.simulators.base import SimError
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import (
    FIRST_READING,
    NO_ALLOCATION_SUBSCRIPTION,
    ServiceM8Dialect,
    ServiceM8Simulator,
)
from bridge.sync import Engine, SyncContext
from mappings.ids import cd_job_uuid
from mappings.jobfields import allocation_time
from tests import days
from tests.conftest import SM8_KEY

SYD = ZoneInfo("Australia/Sydney")
DELETIONS = 500


def _u() -> str:
    return str(uuidlib.uuid4())


def raw(sim: ServiceM8Simulator, method: str, path: str, **kw: Any) -> requests.Response:
    """One API call as it goes over the wire, without the bridge's client."""
    return requests.request(
        method, f"{sim.api_url()}/{path}", headers={"X-Api-Key": SM8_KEY}, timeout=5, **kw
    )


def play(sim: ServiceM8Simulator, dialect: ServiceM8Dialect) -> None:
    sim.set_dialect(**asdict(dialect))


def active(sim: ServiceM8Simulator, uuid: str, obj: str = "joballocation") -> int:
    return int(sim.records[obj][uuid]["active"])


@pytest.fixture
def job(sm8_sim: ServiceM8Simulator) -> str:
    uuid = _u()
    sm8_sim.seed({"job": [{"uuid": uuid, "status": "Work Order", "job_description": "Leak"}]})
    return uuid


@pytest.fixture
def allocations(sm8_sim: ServiceM8Simulator, job: str) -> list[str]:
    uuids = [_u() for _ in range(DELETIONS)]
    sm8_sim.seed({"joballocation": [{"uuid": u, "job_uuid": job} for u in uuids]})
    return uuids


# --- the dialect itself ------------------------------------------------------------------------


def test_the_default_reading_is_the_evidence_and_the_first_reading_is_kept():
    assert ServiceM8Dialect() == ServiceM8Dialect(
        allocation_webhooks=False,
        delete_restores=True,
        lost_delete_answer_rate=0.0,
        record_uuid_header="echo",
        refusal_as_success=True,
    )
    assert ServiceM8Dialect.first_reading() is FIRST_READING
    assert (FIRST_READING.allocation_webhooks, FIRST_READING.delete_restores) == (True, False)
    assert FIRST_READING.refusal_as_success is False
    assert ServiceM8Simulator(dialect=FIRST_READING).dialect is FIRST_READING
    assert ServiceM8Simulator().dialect == ServiceM8Dialect()


@pytest.mark.parametrize(
    "switches",
    [
        {"record_uuid_header": "client"},
        {"lost_delete_answer_rate": 1.5},
        {"lost_delete_answer_rate": True},
        {"lost_create_answer_rate": -0.1},
        {"duplicate_uuid": "overwrite"},
        {"delete_restores": 1},
    ],
)
def test_a_dialect_refuses_a_reading_it_does_not_know(switches):
    with pytest.raises(ValueError, match="dialect"):
        ServiceM8Dialect(**switches)


def test_the_dialect_can_be_switched_through_the_admin_surface(sm8_sim):
    url = f"{sm8_sim.root_url}/_admin/dialect"
    answer = requests.post(url, json={"allocation_webhooks": True}, timeout=5)
    assert answer.json()["allocation_webhooks"] is True and sm8_sim.dialect.allocation_webhooks
    assert requests.post(url, json={"colour": 1}, timeout=5).status_code == 400
    with pytest.raises(SimError):
        sm8_sim.set_dialect(record_uuid_header="client")


# --- the simulator honours each switch ---------------------------------------------------------


def test_subscribing_job_allocations_is_refused_with_a_400(sm8_sim, receiver):
    form = {"object": "joballocation", "fields": "staff_uuid", "callback_url": receiver.url}
    url = f"{sm8_sim.root_url}/webhook_subscriptions/object"
    refused = requests.post(url, data=form, headers={"X-Api-Key": SM8_KEY}, timeout=5)
    assert refused.status_code == 400
    assert refused.json() == {"errorCode": 400, "message": NO_ALLOCATION_SUBSCRIPTION}
    assert sm8_sim.subscriptions == []
    sm8_sim.set_dialect(allocation_webhooks=True)
    taken = requests.post(url, data=form, headers={"X-Api-Key": SM8_KEY}, timeout=5)
    assert taken.status_code == 200 and len(sm8_sim.subscriptions) == 1


def test_the_client_sees_the_refused_subscription_as_rejected(sm8, receiver):
    with pytest.raises(Rejected, match="does not support subscription") as caught:
        sm8.subscribe_object("joballocation", ["staff_uuid"], receiver.url)
    assert caught.value.status == 400
    sm8.subscribe_object("jobactivity", ["staff_uuid"], receiver.url)  # the others still can


@pytest.mark.parametrize(("restores", "after_two"), [(True, 1), (False, 0)])
def test_a_second_delete_restores_the_record_only_under_delete_restores(
    sm8_sim, allocations, restores, after_two
):
    sm8_sim.set_dialect(delete_restores=restores)
    uuid = allocations[0]
    assert raw(sm8_sim, "DELETE", f"joballocation/{uuid}.json").status_code == 200
    assert active(sm8_sim, uuid) == 0
    assert raw(sm8_sim, "DELETE", f"joballocation/{uuid}.json").status_code == 200
    assert active(sm8_sim, uuid) == after_two


def test_a_lost_delete_answer_lands_and_tells_the_caller_nothing(sm8_sim, allocations):
    sm8_sim.set_dialect(lost_delete_answer_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        raw(sm8_sim, "DELETE", f"joballocation/{allocations[0]}.json")
    assert active(sm8_sim, allocations[0]) == 0
    assert sm8_sim.injected["lost_answer"] == 1
    assert raw(sm8_sim, "GET", f"joballocation/{allocations[0]}.json").status_code == 200


@pytest.mark.parametrize("header", ["echo", "server"])
def test_x_record_uuid_echoes_the_supplied_uuid_or_is_the_servers_own(sm8_sim, job, header):
    sm8_sim.set_dialect(record_uuid_header=header)
    wanted = _u()
    made = raw(sm8_sim, "POST", "joballocation.json", json={"uuid": wanted, "job_uuid": job})
    told = made.headers["x-record-uuid"]
    assert made.status_code == 200 and told in sm8_sim.records["joballocation"]
    assert (told == wanted) is (header == "echo")
    assert (wanted in sm8_sim.records["joballocation"]) is (header == "echo")


@pytest.mark.parametrize(("as_success", "status"), [(True, 200), (False, 400)])
def test_a_bad_value_is_refused_by_a_400_or_by_a_200_saying_success_false(
    sm8_sim, job, as_success, status
):
    sm8_sim.set_dialect(refusal_as_success=as_success)
    bad = {"job_uuid": job, "allocation_date": "1 December"}
    answer = raw(sm8_sim, "POST", "joballocation.json", json=bad)
    assert answer.status_code == status
    body = answer.json()
    assert "Invalid date format" in body["message"]
    assert body.get("success") is (False if as_success else None)
    assert "x-record-uuid" not in answer.headers
    assert sm8_sim.records["joballocation"] == {}


# --- the client under each reading -------------------------------------------------------------


def test_five_hundred_deletes_with_lost_answers_end_all_deleted_and_none_restored(
    sm8: ServiceM8Client, sm8_sim, allocations
):
    """Under the evidence's reading a repeated DELETE restores, and three answers in ten are
    lost: every delete still ends inactive, because the client reads before each DELETE."""
    sm8_sim.set_dialect(delete_restores=True, lost_delete_answer_rate=0.3)
    sm8.transport.sleep = lambda seconds: None
    assert sm8.tz  # the account's timezone is read before the count starts
    sm8_sim.reset_counts()
    for uuid in allocations:
        sm8.delete_allocation(uuid)
    deletes = sm8_sim.count("DELETE", "joballocation.delete")
    gets = sm8_sim.count("GET", "joballocation.get")
    lost = sm8_sim.injected["lost_answer"]
    restored = sum(active(sm8_sim, u) for u in allocations)
    print(f"\n{DELETIONS} deletes: {deletes} DELETEs, {gets} GETs, {lost} answers lost, "
          f"{restored} restored")  # fmt: skip
    assert restored == 0
    assert deletes == DELETIONS  # a lost answer still landed: the read says so, no second DELETE
    assert gets == DELETIONS + lost
    assert 0.2 * DELETIONS < lost < 0.4 * DELETIONS
    assert sm8_sim.count() == deletes + gets


def test_deletes_that_fail_before_or_after_landing_and_task_retries_never_restore(
    sm8: ServiceM8Client, sm8_sim, allocations
):
    """Lost answers (the DELETE landed) mixed with 5xx answers (it did not) and with reads that
    fail, so some deletes give up and the task tries again from the start: nothing is restored,
    and the DELETEs that did not land are sent again."""
    sm8_sim.set_dialect(lost_delete_answer_rate=0.3)
    sm8_sim.set_faults(error_rate=0.2)
    sm8.transport.sleep = lambda seconds: None
    assert sm8.tz
    sm8_sim.reset_counts()
    task_retries = 0
    for uuid in allocations[:200]:
        for _ in range(20):  # the task's own retries
            try:
                sm8.delete_allocation(uuid)
                break
            except RetryableError:
                task_retries += 1
    sm8_sim.set_faults(error_rate=0.0)
    deletes = sm8_sim.count("DELETE", "joballocation.delete")
    gets = sm8_sim.count("GET", "joballocation.get")
    print(f"\n200 deletes under faults: {deletes} DELETEs, {gets} GETs, {task_retries} retries")
    assert sum(active(sm8_sim, u) for u in allocations[:200]) == 0
    assert deletes > 200 and task_retries > 0


def test_a_blind_retry_of_a_delete_restores_the_record(sm8: ServiceM8Client, sm8_sim, allocations):
    """Why the client never lets the transport repeat a DELETE: the retry lands on a deleted
    record and brings it back."""
    sm8_sim.set_dialect(lost_delete_answer_rate=1.0)
    sm8.transport.sleep = lambda seconds: None
    uuid = allocations[0]
    with pytest.raises(Unavailable):
        sm8.transport.request(
            "DELETE", f"joballocation/{uuid}.json", operation="joballocation.delete"
        )
    assert sm8_sim.count("DELETE", "joballocation.delete") == 2
    assert active(sm8_sim, uuid) == 1  # deleted, then restored by the retry


def test_a_delete_tried_again_after_its_answer_was_lost_sends_nothing(
    sm8: ServiceM8Client, sm8_sim, allocations
):
    sm8_sim.set_dialect(lost_delete_answer_rate=1.0)
    sm8.delete_allocation(allocations[0])  # the DELETE lands, its answer is lost, the read tells
    assert sm8_sim.count("DELETE", "joballocation.delete") == 1
    sm8.delete_allocation(allocations[0])  # a task retry: read, already deleted, nothing sent
    assert sm8_sim.count("DELETE", "joballocation.delete") == 1
    assert active(sm8_sim, allocations[0]) == 0


def test_a_delete_that_did_not_land_is_not_sent_again_until_it_has_settled(
    sm8: ServiceM8Client, sm8_sim, allocations
):
    """One DELETE per try: after a lost answer the record is read once more, and while it still
    reads active the task is told to come back after the settle time, from a read."""
    sm8.transport.sleep = lambda seconds: None
    original, refused = sm8_sim._api_call, []

    def fail_deletes(name, handler, request, params, conn):
        if request.method == "DELETE":
            refused.append(request.path)
            return sm8_sim.error_reply(503, "Service unavailable")
        return original(name, handler, request, params, conn)

    sm8_sim._api_call = fail_deletes
    with pytest.raises(Unconfirmed, match="still reads active") as caught:
        sm8.delete_allocation(allocations[0])
    assert caught.value.settle == 2 * sm8.transport.timeout[1]
    assert active(sm8_sim, allocations[0]) == 1
    assert len(refused) == 1 and sm8_sim.count("GET", "joballocation.get") == 2


def test_a_delete_still_on_its_way_after_its_answer_failed_is_never_doubled(
    sm8: ServiceM8Client, sm8_sim, allocations
):
    """A slow server: the DELETE's answer fails before the DELETE itself lands. Sending it again
    at once would land second and restore the record; the client waits for it instead."""
    sm8_sim.set_dialect(delete_restores=True)  # a second DELETE would restore it
    sm8.transport.sleep = lambda seconds: None
    original, landed = sm8_sim._api_call, threading.Event()

    def late_deletes(name, handler, request, params, conn):
        if request.method != "DELETE":
            return original(name, handler, request, params, conn)

        def land():
            original(name, handler, request, params, conn=None)
            landed.set()

        threading.Timer(0.3, land).start()
        return sm8_sim.error_reply(504, "Gateway timeout")

    sm8_sim._api_call = late_deletes
    with pytest.raises(Unconfirmed):
        sm8.delete_allocation(allocations[0])
    assert landed.wait(5)
    sm8.delete_allocation(allocations[0])  # the task's retry, after the settle time: a read
    assert sm8_sim.count("DELETE", "joballocation.delete") == 1
    assert active(sm8_sim, allocations[0]) == 0 and sm8_sim.restored == {}


def test_under_the_first_reading_a_delete_reads_then_deletes_once(sm8, sm8_sim, allocations):
    play(sm8_sim, FIRST_READING)
    sm8_sim.reset_counts()
    sm8.delete_allocation(allocations[0])
    sm8.delete_allocation(allocations[0])  # again: read, already deleted, nothing sent
    assert active(sm8_sim, allocations[0]) == 0
    reads = sm8_sim.count("GET", "joballocation.get")
    assert (reads, sm8_sim.count("DELETE", "joballocation.delete")) == (2, 1)


def test_the_office_deleted_it_first_so_the_bridge_sends_no_delete(sm8, sm8_sim, allocations):
    sm8_sim.delete("joballocation", allocations[0])
    sm8_sim.reset_counts()
    sm8.delete_allocation(allocations[0])
    assert sm8_sim.count("DELETE") == 0 and active(sm8_sim, allocations[0]) == 0


def test_success_false_is_rejected_like_a_400(sm8: ServiceM8Client, sm8_sim, job):
    with pytest.raises(Rejected, match="Invalid date format") as caught:
        sm8.create_allocation({"job_uuid": job, "allocation_date": "1 December"}, uuid=_u())
    assert caught.value.status == 200  # the HTTP status said success; the body did not
    made = sm8.create_allocation({"job_uuid": job})
    with pytest.raises(Rejected, match="success false"):
        sm8.update_allocation(made, {"expiry_timestamp": "soon"})


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (200, '{"success": false, "message": "Invalid value for staff_uuid"}', "rejected"),
        (200, '{"success": "false"}', "rejected"),
        (200, '{"success": true}', "ok"),
        (200, '{"errorCode": 0, "message": "OK"}', "ok"),
        (200, '[{"success": false}]', "ok"),
        (200, '{"errorCode": 400, "message": "bad"}', "rejected"),
        (400, '{"errorCode": 400, "message": "bad"}', "rejected"),
    ],
)
def test_the_classifier_reads_success_false_as_a_refusal(status, body, kind):
    assert classify_servicem8(status, {}, body, None).kind == kind


def test_a_create_whose_uuid_is_not_kept_fails_loudly_and_names_the_record_made(
    sm8: ServiceM8Client, sm8_sim, job
):
    sm8_sim.set_dialect(record_uuid_header="server")
    wanted = _u()
    with pytest.raises(UuidNotKept, match="did not keep the supplied uuid") as caught:
        sm8.create_allocation({"job_uuid": job}, uuid=wanted)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.made_uuid in sm8_sim.records["joballocation"]
    assert caught.value.made_uuid in str(caught.value) and wanted in str(caught.value)
    assert wanted not in sm8_sim.records["joballocation"]
    made = sm8.create_allocation({"job_uuid": job})  # without a uuid there is nothing to keep
    assert made in sm8_sim.records["joballocation"]


# --- the urgent window -------------------------------------------------------------------------

URGENT = {"uuid": "0b0b0b0b-1c1c-4d2d-8e3e-4f4f4f4f4f4f", "name": "Urgent"}


@pytest.mark.parametrize("times", [(0, 0), ("0", "0"), (600, 600)])
def test_a_window_whose_start_equals_its_end_is_no_window(times):
    window = AllocationWindow.from_wire({**URGENT, "start_time": times[0], "end_time": times[1]})
    allocation = JobAllocation.from_wire(
        {"uuid": _u(), "job_uuid": _u(), "allocation_date": "2026-12-01 00:00:00",
         "allocation_window_uuid": URGENT["uuid"]},
        SYD,
    )  # fmt: skip
    facts = allocation_facts(allocation, window)
    assert facts.window is None
    midnight = datetime(2026, 12, 1, tzinfo=SYD)
    when = allocation_time(facts, SYD)
    assert (when.start, when.end, when.all_day) == (midnight, midnight, True)
    late = AllocationWindow.from_wire({**URGENT, "start_time": 1320, "end_time": 120})
    assert allocation_facts(allocation, late).window == (1320, 120)  # past midnight: a window


def test_an_allocation_in_the_urgent_window_makes_an_all_day_coredination_job(
    store, sm8, cd, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    sm8_sim.seed({"allocationwindow": [{**URGENT, "start_time": 0, "end_time": 0}]})
    row = biz.allocations[0]
    urgent = {"allocation_date": days.stamp(3), "allocation_window_uuid": URGENT["uuid"]}
    sm8_sim.update("joballocation", row["uuid"], urgent)
    engine = Engine(SyncContext(store, sm8, cd, store.jobs.ns))
    engine.run_cycle()
    cd_job = next(j for j in cd_sim.snapshot()["jobs"]
                  if j["uuid"] == cd_job_uuid(engine.ctx.ns, biz.jobs[0]))  # fmt: skip
    midnight = days.ms(3, tz=SYD)
    assert cd_job["allDay"] is True
    assert (cd_job["startTime"], cd_job["endTime"]) == (midnight, midnight)


# --- a create whose uuid exists (docs/servicem8-api.md#writes) --------------------------------


@pytest.mark.parametrize(("answer", "status"), [("conflict", 409), ("refused", 400)])
def test_a_repeated_create_is_answered_as_the_dialect_says(sm8_sim, job, answer, status):
    sm8_sim.set_dialect(duplicate_uuid=answer, refusal_as_success=False)
    wanted = _u()
    body = {"uuid": wanted, "job_uuid": job}
    assert raw(sm8_sim, "POST", "joballocation.json", json=body).status_code == 200
    again = raw(sm8_sim, "POST", "joballocation.json", json={**body, "staff_uuid": _u()})
    assert again.status_code == status and "already exists" in again.json()["message"]
    assert sm8_sim.records["joballocation"][wanted]["staff_uuid"] == ""  # left as it was


def test_under_the_first_reading_a_repeated_create_updates(sm8_sim, job):
    play(sm8_sim, FIRST_READING)
    wanted, staff = _u(), _u()
    raw(sm8_sim, "POST", "joballocation.json", json={"uuid": wanted, "job_uuid": job})
    again = raw(sm8_sim, "POST", "joballocation.json",
                json={"uuid": wanted, "job_uuid": job, "staff_uuid": staff})  # fmt: skip
    assert again.status_code == 200 and again.headers["x-record-uuid"] == wanted
    assert sm8_sim.records["joballocation"][wanted]["staff_uuid"] == staff


@pytest.mark.parametrize("answer", ["conflict", "refused"])
def test_a_create_found_existing_and_ours_is_done_with_one_read(
    sm8: ServiceM8Client, sm8_sim, job, answer
):
    sm8_sim.set_dialect(duplicate_uuid=answer)
    wanted, staff = _u(), _u()
    fields = {"job_uuid": job, "staff_uuid": staff, "active": 1}
    assert sm8.create_allocation(fields, uuid=wanted) == wanted
    sm8_sim.reset_counts()
    assert sm8.create_allocation(fields, uuid=wanted) == wanted
    assert sm8_sim.count("GET", "joballocation.get") == 1
    assert sm8_sim.count("POST", "joballocation.update") == 0


def test_a_create_found_deleted_is_revived_by_one_update(sm8: ServiceM8Client, sm8_sim, job):
    wanted, staff = _u(), _u()
    fields = {"job_uuid": job, "staff_uuid": staff, "active": 1, "allocation_date": "2026-12-07"}
    sm8.create_allocation(fields, uuid=wanted)
    sm8_sim.delete("joballocation", wanted)
    sm8_sim.reset_counts()
    assert sm8.create_allocation(fields, uuid=wanted) == wanted
    assert sm8_sim.count("POST", "joballocation.update") == 1
    assert active(sm8_sim, wanted) == 1


def test_a_create_whose_answer_is_lost_is_repeated_and_read_back(
    sm8: ServiceM8Client, sm8_sim, job
):
    sm8_sim.set_dialect(lost_create_answer_rate=1.0)
    wanted = _u()
    assert sm8.create_allocation({"job_uuid": job, "staff_uuid": _u()}, uuid=wanted) == wanted
    assert sm8_sim.injected["lost_answer"] == 1 and sm8_sim.statuses[409] == 1
    assert len([r for r in sm8_sim.records["joballocation"].values() if r["job_uuid"] == job]) == 1


def test_a_create_without_a_uuid_of_its_own_is_never_answered_exists(sm8: ServiceM8Client, job):
    assert sm8.create_allocation({"job_uuid": job}) != sm8.create_allocation({"job_uuid": job})
