"""The sync flows under every reading of what the APIs leave open: a matrix of simulator dialects
(docs/coredination-api.md#guesses, docs/servicem8-api.md), each flow run once per dialect against
both simulators and real Redis, one cycle at a time.

Each dialect flips one switch of one simulator from its default (the evidence-backed or harder
reading); ``first reading`` is what that simulator played before the second look at the evidence.
The defaults of both run in every row.
"""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from bridge.simulators import (
    FIRST_READING,
    HOSTILE_COREDINATION,
    HOSTILE_SERVICEM8,
    LEGACY_DIALECT,
    CoredinationDialect,
    ServiceM8Dialect,
)
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid

EMPTY = "0000-00-00 00:00:00"
DEFAULT = CoredinationDialect()
CD_DIALECTS: dict[str, dict[str, object]] = {
    "default": {},
    "first reading": asdict(LEGACY_DIALECT),
    "stamps modified": {"stamps": "modified"},
    "no stamps": {"stamps": "none"},
    "flat resources": {"resource_shape": "userId"},
    "unassign exists": {"unassign": True},
    "unassign missing, 405": {"missing_status": 405},
    "schedule on finished applied": {"schedule_finished": "applied"},
}
assert {f.name for f in fields(CoredinationDialect)} >= {k for d in CD_DIALECTS.values() for k in d}
# ServiceM8's: "server uuids" is left out (the bridge stops creating then, by design: its own
# tests are in tests/adapters/test_servicem8_dialects.py).
SM8_DIALECTS: dict[str, dict[str, object]] = {
    "first reading": asdict(FIRST_READING),
    "allocation webhooks": {"allocation_webhooks": True},
    "DELETE never restores": {"delete_restores": False},
    "DELETE answers lost": {"lost_delete_answer_rate": 0.3},
    "create answers lost": {"lost_create_answer_rate": 0.3},
    "delivery times in UTC": {"delivery_time": "utc"},
    "repeated create refused": {"duplicate_uuid": "refused", "lost_create_answer_rate": 0.3},
    "refusals as 4xx": {"refusal_as_success": False},
    "null clears dates": {"null_clears": True},
}
assert {f.name for f in fields(ServiceM8Dialect)} >= {k for d in SM8_DIALECTS.values() for k in d}
MATRIX = (
    [("coredination", name) for name in CD_DIALECTS]
    + [("servicem8", name) for name in SM8_DIALECTS]
    + [("both", "hostile mix")]
)


@pytest.fixture(params=MATRIX, ids=[f"{api} {name}" for api, name in MATRIX])
def dialect(request, sm8_sim, cd_sim):
    api, name = request.param
    if api == "both":
        cd_sim.set_dialect(**asdict(HOSTILE_COREDINATION))
        sm8_sim.set_dialect(**asdict(HOSTILE_SERVICEM8))
    elif api == "coredination":
        cd_sim.set_dialect(**CD_DIALECTS[name])
    else:
        sm8_sim.set_dialect(**SM8_DIALECTS[name])
    return request.param


def _resources(cd_sim, uuid):
    job = next(j for j in cd_sim.snapshot()["jobs"] if j["uuid"] == uuid)
    return {r["userId"]: r["state"] for r in job["resources"]}


def _cycle(engine):
    return engine.run_cycle(match_staff=False)


def test_office_bookings_reach_coredination_and_a_quiet_cycle_writes_nothing(
    dialect, engine, sm8_sim, cd_sim
):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=6, allocations=10, fixed=4)
    engine.run_cycle()
    ns = engine.ctx.ns
    for job in biz.jobs:
        want = {}
        for row in (b for b in biz.bookings if b["job_uuid"] == job):
            user = biz.user_for(row["staff_uuid"])["id"]
            timed = row.get("allocation_date") or row.get("start_date")
            want[user] = "SCHEDULED" if timed else want.get(user, "ASSIGNED")
        assert _resources(cd_sim, cd_job_uuid(ns, job)) == want
    _cycle(engine)  # the first re-read sees our own job writes once
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    report = _cycle(engine)
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0, dict(report.counts)


def test_dispatcher_changes_flow_back_once_and_without_echo(dialect, engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=2, allocations=2)
    engine.run_cycle()
    job = biz.jobs[0]
    cd_job = cd_job_uuid(engine.ctx.ns, job)
    taken = {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
    member = next(s for s in biz.staff if s["uuid"] not in taken)
    user = biz.user_for(member["uuid"])["id"]

    def bookings():
        return [a for obj in ("joballocation", "jobactivity")
                for a in sm8_sim.records[obj].values()
                if a["staff_uuid"] == member["uuid"] and a["job_uuid"] == job
                and a["active"] == 1]  # fmt: skip

    cd_sim.resource_op(cd_job, "schedule", str(user))
    _cycle(engine)
    assert len(bookings()) == 1  # one booking (fixed: the job is timed)
    cd_sim.resource_op(cd_job, "assign", str(user))
    _cycle(engine)
    assert [b.get("allocation_date") for b in bookings()] == [EMPTY]  # an undated allocation
    cd_sim.resource_op(cd_job, "unschedule", str(user))
    _cycle(engine)
    assert bookings() == []
    cd_sim.reset_counts()
    sm8_sim.reset_counts()
    _cycle(engine)
    _cycle(engine)
    assert cd_sim.write_count() == 0 and sm8_sim.write_count() == 0


def test_office_changes_that_take_people_off_reach_coredination(dialect, engine, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2, fixed=1)
    engine.run_cycle()
    ns = engine.ctx.ns
    allocation, activity = biz.allocations[1], biz.activities[0]
    sm8_sim.update("joballocation", allocation["uuid"], {"allocation_date": EMPTY})
    sm8_sim.delete("jobactivity", activity["uuid"])
    _cycle(engine)
    undated = biz.user_for(allocation["staff_uuid"])["id"]
    assert _resources(cd_sim, cd_job_uuid(ns, allocation["job_uuid"]))[undated] == "ASSIGNED"
    gone = biz.user_for(activity["staff_uuid"])["id"]
    assert gone not in _resources(cd_sim, cd_job_uuid(ns, activity["job_uuid"]))
