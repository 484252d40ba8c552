"""The link store's job records: concurrent writers never undo each other, the dirty mark travels
with the change, reverse links find the job, a damaged record does not block.

Each test runs on fakeredis (its Lua support runs the store's scripts, so these are fast unit
tests of the store's logic) and on the real Redis; the concurrency tests on the real Redis only,
where the interaction is the point."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

import msgpack
import pytest

from bridge.store import StoreBusy, Stores
from bridge.store.codec import FORMAT, NewerRecord
from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence
from mappings.state import CdView, JobRecord, PairSnapshot
from mappings.transitions import Change, SyncWrite

JOB = "f06d3fef-7019-46a0-8381-e88f38c0c8fd"


@pytest.fixture(params=["fakeredis", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Stores]:
    """The stores of a fresh connection, on each backend."""
    if request.param == "fakeredis":
        import fakeredis

        yield Stores.connect(fakeredis.FakeRedis(), "fake")
        return
    stores = Stores.connect(request.getfixturevalue("redis_client"), f"t{uuid.uuid4().hex[:10]}")
    yield stores
    stores.wipe()


@pytest.fixture
def real_store(redis_client: Any) -> Iterator[Stores]:
    stores = Stores.connect(redis_client, f"t{uuid.uuid4().hex[:10]}")
    yield stores
    stores.wipe()


STAFF = "35bf992d-c9e9-4616-a12e-7696a6cecc1b"


def allocation(n: int, **changes: object) -> AllocationFacts:
    base = AllocationFacts(f"c96fa758-02b0-47f8-86fa-adb10a248c{n:02x}", JOB, STAFF, True,
                           1796043600000, (420, 540), None, None, 1795423605000)  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_record_changed_between_read_and_write_is_read_again(store: Stores) -> None:
    store.jobs.ingest_allocations([allocation(1)])
    calls = []

    def change(record: JobRecord) -> Change:
        calls.append(len(record.allocations))
        if len(calls) == 1:  # another writer (a poll, say) gets in first
            store.jobs.ingest_allocations([allocation(2)])
        record.pairs[STAFF] = PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)
        return Change(record.uuid)

    store.jobs.update([JOB], change)
    record = store.jobs.load(JOB)
    assert calls == [1, 2]
    assert set(record.allocations) == {allocation(1).uuid, allocation(2).uuid}
    assert record.pairs == {STAFF: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}


def test_parallel_writers_on_one_record_lose_nothing(real_store: Stores) -> None:
    store = real_store

    def ingest(n: int) -> None:
        for i in range(20):
            store.jobs.ingest_allocations([allocation(n * 20 + i)])

    def sync() -> None:
        for i in range(40):
            snapshot = {f"s{i}": PairSnapshot(Presence.ABSENT, Presence.ABSENT)}
            store.jobs.save_sync(SyncWrite(JOB, pairs=snapshot))

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=sync))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    record = store.jobs.load(JOB)
    assert len(record.allocations) == 60 and len(record.pairs) == 40


def test_a_change_and_its_dirty_mark_go_together(store: Stores) -> None:
    assert store.jobs.ingest_allocations([allocation(1)]) == {JOB}
    assert store.jobs.dirty() == {JOB: 1}
    # A re-read with only a new edit_date is no change: no dirty mark, and the change time stays
    # when the fields last changed (opening a booking on the phone moves edit_date).
    assert store.jobs.ingest_allocations([allocation(1, edited_ms=1795423609000)]) == set()
    assert store.jobs.dirty() == {JOB: 1}
    assert store.jobs.load(JOB).allocations[allocation(1).uuid].edited_ms == allocation(1).edited_ms
    assert store.jobs.ingest_allocations([allocation(1, active=False)]) == {JOB}
    assert store.jobs.dirty() == {JOB: 2}
    assert store.jobs.ingest_jobs([JobFacts(JOB, True, "1", "Fix", None, None, None)]) == {JOB}
    assert store.jobs.ingest_jobs([JobFacts(JOB, True, "1", "Fix", None, None, None)]) == set()
    other = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    assert store.jobs.ingest_jobs([JobFacts(other, True, "2", None, None, None, None)],
                             only_known=True) == set()  # fmt: skip
    assert not store.jobs.has(other) and store.jobs.has(JOB) and store.jobs.known() == [JOB]


def test_expiry_reminder_is_set_with_the_record(store: Stores) -> None:
    store.jobs.ingest_allocations([allocation(1, expires_ms=1796000000000)])
    assert store.jobs.due_expiries(1795999999999) == set()
    assert store.jobs.due_expiries(1796000000000) == {JOB}


def test_our_own_write_is_not_undone_by_an_older_read(store: Stores) -> None:
    mine = allocation(1, staff_uuid=STAFF, by_bridge=True, edited_ms=None)
    store.jobs.save_sync(SyncWrite(JOB, written=[mine], at=100.0))
    stale = allocation(1, active=False)
    assert (
        store.jobs.ingest_allocations([stale], read_started=99.0) == set()
    )  # began before our write
    assert store.jobs.load(JOB).allocations[mine.uuid] == mine
    fresh = allocation(1, edited_ms=1795423700000)
    assert store.jobs.ingest_allocations([fresh], read_started=101.0) == set()  # settles the marker
    record = store.jobs.load(JOB)
    assert record.written == {} and record.allocations[mine.uuid].by_bridge


def test_reverse_links_by_uuid_and_by_id(store: Stores) -> None:
    view = CdView(100045, store.jobs.cd_uuid(JOB), {2000001: "SCHEDULED"}, {2000001: 1795423606162})
    store.jobs.save_sync(SyncWrite(JOB, view=view, fields_fp="abb4a15100823937"))
    assert store.jobs.dirty() == {}
    assert store.jobs.job_for_cd(view.uuid) == JOB
    assert store.jobs.job_for_cd(view.uuid.upper()) == JOB
    assert store.jobs.job_for_cd(100045) == JOB and store.jobs.job_for_cd("100045") == JOB
    for unknown in ("100046", "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e", "not-a-ref", ""):
        assert store.jobs.job_for_cd(unknown) is None
    assert store.jobs.cd_views([JOB]) == {JOB: view}
    assert store.jobs.load(JOB).fields_fp == "abb4a15100823937"
    pulled = replace(view, resources={})  # a pull that found a change
    store.jobs.save_sync(SyncWrite(JOB, view=pulled, dirty=True))
    assert store.jobs.dirty() == {JOB: 1} and store.jobs.cd_views([JOB])[JOB].resources == {}
    store.jobs.forget_cd(JOB)
    assert store.jobs.load(JOB).cd is None and store.jobs.load(JOB).fields_fp is None
    assert store.jobs.dirty() == {JOB: 2}


def test_a_damaged_record_is_listed_and_read_as_empty_until_written_again(store: Stores) -> None:
    store.jobs.ingest_allocations([allocation(1)])
    key, field = store.jobs._slot(JOB)
    store.redis.hset(key, field, b"\x93not a record")
    assert store.jobs.load(JOB) == JobRecord(JOB)
    assert "cannot be read" in store.parked.invalid()[f"redis.job:{JOB}"]["reason"]
    store.jobs.ingest_allocations([allocation(2)])
    assert list(store.jobs.load(JOB).allocations) == [allocation(2).uuid]
    assert store.parked.invalid() == {}


def test_a_record_from_a_newer_version_is_never_overwritten(store: Stores) -> None:
    key, field = store.jobs._slot(JOB)
    newer = msgpack.packb([FORMAT + 1, "whatever it holds"])
    store.redis.hset(key, field, newer)
    with pytest.raises(NewerRecord, match="newer bridge"):
        store.jobs.load(JOB)
    with pytest.raises(NewerRecord):
        store.jobs.ingest_allocations([allocation(1)])
    assert store.redis.hget(key, field) == newer and store.jobs.dirty() == {}


def test_a_job_id_that_is_not_a_uuid_is_refused(store: Stores) -> None:
    with pytest.raises(ValueError, match="not a ServiceM8 job uuid"):
        store.jobs.ingest_allocations([allocation(1, job_uuid="job-1")])
    assert not store.jobs.has("job-1")


def test_a_record_that_never_settles_gives_up_as_a_redis_error(store: Stores) -> None:
    store.jobs.ingest_allocations([allocation(1)])
    n = iter(range(100, 1000))

    def change(record: JobRecord) -> Change:
        snapshot = {f"s{next(n)}": PairSnapshot(Presence.ABSENT, Presence.ABSENT)}
        store.jobs.save_sync(SyncWrite(JOB, pairs=snapshot))
        record.pairs["mine"] = PairSnapshot(Presence.ASSIGNED, Presence.ASSIGNED)
        return Change(record.uuid)

    with pytest.raises(StoreBusy, match="kept changing"):
        store.jobs.update([JOB], change)


def test_links_of_the_first_layout_move_into_records_once(store: Stores) -> None:
    other = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    cd_uuid = store.jobs.cd_uuid(JOB)
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
    store.redis.hset(store.keys.key(f"job:{JOB}"), mapping=old)
    store.redis.hset(store.keys.key(f"job:{other}"), "d", "{not json")  # unreadable: kept, said
    store.redis.hset(store.keys.key("cdjob"), mapping={cd_uuid: JOB, "100045": JOB})
    store.jobs.ingest_allocations([allocation(2)])  # a new-layout write got there first: merged

    assert store.upgrade_layout() == 1
    record = store.jobs.load(JOB)
    assert record.details == JobFacts(JOB, True, "1001", "Fix", None, None, None)
    assert set(record.allocations) == {a.uuid, allocation(2).uuid}
    assert record.allocations[a.uuid] == a and record.written == {a.uuid: 1795423600.5}
    assert record.cd == CdView(100045, cd_uuid, {2000001: "SCHEDULED"}, {2000001: 1795423606162},
                               1795423606164, 1796068800000)  # fmt: skip
    assert record.fields_fp == "abb4a15100823937"
    assert record.pairs == {STAFF: PairSnapshot(Presence.SCHEDULED, Presence.SCHEDULED)}
    assert store.jobs.job_for_cd(cd_uuid) == JOB and store.jobs.job_for_cd(100045) == JOB
    assert not store.redis.exists(store.keys.key(f"job:{JOB}"), store.keys.key("cdjob"))
    assert store.redis.exists(store.keys.key(f"job:{other}"))
    assert store.upgrade_layout() == 0


def test_a_long_poll_keeps_its_lock_and_a_killed_pollers_lock_frees_itself(store):
    import time

    work = store.work
    with work.poll_lock("servicem8", timeout=0.6) as held:
        assert held
        time.sleep(1.0)  # longer than the lock's life: the holder's thread renews it
        with work.poll_lock("servicem8", timeout=0.6) as second:
            assert not second
    with work.poll_lock("servicem8", timeout=0.6) as again:
        assert again  # released on the way out
    # A holder killed mid-poll renews nothing: its lock is free within its timeout.
    store.redis.lock(store.keys.poll_lock("coredination"), timeout=0.5).acquire()
    with work.poll_lock("coredination", timeout=0.6) as while_held:
        assert not while_held
    time.sleep(0.7)
    with work.poll_lock("coredination", timeout=0.6) as after:
        assert after
