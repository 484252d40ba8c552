"""Work bookkeeping: queue claims, locks, failure counts, deferred work and dead letters."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from bridge.store.keys import Keys
from bridge.store.lua import queue
from bridge.store.parked import dump

FAILURE_MEMORY_SECONDS = 7200  # longer than the retry policy's hour
POLL_LOCK_SECONDS = 30.0  # a killed poller's lock is free again within this (``poll_lock``)


# One dead letter per cause: the cause's entry (if any) is replaced by one counting both.
# KEYS: the stream, the cause → id hash. ARGV: the cause, then field, value, field, value, …
_DEAD_LETTER_ONCE = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local count, first = 1, nil
if old then
  local rows = redis.call('XRANGE', KEYS[1], old, old)
  if #rows > 0 then
    local f = rows[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'count' then count = tonumber(f[i + 1]) + 1 end
      if f[i] == 'first_failure' then first = f[i + 1] end
    end
    redis.call('XDEL', KEYS[1], old)
  end
end
local fields = {}
for i = 2, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  if k == 'first_failure' and first then v = first end
  if k ~= 'count' and k ~= 'cause' then
    fields[#fields + 1] = k
    fields[#fields + 1] = v
  end
end
fields[#fields + 1] = 'count'
fields[#fields + 1] = tostring(count)
fields[#fields + 1] = 'cause'
fields[#fields + 1] = ARGV[1]
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[1], id)
return id
"""


class WorkStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys
        self._dead_letter_once = redis.register_script(_DEAD_LETTER_ONCE)

    # --- work on its way -----------------------------------------------------------------------
    def renew_noting(self, lock: Lock | None, job_uuid: str, what: str) -> None:
        """``lock`` renewed (redis-py's own renewal script) and the job's in-flight mark kept, in
        one round trip; raises ``LockNotOwnedError`` when the lock is no longer ours. The mark
        (``what``: the body digest of a ``PUT`` creating the job's Coredination job, else ``1``)
        stays until a sync of the job ends, so a sync after a worker died mid-write reads the
        job before writing again."""
        with self.r.pipeline(transaction=False) as pipe:
            if lock is not None:
                script = lock.lua_reacquire  # registered when the lock was made
                assert script is not None
                token, ttl = lock.local.token, int((lock.timeout or 0) * 1000)
                queue(pipe, script, [lock.name], [token, ttl])
            pipe.hset(self.keys.inflight, job_uuid, what)
            renewed = pipe.execute()[0]
        if lock is not None and not renewed:
            raise LockNotOwnedError("the job's lease is no longer ours", lock_name=lock.name)

    def catch_up(self) -> tuple[int, int, float | None]:
        """A backlog's progress: jobs synced since its first was, jobs still to sync, and when
        the first was synced (None: no backlog). One round trip."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hmget(self.keys.catchup, "since", "done")
            pipe.hlen(self.keys.dirty)
            (since, done), left = pipe.execute()
        if since is None or not left:
            return 0, int(left), None
        return int(done or 0), int(left), float(since)

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
    def defer(self, due: float, message: Mapping[str, Any], index: str | None = None) -> None:
        """Keep ``message`` until ``due``; ``index``: the deployment's zset of connections by
        their earliest deferred work (``FleetKeys.deferred``), which the fleet tick reads
        instead of asking every connection every few seconds."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.deferred, {dump(dict(message)): due})
            if index is not None:
                pipe.zadd(index, {self.keys.connection: due}, lt=True)
            pipe.execute()

    def take_due(
        self, now: float, limit: int = 500, index: str | None = None
    ) -> list[dict[str, Any]]:
        """Deferred messages now due. Each is handed out once: only the caller whose ZREM
        removed it gets it, so two releasers never enqueue the same message. With ``index``,
        what is left is indexed again by its earliest due time."""
        due = []
        for raw in self.r.zrangebyscore(self.keys.deferred, "-inf", now, start=0, num=limit):
            if self.r.zrem(self.keys.deferred, raw):
                due.append(json.loads(raw))
        if index is not None:
            left = self.r.zrange(self.keys.deferred, 0, 0, withscores=True)
            if left:
                self.r.zadd(index, {self.keys.connection: float(left[0][1])}, lt=True)
        return due

    def deferred_count(self) -> int:
        return int(self.r.zcard(self.keys.deferred))

    # --- dead letters ----------------------------------------------------------------------------
    # One dead letter per cause (docs/operations.md#dead-letters): the same task failing the same
    # way again updates its entry (count, last failure) instead of adding one per attempt, and a
    # job sync's entry is resolved (kept, marked) when the job later syncs.
    def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = self.r.xrange(self.keys.dlq, count=count)
        return [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
            for entry_id, data in rows
        ]

    def dead_letter(self, entry: Mapping[str, Any], cause: str | None = None) -> str:
        """Append an entry (already free of secrets) to the dead-letter stream; return its id.
        With a ``cause``, an entry of the same cause not yet resolved is replaced, atomically, by
        one that counts both (``count``, the first ``first_failure``, the new ``last_failure``)."""
        fields = {
            k: v if isinstance(v, str) else dump(v) for k, v in entry.items() if v is not None
        }
        if cause is None:
            return str(self.r.xadd(self.keys.dlq, fields).decode())
        flat = [item for pair in fields.items() for item in pair]
        entry_id = self._dead_letter_once(keys=[self.keys.dlq, self.keys.dlq_causes],
                                          args=[cause, *flat])  # fmt: skip
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def get_dead_letter(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.keys.dlq, min=entry_id, max=entry_id)
        if not rows:
            return None
        return {k.decode(): v.decode() for k, v in rows[0][1].items()}

    def drop_dead_letter(self, entry_id: str) -> bool:
        entry = self.get_dead_letter(entry_id)
        with self.r.pipeline() as pipe:
            pipe.xdel(self.keys.dlq, entry_id)
            pipe.hdel(self.keys.dlq_resolved, entry_id)
            if entry is not None and entry.get("cause") and "resolved_at" not in entry:
                pipe.hdel(self.keys.dlq_causes, entry["cause"])
            removed = pipe.execute()[0]
        return bool(removed)

    def dead_letter_count(self) -> int:
        """Dead letters not yet resolved."""
        return int(self.r.xlen(self.keys.dlq)) - int(self.r.hlen(self.keys.dlq_resolved))

    # --- jobs whose sync failed for good ----------------------------------------------------------
    def park_failed_job(
        self, job_uuid: str, generation: int | None, reason: str, dlq_id: str, now: float
    ) -> None:
        """Park a job whose sync failed for a permanent reason: the sweeps and polls leave it
        while its dirty generation stays ``generation`` (a change, or a replay, brings it back)."""
        value = {"reason": reason[:300], "generation": generation, "dlq": dlq_id, "since": now}
        self.r.hset(self.keys.failed_jobs, job_uuid, dump(value))

    def failed_jobs(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.failed_jobs)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def resolve_failed_job(self, job_uuid: str, now: float) -> str | None:
        """The job synced: unpark it and mark its dead letter resolved (kept, listed with
        ``resolved_at``). One round trip when it was not parked. Returns the entry's id."""
        raw = self.r.hget(self.keys.failed_jobs, job_uuid)
        if raw is None:
            return None
        entry_id = str(json.loads(raw).get("dlq") or "")
        entry = self.get_dead_letter(entry_id) if entry_id else None
        with self.r.pipeline() as pipe:
            pipe.hdel(self.keys.failed_jobs, job_uuid)
            if entry is not None:
                pipe.hset(self.keys.dlq_resolved, entry_id, repr(now))
                if entry.get("cause"):
                    pipe.hdel(self.keys.dlq_causes, entry["cause"])
            pipe.execute()
        return entry_id if entry is not None else None

    def resolved(self) -> dict[str, float]:
        """Dead letter id → when it was resolved."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.dlq_resolved)
        return {k.decode(): float(v) for k, v in raw.items()}

    def resolved_of(self, entry_ids: list[str]) -> dict[str, float]:
        """Of these dead letters, those resolved → when (one command, however many are kept)."""
        if not entry_ids:
            return {}
        found = self.r.hmget(self.keys.dlq_resolved, entry_ids)
        return {e: float(at) for e, at in zip(entry_ids, found, strict=True) if at is not None}
