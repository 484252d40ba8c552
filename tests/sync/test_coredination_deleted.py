"""A Coredination job a dispatcher deleted, met by the next sync of its ServiceM8 job: created
again with the people the bookings name; no ServiceM8 booking touched."""

from __future__ import annotations

from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid


def test_a_job_deleted_in_coredination_is_created_again_at_the_next_servicem8_change(
    engine, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    job, ns = biz.jobs[0], engine.ctx.ns
    cd_uuid = cd_job_uuid(ns, job)
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    booked = biz.allocations[0]["staff_uuid"]
    other = next(s for s in biz.staff if s["uuid"] != booked)
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": other["uuid"],
                                     "allocation_date": "2026-12-22 00:00:00"})  # fmt: skip
    before = {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()}
    sm8_sim.reset_counts()
    report = engine.run_cycle(match_staff=False)
    assert report.counts["coredination.job_recreated"] == 1
    assert "failed.NotFound" not in report.counts
    again = cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]
    people = {r["userId"] for r in again["resources"]}
    assert people == {biz.user_for(booked)["id"], biz.user_for(other["uuid"])["id"]}
    assert sm8_sim.write_count() == 0  # the deletion touched no ServiceM8 booking
    assert {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()} == before


def test_a_deletion_seen_by_a_read_keeps_every_servicem8_booking(engine, sm8_sim, cd_sim):
    """The job's webhook (its DELETE event) makes the bridge read it: a 404. The view goes, and
    the next sync creates the job again with its people; before the snapshots went with the view,
    that sync read everyone as taken off in Coredination and deleted their bookings."""
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2)
    engine.run_cycle()
    job, ns = biz.jobs[0], engine.ctx.ns
    cd_uuid = cd_job_uuid(ns, job)
    people = {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]}
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    sm8_sim.reset_counts()
    assert engine.pull_job(job) == {job}
    engine.sync_job(job)
    assert sm8_sim.write_count() == 0
    assert {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]} == people


def test_a_404_about_a_user_is_no_deleted_job(engine, sm8_sim, cd_sim):
    """Coredination answers 404 for a missing user as for a missing job: the bridge reads the
    job before it believes the job is gone, so a live job keeps its view and snapshots."""
    import pytest

    from bridge.errors import NotFound

    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    job = biz.jobs[0]
    booked = biz.allocations[0]["staff_uuid"]
    other = next(s for s in biz.staff if s["uuid"] != booked)
    with cd_sim.lock:
        del cd_sim.users[biz.user_for(other["uuid"])["id"]]  # the user is gone in Coredination
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": other["uuid"],
                                     "allocation_date": "2026-12-22 00:00:00"})  # fmt: skip
    engine.poll_servicem8()
    kept = engine.ctx.stores.jobs.load(job)
    assert booked in kept.pairs and kept.cd is not None
    cd_sim.reset_counts()
    with pytest.raises(NotFound):
        engine.sync_job(job)
    assert cd_sim.count("PUT", "job.put") == 0  # the live job was not written again
    after = engine.ctx.stores.jobs.load(job)
    # The job's view and the booked person's snapshot are kept: nothing was taken for deleted.
    assert after.cd is not None and after.cd.uuid == kept.cd.uuid
    assert after.pairs.get(booked) == kept.pairs[booked]
    assert len(cd_sim.jobs) == 1
