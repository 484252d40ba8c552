"""The mapping rules, table-driven over one realistic fixture per variant, plus property tests
that a ServiceM8 → Coredination → ServiceM8 round trip is stable."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.servicem8.models import AllocationWindow, Job, JobAllocation
from bridge.servicem8.translate import allocation_facts, job_facts
from mappings.decision import Side, decide
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, connection_namespace, sm8_allocation_uuid
from mappings.jobfields import allocation_time, cd_job_body, job_time
from mappings.planners import Slot, cd_state_after, pull_writes, push_op, redundant_writes
from mappings.presence import Presence, cd_presence, in_step, sm8_presence
from mappings.stamps import to_epoch_ms
from mappings.state import PairSnapshot

SYD = ZoneInfo("Australia/Sydney")
NOW = int(datetime(2026, 11, 23, 9, tzinfo=SYD).timestamp() * 1000)
JOB = "4f1c2a70-1b2c-4d3e-8f90-a1b2c3d4e5f6"
STAFF = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
FIXED = "00000000-0000-4000-8000-00000000f1ed"  # the derived uuid of a fixed booking
MORNING = AllocationWindow.from_wire(
    {
        "uuid": "11111111-2222-4333-8444-555555555555",
        "name": "Morning",
        "start_time": 480,
        "end_time": 720,
    }
)
BASE = {
    "uuid": "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
    "active": 1,
    "job_uuid": JOB,
    "staff_uuid": STAFF,
    "edit_date": "2026-11-20 10:00:00",
}


def facts(window: AllocationWindow | None = None, **wire: object) -> AllocationFacts:
    return allocation_facts(JobAllocation.from_wire({**BASE, **wire}, SYD), window)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=SYD).timestamp() * 1000)


VARIANTS = {
    "date and window": (
        facts(MORNING, allocation_date="2026-12-01 00:00:00", allocation_window_uuid=MORNING.uuid),
        Presence.SCHEDULED,
        (ms(2026, 12, 1, 8), ms(2026, 12, 1, 12), False),
    ),
    "date only": (
        facts(allocation_date="2026-12-01 00:00:00"),
        Presence.SCHEDULED,
        (ms(2026, 12, 1), ms(2026, 12, 1), True),
    ),
    "date with a time": (
        facts(allocation_date="2026-12-01 13:30:00"),
        Presence.SCHEDULED,
        (ms(2026, 12, 1, 13, 30), None, False),
    ),
    "no date": (
        facts(allocation_date="0000-00-00 00:00:00"),
        Presence.ASSIGNED,
        (None, None, False),
    ),
    "soft-deleted": (
        facts(active=0, allocation_date="2026-12-01 00:00:00"),
        Presence.ABSENT,
        (None, None, False),
    ),
    "expired": (
        facts(allocation_date="2026-11-01 00:00:00", expiry_timestamp="2026-11-02 00:00:00"),
        Presence.ABSENT,
        (None, None, False),
    ),
    "not yet expired": (
        facts(allocation_date="2026-12-01 00:00:00", expiry_timestamp="2026-12-02 00:00:00"),
        Presence.SCHEDULED,
        (ms(2026, 12, 1), ms(2026, 12, 1), True),
    ),
    "completed": (
        facts(allocation_date="2026-11-20 00:00:00", completion_timestamp="2026-11-20 15:00:00"),
        Presence.FINISHED,
        (ms(2026, 11, 20), ms(2026, 11, 20), True),
    ),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_allocation_variant(name):
    fact, presence, (start, end, all_day) = VARIANTS[name]
    assert sm8_presence([fact], NOW) == presence
    when = job_time([fact], SYD, NOW)
    assert (_ms(when.start), _ms(when.end), when.all_day) == (start, end, all_day)


def _ms(value):
    return None if value is None else int(value.timestamp() * 1000)


def test_window_past_midnight_ends_next_day():
    late = AllocationWindow.from_wire({"uuid": "w", "start_time": 1320, "end_time": 120})
    when = allocation_time(facts(late, allocation_date="2026-12-01 00:00:00"), SYD)
    assert (_ms(when.start), _ms(when.end)) == (ms(2026, 12, 1, 22), ms(2026, 12, 2, 2))


def test_several_allocations_the_earliest_live_one_sets_the_time():
    later = facts(
        allocation_date="2026-12-05 00:00:00", uuid="b" * 8 + "-bbbb-4bbb-8bbb-" + "b" * 12
    )
    earlier_deleted = facts(
        active=0,
        allocation_date="2026-11-25 00:00:00",
        uuid="c" * 8 + "-cccc-4ccc-8ccc-" + "c" * 12,
    )
    earliest = facts(
        MORNING, allocation_date="2026-12-02 00:00:00", uuid="d" * 8 + "-dddd-4ddd-8ddd-" + "d" * 12
    )
    when = job_time([later, earlier_deleted, earliest], SYD, NOW)
    assert _ms(when.start) == ms(2026, 12, 2, 8)


def test_bridge_made_allocations_do_not_set_the_time():
    own = facts(allocation_date="2026-11-24 00:00:00")
    own = AllocationFacts(**{**own.__dict__, "by_bridge": True})
    assert job_time([own], SYD, NOW).start is None


def test_job_body_fields():
    job = job_facts(
        Job.from_wire(
            {
                "uuid": JOB,
                "status": "Work Order",
                "generated_job_id": "1042",
                "job_description": "Replace hot water unit\nCall ahead",
                "job_address": "1 George St, Sydney NSW",
                "lat": "-33.86",
                "lng": "151.2",
            },
            SYD,
        )
    )
    body = cd_job_body(job, [VARIANTS["date and window"][0]], SYD, NOW)
    assert body["title"] == "#1042 Replace hot water unit"
    assert body["description"] == "Replace hot water unit\nCall ahead"
    assert body["startTime"] == ms(2026, 12, 1, 8) and body["allDay"] is False
    assert body["destinations"] == [
        {
            "location": {
                "placeName": "1 George St, Sydney NSW",
                "latitude": -33.86,
                "longitude": 151.2,
            }
        }
    ]


@pytest.mark.parametrize(
    ("state", "presence"),
    [
        (None, Presence.ABSENT),
        ("UNASSIGNED", Presence.ABSENT),
        ("DECLINED", Presence.ABSENT),
        ("CANCELED", Presence.ABSENT),
        ("ASSIGNED", Presence.ASSIGNED),
        ("SCHEDULED", Presence.SCHEDULED),
        ("ACCEPTED", Presence.SCHEDULED),
        ("STARTED", Presence.SCHEDULED),
        ("FINISHED", Presence.FINISHED),
        ("TELEPORTED", None),
    ],
)
def test_coredination_resource_states(state, presence):
    assert cd_presence(state) == presence


S, A, F, X = Presence.SCHEDULED, Presence.ASSIGNED, Presence.FINISHED, Presence.ABSENT


@pytest.mark.parametrize(
    ("snapshot", "sm8", "cd", "action", "target"),
    [
        (None, Side(S, 1), Side(X), "push", S),  # new in ServiceM8
        (None, Side(X), Side(S, 1), "pull", S),  # new in Coredination
        (None, Side(S, 5), Side(S, 9), "in_step", None),
        (PairSnapshot(S, S), Side(X, 10), Side(S, 1), "push", X),  # deleted in ServiceM8
        (PairSnapshot(S, S), Side(S, 1), Side(X, 10), "pull", X),  # unscheduled in Coredination
        (PairSnapshot(S, S), Side(S, 1), Side(F, 10), "pull", F),  # finished in Coredination
        (PairSnapshot(S, S), Side(X, 10), Side(A, 20), "pull", A),  # both: Coredination later
        (PairSnapshot(S, S), Side(A, 30), Side(X, 20), "push", A),  # both: ServiceM8 later
        (PairSnapshot(S, S), Side(A, 20), Side(X, 20), "push", A),  # tie: ServiceM8
        (PairSnapshot(F, S), Side(F, 1), Side(S, 1), "in_step", None),  # finished ≈ present
    ],
)
def test_decide(snapshot, sm8, cd, action, target):
    decision = decide(snapshot, sm8, cd)
    assert (decision.action, decision.target) == (action, target)


def test_tie_rule_can_favour_coredination():
    decision = decide(PairSnapshot(S, S), Side(A, 20), Side(X, 20), tie="coredination")
    assert (decision.action, decision.target) == ("pull", X)


@pytest.mark.parametrize(
    ("target", "cd_now", "dated", "op"),
    [
        (S, X, True, "schedule"),
        (A, S, False, "assign"),
        (X, S, True, "unschedule"),
        (X, A, False, "unassign"),
        (X, X, False, None),
        (F, X, True, "schedule"),
        (F, X, False, "assign"),
        (F, S, True, None),
    ],
)
def test_push_op(target, cd_now, dated, op):
    assert push_op(target, cd_now, dated) == op


# --- round trip -----------------------------------------------------------------------------------

NS = connection_namespace("roundtrip")
CD_JOB = cd_job_uuid(NS, JOB)
USER = 4242
DERIVED = sm8_allocation_uuid(NS, CD_JOB, USER)

allocation_strategy = st.builds(
    lambda active, dated, windowed, completed, expired: AllocationFacts(
        uuid="eeeeeeee-0000-4000-8000-000000000001",
        job_uuid=JOB,
        staff_uuid=STAFF,
        active=active,
        date_ms=ms(2026, 12, 3) if dated else None,
        window=(480, 720) if windowed and dated else None,
        completed_ms=ms(2026, 12, 3, 15) if completed else None,
        expires_ms=(ms(2026, 11, 1) if expired else ms(2027, 1, 1)),
        edited_ms=ms(2026, 11, 20),
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


def _cd_after_push(sm8: Presence, dated: bool) -> Presence:
    op = push_op(sm8, Presence.ABSENT, dated)
    return cd_presence(cd_state_after(op)) if op else Presence.ABSENT


@given(st.lists(allocation_strategy, max_size=1))
def test_round_trip_is_stable(pair):
    """Push a pair to Coredination, then read Coredination back: the decision is 'in step' and
    pulling writes nothing, so no change can bounce between the systems."""
    sm8 = sm8_presence(pair, NOW)
    dated = any(a.date_ms is not None for a in pair if a.live(NOW))
    cd = _cd_after_push(sm8, dated)
    assert in_step(sm8, cd)
    assert decide(PairSnapshot(sm8, cd), Side(sm8, 1), Side(cd, 2)).action == "in_step"
    writes = pull_writes(
        cd,
        pair,
        job_uuid=JOB,
        staff_uuid=STAFF,
        derived=(DERIVED, FIXED),
        slot=Slot(day=datetime(2026, 12, 3, tzinfo=UTC)),
        finished_at=None,
        now_ms=NOW,
    )
    if sm8 != Presence.FINISHED:
        assert writes == []


@given(st.sampled_from([S, A, F, X]), st.lists(allocation_strategy, max_size=1))
def test_pull_then_read_back_is_in_step(target, pair):
    """Whatever Coredination says, the ServiceM8 writes we make bring ServiceM8 in step with it."""
    writes = pull_writes(
        target,
        pair,
        job_uuid=JOB,
        staff_uuid=STAFF,
        derived=(DERIVED, FIXED),
        slot=Slot(day=datetime(2026, 12, 3, tzinfo=UTC)),
        finished_at=datetime(2026, 12, 3, 15, tzinfo=UTC),
        now_ms=NOW,
    )
    from mappings.planners import after_write as _after

    by_uuid = {a.uuid: a for a in pair}
    for write in writes:
        by_uuid[write.uuid] = _after(by_uuid.get(write.uuid), write, JOB, STAFF)
    after = sm8_presence(by_uuid.values(), NOW)
    assert in_step(after, target) or (after, target) == (F, S)
    assert all(w.uuid == DERIVED for w in writes if w.kind == "create")


def _ours(**wire: object) -> AllocationFacts:
    return replace(facts(uuid="cccccccc-bbbb-4ccc-8ddd-eeeeeeeeeeee", **wire), by_bridge=True)


@pytest.mark.parametrize(
    ("pair", "deleted"),
    [
        ([facts(allocation_date="2026-12-01 00:00:00")], []),  # theirs alone
        ([_ours(allocation_date="2026-12-01 00:00:00")], []),  # ours alone
        # A double booking: ours goes, theirs stays, the pair is still scheduled.
        ([facts(allocation_date="2026-12-01 00:00:00"),
          _ours(allocation_date="2026-12-02 00:00:00")], ["cccccccc-bbbb-4ccc-8ddd-eeeeeeeeeeee"]),
        # Theirs has no date but ours does: the date moves to theirs, then ours goes.
        ([facts(), _ours(allocation_date="2026-12-02 00:00:00")],
         ["update aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee", "cccccccc-bbbb-4ccc-8ddd-eeeeeeeeeeee"]),
        # Theirs is finished and ours is not: left as it is.
        ([facts(allocation_date="2026-12-01 00:00:00", completion_timestamp="2026-12-01 10:00:00"),
          _ours(allocation_date="2026-12-02 00:00:00")], []),
        # Theirs is deleted: ours is the only live one and stays.
        ([facts(active=0), _ours(allocation_date="2026-12-02 00:00:00")], []),
    ],
    ids=["theirs alone", "ours alone", "double booking", "ours carries the date", "theirs done",
         "theirs gone"],
)  # fmt: skip
def test_redundant_writes_drop_only_our_own_double_booking(pair, deleted):
    writes = redundant_writes(pair, ms(2026, 11, 23, 12))
    expected = [tuple(u.split()) if " " in u else ("delete", u) for u in deleted]
    assert [(w.kind, w.uuid) for w in writes] == expected
    for w in writes:
        if w.kind == "update":  # the date it carries is ours, 2026-12-02 in the account's zone
            assert to_epoch_ms(w.fields["allocation_date"]) == ms(2026, 12, 2)


@pytest.mark.parametrize("target", [A, S, F])
def test_reviving_our_own_deleted_allocation_says_every_field_the_presence_reads(target):
    """Found by the state machine: the bridge's allocation, dated once and then deleted in
    ServiceM8, is revived when the dispatcher assigns the person again; the revival must clear
    the old date, or ServiceM8 shows the person scheduled while Coredination says assigned."""
    from mappings.planners import after_write

    old = replace(facts(uuid=DERIVED, active=0, allocation_date="2026-11-23 00:00:00"),
                  by_bridge=True)  # fmt: skip
    start = datetime(2026, 12, 3, tzinfo=UTC)
    writes = pull_writes(target, [old], job_uuid=JOB, staff_uuid=STAFF, derived=(DERIVED, FIXED),
                         slot=Slot(day=start), finished_at=start, now_ms=NOW)  # fmt: skip
    assert [(w.kind, w.uuid) for w in writes] == [("update", DERIVED)]
    revived = after_write(old, writes[0], JOB, STAFF)
    assert sm8_presence([revived], NOW) == target


def test_a_finished_visit_is_history_next_to_an_open_booking():
    """Found by the state machine: a dated, completed visit and a new undated booking are an
    assigned person, not a scheduled one; pulling scheduled dates the open booking only."""
    done = facts(allocation_date="2026-11-24 00:00:00", completion_timestamp="2026-11-24 10:00:00")
    new = facts(uuid="bbbbbbbb-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    assert sm8_presence([done, new], NOW) == A
    start = datetime(2026, 12, 3, tzinfo=UTC)
    writes = pull_writes(S, [done, new], job_uuid=JOB, staff_uuid=STAFF,
                         derived=(DERIVED, FIXED), slot=Slot(day=start), finished_at=None,
                         now_ms=NOW)  # fmt: skip
    assert [(w.uuid, w.fields) for w in writes] == [(new.uuid, {"allocation_date": start})]
