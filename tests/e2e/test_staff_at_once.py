"""Issue 27's "staff at once" on real worker and beat processes: a fresh bridge run maps staff
with matching e-mails before its first job sync; a user added in Coredination later is matched
within one Coredination poll; a booking of a staff member added later asks a match of that
person, after which the job syncs with them on it. The periodic match is an hour apart
throughout, so none of this waits for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.harness import cd_resources, expected_resources
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, connection_namespace
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

pytestmark = pytest.mark.e2e

CD_POLL = 2.0
START = datetime.now() + timedelta(days=2)  # upcoming bookings: in the sync's scope


@pytest.fixture
def quiet_match(tmp_path: Path, redis_url: str, sm8_sim: Any, cd_sim: Any) -> Iterator[Stack]:
    """The bridge with its periodic staff match an hour apart."""
    s = Stack(
        tmp_path,
        redis_url,
        sm8_sim,
        cd_sim,
        sm8_key=SM8_KEY,
        cd_key=CD_KEY,
        STAFF_MATCH_SECONDS="3600",
        COREDINATION_POLL_SECONDS=str(CD_POLL),
    )
    yield s
    s.stop()
    s.wipe()


def _pending_of(stack: Stack, staff_uuid: str) -> list[str]:
    return [k for k in stack.stores.parked.pending() if k.endswith(staff_uuid.lower())]


def test_a_fresh_run_maps_the_staff_before_its_first_job_sync(quiet_match, sm8_sim, cd_sim):
    stack = quiet_match
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=6, allocations=10, start=START)
    # The first match cannot run yet (ServiceM8's staff list answers 503) while the polls go on:
    # the job syncs they queue wait for it instead of creating jobs with nobody on them.
    sm8_sim.set_faults(refusals={"staff.json": (503, "busy")})
    stack.worker(concurrency=2)
    stack.beat()
    eventually(lambda: sm8_sim.count("GET", "joballocation.list") >= 2, timeout=60)
    eventually(lambda: stack.stores.jobs.dirty_count() == 6, timeout=30)  # syncs are waiting
    time.sleep(1.0)
    assert cd_sim.jobs == {}  # no job created while its people could not be mapped
    sm8_sim.set_faults(refusals={})
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns), timeout=90)
    stats = stack.stores.activity.stats()
    assert stats.get("pending.unmapped_staff", 0) == 0, stats  # no sync met an unmapped person
    assert len(stack.stores.staff.staff_map().s2u) == 4
    assert stack.stores.parked.pending() == {}


def test_a_user_added_in_coredination_later_is_matched_within_one_poll(
    quiet_match, sm8_sim, cd_sim
):
    stack = quiet_match
    ns = connection_namespace(stack.connection)
    biz = seed_business(
        sm8_sim, cd_sim, staff=3, jobs=3, allocations=3, unmapped_staff=1, start=START
    )
    stack.worker(concurrency=2)
    stack.beat()
    orphan = biz.staff[-1]
    eventually(lambda: _pending_of(stack, orphan["uuid"]), timeout=60)
    row = next(a for a in biz.allocations if a["staff_uuid"] == orphan["uuid"])
    matches = sm8_sim.count("GET", "staff.list")
    added = time.monotonic()
    user = cd_sim.add_user(orphan["email"].lower(), orphan["first"], orphan["last"])["id"]
    eventually(
        lambda: stack.stores.staff.staff_map().s2u.get(orphan["uuid"].lower()) == user,
        timeout=30,
        interval=0.05,
    )
    took = time.monotonic() - added
    # One Coredination poll (its interval, plus the fleet tick's second and a task's start).
    assert took <= CD_POLL + 2.5, took
    assert sm8_sim.count("GET", "staff.list") == matches  # no whole match: the users poll did it
    cd_job = cd_job_uuid(ns, row["job_uuid"])
    eventually(lambda: cd_resources(cd_sim).get(cd_job, {}).get(user) == "SCHEDULED", timeout=30)
    eventually(lambda: not _pending_of(stack, orphan["uuid"]), timeout=30)


def test_a_booking_of_a_staff_member_added_later_asks_a_match_then_the_job_syncs_again(
    quiet_match, sm8_sim, cd_sim
):
    stack = quiet_match
    ns = connection_namespace(stack.connection)
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2, start=START)
    stack.worker(concurrency=2)
    stack.beat()
    eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns), timeout=60)
    # Added on both sides after the first match: the users poll cannot link them, since the
    # staff directory of that match does not hold the new staff member.
    member = sm8_sim.create(
        "staff", {"first": "Nia", "last": "Okafor", "email": "Nia.Okafor@example.com"}
    )
    user = cd_sim.add_user("nia.okafor@example.com", "Nia", "Okafor")["id"]
    time.sleep(2 * CD_POLL)
    assert member.lower() not in stack.stores.staff.staff_map().s2u
    matches = sm8_sim.count("GET", "staff.list")
    job = biz.jobs[0]
    sm8_sim.create("joballocation", {"job_uuid": job, "staff_uuid": member, "active": 1})
    cd_job = cd_job_uuid(ns, job)
    eventually(lambda: cd_resources(cd_sim)[cd_job].get(user) == "ASSIGNED", timeout=60)
    assert sm8_sim.count("GET", "staff.list") == matches + 1  # one match, asked by the booking
    # The pair's parking is cleared in the sync's one write at its end, just after the write
    # that made the user ASSIGNED: it is gone once that sync has ended.
    eventually(lambda: not _pending_of(stack, member), timeout=10)
