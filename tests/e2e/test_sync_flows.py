"""Issue 3's acceptance, on real worker and beat processes."""

from __future__ import annotations

import time
from datetime import datetime

from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, connection_namespace
from tests.e2e.conftest import eventually, expected_booking


def expected_resources(biz, ns):
    want: dict[str, dict[int, str]] = {cd_job_uuid(ns, j): {} for j in biz.jobs}
    for row in biz.allocations:
        user = biz.user_for(row["staff_uuid"])
        if user is not None:
            want[cd_job_uuid(ns, row["job_uuid"])][user["id"]] = (
                "SCHEDULED" if row.get("allocation_date") else "ASSIGNED"
            )
    return want


def cd_resources(cd_sim):
    return {j["uuid"]: {r["userId"]: r["state"] for r in j["resources"]}
            for j in cd_sim.snapshot()["jobs"]}  # fmt: skip


def wait_quiet_cycles(sm8_sim, cycles=2):
    """Wait until the bridge has polled ServiceM8 ``cycles`` more times."""
    start = sm8_sim.count("GET", "joballocation.list")
    eventually(lambda: sm8_sim.count("GET", "joballocation.list") >= start + cycles, timeout=20)


def test_allocations_sync_then_a_quiet_cycle_writes_nothing(stack, sm8_sim, cd_sim):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=5, jobs=20, allocations=50)
    sm8_sim.reset_counts()
    stack.worker()
    stack.beat()
    want = expected_resources(biz, ns)
    eventually(lambda: cd_resources(cd_sim) == want)
    assert len(cd_sim.jobs) == 20
    assert sm8_sim.write_count() == 0, sm8_sim.counts_snapshot()

    wait_quiet_cycles(sm8_sim)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    wait_quiet_cycles(sm8_sim)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0, (
        sm8_sim.counts_snapshot(),
        cd_sim.counts_snapshot(),
    )


def test_coredination_changes_flow_back_without_echo(stack, sm8_sim, cd_sim):
    """On a timed job a person scheduled in Coredination becomes a fixed booking of the job's
    exact time; finishing leaves it as it is (no completion on a fixed booking), unscheduling
    removes it, and nothing echoes."""
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=2, allocations=2)
    stack.worker()
    stack.beat()
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns))

    job = biz.jobs[0]
    cd_job = cd_job_uuid(ns, job)
    taken = {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
    member = next(s for s in biz.staff if s["uuid"] not in taken)
    user = biz.user_for(member["uuid"])["id"]
    obj, derived = expected_booking(cd_sim, ns, cd_job, user)
    assert obj == "jobactivity"  # the seeded job 0 has a window: it is timed
    records = sm8_sim.records[obj]
    timed = next(j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == cd_job)

    cd_sim.reset_counts()
    cd_sim.resource_op(cd_job, "schedule", str(user))
    row = eventually(lambda: records.get(derived))
    assert (row["job_uuid"], row["staff_uuid"], row["active"]) == (job, member["uuid"], 1)
    start, end = (datetime.fromtimestamp(timed[k] / 1000, sm8_sim.tz).strftime(
        "%Y-%m-%d %H:%M:%S") for k in ("startTime", "endTime"))  # fmt: skip
    assert (row["start_date"], row["end_date"], row["activity_was_scheduled"]) == (start, end, "1")

    cd_sim.user_action(cd_job, str(user), "FINISHED")
    wait_quiet_cycles(sm8_sim)
    assert records[derived]["active"] == 1 and records[derived]["start_date"] == start

    cd_sim.user_action(cd_job, str(user), "SCHEDULED")
    cd_sim.resource_op(cd_job, "unschedule", str(user))
    eventually(lambda: records[derived]["active"] == 0)
    wait_quiet_cycles(sm8_sim)
    assert cd_sim.write_count() == 0, cd_sim.counts_snapshot()  # nothing echoed to Coredination


def test_deleting_in_servicem8_unschedules_in_coredination(stack, sm8_sim, cd_sim):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=2)
    stack.worker()
    stack.beat()
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns))
    gone = biz.allocations[0]
    sm8_sim.delete("joballocation", gone["uuid"])
    cd_job = cd_job_uuid(ns, gone["job_uuid"])
    user = biz.user_for(gone["staff_uuid"])["id"]
    eventually(lambda: user not in cd_resources(cd_sim)[cd_job])
    assert len(cd_resources(cd_sim)[cd_job]) == 1


def test_changed_on_both_sides_between_polls_the_later_wins(stack, sm8_sim, cd_sim):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    stack.worker()
    stack.beat()
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns))
    row = biz.allocations[0]
    cd_job = cd_job_uuid(ns, row["job_uuid"])
    user = biz.user_for(row["staff_uuid"])["id"]
    with sm8_sim.lock, cd_sim.lock:  # both changes land between two polls
        sm8_sim.delete("joballocation", row["uuid"])  # ServiceM8 first...
        cd_sim.clock_offset += 5
        cd_sim.resource_op(cd_job, "assign", str(user))  # ...Coredination later: it wins
    eventually(lambda: cd_resources(cd_sim)[cd_job] == {user: "ASSIGNED"})

    def live():
        return [
            a
            for a in sm8_sim.records["joballocation"].values()
            if a["staff_uuid"] == row["staff_uuid"] and a["active"] == 1
        ]

    eventually(lambda: len(live()) == 1 and live()[0]["allocation_date"] == "0000-00-00 00:00:00")
    wait_quiet_cycles(sm8_sim)
    assert cd_resources(cd_sim)[cd_job] == {user: "ASSIGNED"}


def test_worker_killed_mid_cycle_leaves_no_duplicate_and_nothing_missing(stack, sm8_sim, cd_sim):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=5, jobs=20, allocations=50)
    cd_sim.set_faults(latency=0.04)  # stretch the cycle so the kill lands inside it
    stack.worker("w1")
    stack.beat()
    eventually(lambda: cd_sim.write_count() >= 10, timeout=30)
    stack.kill("w1")
    written_before_restart = cd_sim.write_count()
    assert written_before_restart < 70, "the cycle finished before the kill"
    cd_sim.set_faults(latency=0.0)
    stack.worker("w2")
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns), timeout=60)
    assert len(cd_sim.jobs) == 20  # no duplicate job
    assert len(sm8_sim.records["joballocation"]) == 50  # no duplicate allocation
    assert sm8_sim.write_count() == 0


def test_unmapped_staff_is_pending_until_linked(stack, sm8_sim, cd_sim):
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3, unmapped_staff=1)
    stack.worker()
    stack.beat()
    orphan = biz.staff[-1]
    eventually(lambda: any(k.endswith(orphan["uuid"]) for k in stack.stores.parked.pending()))
    row = next(a for a in biz.allocations if a["staff_uuid"] == orphan["uuid"])
    cd_job = cd_job_uuid(ns, row["job_uuid"])
    # The user appears in Coredination with the staff member's e-mail: the next match links them.
    user = cd_sim.add_user(orphan["email"], orphan["first"], orphan["last"])
    eventually(lambda: cd_resources(cd_sim).get(cd_job, {}).get(user["id"]) == "SCHEDULED")
    eventually(lambda: not any(k.endswith(orphan["uuid"]) for k in stack.stores.parked.pending()))
    time.sleep(0)  # nothing else to wait for
