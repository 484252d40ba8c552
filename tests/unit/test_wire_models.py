"""Lenient parsing of both APIs' wire formats (mappings/)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from bridge.coredination.models import CdEvent, CdJob
from bridge.servicem8.models import AllocationWindow, JobAllocation, Staff
from mappings.stamps import format_sm8_stamp, parse_cd_time, parse_sm8_stamp

SYD = ZoneInfo("Australia/Sydney")
ALLOCATION = {
    "uuid": "123e4567-aa11-4415-ac38-23f94bc904db",
    "active": "1",
    "edit_date": "2026-03-01 12:00:00",
    "job_uuid": "123e4567-ef33-4570-9929-23f945326d1b",
    "staff_uuid": "123e4567-e0d8-481f-b4bb-23f944e9c86b",
    "allocation_date": "2026-03-02 00:00:00",
    "allocation_window_uuid": "",
    "expiry_timestamp": "0000-00-00 00:00:00",
    "completion_timestamp": "0000-00-00 00:00:00",
    "queue_uuid": "",
    "estimated_duration": "string",
    "some_future_field": "kept",
}


def test_allocation_reads_stamps_in_the_account_timezone():
    allocation = JobAllocation.from_wire(ALLOCATION, SYD)
    assert allocation.edit_date == datetime(2026, 3, 1, 12, 0, tzinfo=SYD)
    assert allocation.edit_date.astimezone(UTC) == datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    assert allocation.expiry_timestamp is None
    assert allocation.completion_timestamp is None
    assert allocation.allocation_window_uuid is None
    assert allocation.active is True


def test_unknown_fields_are_kept_and_round_trip():
    allocation = JobAllocation.from_wire(ALLOCATION, SYD)
    wire = allocation.to_wire(SYD)
    assert wire["some_future_field"] == "kept"
    assert wire["edit_date"] == "2026-03-01 12:00:00"
    assert wire["expiry_timestamp"] == "0000-00-00 00:00:00"
    assert wire["active"] == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1, True), (0, False), ("1", True), ("0", False), (True, True), (False, False), ("", False)],
)
def test_flags_in_every_observed_form(raw, expected):
    assert Staff.from_wire({"uuid": "u", "active": raw}).active is expected


def test_malformed_flag_is_an_error():
    with pytest.raises(ValidationError):
        Staff.from_wire({"uuid": "u", "active": "maybe"})


def test_impossible_date_is_an_error_not_a_guess():
    with pytest.raises(ValidationError, match="impossible date"):
        JobAllocation.from_wire({**ALLOCATION, "allocation_date": "2026-02-30 00:00:00"}, SYD)


def test_date_only_stamp():
    assert parse_sm8_stamp("2026-03-02", SYD) == datetime(2026, 3, 2, tzinfo=SYD)


def test_format_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        format_sm8_stamp(datetime(2026, 3, 2), SYD)


def test_allocation_window_minutes_arrive_as_strings_too():
    window = AllocationWindow.from_wire({"uuid": "w", "start_time": "480", "end_time": 720})
    assert (window.start_time, window.end_time) == (480, 720)


def test_coredination_epoch_millis_and_dates():
    assert parse_cd_time(1392822122203) == datetime(2014, 2, 19, 15, 2, 2, 203000, tzinfo=UTC)
    assert parse_cd_time("1392822122203") == parse_cd_time(1392822122203)
    assert parse_cd_time("2013-01-01") == datetime(2013, 1, 1, tzinfo=UTC)
    assert parse_cd_time(None) is None


def test_coredination_job_and_event_from_the_documented_example():
    event = CdEvent.model_validate(
        {
            "accuracy": None,
            "comment": None,
            "destinationId": None,
            "discrepancy": False,
            "eventTimeStamp": 1392822122203,
            "id": 3886455,
            "internal": False,
            "latitude": None,
            "longitude": None,
            "newResourceState": None,
            "newState": None,
            "toUserId": None,
            "type": "UPDATE",
            "userId": 2038715,
            "uuid": None,
        }
    )
    assert event.type == "UPDATE" and event.user_id == 2038715
    job = CdJob.model_validate(
        {
            "id": 1,
            "uuid": "0847ed17-b060-4599-a38c-be9a8b9cbb34",
            "title": "Clean garage floor",
            "startTime": 1392822122203,
            "state": "SOMETHING_NEW",
            "resources": [{"userId": 5, "state": "SCHEDULED"}],
            "events": [event.model_dump(by_alias=True)],
        }
    )
    assert job.resource_for(5).state == "SCHEDULED"
    assert job.state == "SOMETHING_NEW"  # unknown states parse; the mapping decides what to do
    assert job.model_dump(by_alias=True)["startTime"] == 1392822122203
