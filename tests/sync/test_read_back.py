"""Read-back after a resource operation whose effect is not certain: its answer was lost, or
Coredination may ignore it (a resource at work). One GET of the job, then the pair is decided
with what it shows (docs/coredination-api.md#resources)."""

from __future__ import annotations

import pytest

from bridge.errors import Unavailable
from tests.sync.test_state_machine import SyncMachine


class LosingAnswers(SyncMachine):
    """Coredination applies (or drops) the next resource operations and the answer is lost."""

    AT_WORK = "applied"

    def lose_next(self, *, applied: bool, times: int = 1) -> None:
        real = self.cd.resource_op
        left = [times]

        def resource_op(op: str, job_ref: str | int, user_id: str | int, **kw: object) -> None:
            if left[0] <= 0:
                return real(op, job_ref, user_id, **kw)  # type: ignore[arg-type]
            left[0] -= 1
            if applied:
                real(op, job_ref, user_id, **kw)  # type: ignore[arg-type]
            else:
                self.cd.calls["resource_op"] += 1
            raise Unavailable("read timed out", api="coredination", operation=f"job.{op}")

        self.cd.resource_op = resource_op  # type: ignore[method-assign]


@pytest.fixture
def machine():
    world = LosingAnswers()
    yield world
    world.teardown()


def test_an_op_done_whose_answer_was_lost_is_read_back_and_recorded(machine):
    machine.office_books(job=0, person=0, when="all day")
    machine.lose_next(applied=True)
    report = machine.engine.run_cycle(match_staff=False)
    assert report.counts["coredination.read_back.took"] == 1
    assert report.counts["coredination.scheduled"] == 1
    assert not any(k.startswith("failed.") for k in report.counts)
    job, staff, user = machine.jobs[0], machine.staff[0], machine.users[0]
    assert machine.cd.resources(machine.cd_job(job))[user] == "SCHEDULED"
    record = machine.stores.jobs.load(job)
    assert record.cd is not None and record.cd.resources[user] == "SCHEDULED"
    assert staff in record.pairs and not record.pairs[staff].held
    machine.synced = True
    machine.quiet_sync()  # nothing is sent again: the bridge knows it was done


def test_an_op_lost_before_it_was_done_is_sent_again_by_the_retry(machine):
    machine.office_books(job=0, person=0, when="all day")
    machine.lose_next(applied=False)
    job, staff, user = machine.jobs[0], machine.staff[0], machine.users[0]
    machine.engine.poll_servicem8()
    with pytest.raises(Unavailable):
        machine.engine.sync_job(job)
    assert user not in machine.cd.resources(machine.cd_job(job))
    assert staff not in machine.stores.jobs.load(job).pairs  # no snapshot of a write not done
    report = machine.engine.sync_job(job)  # the task's retry
    assert report.counts["coredination.scheduled"] == 1
    assert machine.cd.resources(machine.cd_job(job))[user] == "SCHEDULED"
    machine.synced = True
    machine.quiet_sync()


def test_a_read_back_that_fails_too_leaves_the_answer_lost_for_the_retry(machine):
    machine.office_books(job=0, person=0, when="all day")
    machine.lose_next(applied=True)
    job, user = machine.jobs[0], machine.users[0]
    machine.engine.poll_servicem8()
    real_get = machine.cd.get_job

    def get_job(ref):
        raise Unavailable("connection reset", api="coredination", operation="job.get")

    machine.cd.get_job = get_job
    with pytest.raises(Unavailable, match="read timed out"):  # the op's own error is raised
        machine.engine.sync_job(job)
    machine.cd.get_job = real_get
    report = machine.engine.sync_job(job)
    assert not any(k.startswith("failed.") for k in report.counts)
    assert machine.cd.resources(machine.cd_job(job))[user] == "SCHEDULED"
    machine.synced = True
    machine.quiet_sync()


@pytest.fixture
def kept():
    """Coredination keeping resources at work; the first person finished on the first job, and
    the office books them again (not yet synced)."""
    from tests.sync.test_state_machine import KeptAtWork

    machine = KeptAtWork()
    machine.office_books(job=0, person=0, when="all day")
    machine.sync(cycles=1)
    machine.worker_acts(pick=0, state="FINISHED")
    machine.sync(cycles=1)
    machine.office_books(job=0, person=0, when="10:30")
    yield machine
    machine.teardown()


def _sync_while(machine, meanwhile):
    """Sync the first job while ``meanwhile()`` runs right after each resource operation."""
    real = machine.cd.resource_op

    def resource_op(op, job_ref, user_id, **kw):
        real(op, job_ref, user_id, **kw)
        meanwhile()

    machine.cd.resource_op = resource_op
    try:
        machine.engine.poll_servicem8()
        return machine.engine.sync_job(machine.jobs[0])
    finally:
        machine.cd.resource_op = real


def test_a_read_back_that_meets_a_change_made_meanwhile_syncs_the_job_again(kept):
    """``schedule`` on a resource at work, and a dispatcher takes the user off the job at that
    moment: the read-back shows neither the op nor the old state. The bridge keeps the view it
    read, records no snapshot for the pair, and marks the job to sync again, which decides the
    pair with both changes in view."""
    job, staff, user = kept.jobs[0], kept.staff[0], kept.users[0]
    snapshot = kept.stores.jobs.load(job).pairs[staff]
    report = _sync_while(kept, lambda: kept.cd.dispatcher_unschedule(kept.cd_job(job), user))
    assert report.counts["coredination.read_back.moved"] == 1
    record = kept.stores.jobs.load(job)
    assert record.cd is not None and user not in record.cd.resources  # the view as read
    assert record.pairs[staff] == snapshot  # the last agreed snapshot stays
    assert job in kept.stores.jobs.dirty()
    kept.sync(cycles=1)
    kept.quiet_sync()  # in step, or held, by the rules, with nothing sent again


def test_a_read_back_that_shows_another_user_changed_syncs_the_job_again(kept):
    """Found by the chaos run: the read-back stored a view in which a dispatcher had meanwhile
    scheduled someone else; that pair had been planned on the older view, and with the newer one
    stored no poll saw the difference again, so only the reconcile found the pair."""
    job, other = kept.jobs[0], kept.users[1]
    report = _sync_while(kept, lambda: kept.cd.dispatcher_schedule(kept.cd_job(job), other))
    assert report.counts["coredination.read_back.ignored"] == 1
    assert job in kept.stores.jobs.dirty()  # to decide the other user's pair
    kept.engine.sync_job(job)
    assert kept.judge(job, kept.staff[1])[0] == "scheduled"  # pulled into ServiceM8
    kept.synced = True
    kept.quiet_sync()


def test_a_read_back_of_a_job_without_change_stamps_keeps_the_bridges_own_write_time(machine):
    """A Coredination that dates nothing (no events, no ``modified``): the read-back after a lost
    answer must not forget when the bridge wrote, or a dispatcher's deletion after that write is
    dated before it, and a change the bridge had synced already would create the job again."""
    from mappings.plan import deleted_since

    machine.office_books(job=0, person=0, when="all day")
    machine.engine.run_cycle(match_staff=False)
    real_get = machine.cd.get_job

    def stampless(ref: str | int):  # type: ignore[no-untyped-def]
        return real_get(ref).model_copy(update={"events": [], "modified": None})

    machine.cd.get_job = stampless  # type: ignore[method-assign]
    machine.office_books(job=0, person=1, when="all day")
    before = machine.engine.ctx.now_ms()
    machine.lose_next(applied=True)
    report = machine.engine.run_cycle(match_staff=False)
    assert report.counts["coredination.read_back.took"] == 1
    view = machine.stores.jobs.load(machine.jobs[0]).cd
    assert view is not None and deleted_since(view) >= before
