"""Every ServiceM8Client method against the simulator over loopback."""

from __future__ import annotations

import json
import uuid as uuidlib
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from bridge.errors import NotFound, Rejected
from bridge.servicem8 import ServiceM8Client, where

SYD = ZoneInfo("Australia/Sydney")


def _u() -> str:
    return str(uuidlib.uuid4())


@pytest.fixture
def seeded(sm8_sim):
    job, staff, window = _u(), _u(), _u()
    sm8_sim.seed(
        {
            "job": [
                {
                    "uuid": job,
                    "status": "Work Order",
                    "job_address": "1 George St, Sydney",
                    "job_description": "Replace hot water unit",
                }
            ],
            "staff": [
                {"uuid": staff, "first": "Ava", "last": "Nguyen", "email": "Ava@Example.com"}
            ],
            "allocationwindow": [
                {"uuid": window, "name": "Morning", "start_time": 480, "end_time": 720}
            ],
        }
    )
    return {"job": job, "staff": staff, "window": window}


def test_vendor_and_timezone(sm8: ServiceM8Client):
    vendor = sm8.vendor()
    assert vendor.timezone_name == "Australia/Sydney"
    assert sm8.tz == ZoneInfo("Australia/Sydney")


def test_allocation_lifecycle(sm8: ServiceM8Client, sm8_sim, seeded):
    wanted = _u()
    got = sm8.create_allocation(
        {
            "job_uuid": seeded["job"],
            "staff_uuid": seeded["staff"],
            "allocation_date": datetime(2026, 12, 1, tzinfo=SYD),
            "allocation_window_uuid": seeded["window"],
        },
        uuid=wanted,
    )
    assert got == wanted
    allocation = sm8.get_allocation(wanted)
    assert allocation.staff_uuid == seeded["staff"]
    assert allocation.allocation_date == datetime(2026, 12, 1, tzinfo=SYD)
    assert allocation.edit_date is not None and allocation.active

    sm8.update_allocation(wanted, {"completion_timestamp": datetime(2026, 12, 1, 15, tzinfo=SYD)})
    assert sm8.get_allocation(wanted).completion_timestamp == datetime(2026, 12, 1, 15, tzinfo=SYD)
    assert sm8.get_allocation(wanted).staff_uuid == seeded["staff"]  # untouched by the update

    sm8.delete_allocation(wanted)
    assert sm8.get_allocation(wanted).active is False  # soft delete
    assert [a.uuid for a in sm8.iter_allocations(where("active", "eq", 0))] == [wanted]


def test_create_without_uuid_reads_x_record_uuid(sm8: ServiceM8Client, seeded):
    made = sm8.create_allocation({"job_uuid": seeded["job"], "staff_uuid": seeded["staff"]})
    assert uuidlib.UUID(made)
    assert sm8.get_allocation(made).job_uuid == seeded["job"]


def test_get_missing_is_not_found(sm8: ServiceM8Client):
    with pytest.raises(NotFound):
        sm8.get_allocation(_u())


def test_invalid_stamp_is_rejected(sm8: ServiceM8Client, seeded):
    with pytest.raises(Rejected):
        sm8.create_allocation({"job_uuid": seeded["job"], "allocation_date": "1 December"})


def test_jobs_staff_windows(sm8: ServiceM8Client, seeded):
    job = sm8.get_job(seeded["job"])
    assert job.job_address == "1 George St, Sydney" and job.status == "Work Order"
    assert [j.uuid for j in sm8.iter_jobs(where("status", "eq", "Work Order"))] == [seeded["job"]]
    assert list(sm8.iter_jobs(where("status", "eq", "Quote"))) == []
    staff = sm8.list_staff(where("active", "eq", 1))
    assert [(s.uuid, s.email) for s in staff] == [(seeded["staff"], "Ava@Example.com")]
    windows = sm8.list_allocation_windows()
    assert [(w.name, w.start_time, w.end_time) for w in windows] == [("Morning", 480, 720)]


def test_twelve_thousand_allocations_in_exactly_twelve_pages_of_1000(sm8: ServiceM8Client, sm8_sim):
    job = _u()
    sm8_sim.seed({"joballocation": [{"uuid": _u(), "job_uuid": job} for _ in range(12_000)]})
    assert sm8_sim.page_size == 1000  # as live probes found (docs/servicem8-api.md#paging)
    assert sm8.tz  # the account timezone is read once per process, before this count starts
    sm8_sim.reset_counts()
    uuids = [a.uuid for a in sm8.iter_allocations()]
    assert len(uuids) == 12_000 == len(set(uuids))
    assert sm8_sim.count("GET", "joballocation.list") == 12 == sm8.pages["joballocation.list"]
    assert sm8_sim.count() == 12


def test_filter_edit_date_and_active_returns_exactly_the_matching_records(sm8, sm8_sim):
    job = _u()
    clock = [1_790_000_000.0]
    sm8_sim._base_clock = lambda: clock[0]
    early = [_u() for _ in range(3)]
    sm8_sim.seed({"joballocation": [{"uuid": u, "job_uuid": job} for u in early]})
    clock[0] += 120
    cut = sm8_sim.stamp()
    clock[0] += 1
    late_active = [_u() for _ in range(4)]
    late_deleted = [_u() for _ in range(2)]
    sm8_sim.seed({"joballocation": [{"uuid": u, "job_uuid": job} for u in late_active]})
    sm8_sim.seed(
        {"joballocation": [{"uuid": u, "job_uuid": job, "active": 0} for u in late_deleted]}
    )
    found = [
        a.uuid for a in sm8.iter_allocations(where("edit_date", "gt", cut).where("active", "eq", 1))
    ]
    assert found == late_active


def test_a_quote_in_a_value_cannot_break_out_of_the_filter(sm8, sm8_sim):
    sneaky = "x' or active eq '0"
    plain, tricky = _u(), _u()
    sm8_sim.seed(
        {
            "job": [
                {"uuid": plain, "status": "Quote", "job_description": "x"},
                {"uuid": tricky, "status": "Quote", "job_description": sneaky},
            ]
        }
    )
    found = [j.uuid for j in sm8.iter_jobs(where("job_description", "eq", sneaky))]
    assert found == [tricky]
    assert [j.uuid for j in sm8.iter_jobs(where("job_description", "eq", "x"))] == [plain]


def test_object_webhook_subscription_handshake_delivery_and_delete(sm8, sm8_sim, seeded, receiver):
    """Job activities can be subscribed; job allocations cannot (tests/adapters/
    test_servicem8_dialects.py plays both readings)."""
    sm8.subscribe_object("jobactivity", ["staff_uuid", "start_date", "active"], receiver.url)
    subs = sm8.list_subscriptions()
    assert [(s["object"], s["callback_url"]) for s in subs] == [("jobactivity", receiver.url)]
    made = sm8.create_activity(
        {"job_uuid": seeded["job"], "staff_uuid": seeded["staff"], "activity_was_scheduled": 1}
    )
    posts = receiver.wait(1)
    body = json.loads(posts[0]["body"])
    assert body["object"] == "jobactivity"
    assert body["entry"][0]["uuid"] == made
    assert "staff_uuid" in body["entry"][0]["changed_fields"]
    assert body["resource_url"].endswith(f"/jobactivity/{made}.json")
    assert subs[0]["active"] == 1 and subs[0]["last_failure_reason"] == ""
    sm8.delete_subscription(subs[0]["uuid"])
    assert sm8.list_subscriptions() == []


def test_subscription_fails_when_the_callback_does_not_answer_the_challenge(sm8):
    with pytest.raises(Rejected):
        sm8.subscribe_object("job", ["job_description"], "http://127.0.0.1:9/nothing-here")


def test_fixed_booking_lifecycle(sm8: ServiceM8Client, sm8_sim, seeded):
    """Job activities: create with our own uuid, list by filter, update, soft delete."""
    wanted = _u()
    start, end = datetime(2026, 12, 1, 9, tzinfo=SYD), datetime(2026, 12, 1, 11, tzinfo=SYD)
    got = sm8.create_activity(
        {"job_uuid": seeded["job"], "staff_uuid": seeded["staff"], "start_date": start,
         "end_date": end, "activity_was_scheduled": True},
        uuid=wanted,
    )  # fmt: skip
    assert got == wanted
    assert sm8_sim.records["jobactivity"][wanted]["start_date"] == "2026-12-01 09:00:00"
    booking = sm8.get_activity(wanted)
    assert (booking.start_date, booking.end_date, booking.is_booking) == (start, end, True)
    listed = list(sm8.iter_activities(where("job_uuid", "eq", seeded["job"])))
    assert [a.uuid for a in listed] == [wanted]
    sm8.update_activity(wanted, {"start_date": start.replace(hour=13)})
    assert sm8.get_activity(wanted).start_date == start.replace(hour=13)
    sm8.delete_activity(wanted)
    assert not sm8.get_activity(wanted).active


def test_time_worked_is_an_activity_but_no_booking(sm8: ServiceM8Client, sm8_sim, seeded):
    recorded = sm8.create_activity(
        {"job_uuid": seeded["job"], "staff_uuid": seeded["staff"], "activity_was_recorded": 1,
         "start_date": "2026-11-20 08:00:00", "end_date": "2026-11-20 09:30:00"}
    )  # fmt: skip
    assert not sm8.get_activity(recorded).is_booking
    with pytest.raises(Rejected, match="both scheduled and recorded"):
        sm8.create_activity(
            {"job_uuid": seeded["job"], "activity_was_scheduled": 1, "activity_was_recorded": 1}
        )


def test_opening_a_booking_moves_edit_date_and_a_move_resets_it(sm8, sm8_sim, seeded):
    uuid = sm8.create_activity(
        {"job_uuid": seeded["job"], "staff_uuid": seeded["staff"], "activity_was_scheduled": 1,
         "start_date": "2026-12-01 09:00:00", "end_date": "2026-12-01 11:00:00"}
    )  # fmt: skip
    before = sm8.get_activity(uuid)
    sm8_sim.clock_offset += 60
    sm8_sim.open_booking("jobactivity", uuid)
    opened = sm8.get_activity(uuid)
    assert opened.has_been_opened and opened.has_been_opened_timestamp is not None
    assert opened.edit_date > before.edit_date  # an edit, though nothing a booking says changed
    assert (opened.start_date, opened.staff_uuid) == (before.start_date, before.staff_uuid)
    sm8.update_activity(uuid, {"start_date": "2026-12-01 13:00:00"})
    moved = sm8.get_activity(uuid)
    assert not moved.has_been_opened and moved.has_been_opened_timestamp is None
