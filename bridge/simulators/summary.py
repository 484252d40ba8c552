"""What the demo's summary shows (``sm8cd demo --summary-json``), read back from both
simulators: the bookings and resources in step, the requests each answered, and the finished
work the sync left out."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from bridge.simulators.checker import Convergence
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.servicem8 import ServiceM8Simulator


def summary_data(
    sm8: ServiceM8Simulator,
    cd: CoredinationSimulator,
    result: Convergence,
    history: Collection[str] = (),
) -> dict[str, Any]:
    """What the demo's summary shows, read back from both simulators. Bookings on the jobs of
    ``history`` (finished work, out of the sync's scope) are counted apart."""
    allocations = [a for a in sm8.records["joballocation"].values() if a["job_uuid"] not in history]
    activities = [a for a in sm8.records["jobactivity"].values() if a["job_uuid"] not in history]
    return {
        "converged": result.converged,
        "servicem8_jobs_allocated": result.sm8_jobs,
        "coredination_jobs": result.cd_jobs,
        "pairs_in_step": result.by_presence,
        "pending": result.pending,
        "problems": result.problems,
        "servicem8_live_allocations": sum(1 for a in allocations if str(a["active"]) == "1"),
        "servicem8_live_fixed_bookings": sum(
            1
            for a in activities
            if str(a["active"]) == "1" and str(a["activity_was_scheduled"]) == "1"
        ),
        "servicem8_history_jobs": len(history),
        "servicem8_history_bookings": sum(
            1
            for obj in ("joballocation", "jobactivity")
            for a in sm8.records[obj].values()
            if a["job_uuid"] in history
        ),
        "coredination_resources": sum(
            1
            for j in cd.jobs.values()
            for r in j["resources"]
            if r["state"] not in ("UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE")
        ),
        "servicem8_requests": len(sm8.calls),
        "coredination_requests": len(cd.calls),
        "answered_429": sum(1 for c in sm8.calls if c[3] == 429),
        "simulators": {
            "servicem8_joballocations": allocations,
            "servicem8_jobactivities": activities,
            "coredination_jobs": list(cd.jobs.values()),
        },
    }
