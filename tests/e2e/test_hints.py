"""Gathered webhook hints on real worker processes (docs/operations.md#hint-coalescing): the worker
reading a window's hints is killed mid-read, and another worker reads them, nothing lost."""

from __future__ import annotations

import signal
import time

from bridge.config import load_settings
from bridge.ops.subscriptions import subscribe_webhooks
from bridge.process.runtime import build
from bridge.queues import READ_HINTS, sender
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

TOKEN = "whk-e2e-hints-7d41c0"
WINDOW_MS = 500
FIXED = {"activity_was_scheduled": 1, "start_date": days.stamp(3, 9),
         "end_date": days.stamp(3, 11)}  # fmt: skip


def _reader(stack: Stack) -> str | None:
    """The worker (w1 or w2) running a hint reader now, by Celery's remote control."""
    active = sender(stack.env["REDIS_URL"], stack.connection).control.inspect(timeout=1).active()
    for host, tasks in (active or {}).items():
        if any(t.get("name") == READ_HINTS for t in tasks):
            return host.split("-", 1)[0]
    return None


def test_a_killed_hint_reader_leaves_its_hints_to_another_worker(
    tmp_path, redis_url, sm8_sim, cd_sim
):
    # Polls an hour apart: only the hints can bring the new bookings over.
    stack = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
                  SERVICEM8_POLL_SECONDS="3600", COREDINATION_POLL_SECONDS="3600",
                  STAFF_MATCH_SECONDS="3600", HINT_COALESCE_MS=str(WINDOW_MS),
                  WEBHOOK_TOKEN=TOKEN)  # fmt: skip
    try:
        ns = connection_namespace(stack.connection)
        biz = seed_business(sm8_sim, cd_sim, staff=4, jobs=4, allocations=4)
        stack.env["WEBHOOK_PUBLIC_URL"] = stack.web()
        fields = {k.lower(): v for k, v in stack.env.items() if k.isupper()}
        rt = build(load_settings(_env_file=None, **fields), redis_url)
        rt.engine.run_cycle()  # linked and in step before the hints start
        subscribe_webhooks(rt)
        rt.close()
        stack.worker("w1", concurrency=1)
        stack.worker("w2", concurrency=1)
        eventually(lambda: len(stack.stores.activity.live_workers()) == 2, timeout=60)

        sm8_sim.set_faults(latency=4.0)  # every ServiceM8 answer takes 4 s: the reader is slow
        pairs = [(biz.jobs[i], biz.staff[(i + 1) % 4]["uuid"]) for i in range(3)]
        first = sm8_sim.create("jobactivity", {"job_uuid": pairs[0][0],
                                               "staff_uuid": pairs[0][1], **FIXED})  # fmt: skip
        holder = eventually(lambda: _reader(stack), timeout=20, interval=0.1)
        stack.kill(holder, signal.SIGKILL)
        killed = time.time()
        sm8_sim.set_faults(latency=0.0)
        made = [first] + [
            sm8_sim.create("jobactivity", {"job_uuid": job, "staff_uuid": staff, **FIXED})
            for job, staff in pairs[1:]
        ]

        def in_coredination() -> bool:
            for job, staff in pairs:
                user = biz.user_for(staff)["id"]
                cd_job = cd_sim.jobs.get(cd_sim.by_uuid.get(cd_job_uuid(ns, job), -1)) or {}
                if not any(r["userId"] == user for r in cd_job.get("resources", [])):
                    return False
            return True

        eventually(in_coredination, timeout=30, interval=0.05)
        took = time.time() - killed
        print(f"\nhint reader {holder} killed mid-read; the other worker had all "
              f"{len(made)} bookings in Coredination {took:.2f} s later "
              f"(window {WINDOW_MS} ms, lease {2 * WINDOW_MS} ms)")  # fmt: skip
        assert stack.stores.hints.oldest_ms("servicem8.jobactivity") is None  # none left
        assert took <= 4 * WINDOW_MS / 1000 + 1.0
    finally:
        stack.stop()
        stack.wipe()
