"""Queue priority on a real worker: with a backlog on every lane, the worker takes interactive
work first, then sync, then poll, then bulk, whatever the interpreter's hash seed. Kombu's Redis
channel once kept its queues in a set, whose order follows the hash seed (kombu 5.7 keeps them in
order; ``pyproject.toml`` requires it)."""

from __future__ import annotations

import json
import uuid

import pytest

from bridge.queues import QUEUE_KINDS, SYNC_JOB, queue_name, sender
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

PER_LANE = 8


def _received(stack: Stack) -> list[str]:
    """Task ids in the order the worker took them."""
    order = []
    for line in (stack.tmp / "w1.log").read_text(errors="replace").splitlines():
        try:
            event = json.loads(line).get("event", "")
        except ValueError:
            continue
        if event.startswith(f"Task {SYNC_JOB}[") and event.endswith("] received"):
            order.append(event[len(f"Task {SYNC_JOB}[") : -len("] received")])
    return order


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_a_worker_takes_the_lanes_in_priority_order_under_any_hash_seed(
    tmp_path, redis_url, sm8_sim, cd_sim, seed
):
    stack = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
                  PYTHONHASHSEED=str(seed), SERVICEM8_POLL_SECONDS="3600",
                  COREDINATION_POLL_SECONDS="3600")  # fmt: skip
    try:
        app = sender(stack.env["REDIS_URL"], stack.connection)
        lane_of: dict[str, str] = {}
        # Queued lowest priority first, so arrival order cannot explain the order taken. A sync
        # of an id that is no uuid is dropped at once: the tasks cost nothing.
        for lane in reversed(QUEUE_KINDS):
            for i in range(PER_LANE):
                task_id = str(uuid.uuid4())
                lane_of[task_id] = lane
                app.send_task(SYNC_JOB, args=[f"not-a-job-{lane}-{i}"], task_id=task_id,
                              queue=queue_name(stack.connection, lane))  # fmt: skip
        stack.worker("w1", concurrency=1)
        total = PER_LANE * len(QUEUE_KINDS)
        taken = eventually(lambda: (o := _received(stack)) and len(o) == total and o,
                           timeout=60, interval=0.2)  # fmt: skip
        lanes = [lane_of[t] for t in taken]
        assert lanes == [lane for lane in QUEUE_KINDS for _ in range(PER_LANE)], lanes
    finally:
        stack.stop()
        stack.wipe()
