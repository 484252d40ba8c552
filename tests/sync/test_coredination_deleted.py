"""A Coredination job a dispatcher deleted (docs/coredination-api.md#jobs-deleted-by-a-dispatcher):
noticed by the next poll (the census), by its webhook or by a 404, and parked with no ServiceM8
booking touched; created again, with the people the bookings name, at the next ServiceM8 change
to a booking on it or by ``sm8cd sync --job``."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from bridge.cli import app
from bridge.simulators.scenario import seed_business
from bridge.sync import pull
from bridge.sync.context import CD_DELETED
from mappings.ids import cd_job_uuid
from tests import days


def _linked_then_deleted(engine, sm8_sim, cd_sim, **seed):
    """A business synced once, then a dispatcher deletes the first job's Coredination job. The
    bookings were made a second before the bridge saw them, so nothing is taken for a ServiceM8
    change after the deletion (ServiceM8 stamps whole seconds). The census is left at its
    default (300 s): an account whose jobs fit one page gets one at every poll."""
    assert engine.ctx.options.cd_census_seconds == 300
    biz = seed_business(sm8_sim, cd_sim, **seed)
    time.sleep(1.1)
    engine.run_cycle()
    job = biz.jobs[0]
    cd_uuid = cd_job_uuid(engine.ctx.ns, job)
    people = {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]}
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])  # its webhook goes nowhere here
    return biz, job, cd_uuid, people


def test_a_deletion_nothing_else_touches_is_noticed_by_the_next_census_and_parked(
    engine, sm8_sim, cd_sim
):
    _biz, job, cd_uuid, _ = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=3, jobs=2,
                                                allocations=3)  # fmt: skip
    before = {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()}
    sm8_sim.reset_counts()
    report = engine.run_cycle(match_staff=False)  # one poll of each system
    assert report.counts["skipped.deleted_in_coredination"] == 1
    assert cd_sim.count("GET", "job.get") == 1  # only the job the list lacked was read
    assert cd_uuid not in cd_sim.by_uuid  # the dispatcher's deletion stands
    entry = engine.ctx.stores.parked.pending()[f"{job}|{CD_DELETED}"]
    assert entry["reason"].startswith("deleted in Coredination")
    assert sm8_sim.write_count() == 0
    assert {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()} == before
    assert engine.ctx.stores.jobs.load(job).cd is None
    # Quiet afterwards: the job is not read again at every poll, nor created again.
    cd_sim.reset_counts()
    again = engine.run_cycle(match_staff=False)
    assert cd_sim.count("GET", "job.get") == 0 and cd_sim.write_count() == 0
    assert "coredination.job_created" not in again.counts
    # The reconcile counts it as no drift, and creates nothing either.
    drifts, dirty = engine.reconcile(repair=True)
    assert [d for d in drifts if d.sm8_job_uuid == job] == [] and job not in dirty


def test_an_account_beyond_one_page_gets_its_census_every_census_seconds(
    engine, sm8_sim, cd_sim, monkeypatch
):
    """Where the whole list takes more than one call, a poll lists only the changes until
    ``cd_census_seconds`` have passed; then the census finds the deletion."""
    monkeypatch.setattr(pull, "ONE_PAGE", 2)  # five jobs: more than one page
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=5, allocations=5)
    time.sleep(1.1)
    engine.run_cycle()  # links the jobs (its census listed none yet)
    engine.run_cycle(match_staff=False)  # the census lists five jobs: more than a page
    job = biz.jobs[0]
    cd_uuid = cd_job_uuid(engine.ctx.ns, job)
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    engine.run_cycle(match_staff=False)  # a list of changes, which cannot show a deletion
    assert f"{job}|{CD_DELETED}" not in engine.ctx.stores.parked.pending()
    engine.ctx.clock = lambda: time.time() + 300  # the census is due
    engine.run_cycle(match_staff=False)
    assert f"{job}|{CD_DELETED}" in engine.ctx.stores.parked.pending()
    assert cd_uuid not in cd_sim.by_uuid


def test_the_next_servicem8_change_creates_the_job_again(engine, sm8_sim, cd_sim):
    _biz, job, cd_uuid, people = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=2, jobs=1,
                                                     allocations=2)  # fmt: skip
    engine.run_cycle(match_staff=False)
    assert cd_uuid not in cd_sim.by_uuid
    booking = next(a for a in sm8_sim.records["joballocation"].values() if a["job_uuid"] == job)
    time.sleep(1.1)
    sm8_sim.update("joballocation", booking["uuid"], {"allocation_date": days.stamp(16)})
    report = engine.run_cycle(match_staff=False)
    assert report.counts["coredination.job_recreated"] == 1
    assert {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]} == people
    assert f"{job}|{CD_DELETED}" not in engine.ctx.stores.parked.pending()


def test_bridge_sync_job_creates_it_again_when_the_operator_says_so(
    cli_env, sm8_sim, cd_sim, redis_client, monkeypatch
):
    from bridge.store import Stores

    monkeypatch.setenv("COREDINATION_CENSUS_SECONDS", "0.001")  # the census at every poll
    stores = Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"])
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2)
    time.sleep(1.1)  # the bookings are older than the deletion by more than a stamp's second
    runner = CliRunner()
    assert runner.invoke(app, ["sync", "--once"]).exit_code == 0
    job = biz.jobs[0]
    cd_uuid = next(iter(cd_sim.by_uuid))
    people = {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]}
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    assert runner.invoke(app, ["sync", "--once"]).exit_code == 0
    assert cd_uuid not in cd_sim.by_uuid
    status = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    assert any(row["pair"] == f"{job}|{CD_DELETED}" and "deleted in Coredination" in row["reason"]
               for row in status["pending_examples"])  # fmt: skip
    result = runner.invoke(app, ["sync", "--job", job])
    assert result.exit_code == 0, result.output
    assert "creating it again" in result.stdout
    assert {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]} == people
    assert f"{job}|{CD_DELETED}" not in stores.parked.pending()
    bad = runner.invoke(app, ["sync", "--job", "JOB-1"])
    assert bad.exit_code == 2 and "not a ServiceM8 job uuid" in bad.output


def _deleted_then_booked(engine, sm8_sim, cd_sim):
    """A synced job a dispatcher deleted in Coredination, then the office booked another
    person on it: the business, the first person, the other and the Coredination job's uuid."""
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    engine.run_cycle()
    cd_uuid = cd_job_uuid(engine.ctx.ns, biz.jobs[0])
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    booked = biz.allocations[0]["staff_uuid"]
    other = next(s for s in biz.staff if s["uuid"] != booked)
    sm8_sim.create("joballocation", {"job_uuid": biz.jobs[0], "staff_uuid": other["uuid"],
                                     "allocation_date": days.stamp(15)})  # fmt: skip
    return biz, booked, other, cd_uuid


def test_a_dispatcher_deleting_the_job_made_again_is_a_deletion_of_its_own_for_the_checker(
    engine, sm8_sim, cd_sim
):
    """Deleted, made again by the next office change, deleted again by a dispatcher within
    seconds: the checker judges by the second deletion (a starved chaos run found the
    simulator taking it for the bridge taking back its own creation, so it kept the first
    deletion's time and counted the office's change after it as lost)."""
    from bridge.simulators.checker import check

    _biz, _booked, _other, cd_uuid = _deleted_then_booked(engine, sm8_sim, cd_sim)
    ns = engine.ctx.ns
    time.sleep(1.1)  # the change's whole-second stamp before the job is made again
    assert engine.run_cycle(match_staff=False).counts["coredination.job_recreated"] == 1
    before = cd_sim.now_ms()
    with cd_sim.lock:  # the dispatcher again, within seconds
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    assert cd_sim.deleted_jobs[cd_uuid] >= before  # its own deletion, dated now
    engine.run_cycle(match_staff=False)
    assert cd_uuid not in cd_sim.by_uuid  # no change since: the deletion stands
    assert check(sm8_sim, cd_sim, ns).converged


def test_a_job_deleted_in_coredination_is_created_again_at_the_next_servicem8_change(
    engine, sm8_sim, cd_sim
):
    biz, booked, other, cd_uuid = _deleted_then_booked(engine, sm8_sim, cd_sim)
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
    """The job's webhook (its DELETE event) makes the bridge read it: a 404. The view and the
    snapshots go (with the snapshots kept, a later sync read everyone as taken off in
    Coredination and deleted their bookings), the job is parked, and no booking is touched."""
    _biz, job, _cd_uuid, _people = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=2, jobs=1,
                                                     allocations=2)  # fmt: skip
    sm8_sim.reset_counts()
    assert engine.pull_job(job) == {job}
    report = engine.sync_job(job)
    assert report.counts["skipped.deleted_in_coredination"] == 1
    assert sm8_sim.write_count() == 0
    assert engine.ctx.stores.jobs.load(job).pairs == {}


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
                                     "allocation_date": days.stamp(15)})  # fmt: skip
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


def test_an_update_that_creates_the_deleted_job_afresh_takes_it_back(engine, sm8_sim, cd_sim):
    """Nothing has noticed the deletion yet (no webhook, no census) when the office edits the
    job's description: the bridge's ``PUT`` creates the job afresh, empty (its new id says so).
    No booking changed since the deletion, so the deletion stands: the new job is deleted again
    and the job parked. Before, the old snapshots read the empty job as everyone taken off in
    Coredination and deleted their ServiceM8 bookings."""
    _, job, cd_uuid, _ = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=2, jobs=1,
                                              allocations=2)  # fmt: skip
    engine.ctx.options.cd_census_seconds = 0
    before = {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()}
    sm8_sim.update("job", job, {"job_description": "Fix tap, and the hot water too"})
    sm8_sim.reset_counts()
    report = engine.run_cycle(match_staff=False)
    assert report.counts["skipped.deleted_in_coredination"] >= 1
    assert cd_uuid not in cd_sim.by_uuid
    assert f"{job}|{CD_DELETED}" in engine.ctx.stores.parked.pending()
    assert sm8_sim.write_count() == 0
    assert {u: dict(r) for u, r in sm8_sim.records["joballocation"].items()} == before


def test_a_booking_change_nothing_noticed_the_deletion_before_creates_it_again(
    engine, sm8_sim, cd_sim
):
    """The same, but the office moves a booking: that is the change that creates the job again,
    with everyone the bookings name, and no booking is deleted."""
    _, job, cd_uuid, people = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=2, jobs=1,
                                                   allocations=2)  # fmt: skip
    engine.ctx.options.cd_census_seconds = 0
    booking = next(a for a in sm8_sim.records["joballocation"].values() if a["job_uuid"] == job)
    sm8_sim.update("joballocation", booking["uuid"], {"allocation_date": days.stamp(16)})
    sm8_sim.reset_counts()
    report = engine.run_cycle(match_staff=False)
    assert report.counts["coredination.job_recreated"] == 1
    assert sm8_sim.count("DELETE", "joballocation.delete") == 0
    assert all(a["active"] == 1 for a in sm8_sim.records["joballocation"].values())
    assert {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]} == people


def test_a_booking_made_and_removed_between_two_reads_leaves_the_deletion_standing(
    engine, sm8_sim, cd_sim
):
    """The office made a booking on the job and removed it before the bridge read it: nothing
    the bridge could know of changed, so the deletion stands; the convergence checker judges it
    the same way (a job deleted in Coredination waiting for the office, not a booking lost)."""
    from bridge.simulators.checker import check

    biz, job, cd_uuid, _ = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=3, jobs=1,
                                               allocations=1)  # fmt: skip
    engine.run_cycle(match_staff=False)  # the census notices the deletion
    other = next(s for s in biz.staff if s["uuid"] != biz.allocations[0]["staff_uuid"])
    time.sleep(1.1)  # after the deletion, in ServiceM8's whole seconds
    made = sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": other["uuid"]})
    sm8_sim.update("joballocation", made, {"active": 0})
    report = engine.run_cycle(match_staff=False)
    assert "coredination.job_recreated" not in report.counts
    assert cd_uuid not in cd_sim.by_uuid
    verdict = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert verdict.deleted_in_cd == [job] and verdict.converged, verdict.problems


def test_a_change_the_bridge_had_not_synced_before_a_dispatchers_last_edit_creates_it_again(
    engine, sm8_sim, cd_sim
):
    """The office moves a booking; before the bridge syncs it, a dispatcher schedules somebody
    on the Coredination job (the webhook lost) and then deletes the job. The bridge last read the
    job before both: the move is a change it had not synced, so it creates the job again. The
    convergence checker judges by what the bridge could know of the job (when it was last
    answered with it), not by the dispatcher's edit it never saw."""
    from bridge.simulators.checker import check

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    time.sleep(1.1)
    engine.run_cycle()
    job = biz.jobs[0]
    cd_uuid = cd_job_uuid(engine.ctx.ns, job)
    booking = next(a for a in sm8_sim.records["joballocation"].values() if a["job_uuid"] == job)
    time.sleep(1.1)
    sm8_sim.update("joballocation", booking["uuid"], {"allocation_date": days.stamp(16)})
    time.sleep(1.1)  # the dispatcher's edit a whole second after the move
    on_job = {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]}
    other = next(u for u in cd_sim.users.values() if u["id"] not in on_job)
    with cd_sim.lock:
        cd_sim.resource_op(cd_uuid, "schedule", str(other["id"]))
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    assert cd_sim.served_before_deletion[cd_uuid] < cd_sim.last_resource_event[cd_uuid]
    report = engine.run_cycle(match_staff=False)
    assert report.counts["coredination.job_recreated"] == 1
    verdict = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert not [p for p in verdict.problems if "created again" in p], verdict.problems


def test_a_reassignment_undone_before_the_bridge_read_it_leaves_the_deletion_standing(
    engine, sm8_sim, cd_sim
):
    """After the deletion the office moves a booking to someone else and back before the bridge
    reads it: the bridge sees the booking as it held it with only ``edit_date`` moved, as after
    a booking opened on the phone, so the deletion stands; the checker reads it the same way
    (the sentinel chaos run found this as a "lost" pair)."""
    from bridge.simulators.checker import check

    biz, job, _, _ = _linked_then_deleted(engine, sm8_sim, cd_sim, staff=3, jobs=1,
                                               allocations=1)  # fmt: skip
    engine.run_cycle(match_staff=False)  # the census notices the deletion
    booking = biz.allocations[0]
    other = next(s for s in biz.staff if s["uuid"] != booking["staff_uuid"])
    time.sleep(1.1)  # after the deletion, in ServiceM8's whole seconds
    sm8_sim.update("joballocation", booking["uuid"], {"staff_uuid": other["uuid"]})
    sm8_sim.update("joballocation", booking["uuid"], {"staff_uuid": booking["staff_uuid"]})
    report = engine.run_cycle(match_staff=False)
    assert "coredination.job_recreated" not in report.counts
    verdict = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert verdict.deleted_in_cd == [job] and verdict.converged, verdict.problems


def test_a_change_read_only_after_it_was_opened_dates_from_the_opening(engine, sm8_sim, cd_sim):
    """The office moves a booking; a dispatcher schedules somebody else, which the bridge reads,
    then deletes the job; the booked person opens the booking on the phone; only then does the
    bridge read the booking: it reads the move stamped with the opening, after the deletion, and
    creates the job again. The checker judges the move
    by the stamp the bridge was answered with (the CI chaos run found this as "created again")."""
    from bridge.simulators.checker import check

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1)
    time.sleep(1.1)
    engine.run_cycle()
    job = biz.jobs[0]
    cd_uuid = cd_job_uuid(engine.ctx.ns, job)
    booking = biz.allocations[0]
    time.sleep(1.1)
    sm8_sim.update("joballocation", booking["uuid"], {"allocation_date": days.stamp(16)})
    time.sleep(1.1)
    on_job = {r["userId"] for r in cd_sim.jobs[cd_sim.by_uuid[cd_uuid]]["resources"]}
    other = next(u for u in cd_sim.users.values() if u["id"] not in on_job)
    with cd_sim.lock:  # a dispatcher's edit after the move, which the bridge reads
        cd_sim.resource_op(cd_uuid, "schedule", str(other["id"]))
    engine.ctx.options.cd_census_seconds = 1  # the bridge reads the job, not yet the booking
    engine.poll_coredination()
    assert cd_sim.served_job[cd_uuid] > sm8_sim.changed_ms[booking["uuid"]]
    time.sleep(1.1)
    with cd_sim.lock:
        cd_sim.delete_job(cd_sim.jobs[cd_sim.by_uuid[cd_uuid]])
    time.sleep(1.1)
    sm8_sim.open_booking("joballocation", booking["uuid"])
    report = engine.run_cycle(match_staff=False)
    assert report.counts["coredination.job_recreated"] == 1
    verdict = check(sm8_sim, cd_sim, engine.ctx.ns)
    assert verdict.converged, verdict.problems
