"""Scope on the real deployment shape (issue 27's first two acceptance points; docs/scope.md): an
account with two years of finished jobs and two upcoming ones; the first start creates the two
upcoming jobs in Coredination with their people and none of the old ones, and puts nobody on an
old one; a booking made today on an old job brings that job in. Changing the horizon, the
statuses or excluding a job takes effect at the next sync and deletes nothing on either side;
``sm8cd status`` shows the scope and the excluded job."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bridge.simulators.scenario import seed_business, seed_history
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days
from tests.e2e.conftest import eventually

OLD_JOBS = 60


def _people(cd_sim):
    """Each Coredination job's people: job uuid → user id → state."""
    return {j["uuid"]: {r["userId"]: r["state"] for r in j["resources"]}
            for j in cd_sim.snapshot()["jobs"]}  # fmt: skip


def _expected(biz, ns):
    """The upcoming jobs with their people: a flexible booking (dated: scheduled, undated:
    assigned) and a fixed one (scheduled) each."""
    want: dict[str, dict[int, str]] = {cd_job_uuid(ns, j): {} for j in biz.jobs}
    for row in biz.allocations:
        state = "SCHEDULED" if row.get("allocation_date") else "ASSIGNED"
        want[cd_job_uuid(ns, row["job_uuid"])][biz.user_for(row["staff_uuid"])["id"]] = state
    for row in biz.activities:
        want[cd_job_uuid(ns, row["job_uuid"])][biz.user_for(row["staff_uuid"])["id"]] = "SCHEDULED"
    return want


def _active(sm8_sim):
    return {r["uuid"] for obj in ("joballocation", "jobactivity")
            for r in sm8_sim.records[obj].values() if str(r["active"]) == "1"}  # fmt: skip


def _command(stack, *args):
    done = subprocess.run(
        [sys.executable, "-m", "bridge", *args], env=stack.env, cwd=stack.tmp,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _cycles(sm8_sim, n=3):
    """Wait until the bridge has polled ServiceM8's job allocations ``n`` more times."""
    start = sm8_sim.count("GET", "joballocation.list")
    eventually(lambda: sm8_sim.count("GET", "joballocation.list") >= start + n, timeout=60)


def test_history_stays_out_a_booking_today_brings_a_job_in_and_scope_changes_delete_nothing(
    stack, sm8_sim, cd_sim
):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=2, allocations=2, fixed=2)
    history = seed_history(sm8_sim, biz, jobs=OLD_JOBS)
    old_cd = {cd_job_uuid(ns, j) for j in history}
    stack.worker()
    stack.beat()

    # The first start: the two upcoming jobs with their people, none of the old ones.
    want = _expected(biz, ns)
    eventually(lambda: _people(cd_sim) == want, timeout=90)
    _cycles(sm8_sim)
    assert _people(cd_sim) == want and not old_cd & set(_people(cd_sim))
    assert sm8_sim.write_count() == 0

    # A booking made today on an old job brings that job in, with only the person booked today.
    old = next(j for j in history if sm8_sim.records["job"][j]["status"] == "Work Order")
    booked = {a["staff_uuid"] for obj in ("joballocation", "jobactivity")
              for a in sm8_sim.records[obj].values() if a["job_uuid"] == old}  # fmt: skip
    newcomer = next(s for s in biz.staff if s["uuid"] not in booked)
    sm8_sim.create("jobactivity", {"job_uuid": old, "staff_uuid": newcomer["uuid"],
                                   "activity_was_scheduled": 1, "start_date": days.stamp(0, 16),
                                   "end_date": days.stamp(0, 18)})  # fmt: skip
    user = biz.user_for(newcomer["uuid"])["id"]
    eventually(lambda: _people(cd_sim).get(cd_job_uuid(ns, old)) == {user: "SCHEDULED"})
    assert len(_people(cd_sim)) == 3

    # `status` shows the scope.
    scope = json.loads(_command(stack, "status", "--json"))["scope"]
    assert scope["horizon_days"] == 1 and scope["horizon"].startswith(days.day(-1).isoformat())
    assert scope["job_statuses"] == ["Quote", "Work Order"] and scope["excluded_count"] == 0

    # A ten-year horizon brings the old jobs never closed in, at the next sync, with the people
    # of their past fixed bookings; the closed ones stay out (their status).
    _command(stack, "connections", "configure", stack.connection,
             "--set", "SCOPE_HORIZON_DAYS=3650")  # fmt: skip
    still_open = {cd_job_uuid(ns, j) for j in history
                  if sm8_sim.records["job"][j]["status"] == "Work Order"}  # fmt: skip
    eventually(lambda: still_open <= set(_people(cd_sim)), timeout=90)
    closed = old_cd - still_open
    assert not closed & set(_people(cd_sim))
    assert all(_people(cd_sim)[j] for j in still_open)  # each with its fixed booking's person

    # Back to the default horizon, and only Quote jobs: nothing is deleted or unscheduled on
    # either side, and nothing is written at all.
    _cycles(sm8_sim)
    people, bookings = _people(cd_sim), _active(sm8_sim)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    stats = stack.stores.activity.stats
    before = stats().get("skipped.out_of_scope.status", 0)
    _command(stack, "connections", "configure", stack.connection,
             "--unset", "SCOPE_HORIZON_DAYS", "--set", "SCOPE_JOB_STATUSES=Quote")  # fmt: skip
    left = len(still_open) + len(biz.jobs)  # every Work Order job the bridge linked
    eventually(lambda: stats().get("skipped.out_of_scope.status", 0) >= before + left, timeout=90)
    _cycles(sm8_sim)
    assert _people(cd_sim) == people and _active(sm8_sim) == bookings
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0, (
        sm8_sim.counts_snapshot(), cd_sim.counts_snapshot())  # fmt: skip

    # Excluding a job: the office's change on it does not reach Coredination, and status says
    # who excluded it.
    _command(stack, "connections", "configure", stack.connection, "--unset", "SCOPE_JOB_STATUSES")
    job = biz.jobs[0]
    _command(stack, "exclude", job, "--by", "e2e")
    gone = next(a for a in biz.allocations if a["job_uuid"] == job)
    sm8_sim.delete("joballocation", gone["uuid"])
    _cycles(sm8_sim)
    time.sleep(2)  # the sweep and a few syncs more
    assert _people(cd_sim)[cd_job_uuid(ns, job)] == people[cd_job_uuid(ns, job)]
    scope = json.loads(_command(stack, "status", "--json"))["scope"]
    assert scope["excluded"][job]["by"] == "e2e" and scope["excluded_count"] == 1
    _command(stack, "include", job)
    off = biz.user_for(gone["staff_uuid"])["id"]
    eventually(lambda: off not in _people(cd_sim)[cd_job_uuid(ns, job)], timeout=60)
