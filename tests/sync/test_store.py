"""The link store's job records on real Redis: concurrent writers never undo each other, the
dirty mark travels with the change, reverse links find the job, a damaged record does not block."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, replace

import msgpack
import pytest

from bridge.records import FORMAT, CdView, JobRecord, NewerRecord
from bridge.store import Change, Store, StoreBusy
from mappings.rules import AllocationFacts, JobFacts, PairSnapshot, Presence

JOB = "f06d3fef-7019-46a0-8381-e88f38c0c8fd"
STAFF = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"


def allocation(n: int, **changes: object) -> AllocationFacts:
    base = AllocationFacts(f"c96fa758-02b0-47f8-86fa-adb10a248c{n:02x}", JOB, STAFF, True,
                           1796043600000, (420, 540), None, None, 1795423605000)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_record_changed_between_read_and_write_is_read_again(store: Store) -> None:
    store.ingest_allocations([allocation(1)])
    calls = []

    def change(record: JobRecord) -> Change:
        calls.append(len(record.allocations))
        if len(calls) == 1:  # another writer (a poll, say) gets in first
            store.ingest_allocations([allocation(2)])
        record.pairs[STAFF] = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
        return Change(record.uuid)

    store._update([JOB], change)
    record = store.load_job(JOB)
    assert calls == [1, 2]
    assert set(record.allocations) == {allocation(1).uuid, allocation(2).uuid}
    assert record.pairs == {STAFF: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}


def test_parallel_writers_on_one_record_lose_nothing(store: Store) -> None:
    def ingest(n: int) -> None:
        for i in range(20):
            store.ingest_allocations([allocation(n * 20 + i)])

    def sync() -> None:
        for i in range(40):
            store.save_sync(JOB, pairs={f"s{i}": PairSnapshot(Presence.ABSENT, Presence.ABSENT)})

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=sync))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.load_job(JOB)
    assert len(record.allocations) == 60 and len(record.pairs) == 40


def test_a_change_and_its_dirty_mark_go_together(store: Store) -> None:
    assert store.ingest_allocations([allocation(1)]) == {JOB}
    assert store.dirty() == {JOB: 1}
    # A re-read with only a new edit_date is stored quietly: no dirty mark.
    assert store.ingest_allocations([allocation(1, edited_ms=1795423609000)]) == set()
    assert store.dirty() == {JOB: 1}
    assert store.load_job(JOB).allocations[allocation(1).uuid].edited_ms == 1795423609000
    assert store.ingest_allocations([allocation(1, active=False)]) == {JOB}
    assert store.dirty() == {JOB: 2}
    assert store.ingest_jobs([JobFacts(JOB, True, "1", "Fix", None, None, None)]) == {JOB}
    assert store.ingest_jobs([JobFacts(JOB, True, "1", "Fix", None, None, None)]) == set()
    other = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    assert store.ingest_jobs([JobFacts(other, True, "2", None, None, None, None)],
                             only_known=True) == set()  # fmt: skip
    assert not store.has_job(other) and store.has_job(JOB) and store.known_jobs() == [JOB]


def test_expiry_reminder_is_set_with_the_record(store: Store) -> None:
    store.ingest_allocations([allocation(1, expires_ms=1796000000000)])
    assert store.due_expiries(1795999999999) == set()
    assert store.due_expiries(1796000000000) == {JOB}


def test_our_own_write_is_not_undone_by_an_older_read(store: Store) -> None:
    mine = allocation(1, staff_uuid=STAFF, by_bridge=True, edited_ms=None)
    store.save_sync(JOB, written=[mine], at=100.0)
    stale = allocation(1, active=False)
    assert store.ingest_allocations([stale], read_started=99.0) == set()  # began before our write
    assert store.load_job(JOB).allocations[mine.uuid] == mine
    fresh = allocation(1, edited_ms=1795423700000)
    assert store.ingest_allocations([fresh], read_started=101.0) == set()  # settles the marker
    record = store.load_job(JOB)
    assert record.written == {} and record.allocations[mine.uuid].by_bridge


def test_reverse_links_by_uuid_and_by_id(store: Store) -> None:
    view = CdView(100045, store.cd_uuid(JOB), {2000001: "SCHEDULED"}, {2000001: 1795423606162})
    store.save_cd(JOB, view, "abb4a15100823937")
    assert store.dirty() == {}
    assert store.job_for_cd(view.uuid) == JOB
    assert store.job_for_cd(view.uuid.upper()) == JOB
    assert store.job_for_cd(100045) == JOB and store.job_for_cd("100045") == JOB
    for unknown in ("100046", "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", "not-a-ref", ""):
        assert store.job_for_cd(unknown) is None
    assert store.cd_views([JOB]) == {JOB: view}
    assert store.load_job(JOB).fields_fp == "abb4a15100823937"
    store.save_cd(JOB, replace(view, resources={}), dirty=True)  # a pull that found a change
    assert store.dirty() == {JOB: 1} and store.cd_views([JOB])[JOB].resources == {}
    store.forget_cd(JOB)
    assert store.load_job(JOB).cd is None and store.load_job(JOB).fields_fp is None
    assert store.dirty() == {JOB: 2}


def test_a_damaged_record_is_listed_and_read_as_empty_until_written_again(store: Store) -> None:
    store.ingest_allocations([allocation(1)])
    key, field = store._job_slot(JOB)
    store.r.hset(key, field, b"\x93not a record")
    assert store.load_job(JOB) == JobRecord(JOB)
    assert "cannot be read" in store.invalid()[f"redis.job:{JOB}"]["reason"]
    store.ingest_allocations([allocation(2)])
    assert list(store.load_job(JOB).allocations) == [allocation(2).uuid]
    assert store.invalid() == {}


def test_a_record_from_a_newer_version_is_never_overwritten(store: Store) -> None:
    key, field = store._job_slot(JOB)
    newer = msgpack.packb([FORMAT + 1, "whatever it holds"])
    store.r.hset(key, field, newer)
    with pytest.raises(NewerRecord, match="newer bridge"):
        store.load_job(JOB)
    with pytest.raises(NewerRecord):
        store.ingest_allocations([allocation(1)])
    assert store.r.hget(key, field) == newer and store.dirty() == {}


def test_a_job_id_that_is_not_a_uuid_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="not a ServiceM8 job uuid"):
        store.ingest_allocations([allocation(1, job_uuid="job-1")])
    assert not store.has_job("job-1")


def test_a_record_that_never_settles_gives_up_as_a_redis_error(store: Store) -> None:
    store.ingest_allocations([allocation(1)])
    n = iter(range(100, 1000))

    def change(record: JobRecord) -> Change:
        store.save_sync(JOB, pairs={f"s{next(n)}": PairSnapshot(Presence.ABSENT, Presence.ABSENT)})
        record.pairs["mine"] = PairSnapshot(Presence.ASSIGNED, Presence.ASSIGNED)
        return Change(record.uuid)

    with pytest.raises(StoreBusy, match="kept changing"):
        store._update([JOB], change)


def test_links_of_the_first_layout_move_into_records_once(store: Store) -> None:
    other = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    cd_uuid = store.cd_uuid(JOB)
    a = allocation(1)
    details = {"uuid": JOB, "active": True, "number": "1001", "description": "Fix",
               "address": None, "lat": None, "lng": None, "edited_ms": 1795423605000}  # fmt: skip
    view = {"id": 100045, "uuid": cd_uuid, "r": {"2000001": "SCHEDULED"},
            "t": {"2000001": 1795423606162}, "m": 1795423606164, "s": 1796068800000}  # fmt: skip
    old = {  # as the first layout wrote it: a hash of JSON fields per job, one reverse hash
        "d": json.dumps(details),
        f"a:{a.uuid}": json.dumps(asdict(a)),
        f"w:{a.uuid}": "1795423600.5",
        "c": json.dumps(view),
        "f": "abb4a15100823937",
        f"p:{STAFF}": "scheduled|scheduled",
    }
    store.r.hset(store.key(f"job:{JOB}"), mapping=old)
    store.r.hset(store.key(f"job:{other}"), "d", "{not json")  # unreadable: kept, said
    store.r.hset(store.key("cdjob"), mapping={cd_uuid: JOB, "100045": JOB})
    store.ingest_allocations([allocation(2)])  # a new-layout write got there first: merged

    assert store.upgrade_layout() == 1
    record = store.load_job(JOB)
    assert record.details == JobFacts(JOB, True, "1001", "Fix", None, None, None)
    assert set(record.allocations) == {a.uuid, allocation(2).uuid}
    assert record.allocations[a.uuid] == a and record.written == {a.uuid: 1795423600.5}
    assert record.cd == CdView(100045, cd_uuid, {2000001: "SCHEDULED"}, {2000001: 1795423606162},
                               1795423606164, 1796068800000)  # fmt: skip
    assert record.fields_fp == "abb4a15100823937"
    assert record.pairs == {STAFF: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}
    assert store.job_for_cd(cd_uuid) == JOB and store.job_for_cd(100045) == JOB
    assert not store.r.exists(store.key(f"job:{JOB}"), store.key("cdjob"))
    assert store.r.exists(store.key(f"job:{other}"))
    assert store.upgrade_layout() == 0
