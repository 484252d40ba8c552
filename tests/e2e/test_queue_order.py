"""Queue priority on real workers: with a backlog on every lane, a worker takes interactive work
first, then sync, then poll, then bulk, whatever the interpreter's hash seed. Kombu's Redis channel
once kept its queues in a set, whose order follows the hash seed (kombu 5.7 keeps them in order;
``pyproject.toml`` requires it)."""

from __future__ import annotations

import json
import uuid

from bridge.queues import QUEUE_KINDS, SYNC_JOB, queue_name, sender
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

SEEDS = (1, 2, 3, 4, 5, 6)
PER_LANE = 6


def _received(stack: Stack) -> list[str]:
    """Task ids in the order the worker took them."""
    head, tail = f"Task {SYNC_JOB}[", "] received"
    order = []
    log = stack.tmp / "w1.log"
    for line in (log.read_text(errors="replace") if log.exists() else "").splitlines():
        try:
            event = str(json.loads(line).get("event", ""))
        except ValueError:
            continue
        if event.startswith(head) and event.endswith(tail):
            order.append(event[len(head) : -len(tail)])
    return order


def test_workers_take_the_lanes_in_priority_order_under_every_hash_seed(
    tmp_path, redis_url, sm8_sim, cd_sim
):
    # One connection (its own queues) and one worker per seed, all at once. DEBUG: the worker's
    # line per task received is how this test sees the order it took them in.
    stacks = {seed: Stack(tmp_path / f"seed{seed}", redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY,
                          cd_key=CD_KEY, PYTHONHASHSEED=str(seed), LOG_LEVEL="DEBUG",
                          SERVICEM8_POLL_SECONDS="3600", COREDINATION_POLL_SECONDS="3600")
              for seed in SEEDS}  # fmt: skip
    lane_of: dict[str, str] = {}
    try:
        for stack in stacks.values():
            app = sender(stack.env["REDIS_URL"], stack.connection)
            # Queued lowest priority first, so arrival order cannot explain the order taken. A
            # sync of an id that is no uuid is dropped at once: the tasks cost nothing.
            for lane in reversed(QUEUE_KINDS):
                for i in range(PER_LANE):
                    task_id = str(uuid.uuid4())
                    lane_of[task_id] = lane
                    app.send_task(SYNC_JOB, args=[f"not-a-job-{lane}-{i}"], task_id=task_id,
                                  queue=queue_name(stack.connection, lane))  # fmt: skip
        for stack in stacks.values():
            stack.worker("w1", concurrency=1)
        total = PER_LANE * len(QUEUE_KINDS)
        expected = [lane for lane in QUEUE_KINDS for _ in range(PER_LANE)]
        for seed, stack in stacks.items():
            taken = eventually(lambda s=stack: (o := _received(s)) and len(o) == total and o,
                               timeout=90, interval=0.2)  # fmt: skip
            assert [lane_of[t] for t in taken] == expected, f"PYTHONHASHSEED={seed}"
    finally:
        for stack in stacks.values():
            stack.stop()
            stack.wipe()
