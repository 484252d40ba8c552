"""Work bookkeeping: queue claims, locks, failure counts, deferred work and dead letters."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from bridge.store.keys import Keys
from bridge.store.parked import dump

FAILURE_MEMORY_SECONDS = 7200  # longer than the retry policy's hour
POLL_LOCK_SECONDS = 30.0  # a killed poller's lock is free again within this (``poll_lock``)


class WorkStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    # --- queue claims and locks ------------------------------------------------------------------
    def claim_enqueue(self, job_uuid: str, ttl: int = 300) -> bool:
        """True if no sync of this job is queued yet (and now one is)."""
        return bool(self.r.set(self.keys.queued(job_uuid), "1", nx=True, ex=ttl))

    def release_enqueue(self, job_uuid: str) -> None:
        self.r.delete(self.keys.queued(job_uuid))

    def job_lock(
        self, job_uuid: str, timeout: float = 120.0, blocking_timeout: float = 10.0
    ) -> Lock:
        """One writer per job: webhook, poll and retry paths all take this lock."""
        lock: Lock = self.r.lock(
            self.keys.job_lock(job_uuid), timeout=timeout, blocking_timeout=blocking_timeout
        )
        return lock

    @contextlib.contextmanager
    def poll_lock(self, system: str, timeout: float = POLL_LOCK_SECONDS) -> Iterator[bool]:
        """One poll of a system at a time across every host; yields False when another runs.

        The lock is short and kept alive while the poll runs (renewed every third of
        ``timeout`` by a thread of the holder's), so a poll that takes long keeps it, and one
        whose worker was killed frees it within ``timeout``: a long lock would stop every poll
        of the system for as long after a SIGKILL."""
        # Not thread-local: the renewing thread must see the token the holder acquired with.
        lock = self.r.lock(
            self.keys.poll_lock(system), timeout=timeout, blocking=False, thread_local=False
        )
        acquired = bool(lock.acquire(blocking=False))
        done = threading.Event()
        if acquired:

            def keep() -> None:
                while not done.wait(timeout / 3):
                    with contextlib.suppress(LockError, RedisError):
                        lock.reacquire()

            threading.Thread(target=keep, name=f"poll-lock-{system}", daemon=True).start()
        try:
            yield acquired
        finally:
            done.set()
            if acquired:
                with contextlib.suppress(LockError):
                    lock.release()

    # --- failures --------------------------------------------------------------------------------
    def record_failure(self, task_id: str | None, now: float) -> tuple[float, int]:
        """Count a failure of this task (its retries share the task id): (first failure, how
        many failures before this one). Budget waits are not failures and are not counted."""
        key = self.keys.failure(task_id)
        with self.r.pipeline() as pipe:
            pipe.hsetnx(key, "first", repr(now))
            pipe.hincrby(key, "n", 1)
            pipe.expire(key, FAILURE_MEMORY_SECONDS)
            pipe.hget(key, "first")
            _, count, _, first = pipe.execute()
        return float(first), int(count) - 1

    def forget_failure(self, task_id: str | None) -> None:
        self.r.delete(self.keys.failure(task_id))

    # --- deferred work ---------------------------------------------------------------------------
    def defer(self, due: float, message: Mapping[str, Any]) -> None:
        self.r.zadd(self.keys.deferred, {dump(dict(message)): due})

    def take_due(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        """Deferred messages now due. Each is handed out once: only the caller whose ZREM
        removed it gets it, so two releasers never enqueue the same message."""
        due = []
        for raw in self.r.zrangebyscore(self.keys.deferred, "-inf", now, start=0, num=limit):
            if self.r.zrem(self.keys.deferred, raw):
                due.append(json.loads(raw))
        return due

    def deferred_count(self) -> int:
        return int(self.r.zcard(self.keys.deferred))

    # --- dead letters ----------------------------------------------------------------------------
    def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = self.r.xrange(self.keys.dlq, count=count)
        return [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
            for entry_id, data in rows
        ]

    def dead_letter(self, entry: Mapping[str, Any]) -> str:
        """Append an entry (already free of secrets) to the dead-letter stream; return its id."""
        fields = {
            k: v if isinstance(v, str) else dump(v) for k, v in entry.items() if v is not None
        }
        return str(self.r.xadd(self.keys.dlq, fields).decode())

    def get_dead_letter(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.keys.dlq, min=entry_id, max=entry_id)
        if not rows:
            return None
        return {k.decode(): v.decode() for k, v in rows[0][1].items()}

    def drop_dead_letter(self, entry_id: str) -> bool:
        return bool(self.r.xdel(self.keys.dlq, entry_id))

    def dead_letter_count(self) -> int:
        return int(self.r.xlen(self.keys.dlq))
