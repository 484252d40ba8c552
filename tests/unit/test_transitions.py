"""Record transitions (``mappings.transitions``), pure: what the bridge learns or writes, and
whether the job must be synced because of it."""

from __future__ import annotations

from dataclasses import replace

from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence
from mappings.state import CdView, JobRecord, PairSnapshot
from mappings.transitions import (
    SyncWrite,
    apply_sync,
    forget_cd,
    ingest_allocations,
    ingest_job,
)

JOB = "f06d3fef-7019-46a0-8381-e88f38c0c8fd"
STAFF = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"


def allocation(n: int = 1, **changes: object) -> AllocationFacts:
    base = AllocationFacts(f"c96fa758-02b0-47f8-86fa-adb10a248c{n:02x}", JOB, STAFF, True,
                           1796043600000, (420, 540), None, None, 1795423605000)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_new_live_allocation_is_a_change():
    record = JobRecord(JOB)
    change = ingest_allocations(record, [allocation()], read_started=1.0)
    assert change is not None and change.dirty and change.write
    assert record.allocations[allocation().uuid] == allocation()


def test_the_bridges_own_booking_met_without_its_write_marker_is_no_persons_change():
    """Found by the chaos run: a worker killed just after creating a booking left no write
    marker; read back, the booking counted as a person's change, and the deletion rule then
    created again a job a dispatcher had deleted. A booking of a uuid the bridge derives is the
    bridge's own from its first sight; any other new booking is a person's."""
    record = JobRecord(JOB)
    ours, theirs = allocation(1, by_bridge=True), allocation(2)
    ingest_allocations(record, [ours, theirs], read_started=1.0)
    assert not record.allocations[ours.uuid].changed_by_person
    assert record.allocations[ours.uuid].own_ms == ours.edited_ms
    assert record.allocations[theirs.uuid].changed_by_person
    # a person's later change to the bridge's booking counts again
    moved = replace(ours, date_ms=1796130000000, edited_ms=1795423705000)
    ingest_allocations(record, [moved], read_started=2.0)
    assert record.allocations[ours.uuid].changed_by_person


def test_an_allocation_deleted_before_the_bridge_saw_it_is_not_kept():
    """Found by the state machine: kept, it made its job known, and the job poll then marked the
    job to sync though nothing of it had changed."""
    record = JobRecord(JOB)
    assert ingest_allocations(record, [allocation(active=False)], read_started=1.0) is None
    assert record.empty


def test_a_re_read_that_only_moved_edit_date_is_no_change():
    record = JobRecord(JOB, allocations={allocation().uuid: allocation()})
    opened = allocation(edited_ms=1795423999000)  # e.g. the booking opened on a phone
    change = ingest_allocations(record, [opened], read_started=1.0)
    assert change is None  # nothing to store: the change time stays when the fields changed
    assert record.allocations[opened.uuid].edited_ms == allocation().edited_ms


def test_a_read_begun_before_our_write_is_ignored_and_a_later_one_settles_it():
    mine = allocation(edited_ms=None, by_bridge=True)
    record = JobRecord(JOB, allocations={mine.uuid: mine}, written={mine.uuid: 100.0})
    assert ingest_allocations(record, [allocation(active=False)], read_started=99.0) is None
    assert record.allocations[mine.uuid] == mine
    change = ingest_allocations(record, [allocation()], read_started=101.0)
    assert change is not None and not change.dirty  # the same state: our own write read back
    assert record.written == {} and record.allocations[mine.uuid].by_bridge


def test_expiry_is_reminded_with_the_earliest_live_expiry():
    record = JobRecord(JOB)
    change = ingest_allocations(
        record, [allocation(1, expires_ms=2_000), allocation(2, expires_ms=1_000),
                 allocation(3, expires_ms=500, active=False)], read_started=1.0
    )  # fmt: skip
    assert change is not None and change.expires_ms == 1_000


def test_job_details_of_an_unknown_job_are_ignored_when_asked():
    details = JobFacts(JOB, True, "1042", "Fix tap", "1 George St", None, None)
    assert ingest_job(JobRecord(JOB), details, only_known=True) is None
    change = ingest_job(JobRecord(JOB), details, only_known=False)
    assert change is not None and change.dirty


def test_a_sync_leaves_markers_view_fingerprint_and_snapshots_and_forget_drops_the_view():
    record = JobRecord(JOB)
    view = CdView(7, "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", {1: "SCHEDULED"})
    snapshot = {STAFF: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}
    apply_sync(record, SyncWrite(JOB, [allocation()], 5.0, view, "abcd", snapshot))
    assert record.written == {allocation().uuid: 5.0} and record.cd == view
    assert record.fields_fp == "abcd" and record.pairs == snapshot
    change = forget_cd(record)
    assert change.dirty and record.cd is None and record.fields_fp is None
