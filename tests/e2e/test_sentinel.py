"""Failover on a real Sentinel group (``bench/sentinel.py``: a primary, a replica, three
sentinels, passwords on both): the link store's client, beat's redbeat client and a real Celery
worker with its senders keep working when the primary changes, whether handed over
(``SENTINEL FAILOVER``) or killed (SIGKILL)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redbeat.schedulers import get_redis

from bench.sentinel import MASTER, SENTINEL_PASSWORD, MissingBinaries, SentinelCluster
from bridge.config import Settings
from bridge.queues import SYNC_JOB, Enqueuer
from bridge.redis import conn as redis_conn
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import Stack, eventually

# How long one call of the store's client may take across a failover: the switch itself (a few
# seconds here) within the client's retries (about 33 s per connection attempt).
CALL_BOUND = 35.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    try:
        group = SentinelCluster(tmp_path / "sentinel").start()
    except MissingBinaries as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        yield group
    finally:
        group.stop()


def test_the_store_client_follows_a_handed_over_primary(cluster):
    client = redis_conn.client(cluster.url(2), health_check_interval=30)
    try:
        client.set("before", "1")
        old = cluster.master_addr()
        new = cluster.failover()
        assert new != old
        started = time.monotonic()
        # Its pooled connection is to the old primary, a replica now: READONLY, then the
        # sentinels are asked again.
        client.set("after", "2")
        assert time.monotonic() - started < CALL_BOUND
        primary = cluster.node(new[1])
        primary.select(2)
        assert primary.mget("before", "after") == ["1", "2"]
    finally:
        client.close()


def test_the_store_client_rides_over_a_killed_primary_and_redbeat_follows(cluster, settings):
    client = redis_conn.client(cluster.url(1), health_check_interval=30)
    beat = _beat_app(settings, cluster.url(1, with_options=False))
    try:
        assert get_redis(beat).set("redbeat-before", "1")
        client.set("before", "1")
        assert client.wait(1, 2000) == 1  # on the replica too, so the kill loses nothing
        # A connection whose command was in flight at the kill: redis-py reconnects it by
        # itself, once the command's answer failed, to the address it had (the dead primary).
        in_flight: Any = client.connection_pool.get_connection()
        writer = _Writer(client)
        new = cluster.kill_primary()
        in_flight.disconnect()
        started = time.monotonic()
        in_flight.send_command("INCR", "in-flight")
        assert in_flight.read_response() == 1  # to the new primary, asked of the sentinels
        assert time.monotonic() - started < 5.0
        client.connection_pool.release(in_flight)
        at_switch = writer.done
        time.sleep(0.5)  # writes on the new primary
        writer.stop()
        assert writer.errors == []  # each call retried across the switch
        assert writer.slowest < CALL_BOUND
        assert writer.done > at_switch
        primary = cluster.node(new[1])
        primary.select(1)
        # Replication is asynchronous, so an increment acknowledged just before the kill may be
        # lost; every one acknowledged since the switch is on the new primary.
        assert int(primary.get("n") or 0) >= writer.done - at_switch
        assert primary.get("before") == "1"
        # Beat's client is the bridge's own (tasks/app.py), found again after the switch.
        assert get_redis(beat).get("redbeat-before") == "1"
    finally:
        client.close()
        beat.redbeat_redis.close()
        beat.close()


def test_a_worker_and_beat_carry_on_across_each_failover(tmp_path, cluster, sm8_sim, cd_sim):
    # Stack opens a plain client from its URL (bench/harness.py), so it gets the primary's own
    # address, and the processes it starts get the Sentinel URL, with the master's name and the
    # sentinels' password in the settings rather than in the URL.
    primary = cluster.master_addr()[1]
    direct = f"redis://:{cluster.password}@127.0.0.1:{primary}/0"
    # DEBUG: the worker's line per task succeeded is how this test sees one consumed.
    stack = Stack(tmp_path / "stack", direct, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY,
                  LOG_LEVEL="DEBUG")  # fmt: skip
    stack.env.update(
        REDIS_URL=cluster.url(0, with_options=False),
        REDIS_SENTINEL_MASTER=cluster.master,
        REDIS_SENTINEL_PASSWORD=cluster.sentinel_password,
        SERVICEM8_POLL_SECONDS="3600",
        COREDINATION_POLL_SECONDS="3600",
    )
    enqueue = Enqueuer.for_broker(cluster.url(0), stack.connection)
    try:
        stack.worker("w1", concurrency=1)
        stack.beat()
        _consumed(stack, enqueue, "first", timeout=30)
        cluster.failover()
        # The worker reconnects once the sentinels name the new primary, which under a loaded
        # machine takes tens of seconds (its broker retries back off): a bound, not a target.
        _consumed(stack, enqueue, "after-handover", timeout=60)
        cluster.kill_primary()
        sent = _beat_sent(stack)
        _consumed(stack, enqueue, "after-kill", timeout=60)
        # Beat renews its lock at every tick (every second here): it rode over the switch and
        # goes on. Like the worker's, its reconnection backs off on a loaded machine: a bound.
        try:
            eventually(lambda: _beat_sent(stack) >= sent + 2, timeout=45, interval=0.2)
        except AssertionError:
            log = (stack.tmp / "beat.log").read_text(errors="replace")[-4000:]
            code = stack.processes["beat"].poll()
            raise AssertionError(f"beat sent nothing after the kill ({code}):\n{log}") from None
        assert stack.processes["beat"].poll() is None
    finally:
        stack.stop()
        stack.client.close()
        enqueue.app.close()


# --- helpers ---------------------------------------------------------------------------------
def _consumed(stack: Stack, enqueue: Enqueuer, label: str, timeout: float) -> None:
    """Send one sync (of an id that is no job: dropped at once) and wait for the worker to
    finish it."""
    task_id = f"{label}-{uuid.uuid4().hex[:8]}"
    enqueue.send(SYNC_JOB, [f"not-a-job-{label}"], task_id=task_id)
    done = f"Task {SYNC_JOB}[{task_id}] succeeded"

    def finished() -> bool:
        log = stack.tmp / "w1.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return any(done in _event(line) for line in lines)

    try:
        eventually(finished, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(
            f"{label}: not consumed; worker log:\n{stack.logs()[-4000:]}"
        ) from None


def _beat_sent(stack: Stack) -> int:
    """How many tasks beat has sent so far."""
    log = stack.tmp / "beat.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sum(_event(line).startswith("Scheduler: Sending due task") for line in lines)


def _event(line: str) -> str:
    try:
        return str(json.loads(line).get("event", ""))
    except ValueError:
        return ""


class _Writer:
    """Increments ``n`` in a loop on a thread, from 0.3 s after it starts until ``stop()``:
    the increments acknowledged, the slowest call, the errors."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.done, self.slowest, self.errors = 0, 0.0, list[str]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        time.sleep(0.3)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.client.incr("n")
                self.done += 1
            except redis.RedisError as exc:
                self.errors.append(type(exc).__name__)
            self.slowest = max(self.slowest, time.monotonic() - started)
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * CALL_BOUND)


def _beat_app(settings: Settings, url: str) -> Any:
    """The bridge's app as beat builds it, on ``url``, with the master's name and the
    sentinels' password in the settings."""
    from tasks.app import create_app

    given = settings.model_copy(
        update={
            "redis_url": SecretStr(url),
            "redis_sentinel_master": MASTER,
            "redis_sentinel_password": SecretStr(SENTINEL_PASSWORD),
        }
    )
    return create_app(given)
