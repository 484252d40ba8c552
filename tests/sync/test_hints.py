"""ServiceM8 webhook hints gathered per object and read together
(docs/operations.md#hint-coalescing): one list read for many hints, a read by id where the list
missed one, nothing lost to a reader that dies or a hint that arrives while its record is read."""

from __future__ import annotations

import time

from bridge.queues import READ_HINTS
from bridge.simulators.scenario import seed_business
from bridge.store.hints import Arrival
from mappings.ids import cd_job_uuid
from tests import days
from tests.sync.conftest import documented, post

FIXED = {"activity_was_scheduled": 1, "start_date": days.stamp(2, 9),
         "end_date": days.stamp(2, 11)}  # fmt: skip


def _activities(sm8_sim, biz, n):
    rows = [
        {
            "job_uuid": biz.jobs[i % len(biz.jobs)],
            "staff_uuid": biz.staff[i % len(biz.staff)]["uuid"],
        }
        for i in range(n)
    ]
    with sm8_sim.lock:
        return [sm8_sim.create("jobactivity", {**row, **FIXED}) for row in rows]


def _hint(store, sm8_sim, uuid, window_ms=500):
    record = next(r for r in sm8_sim.snapshot()["jobactivity"] if r["uuid"] == uuid)
    return store.hints.add("servicem8.jobactivity", uuid, record["edit_date"], window_ms)


def test_many_hints_cost_one_list_read_and_every_booking_reaches_coredination(
    engine, store, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=0)
    engine.run_cycle()
    made = _activities(sm8_sim, biz, 6)
    arrivals = [_hint(store, sm8_sim, uuid) for uuid in made]
    # The first after a quiet spell is read at once, the second opens a window, the rest wait.
    assert arrivals == [Arrival.NOW, Arrival.AFTER_WINDOW] + [Arrival.NONE] * 4
    sm8_sim.reset_counts()
    dirty, waiting = engine.read_hints("jobactivity", lease_ms=1000)
    assert waiting == 0 and dirty == set(biz.jobs)
    assert sm8_sim.count("GET") == sm8_sim.count("GET", "jobactivity.list") == 1
    stats = store.activity.stats()
    assert stats["hints.servicem8.by_list"] == 6 and stats.get("hints.servicem8.by_id", 0) == 0
    for job in dirty:
        engine.sync_job(job)
    # The syncs read no booking again; each new job's details once, to create it in Coredination.
    assert sm8_sim.count("GET", "jobactivity.get") == 0
    assert sm8_sim.count("GET") - 1 == sm8_sim.count("GET", "job.get") == len(biz.jobs)
    people = {r["userId"] for j in cd_sim.snapshot()["jobs"] for r in j["resources"]}
    assert people == {u["id"] for u in biz.users}
    assert store.hints.oldest_ms("servicem8.jobactivity") is None


def test_hints_of_an_object_whose_change_filter_is_refused_are_read_one_by_one(
    engine, store, sm8_sim, cd_sim
):
    """The list read with ``edit_date`` answers 400 Unsupported $filter field: the refusal is
    recorded as the poll records it (status shows it), the hinted records are read by id, and
    the next batch does not ask the list again; nothing is dead-lettered (found by a chaos
    run with the hostile dialect)."""
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=0)
    engine.run_cycle()
    sm8_sim.set_dialect(edit_date_filter_refused="jobactivity")
    made = _activities(sm8_sim, biz, 4)
    for uuid in made:
        _hint(store, sm8_sim, uuid)
    sm8_sim.reset_counts()
    dirty, waiting = engine.read_hints("jobactivity", lease_ms=1000)
    assert waiting == 0 and dirty == set(biz.jobs)
    assert sm8_sim.count("GET", "jobactivity.list") == 1  # refused
    assert sm8_sim.count("GET", "jobactivity.get") == 4
    state = store.activity.object_states()["servicem8.jobactivity.filter"]
    assert state["refused"] is True and "Unsupported $filter field" in state["reason"]
    more = _activities(sm8_sim, biz, 2)
    for uuid in more:
        _hint(store, sm8_sim, uuid)
    sm8_sim.reset_counts()
    engine.read_hints("jobactivity", lease_ms=1000)
    assert sm8_sim.count("GET", "jobactivity.list") == 0  # not asked again
    assert sm8_sim.count("GET", "jobactivity.get") == 2


def test_one_hint_is_read_by_id(engine, store, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    engine.run_cycle()
    [made] = _activities(sm8_sim, biz, 1)
    _hint(store, sm8_sim, made)
    sm8_sim.reset_counts()
    dirty, _ = engine.read_hints("jobactivity", lease_ms=1000)
    assert dirty == {biz.jobs[0]}
    assert sm8_sim.count("GET", "jobactivity.get") == 1 and sm8_sim.count("GET") == 1


def test_hints_whose_records_the_list_does_not_return_are_read_by_id(
    engine, store, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=0)
    engine.run_cycle()
    first, second = _activities(sm8_sim, biz, 2)
    # Times later than the records' edits (another clock, or another timezone): the list read
    # from the earliest of them returns neither record, so each is read on its own; a hint with
    # no time and no record costs one read that finds nothing.
    for uuid in (first, second):
        store.hints.add("servicem8.jobactivity", uuid, "2099-01-01 00:00:00", 500)
    store.hints.add("servicem8.jobactivity", "0d0d0d0d-0d0d-4d0d-8d0d-0d0d0d0d0d0d", "", 500)
    sm8_sim.reset_counts()
    dirty, waiting = engine.read_hints("jobactivity", lease_ms=1000)
    assert waiting == 0 and dirty == set(biz.jobs)
    assert sm8_sim.count("GET", "jobactivity.list") == 1
    assert sm8_sim.count("GET", "jobactivity.get") == 3


def test_a_reader_that_dies_leaves_its_hints_to_the_next_after_its_lease(
    engine, store, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=0)
    engine.run_cycle()
    made = _activities(sm8_sim, biz, 3)
    for uuid in made:
        _hint(store, sm8_sim, uuid)
    dead = store.hints.take("servicem8.jobactivity", "dead-reader", 300)  # then killed
    assert dead is not None and sorted(dead.uuids) == sorted(made)
    assert engine.read_hints("jobactivity", lease_ms=300) is None  # the lease still holds
    time.sleep(0.35)
    dirty, waiting = engine.read_hints("jobactivity", lease_ms=300)
    assert dirty == {a for a in biz.jobs} and waiting == 0
    assert store.hints.oldest_ms("servicem8.jobactivity") is None


def test_a_hint_that_arrives_while_its_record_is_read_is_read_again(store):
    kind = "servicem8.jobactivity"
    uuid = "5b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    store.hints.add(kind, uuid, "2026-12-01 10:00:00", 500)
    batch = store.hints.take(kind, "reader", 1000)
    assert batch is not None and batch.uuids == [uuid]
    time.sleep(0.005)
    store.hints.add(kind, uuid, "2026-12-01 10:00:05", 500)  # changed again meanwhile
    assert store.hints.done(kind, batch) == 1  # kept for the next reader
    again = store.hints.take(kind, "next", 1000)
    assert again is not None and again.uuids == [uuid]
    assert again.times == ["2026-12-01 10:00:00"]  # the earliest change still waiting
    assert store.hints.done(kind, again) == 0


def test_the_receiver_gathers_hints_and_queues_one_reader_per_window(gathering_web):
    body = documented("jobactivity")
    body["entry"] = [
        {"uuid": f"5b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d{i:02d}", "changed_fields": ["start_date"],
         "time": "2026-12-01 10:00:00"}
        for i in range(10)
    ]  # fmt: skip
    assert post(gathering_web, body).status_code == 200
    # The first is read at once (nothing came before it), the rest by one reader after a window.
    assert gathering_web.sent == [(READ_HINTS, ["jobactivity"])] * 2
    assert gathering_web.sent.countdowns == [None, 0.5]
    hints = gathering_web.runtime.stores.hints
    batch = hints.take("servicem8.jobactivity", "t", 1000)
    assert batch is not None and len(batch.uuids) == 10
    assert set(batch.times) == {"2026-12-01 10:00:00"}


def test_coredination_hints_are_queued_one_by_one_still(gathering_web):
    job = cd_job_uuid(gathering_web.runtime.engine.ctx.ns, "8d2e4f6a-1b3c-4d5e-8f9a-0b1c2d3e4f5a")
    r = post(gathering_web, {"type": "SCHEDULE", "jobUuid": job, "userId": 4},
             source="coredination")  # fmt: skip
    assert r.status_code == 200
    assert [task for task, _ in gathering_web.sent] == ["bridge.webhook.coredination_job"]


def test_a_slow_reader_keeps_its_lease_so_no_second_reader_reads_the_same_hints(
    engine, store, sm8_sim, cd_sim, monkeypatch
):
    import threading

    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    engine.run_cycle()
    [made] = _activities(sm8_sim, biz, 1)
    _hint(store, sm8_sim, made)
    slow = engine.ctx.sm8.get_activity

    def get_activity(uuid):
        time.sleep(1.0)  # three lease spans of 300 ms
        return slow(uuid)

    monkeypatch.setattr(engine.ctx.sm8, "get_activity", get_activity)
    reader = threading.Thread(target=engine.read_hints, args=("jobactivity", 300))
    reader.start()
    time.sleep(0.7)
    assert store.hints.take("servicem8.jobactivity", "second", 300) is None  # renewed
    reader.join()
    assert store.hints.oldest_ms("servicem8.jobactivity") is None


def test_an_unreadable_hinted_record_is_parked_and_does_not_hold_up_the_others(
    engine, store, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=0)
    engine.run_cycle()
    bad, good = _activities(sm8_sim, biz, 2)
    with sm8_sim.lock:
        sm8_sim.records["jobactivity"][bad]["start_date"] = "2026-13-45 09:00:00"
    for uuid in (bad, good):  # times the list read cannot match: both read by id
        store.hints.add("servicem8.jobactivity", uuid, "2099-01-01 00:00:00", 500)
    dirty, waiting = engine.read_hints("jobactivity", lease_ms=1000)
    assert waiting == 0 and biz.jobs[1] in dirty
    assert f"servicem8.jobactivity:{bad}" in store.parked.invalid()
