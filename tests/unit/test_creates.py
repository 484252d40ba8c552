"""A create with the bridge's uuid answered "exists": how the answer is classified, and what the
record read back leaves to do (docs/servicem8-api.md#writes). Pure values, no HTTP."""

from __future__ import annotations

import pytest

from bridge.errors import AlreadyExists, PermanentError, Rejected
from bridge.http import Outcome, raise_for
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.creates import UuidNotKept, UuidTaken, existing, made_uuid

JOB = "8d2e4f6a-1b3c-4d5e-8f9a-0b1c2d3e4f5a"
STAFF = "3f0b9c1e-5a7d-4c2b-9e8f-1a2b3c4d5e6f"
OTHER = "11111111-2222-4333-8444-555555555555"
UUID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
SENT = {"job_uuid": JOB, "staff_uuid": STAFF, "active": 1, "allocation_date": "2026-12-07",
        "uuid": UUID}  # fmt: skip
ROW = {"uuid": UUID, "job_uuid": JOB.upper(), "staff_uuid": STAFF, "active": "1",
       "allocation_date": "2026-12-07 00:00:00",
       "completion_timestamp": "0000-00-00 00:00:00"}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (409, '{"errorCode":409,"message":"A record with this UUID already exists"}', "exists"),
        (409, "", "exists"),
        (400, '{"errorCode":400,"message":"Record already exists"}', "exists"),
        (200, '{"success": false, "message": "A record with this UUID already exists"}', "exists"),
        (200, '{"errorCode": 400, "message": "duplicate uuid"}', "exists"),
        (200, '{"errorCode": 0, "message": "OK, already exists"}', "ok"),  # a success stays one
        (400, '{"errorCode":400,"message":"Invalid UUID for uuid"}', "rejected"),
        (403, '{"errorCode":403,"message":"record already exists"}', "auth"),
    ],
)
def test_a_refusal_saying_the_record_exists_is_classified_as_exists(status, body, kind):
    assert classify_servicem8(status, {}, body, None).kind == kind


def test_exists_raises_already_exists_a_rejection():
    with pytest.raises(AlreadyExists) as caught:
        raise_for(Outcome("exists", "HTTP 409: exists"), api="servicem8", status=409,
                  operation="joballocation.create")  # fmt: skip
    assert isinstance(caught.value, Rejected)


def test_ours_and_as_sent_is_done():
    assert existing("joballocation", UUID, SENT, ROW) == {}


def test_ours_but_deleted_or_changed_takes_one_update_with_the_creates_fields():
    deleted = {**ROW, "active": 0}
    assert existing("joballocation", UUID, SENT, deleted) == {
        k: v for k, v in SENT.items() if k != "uuid"
    }
    moved = {**ROW, "allocation_date": "2026-12-08 00:00:00"}
    assert existing("joballocation", UUID, SENT, moved)["allocation_date"] == "2026-12-07"


@pytest.mark.parametrize(
    ("obj", "sent", "row", "named"),
    [
        ("joballocation", SENT, {**ROW, "staff_uuid": OTHER}, "staff_uuid"),
        ("joballocation", SENT, {**ROW, "job_uuid": OTHER}, "job_uuid"),
        (
            "jobactivity",
            {"job_uuid": JOB, "staff_uuid": STAFF, "activity_was_scheduled": 1},
            {
                "job_uuid": JOB,
                "staff_uuid": STAFF,
                "activity_was_scheduled": "0",
                "activity_was_recorded": "1",
            },
            "activity_was_scheduled",
        ),
        ("joballocation", SENT, [], "could not be read back"),
    ],
)
def test_someone_elses_record_is_a_permanent_error_naming_it(obj, sent, row, named):
    with pytest.raises(UuidTaken, match=named) as caught:
        existing(obj, UUID, sent, row)
    assert isinstance(caught.value, PermanentError) and caught.value.record == UUID
    assert UUID in str(caught.value)


def test_the_uuid_made_is_the_one_supplied_or_the_create_fails_loudly():
    assert made_uuid("joballocation", UUID, UUID.upper(), 200) == UUID.upper()
    assert made_uuid("joballocation", UUID, "", 200) == UUID
    assert made_uuid("joballocation", None, OTHER, 200) == OTHER
    with pytest.raises(UuidNotKept, match="did not keep"):
        made_uuid("joballocation", UUID, OTHER, 200)


def test_a_derived_uuid_another_person_holds_gives_way_to_the_next_the_same_each_time():
    from uuid import uuid4

    from mappings.ids import (
        derived_uuids,
        free_derived,
        is_derived,
        sm8_activity_uuid,
        sm8_allocation_uuid,
    )

    ns, job, user = uuid4(), str(uuid4()), 2000001
    first = sm8_allocation_uuid(ns, job, user)
    assert free_derived(sm8_allocation_uuid, ns, job, user, frozenset()) == first
    assert sm8_allocation_uuid(ns, job, user, 1) == first  # the uuid every release derived
    taken = frozenset({first, sm8_allocation_uuid(ns, job, user, 2)})
    third = free_derived(sm8_allocation_uuid, ns, job, user, taken)
    assert third == sm8_allocation_uuid(ns, job, user, 3)
    assert free_derived(sm8_allocation_uuid, ns, job, user, taken) == third  # a repeat lands on it
    assert {first, third, sm8_activity_uuid(ns, job, user, 2)} <= derived_uuids(ns, job, user)
    assert sm8_allocation_uuid(uuid4(), job, user) not in derived_uuids(ns, job, user)
    assert is_derived(sm8_allocation_uuid, ns, job, user, third)
    assert not is_derived(sm8_activity_uuid, ns, job, user, third)  # the other kind's
    assert not is_derived(sm8_allocation_uuid, ns, job, user, str(uuid4()))
