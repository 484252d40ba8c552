"""Job records and links: what the bridge holds of each linked job, the reverse links from
Coredination ids, the dirty marks that say a job must be synced, and expiry reminders.

Every record write is read-modify-write by compare-and-set (``_PUT_JOB``), which bumps the dirty
mark and the expiry reminder in the same step: the poll path (no job lock) and a sync (the job
lock) never undo each other's changes, and no change is stored without its dirty mark. What a
write changes is a pure record transition (``mappings.transitions``); this module only runs them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from bridge.log import get_logger
from bridge.store.codec import NewerRecord, RecordError, decode, encode, id_bytes, unpack_id
from bridge.store.keys import Keys
from bridge.store.lua import queue
from bridge.store.parked import ParkedStore
from bridge.store.trail import Kept, TrailStore
from mappings import transitions
from mappings.facts import AllocationFacts, JobFacts
from mappings.ids import cd_job_uuid, connection_namespace
from mappings.state import CdView, JobRecord
from mappings.transitions import Change, SyncWrite

log = get_logger(__name__)

BATCH = 500  # job records read and written per round trip
UPDATE_ATTEMPTS = 20  # compare-and-set attempts before a busy record is given up on (retried)

# Compare-and-set one job record. KEYS: its bucket, ``dirty``, ``expiring``, the links count.
# ARGV: field, the bytes read ('' = absent), the new bytes ('' = leave as is), the job uuid, '1'
# to bump its dirty mark, an expiry reminder in epoch ms ('' = none). Returns 1 if done, 0 if the
# record changed. A record written where there was none counts one link more.
# As a Lua function, so that a sync's settle script (``bridge.store.settle``) runs the same.
PUT_JOB_FN = """
local function put_job()
  if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
  if ARGV[3] ~= '' and redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) == 1
      and redis.call('EXISTS', KEYS[4]) == 1 then
    redis.call('INCR', KEYS[4])
  end
  if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[2], ARGV[4], 1) end
  if ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], 'LT', ARGV[6], ARGV[4]) end
  return 1
end
"""
_PUT_JOB = PUT_JOB_FN + "return put_job()\n"
# The links count, made from the buckets where none is kept yet. KEYS: the count, every bucket.
# One script, so no record is written between the counting and the count being kept.
_RECOUNT = """
local held = redis.call('GET', KEYS[1])
if held then return tonumber(held) end
local n = 0
for i = 2, #KEYS do n = n + redis.call('HLEN', KEYS[i]) end
redis.call('SET', KEYS[1], n)
return n
"""
# A reverse link by Coredination job uuid, written or removed with the count of them kept in the
# same step (a count not made yet is left to ``_RECOUNT_LINKS``). KEYS: the bucket, the count.
# ARGV: the field, and the target ('' removes the link).
_LINK = """
if ARGV[2] == '' then
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('DECR', KEYS[2])
  end
elseif redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 and redis.call('EXISTS', KEYS[2]) == 1
then
  redis.call('INCR', KEYS[2])
end
return 1
"""
# The count of uuid links, made from the buckets where none is kept yet. KEYS: the count, every
# reverse-link bucket.
_RECOUNT_LINKS = """
local held = redis.call('GET', KEYS[1])
if held then return tonumber(held) end
local n = 0
for i = 2, #KEYS do
  for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
    if #f == 16 then n = n + 1 end
  end
end
redis.call('SET', KEYS[1], n)
return n
"""
# "Delete this dirty mark only if nobody bumped it since I read it" must be one atomic step:
# WATCH/MULTI on a hash that every ingest writes would abort under load.
# A sync has ended: its in-flight mark goes. Clears the dirty mark if unchanged since it was
# read, and counts the job synced towards the backlog's progress (``catchup``), which goes once
# no job is dirty.
# (``generation`` '-': there is no dirty mark to clear, only the in-flight one.)
CLEAR_DIRTY_FN = """
local function clear_dirty(dirty, catchup, inflight, job, generation, at)
  redis.call('HDEL', inflight, job)
  if generation == '-' or redis.call('HGET', dirty, job) ~= generation then return 0 end
  redis.call('HDEL', dirty, job)
  if redis.call('HLEN', dirty) == 0 then
    redis.call('DEL', catchup)
  else
    redis.call('HSETNX', catchup, 'since', at)
    redis.call('HINCRBY', catchup, 'done', 1)
  end
  return 1
end
"""
_CLEAR_DIRTY = CLEAR_DIRTY_FN + (
    "return clear_dirty(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)


class StoreBusy(RedisError):
    """A job record changed under every attempt to write it (retried like a Redis error)."""


class JobStore:
    def __init__(self, redis: Any, keys: Keys, parked: ParkedStore, trail: TrailStore) -> None:
        self.r, self.keys, self.parked, self.trail = redis, keys, parked, trail
        self.ns = connection_namespace(keys.connection)
        self._put_job = redis.register_script(_PUT_JOB)
        self._clear_dirty = redis.register_script(_CLEAR_DIRTY)
        self._recount = redis.register_script(_RECOUNT)
        self._link = redis.register_script(_LINK)
        self._recount_links = redis.register_script(_RECOUNT_LINKS)

    # --- where a record lives ------------------------------------------------------------------
    def _slot(self, job_uuid: str) -> tuple[str, bytes]:
        field_ = id_bytes(job_uuid)
        if field_ is None:
            raise ValueError(f"not a ServiceM8 job uuid: {job_uuid[:60]!r}")
        return self.keys.job_bucket(field_), field_

    def _ref_slot(self, ref: str) -> tuple[str, bytes] | None:
        """The bucket and field of a Coredination job uuid or numeric id (reverse link)."""
        field_ = id_bytes(ref) or (ref.encode() if ref.isascii() and ref.isdigit() else None)
        return None if field_ is None else (self.keys.ref_bucket(field_), field_)

    def cd_uuid(self, job_uuid: str) -> str:
        return cd_job_uuid(self.ns, job_uuid)

    # --- reading -------------------------------------------------------------------------------
    def load(self, job_uuid: str) -> JobRecord:
        return _decode(self, job_uuid, self.r.hget(*self._slot(job_uuid)))[0]

    def has(self, job_uuid: str) -> bool:
        return id_bytes(job_uuid) is not None and bool(self.r.hexists(*self._slot(job_uuid)))

    def known(self) -> list[str]:
        with self.r.pipeline(transaction=False) as pipe:
            for key in self.keys.job_buckets():
                pipe.hkeys(key)
            buckets = pipe.execute()
        return [unpack_id(bytes(f)) for fields in buckets for f in fields]

    def count(self) -> int:
        """Linked jobs: one GET of the count every record write keeps (``_PUT_JOB``)."""
        value = self.r.get(self.keys.links_count)
        return int(value) if value is not None else self.recount()

    def recount(self) -> int:
        """The count, made from the buckets if none is kept yet (a store written before the
        count existed). Every process's start-up runs it; after the first it is one GET."""
        kept = self.r.get(self.keys.links_count)
        if kept is not None:  # the usual case: no script, and no bucket names packed
            return int(kept)
        return int(self._recount(keys=[self.keys.links_count, *self.keys.job_buckets()]))

    def job_for_cd(self, ref: str | int) -> str | None:
        slot = self._ref_slot(str(ref).strip().lower())
        found = self.r.hget(*slot) if slot is not None else None
        return unpack_id(bytes(found)) if found else None

    def jobs_for_cd(self, refs: Iterable[str]) -> dict[str, str]:
        """The ServiceM8 jobs linked to several Coredination job uuids, in one round trip;
        a uuid linked to none is left out."""
        slots = [(ref, self._ref_slot(ref.strip().lower())) for ref in refs]
        slots = [(ref, slot) for ref, slot in slots if slot is not None]
        if not slots:
            return {}
        with self.r.pipeline(transaction=False) as pipe:
            for _, slot in slots:
                pipe.hget(*slot)  # type: ignore[misc]
            found = pipe.execute()
        return {ref: unpack_id(bytes(f)) for (ref, _), f in zip(slots, found, strict=True) if f}

    def linked_cd_count(self) -> int:
        """How many Coredination jobs are linked: one GET (made from the buckets once)."""
        value = self.r.get(self.keys.cd_links_count)
        if value is not None:
            return int(value)
        keys = [self.keys.cd_links_count, *self.keys.ref_buckets()]
        return int(self._recount_links(keys=keys))

    def unlink(self, cd_uuids: Iterable[str]) -> None:
        """Drop reverse links by Coredination uuid, the count with them."""
        with self.r.pipeline(transaction=False) as pipe:
            for cd_uuid in cd_uuids:
                slot = self._ref_slot(cd_uuid)
                if slot is not None:
                    queue(pipe, self._link, [slot[0], self.keys.cd_links_count], [slot[1], b""])
            pipe.execute()

    def linked_cd(self) -> dict[str, str]:
        """Every reverse link by Coredination job uuid: ``{C: J}`` (the numeric ids left out).
        O(links): the census's, every few minutes, not a hot path."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in self.keys.ref_buckets():
                pipe.hgetall(key)
            buckets = pipe.execute()
        return {
            unpack_id(bytes(ref)): unpack_id(bytes(job))
            for fields in buckets
            for ref, job in fields.items()
            if len(ref) == 16
        }

    def cd_views(self, job_uuids: Iterable[str]) -> dict[str, CdView | None]:
        """The stored Coredination views of several linked jobs."""
        jobs = list(job_uuids)
        if not jobs:
            return {}
        with self.r.pipeline(transaction=False) as pipe:
            for job_uuid in jobs:
                pipe.hget(*self._slot(job_uuid))
            raws = pipe.execute()
        return {j: _decode(self, j, raw)[0].cd for j, raw in zip(jobs, raws, strict=True)}

    # --- changing records ------------------------------------------------------------------------
    def update(
        self, job_uuids: Iterable[str], change: Callable[[JobRecord], Change | None]
    ) -> list[Change]:
        """Read, change and write back job records, each atomically against every other writer.

        ``change`` (a record transition) edits the record in place and says what it did, or
        returns ``None`` when nothing changed. A write goes only if the stored bytes are still the
        ones read; a record changed meanwhile is read again and ``change`` runs again on it.
        Records go ``BATCH`` to a round trip.
        """
        jobs = list(dict.fromkeys(job_uuids))
        done: list[Change] = []
        for i in range(0, len(jobs), BATCH):
            done += self._update_batch(jobs[i : i + BATCH], change)
        return done

    def _update_batch(
        self, pending: list[str], change: Callable[[JobRecord], Change | None]
    ) -> list[Change]:
        done: list[Change] = []
        for attempt in range(UPDATE_ATTEMPTS):
            if not pending:
                return done
            if attempt:  # others are writing the same records: let them finish, spread out
                time.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
            slots = [self._slot(j) for j in pending]
            with self.r.pipeline(transaction=False) as pipe:
                for key, field_ in slots:
                    pipe.hget(key, field_)
                raws = pipe.execute()
            writes: list[tuple[str, Change]] = []
            damaged: set[str] = set()
            with self.r.pipeline(transaction=False) as pipe:
                for job_uuid, (key, field_), raw in zip(pending, slots, raws, strict=True):
                    record, broken = _decode(self, job_uuid, raw)
                    if broken:
                        damaged.add(job_uuid)
                    outcome = change(record)
                    if outcome is None:
                        continue
                    new = encode(record, self.cd_uuid(job_uuid)) if outcome.write else b""
                    if outcome.write and new == raw:
                        new = b""  # the same bytes: nothing to write, only the marks
                        if not outcome.dirty and outcome.expires_ms is None:
                            continue
                    marks = [key, self.keys.dirty, self.keys.expiring, self.keys.links_count]
                    queue(pipe, self._put_job, marks, [
                        field_, raw or b"", new, job_uuid, "1" if outcome.dirty else "0",
                        "" if outcome.expires_ms is None else str(outcome.expires_ms),
                    ])  # fmt: skip
                    writes.append((job_uuid, outcome))
                results = pipe.execute() if writes else []
            pending = []
            for (job_uuid, outcome), ok in zip(writes, results, strict=True):
                if ok:
                    done.append(outcome)
                    if job_uuid in damaged:  # written afresh: no longer unreadable
                        self.parked.clear_invalid([f"redis.job:{job_uuid}"])
                else:
                    pending.append(job_uuid)
        if pending:
            raise StoreBusy(f"job records kept changing under this write: {pending[:5]}")
        return done

    def ingest_allocations(
        self, facts: Iterable[AllocationFacts], read_started: float | None = None
    ) -> set[str]:
        """Store what ServiceM8 says; return the jobs whose allocations really changed (now
        dirty). See ``mappings.transitions.ingest_allocations``."""
        by_job: dict[str, list[AllocationFacts]] = {}
        for fact in facts:
            by_job.setdefault(fact.job_uuid, []).append(fact)
        changes = self.update(
            by_job, lambda r: transitions.ingest_allocations(r, by_job[r.uuid], read_started)
        )
        return {c.job_uuid for c in changes if c.dirty}

    def ingest_jobs(self, facts: Iterable[JobFacts], only_known: bool = False) -> set[str]:
        """Store job details; return the jobs whose details changed (now dirty)."""
        by_job = {f.uuid: f for f in facts}
        changes = self.update(
            by_job, lambda r: transitions.ingest_job(r, by_job[r.uuid], only_known=only_known)
        )
        return {c.job_uuid for c in changes}

    def save_details(self, fact: JobFacts) -> None:
        self.update([fact.uuid], lambda r: transitions.set_details(r, fact))

    def forget_cd(self, job_uuid: str, view: CdView | None = None) -> None:
        """The Coredination job is gone: drop our view and mark the job dirty, in one step; and
        the reverse links of ``view``, the job that is gone."""
        self.update([job_uuid], transitions.forget_cd)
        if view is not None:
            with self.r.pipeline(transaction=False) as pipe:
                slot = self._ref_slot(view.uuid)
                if slot is not None:
                    queue(pipe, self._link, [slot[0], self.keys.cd_links_count], [slot[1], b""])
                slot = self._ref_slot(str(view.id)) if view.id is not None else None
                if slot is not None:
                    pipe.hdel(slot[0], slot[1])
                pipe.execute()

    def save_syncs(self, writes: Sequence[SyncWrite]) -> None:
        """What syncs did, in one compare-and-set write per job (``transitions.apply_sync``),
        reverse links first: a link without its record is harmless (the lookup finds a job with
        no view and does nothing), a record without its reverse link is not."""
        by_job = {w.job_uuid: w for w in writes if not w.empty}
        self.write_links({j: w.view for j, w in by_job.items() if w.view is not None})
        self.update(by_job, lambda r: transitions.apply_sync(r, by_job[r.uuid]))

    def save_sync(self, write: SyncWrite) -> None:
        self.save_syncs([write])

    def write_links(self, views: Mapping[str, CdView]) -> None:
        """Reverse links: each view's Coredination uuid and id → its ServiceM8 job."""
        with self.r.pipeline(transaction=False) as pipe:
            queue_links(self, views, pipe)
            pipe.execute()

    # --- dirty marks and expiry reminders ------------------------------------------------------
    def mark_dirty(self, job_uuids: Iterable[str]) -> None:
        with self.r.pipeline() as pipe:
            for job_uuid in job_uuids:
                pipe.hincrby(self.keys.dirty, job_uuid, 1)
            pipe.execute()

    def dirty(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.dirty)
        return {k.decode(): int(v) for k, v in raw.items()}

    def dirty_count(self) -> int:
        return int(self.r.hlen(self.keys.dirty))

    def dirty_generation(self, job_uuid: str) -> int | None:
        value = self.r.hget(self.keys.dirty, job_uuid)
        return int(value) if value is not None else None

    def clear_dirty(self, job_uuid: str, generation: int | None, now: float | None = None,
                    trail: Kept | None = None) -> bool:  # fmt: skip
        """Forget the dirty mark if nobody bumped it since ``generation`` was read; the job
        counts towards the backlog's progress (``catch_up``). ``trail``: the sync's entry."""
        keys = [self.keys.dirty, self.keys.catchup, self.keys.inflight]
        at = repr(time.time() if now is None else now)
        with self.r.pipeline(transaction=False) as pipe:  # one round trip
            if generation is None:
                pipe.hdel(self.keys.inflight, job_uuid)
            else:
                queue(pipe, self._clear_dirty, keys, [job_uuid, str(generation), at])
            if trail is not None:
                self.trail.append(job_uuid, trail, pipe)
            return generation is None or bool(pipe.execute()[0])

    def due_expiries(self, now_ms: int) -> set[str]:
        """Jobs with an allocation expired by now: mark them dirty and forget the reminder."""
        due = {j.decode() for j in self.r.zrangebyscore(self.keys.expiring, "-inf", now_ms)}
        if due:
            with self.r.pipeline() as pipe:
                pipe.zrem(self.keys.expiring, *due)
                for job_uuid in due:
                    pipe.hincrby(self.keys.dirty, job_uuid, 1)
                pipe.execute()
        return due

    def remind_expiry(self, job_uuid: str, expires_ms: int) -> None:
        """Mark the job dirty when ``expires_ms`` passes (unless an earlier reminder is set)."""
        self.r.zadd(self.keys.expiring, {job_uuid: expires_ms}, lt=True)


def queue_links(store: JobStore, views: Mapping[str, CdView], pipe: Any) -> None:
    """Queue on ``pipe`` the reverse links of ``views`` (``JobStore.write_links``)."""
    for job_uuid, view in views.items():
        target = id_bytes(job_uuid)
        slot = store._ref_slot(view.uuid)
        if slot is not None:  # by uuid: counted
            queue(pipe, _LINK, [slot[0], store.keys.cd_links_count], [slot[1], target])
        slot = store._ref_slot(str(view.id)) if view.id is not None else None
        if slot is not None:
            pipe.hset(slot[0], slot[1], target)


def _decode(store: JobStore, job_uuid: str, raw: bytes | None) -> tuple[JobRecord, bool]:
    """The stored record, and whether its bytes were damaged. A record from a newer version
    raises ``NewerRecord`` (never overwrite it with less). A damaged one is parked as
    ``redis.job:{J}`` and read as empty, so the job is not blocked for good: its next change,
    or ``sm8cd reconcile``, rebuilds it."""
    if raw is None:
        return JobRecord(job_uuid), False
    try:
        return decode(job_uuid, raw, store.cd_uuid(job_uuid)), False
    except NewerRecord:
        raise
    except RecordError as exc:
        log.error("store.record_unreadable", sm8_job_uuid=job_uuid, reason=str(exc))
        store.parked.set_invalid(f"redis.job:{job_uuid}", str(exc)[:300], time.time())
        return JobRecord(job_uuid), True
