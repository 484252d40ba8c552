"""The read-back and hold rules (``mappings.readback``, ``mappings.plan``), and the deletion
rule's two times: pure, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mappings.facts import AllocationFacts
from mappings.plan import PairPlan, booked_since, deleted_since, hold
from mappings.presence import Presence
from mappings.readback import ResourceOp, read_back
from mappings.state import CdView, JobRecord, PairSnapshot

JOB = "4f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6"
STAFF = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"


@pytest.mark.parametrize(
    ("op", "before", "uncertain"),
    [
        ("schedule", "FINISHED", True),
        ("schedule", "finished", True),
        ("assign", "ACCEPTED", True),
        ("assign", "STARTED", True),
        ("schedule", "PAUSED", True),
        ("schedule", None, False),  # a new resource: nobody can be at work there yet
        ("schedule", "DECLINED", False),
        ("schedule", "ASSIGNED", True),  # the view may not know the worker accepted since
        ("assign", "SCHEDULED", True),
        ("unschedule", "FINISHED", False),  # taking someone off is documented
        ("unassign", "ACCEPTED", False),
    ],
)
def test_which_operations_are_read_back(op, before, uncertain):
    assert ResourceOp(7, op, None, before=before).uncertain is uncertain


@pytest.mark.parametrize(
    ("op", "after", "before", "seen", "outcome"),
    [
        ("schedule", "SCHEDULED", "FINISHED", "SCHEDULED", "took"),
        ("schedule", "SCHEDULED", "FINISHED", "FINISHED", "ignored"),
        ("assign", "ASSIGNED", "ACCEPTED", "ACCEPTED", "ignored"),
        ("assign", "ASSIGNED", "ACCEPTED", "DECLINED", "moved"),  # the worker declined meanwhile
        ("schedule", "SCHEDULED", None, None, "ignored"),  # a lost request: not done
        ("schedule", "SCHEDULED", None, "ACCEPTED", "took"),  # done, and accepted at once
        ("unschedule", None, "SCHEDULED", None, "took"),
        ("unschedule", None, "SCHEDULED", "UNASSIGNED", "took"),
        ("unschedule", None, "SCHEDULED", "SCHEDULED", "ignored"),
    ],
)
def test_what_a_read_back_says_of_the_operation(op, after, before, seen, outcome):
    assert read_back(ResourceOp(7, op, after, before=before), seen) == outcome


@pytest.mark.parametrize(
    ("seen", "sm8", "cd", "says"),
    [
        ("FINISHED", Presence.SCHEDULED, Presence.FINISHED, "return visit"),
        ("ACCEPTED", Presence.ASSIGNED, Presence.SCHEDULED, "keeps the user ACCEPTED (at work)"),
    ],
)
def test_a_hold_keeps_both_sides_as_they_are_and_says_why(seen, sm8, cd, says):
    plan = PairPlan(STAFF, 7, snapshot=PairSnapshot(sm8, Presence.SCHEDULED))
    hold(plan, seen)
    assert plan.snapshot == PairSnapshot(sm8, cd, held=True)
    assert plan.park is not None and plan.park.who == STAFF and says in (plan.park.reason or "")
    assert plan.skipped == "held.at_work"


def _booking(edited_ms: int | None) -> AllocationFacts:
    return AllocationFacts(uuid="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", job_uuid=JOB,
                           staff_uuid=STAFF, active=True, date_ms=None, window=None,
                           completed_ms=None, expires_ms=None, edited_ms=edited_ms)  # fmt: skip


@pytest.mark.parametrize(
    ("edited_ms", "since_ms", "booked"),
    [
        (None, 5_000, False),
        (3_000, 5_000, False),
        (4_000, 5_000, False),
        (4_001, 5_000, True),  # within the second before: ServiceM8 stamps whole seconds
        (5_000, 5_000, True),
        (9_000, 5_000, True),
    ],
)
def test_a_servicem8_change_after_the_deletion(edited_ms, since_ms, booked):
    record = JobRecord(JOB, allocations={"a": _booking(edited_ms)})
    assert booked_since(record, since_ms) is booked


def test_the_deletion_is_dated_by_the_last_change_the_bridge_knew_of():
    view = CdView(id=1, uuid="x", changed_ms={7: 2_000, 8: 6_000}, modified_ms=4_000)
    assert deleted_since(view) == 6_000
    assert deleted_since(CdView(id=1, uuid="x")) == 0  # nothing known: every change counts
    # The bridge's own write read back (a pull) carries ServiceM8's stamp of that write: never
    # a person's change after the deletion.
    ours = replace(_booking(9_000), by_bridge=True, own_ms=9_000)
    record = JobRecord(JOB, allocations={ours.uuid: ours, "b": replace(_booking(5_000), uuid="b")})
    assert booked_since(record, 3_000)  # the office's booking, at 5 s, counts
    assert not booked_since(record, 6_000)
    edited = replace(ours, edited_ms=12_000)  # the office moved the bridge's booking since
    assert booked_since(JobRecord(JOB, allocations={ours.uuid: edited}), 9_000)
