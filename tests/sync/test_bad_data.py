"""Bad upstream data: each bad record is parked or refused with a clear reason while every other
record keeps syncing; fixed upstream, it syncs like any other."""

from __future__ import annotations

import pytest

from bridge.errors import InvalidRecord
from bridge.simulators.checker import check
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid
from mappings.state import JobRecord
from mappings.transitions import Change
from tests import days

MISSING_JOB = "00000000-0000-4000-8000-000000000000"
MISSING_STAFF = "11111111-1111-4111-8111-111111111111"


def test_bad_records_are_parked_with_reasons_and_the_rest_syncs(engine, sm8_sim, cd_sim, store):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=6, allocations=9)
    rows = sm8_sim.records["joballocation"]
    impossible, orphan, stranger = (biz.allocations[i]["uuid"] for i in range(3))
    rows[impossible]["allocation_date"] = "2026-13-45 99:99:99"
    rows[orphan]["job_uuid"] = MISSING_JOB
    rows[stranger]["staff_uuid"] = MISSING_STAFF

    report = engine.run_cycle()  # no exception: one bad record does not stop the poll

    invalid = store.parked.invalid()
    assert list(invalid) == [f"servicem8.joballocation:{impossible}"]
    assert "impossible date" in invalid[f"servicem8.joballocation:{impossible}"]["reason"]
    pending = {key.split("|")[0]: v["reason"] for key, v in store.parked.pending().items()}
    assert pending[MISSING_JOB] == "job not found in ServiceM8"
    assert pending[biz.allocations[2]["job_uuid"]] == "staff member has no Coredination user"
    assert report.counts["skipped.job_missing"] == 1
    result = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert result.unreadable == 1 and result.pending == 1
    # Everything else is in step: only the orphan pair (no job to put it on) is missing.
    assert [p for p in result.problems if "missing" not in p and "none in CD" not in p] == []
    assert sum(result.by_presence.values()) == 9 - 3

    # Through a webhook the same record is refused (the task base dead-letters a permanent error).
    with pytest.raises(InvalidRecord, match="impossible date"):
        engine.push_allocation(impossible)

    # Fixed upstream: the next poll reads it, un-parks it and syncs it.
    sm8_sim.update("joballocation", impossible, {"allocation_date": days.stamp(13)})
    engine.run_cycle(match_staff=False)
    assert store.parked.invalid() == {}
    user = biz.user_for(biz.allocations[0]["staff_uuid"])["id"]
    cd_job = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, biz.allocations[0]["job_uuid"])]]
    assert any(r["userId"] == user and r["state"] == "SCHEDULED" for r in cd_job["resources"])


def test_unknown_resource_state_and_a_deleted_job_do_not_stop_the_others(engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3)
    engine.run_cycle()
    # Coredination invents a state; ServiceM8 loses a job (404 on read).
    weird_job = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, biz.jobs[0])]]
    weird_job["resources"][0]["state"] = "TELEPORTED"
    weird_job["modified"] = cd_sim.now_ms()
    del sm8_sim.records["job"][biz.jobs[1]]
    engine.ctx.stores.jobs.update([biz.jobs[1]], forget_details)  # forces a re-read
    engine.ctx.stores.jobs.mark_dirty([biz.jobs[1]])
    fresh = sm8_sim.create("joballocation", {"job_uuid": biz.jobs[2],
                                             "staff_uuid": biz.staff[1]["uuid"],
                                             "allocation_date": days.stamp(15)})  # fmt: skip
    report = engine.run_cycle(match_staff=False)
    assert report.counts["skipped.unknown_resource_state"] >= 1
    assert report.counts["skipped.job_missing"] == 1
    reasons = [v["reason"] for v in engine.ctx.stores.parked.pending().values()]
    assert any("job not found" in r for r in reasons)
    assert "Coredination resource state 'TELEPORTED' is unknown" in reasons
    user = biz.user_for(biz.staff[1]["uuid"])["id"]
    job2 = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, biz.jobs[2])]]
    assert any(r["userId"] == user for r in job2["resources"]), fresh


def test_an_unreadable_coredination_job_is_parked_then_unparked(engine, sm8_sim, cd_sim, store):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2)
    engine.run_cycle()
    bad = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, biz.jobs[0])]]
    good_resources = bad["resources"]
    bad["resources"] = "not a list"
    bad["modified"] = cd_sim.now_ms()
    engine.run_cycle(match_staff=False)  # the other job's poll and sync go on
    assert list(store.parked.invalid()) == [f"coredination.job:{bad['uuid']}"]
    bad["resources"] = good_resources
    bad["modified"] = cd_sim.now_ms()
    engine.run_cycle(match_staff=False)
    assert store.parked.invalid() == {}


def forget_details(record: JobRecord) -> Change:
    record.details = None
    return Change(record.uuid)


def test_an_allocation_on_a_job_id_that_is_not_a_uuid_is_parked(engine, sm8_sim, cd_sim, store):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    odd = biz.allocations[0]["uuid"]
    sm8_sim.records["joballocation"][odd]["job_uuid"] = "JOB-1042"
    engine.run_cycle()
    invalid = store.parked.invalid()
    assert list(invalid) == [f"servicem8.joballocation:{odd}"]
    assert "expected a uuid" in invalid[f"servicem8.joballocation:{odd}"]["reason"]
    assert sum(check(sm8_sim, cd_sim, engine.ctx.ns).by_presence.values()) == 1  # the other synced
