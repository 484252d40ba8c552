"""The link store: the only module that speaks Redis commands.

Key schema (every key starts with ``b:{connection}:``; ``J`` is a ServiceM8 job uuid, ``S`` a staff
uuid, ``A`` an allocation uuid, ``U`` a Coredination user id, ``C`` a Coredination job uuid):

====================  ======  ====================================================================
key                   type    what it holds
====================  ======  ====================================================================
``jobs:{n}``          hash    one of ``JOB_BUCKETS`` buckets: ``J`` (16 bytes) → the job's
                              record, everything known of it, packed by ``bridge.records``: job
                              facts, allocation facts, when the bridge last wrote each allocation
                              (until a later read settles it), the Coredination view, the body
                              fingerprint and the pair snapshots. ``n`` = CRC32(J) mod buckets
``cdref:{n}``         hash    one of ``REF_BUCKETS`` buckets: ``C`` (16 bytes) or the
                              Coredination job id (text) → ``J`` (16 bytes), the reverse link
``dirty``             hash    ``J`` → generation; a job to sync. Ingest bumps it, a finished sync
                              removes it only if unchanged, so no change is lost to a race
``map:s2u``           hash    ``S`` → ``U`` (staff ⇄ user map; ``map:u2s`` the reverse)
``map:manual``        set     ``S`` linked or unlinked by hand: automatic matching leaves them be
``dir:staff``         hash    ``S`` → ``{"email","name","active"}`` from ServiceM8
``dir:users``         hash    ``U`` → ``{"email","name","active"}`` from Coredination
``invalid``           hash    ``"{api}.{object}:{id}"`` → ``{"reason","since"}``: records an API
                              returned that cannot be read, skipped until they read cleanly; and
                              ``"redis.job:{J}"``, a job record found damaged (until rewritten)
``layout``            string  ``2`` once the store holds nothing of the first layout
``lock:upgrade``      string  held while links of the first layout move (``upgrade_layout``)
``pending``           hash    ``"J|S"`` or ``"J|u:U"`` → ``{"reason","since"}``, parked pairs
``cursor``            hash    poll high-water marks, by ``system:object``
``expiring``          zset    ``J`` by the earliest future ``expiry_timestamp`` of its live
                              allocations: expiry changes nothing in ServiceM8, so no poll sees it
``stats``             hash    counters by ``direction.outcome``
``queued:{J}``        string  set while a sync of J is queued, so a busy poll does not queue twice
``dlq``               stream  dead letters: what was given up on, why, and how to replay it
``fail:{task id}``    string  when a retried task first failed (expires after two hours)
``pause:{api}``       string  ``{"until","reason","kind"}`` while an API is paused (429 or bad
                              credentials); expires by itself
``deferred``          zset    tasks waiting longer than a countdown may, by due time
``budget:{api}:{w}``  list    the moving-window budget: the times of the last ``limit`` calls
                              (taken or reserved) in window ``w``, newest first
``lock:{J}``          string  the per-job lock (redis-py ``Lock``: token + expiry)
``seen:{delivery}``   string  a webhook delivery already enqueued (expires: de-duplication window)
``alive:{worker}``    string  a worker's last heartbeat (expires after ``ALIVE_SECONDS``)
====================  ======  ====================================================================

A job record is read, changed and written back by compare-and-set (``_PUT_JOB``), which bumps the
dirty mark in the same step, so the poll path (no job lock) and a sync (job lock) never undo each
other's changes and no change is stored without its dirty mark. Other writes that must agree go
in one ``MULTI``/``EXEC`` transaction.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis import Redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from bridge.log import get_logger
from bridge.records import (
    CdView,
    JobRecord,
    NewerRecord,
    RecordError,
    decode,
    encode,
    id_bytes,
    unpack_id,
)
from mappings.ids import cd_job_uuid, connection_namespace
from mappings.rules import AllocationFacts, JobFacts, PairSnapshot, Presence

log = get_logger(__name__)

REDBEAT_PREFIX = "redbeat:"  # celery-redbeat's keys, under this connection's prefix
BEAT_LOCK = REDBEAT_PREFIX + ":lock"
ALIVE_SECONDS = 30  # a worker whose last heartbeat is older than this counts as dead
# Job records live in JOB_BUCKETS hashes and reverse links in REF_BUCKETS hashes, chosen by the
# CRC32 of the id: a top-level key per job would cost about 80 bytes more per link. A record is
# over 64 bytes, so its bucket is a plain hash table; a reverse-link bucket holds short values and
# stays in Redis's compact listpack encoding up to ``hash-max-listpack-entries`` fields (512 by
# default; two per link, so about 500,000 links per connection), past which it still works with
# more memory per link. Never change these counts on a live store: records would be looked for in
# the wrong bucket.
JOB_BUCKETS = 1024
REF_BUCKETS = 2048
LAYOUT = b"2"  # the store's layout: 2 = packed records in buckets (``upgrade_layout``)
BATCH = 500  # job records read and written per round trip
UPDATE_ATTEMPTS = 20  # compare-and-set attempts before a busy record is given up on (retried)


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _legacy_record(job_uuid: str, fields: Mapping[bytes, bytes]) -> JobRecord:
    """A ``job:{J}`` hash of the first layout, decoded (see ``Store.upgrade_layout``)."""
    record = JobRecord(job_uuid)
    for k, v in fields.items():
        name, value = k.decode(), v.decode()
        if name == "d":
            data = json.loads(value)
            data.pop("edited_ms", None)
            record.details = JobFacts(**data)
        elif name == "c":
            c = json.loads(value)
            record.cd = CdView(
                id=c["id"],
                uuid=c["uuid"],
                resources={int(u): state for u, state in c["r"].items()},
                changed_ms={int(u): t for u, t in c["t"].items()},
                modified_ms=c["m"],
                start_ms=c.get("s"),
            )
        elif name == "f":
            record.fields_fp = value
        elif name.startswith("a:"):
            data = json.loads(value)
            if data.get("window") is not None:
                data["window"] = tuple(data["window"])
            record.allocations[name[2:]] = AllocationFacts(**data)
        elif name.startswith("w:"):
            record.written[name[2:]] = float(value)
        elif name.startswith("p:"):
            sm8, cd = value.split("|")
            record.pairs[name[2:]] = PairSnapshot(Presence(sm8), Presence(cd))
    return record


def _empty(record: JobRecord) -> bool:
    return record.details is None and not record.allocations and record.cd is None


@dataclass(frozen=True)
class Change:
    """What a change to a job record did: ``write`` the record back, bump the dirty mark,
    remind of an allocation expiry (epoch ms) in ``expiring``."""

    job_uuid: str
    write: bool = True
    dirty: bool = False
    expires_ms: int | None = None


@dataclass(frozen=True)
class SyncWrite:
    """What one sync of a job leaves in its record (see ``Store.save_sync``)."""

    job_uuid: str
    written: list[AllocationFacts]
    at: float
    view: CdView | None
    fields_fp: str | None
    pairs: Mapping[str, PairSnapshot]
    dirty: bool = False  # mark the job to sync, in the same step

    @property
    def empty(self) -> bool:
        return (
            not (self.written or self.view is not None or self.fields_fp is not None or self.pairs)
            and not self.dirty
        )


class StoreBusy(RedisError):
    """A job record changed under every attempt to write it (retried like a Redis error)."""


@dataclass(frozen=True)
class StaffMap:
    s2u: dict[str, int]
    u2s: dict[int, str]
    manual: frozenset[str]


# Take (or reserve) one call in every window of an API, atomically for every process on every
# host. KEYS: one list per window, newest first. ARGV: now, max_wait, then per window the limit
# this caller may fill (bulk work leaves a reserve), the limit kept, and the span in seconds.
# A window whose last `fill` entries span less than `span` is full until its `fill`-th newest
# entry is `span` old. The call goes at the latest such time (or now); if that is more than
# max_wait away nothing is taken and the wait is returned, else the time is recorded in every
# window. Returns {wait as text, index of the window that decided it (0: none), taken 0/1}.
_CLEAR_DIRTY = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)
# Compare-and-set one job record. KEYS: its bucket, ``dirty``, ``expiring``. ARGV: field, the
# bytes read ('' = absent), the new bytes ('' = leave as is), the job uuid, '1' to bump its dirty
# mark, an expiry reminder in epoch ms ('' = none). Returns 1 if done, 0 if the record changed.
_PUT_JOB = """
local held = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if held ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[2], ARGV[4], 1) end
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], 'LT', ARGV[6], ARGV[4]) end
return 1
"""
_TAKE_SLOT = """
local now = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local at, blocking = now, 0
for i, key in ipairs(KEYS) do
  local fill = tonumber(ARGV[3 * i])
  local span = tonumber(ARGV[3 * i + 2])
  local head = redis.call('LINDEX', key, 0)
  if head and tonumber(head) > at then at = tonumber(head) end
  local nth = redis.call('LINDEX', key, fill - 1)
  if nth and tonumber(nth) + span > at then
    at = tonumber(nth) + span
    blocking = i
  end
end
local wait = at - now
if wait > max_wait then return {tostring(wait), blocking, 0} end
for i, key in ipairs(KEYS) do
  local keep = tonumber(ARGV[3 * i + 1])
  local span = tonumber(ARGV[3 * i + 2])
  redis.call('LPUSH', key, string.format('%.6f', at))
  redis.call('LTRIM', key, 0, keep - 1)
  redis.call('PEXPIRE', key, math.ceil((span + wait) * 1000) + 1000)
end
return {tostring(wait), blocking, 1}
"""


@dataclass(frozen=True)
class SlotWindow:
    name: str
    fill: int  # how many calls this caller may see in the span (less than keep for bulk work)
    keep: int  # the window's limit
    span: float  # seconds, margin included


@dataclass(frozen=True)
class Slot:
    taken: bool
    wait: float  # seconds until the call may go (0: now)
    window: str | None  # the window that made it wait


class Store:
    def __init__(self, redis: Redis, connection_id: str) -> None:
        # redis-py types every reply as "Awaitable[T] | T" (sync and async share stubs); Any keeps
        # the decoding below readable.
        self.r: Any = redis
        self.prefix = f"b:{connection_id}:"
        self.ns = connection_namespace(connection_id)
        # EVALSHA after the first call: the budget script runs before every API call.
        self._take_slot = redis.register_script(_TAKE_SLOT)
        self._clear_dirty = redis.register_script(_CLEAR_DIRTY)
        self._put_job = redis.register_script(_PUT_JOB)

    def key(self, name: str) -> str:
        return self.prefix + name

    # --- jobs ----------------------------------------------------------------------------------
    def _job_slot(self, job_uuid: str) -> tuple[str, bytes]:
        """The bucket key and field of a job's record."""
        field_ = id_bytes(job_uuid)
        if field_ is None:
            raise ValueError(f"not a ServiceM8 job uuid: {job_uuid[:60]!r}")
        return self.key(f"jobs:{zlib.crc32(field_) % JOB_BUCKETS}"), field_

    def _ref_slot(self, ref: str) -> tuple[str, bytes] | None:
        """The bucket key and field of a Coredination job uuid or numeric id (reverse link)."""
        field_ = id_bytes(ref) or (ref.encode() if ref.isascii() and ref.isdigit() else None)
        if field_ is None:
            return None
        return self.key(f"cdref:{zlib.crc32(field_) % REF_BUCKETS}"), field_

    def _decode(self, job_uuid: str, raw: bytes | None) -> JobRecord:
        """The stored record. A record from a newer version raises ``NewerRecord`` (it must not
        be overwritten with less). A damaged one is listed in ``invalid`` as ``redis.job:{J}``
        and read as empty, so the job is not blocked for good: ``bridge reconcile`` then reads
        the job's allocations and its Coredination job again and rebuilds it."""
        return self._decode_checked(job_uuid, raw)[0]

    def _decode_checked(self, job_uuid: str, raw: bytes | None) -> tuple[JobRecord, bool]:
        """The record, and whether the stored bytes were damaged (see ``_decode``)."""
        if raw is None:
            return JobRecord(job_uuid), False
        try:
            return decode(job_uuid, raw, self.cd_uuid(job_uuid)), False
        except NewerRecord:
            raise
        except RecordError as exc:
            log.error("store.record_unreadable", sm8_job_uuid=job_uuid, reason=str(exc))
            self.set_invalid(f"redis.job:{job_uuid}", str(exc)[:300], time.time())
            return JobRecord(job_uuid), True

    def cd_uuid(self, job_uuid: str) -> str:
        return cd_job_uuid(self.ns, job_uuid)

    def load_job(self, job_uuid: str) -> JobRecord:
        key, field_ = self._job_slot(job_uuid)
        return self._decode(job_uuid, self.r.hget(key, field_))

    def has_job(self, job_uuid: str) -> bool:
        if id_bytes(job_uuid) is None:
            return False
        key, field_ = self._job_slot(job_uuid)
        return bool(self.r.hexists(key, field_))

    def _job_keys(self) -> list[str]:
        return [self.key(f"jobs:{n}") for n in range(JOB_BUCKETS)]

    def known_jobs(self) -> list[str]:
        with self.r.pipeline(transaction=False) as pipe:
            for key in self._job_keys():
                pipe.hkeys(key)
            buckets = pipe.execute()
        return [unpack_id(bytes(f)) for fields in buckets for f in fields]

    def job_count(self) -> int:
        with self.r.pipeline(transaction=False) as pipe:
            for key in self._job_keys():
                pipe.hlen(key)
            return sum(pipe.execute())

    def _update(
        self,
        job_uuids: Iterable[str],
        change: Callable[[JobRecord], Change | None],
    ) -> list[Change]:
        """Read, change and write back job records, each atomically against every other writer.

        ``change`` edits the record in place and says what it did, or returns ``None`` when
        nothing changed. A write goes only if the stored bytes are still the ones read (a
        compare-and-set script, which also bumps the dirty mark and the expiry reminder in the
        same step); a record changed meanwhile is read again and ``change`` runs again on it.
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
            slots = [self._job_slot(j) for j in pending]
            with self.r.pipeline(transaction=False) as pipe:
                for key, field_ in slots:
                    pipe.hget(key, field_)
                raws = pipe.execute()
            writes: list[tuple[str, Change]] = []
            damaged: set[str] = set()
            with self.r.pipeline(transaction=False) as pipe:
                for job_uuid, (key, field_), raw in zip(pending, slots, raws, strict=True):
                    record, broken = self._decode_checked(job_uuid, raw)
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
                    self._put_job(
                        keys=[key, self.key("dirty"), self.key("expiring")],
                        args=[
                            field_,
                            raw or b"",
                            new,
                            job_uuid,
                            "1" if outcome.dirty else "0",
                            "" if outcome.expires_ms is None else str(outcome.expires_ms),
                        ],
                        client=pipe,
                    )
                    writes.append((job_uuid, outcome))
                results = pipe.execute() if writes else []
            pending = []
            for (job_uuid, outcome), ok in zip(writes, results, strict=True):
                if ok:
                    done.append(outcome)
                    if job_uuid in damaged:  # written afresh: no longer unreadable
                        self.clear_invalid([f"redis.job:{job_uuid}"])
                else:
                    pending.append(job_uuid)
        if pending:
            raise StoreBusy(f"job records kept changing under this write: {pending[:5]}")
        return done

    def ingest_allocations(
        self, facts: Iterable[AllocationFacts], read_started: float | None = None
    ) -> set[str]:
        """Store what ServiceM8 says; mark dirty the jobs whose allocations really changed.

        A record equal to what we hold (apart from ``edit_date``, which our own writes do not know)
        is an echo or a re-read of the overlap window: it is stored quietly, nothing is marked.
        A record the bridge wrote after ``read_started`` (the moment the read began) is older
        than our write and is ignored: a stale read must never undo our own write.
        """
        by_job: dict[str, list[AllocationFacts]] = {}
        for fact in facts:
            by_job.setdefault(fact.job_uuid, []).append(fact)

        def change(record: JobRecord) -> Change | None:
            wrote, dirty = False, False
            for fact in by_job[record.uuid]:
                written = record.written.get(fact.uuid)
                if written is not None:
                    if read_started is None or written >= read_started:
                        continue
                    del record.written[fact.uuid]  # a read begun after our write settles it
                    wrote = True
                previous = record.allocations.get(fact.uuid)
                if previous is not None and previous.by_bridge and not fact.by_bridge:
                    fact = replace(fact, by_bridge=True)
                if previous == fact:
                    continue
                record.allocations[fact.uuid] = fact
                wrote = True
                if previous is None or not previous.same_state(fact):
                    dirty = True
            expiries = [f.expires_ms for f in by_job[record.uuid]
                        if f.active and f.expires_ms is not None]  # fmt: skip
            if not (wrote or expiries):
                return None
            return Change(record.uuid, write=wrote, dirty=dirty,
                          expires_ms=min(expiries) if expiries else None)  # fmt: skip

        return {c.job_uuid for c in self._update(by_job, change) if c.dirty}

    def due_expiries(self, now_ms: int) -> set[str]:
        """Jobs with an allocation expired by now: mark them dirty and forget the reminder."""
        due = {j.decode() for j in self.r.zrangebyscore(self.key("expiring"), "-inf", now_ms)}
        if due:
            with self.r.pipeline() as pipe:
                pipe.zrem(self.key("expiring"), *due)
                for job_uuid in due:
                    pipe.hincrby(self.key("dirty"), job_uuid, 1)
                pipe.execute()
        return due

    def remind_expiry(self, job_uuid: str, expires_ms: int) -> None:
        """Mark the job dirty when ``expires_ms`` passes (unless an earlier reminder is set)."""
        self.r.zadd(self.key("expiring"), {job_uuid: expires_ms}, lt=True)

    def ingest_jobs(self, facts: Iterable[JobFacts], only_known: bool = False) -> set[str]:
        """Store job details; mark dirty the jobs whose details changed."""
        by_job = {f.uuid: f for f in facts}

        def change(record: JobRecord) -> Change | None:
            fact = by_job[record.uuid]
            if record.details == fact or (only_known and _empty(record)):
                return None
            record.details = fact
            return Change(record.uuid, dirty=True)

        return {c.job_uuid for c in self._update(by_job, change)}

    def save_details(self, facts: JobFacts) -> None:
        def change(record: JobRecord) -> Change:
            record.details = facts
            return Change(record.uuid)

        self._update([facts.uuid], change)

    def forget_cd(self, job_uuid: str) -> None:
        """The Coredination job is gone: drop our view and mark the job dirty (in one step), so
        the next sync creates it again."""

        def change(record: JobRecord) -> Change:
            record.cd, record.fields_fp = None, None
            return Change(record.uuid, dirty=True)

        self._update([job_uuid], change)

    def save_cd(
        self, job_uuid: str, view: CdView, fields_fp: str | None = None, *, dirty: bool = False
    ) -> None:
        """Store the Coredination view of a job (and its reverse link, written first); with
        ``dirty``, mark the job to sync in the same step (a pull that found a change)."""
        self.save_syncs([SyncWrite(job_uuid, [], 0.0, view, fields_fp, {}, dirty)])

    def save_sync(
        self,
        job_uuid: str,
        *,
        written: Iterable[AllocationFacts] = (),
        at: float = 0.0,
        view: CdView | None = None,
        fields_fp: str | None = None,
        pairs: Mapping[str, PairSnapshot] | None = None,
    ) -> None:
        """What one sync of a job did, in one write: allocations it wrote (with the write
        marker ``at``), the Coredination view, the body fingerprint and the pair snapshots."""
        self.save_syncs([SyncWrite(job_uuid, list(written), at, view, fields_fp, pairs or {})])

    def _write_links(self, views: Mapping[str, CdView]) -> None:
        """Reverse links: each view's Coredination uuid and id → its ServiceM8 job."""
        with self.r.pipeline(transaction=False) as pipe:
            for job_uuid, view in views.items():
                target = id_bytes(job_uuid)
                for ref in (view.uuid, None if view.id is None else str(view.id)):
                    slot = self._ref_slot(ref) if ref is not None else None
                    if slot is not None:
                        pipe.hset(slot[0], slot[1], target)
            pipe.execute()

    def save_syncs(self, writes: Sequence[SyncWrite]) -> None:
        """``save_sync`` for many jobs at once (a few round trips per ``BATCH`` jobs)."""
        by_job = {w.job_uuid: w for w in writes if not w.empty}
        # Reverse links before the records: a link without its record is harmless (the lookup
        # finds a job with no view and does nothing), a record without its reverse link is not.
        self._write_links({j: w.view for j, w in by_job.items() if w.view is not None})

        def change(record: JobRecord) -> Change:
            w = by_job[record.uuid]
            for fact in w.written:
                record.allocations[fact.uuid] = fact
                record.written[fact.uuid] = w.at
            if w.view is not None:
                record.cd = w.view
            if w.fields_fp is not None:
                record.fields_fp = w.fields_fp
            record.pairs.update(w.pairs)
            return Change(record.uuid, dirty=w.dirty)

        self._update(by_job, change)

    # --- the layout before packed records ------------------------------------------------------
    def upgrade_layout(self) -> int:
        """Move links kept in the first layout (a ``job:{J}`` hash of JSON fields per job and
        one ``cdjob`` reverse hash) into packed records, then delete the old keys; return how
        many jobs moved. Safe to run from every process at once (one moves while the others
        wait, then find nothing) and to interrupt (a job's old key goes only after its record
        is written; a record already written is merged, never replaced)."""
        if self.r.get(self.key("layout")) == LAYOUT:  # the usual case: one read at start
            return 0
        old_jobs = self.key("job:")

        def old_keys() -> list[bytes]:
            return [k for k in self.r.scan_iter(match=old_jobs + "*", count=1000)
                    if b":" not in k[len(old_jobs):]]  # fmt: skip

        if not old_keys() and not self.r.exists(self.key("cdjob")):
            self.r.set(self.key("layout"), LAYOUT)
            return 0
        # Others wait for the move rather than start on half the links. A holder killed
        # mid-move frees the lock within a minute; a second mover is safe (records merge).
        lock = self.r.lock(self.key("lock:upgrade"), timeout=60, blocking_timeout=300)
        if not lock.acquire():
            raise LockError("another process has been moving the first layout's links for 5 min")
        try:
            keys = old_keys()
            moved = 0
            legacy: dict[str, JobRecord] = {}

            def merge(record: JobRecord) -> Change:
                was = legacy[record.uuid]
                record.details = record.details or was.details
                record.allocations = {**was.allocations, **record.allocations}
                record.written = {**was.written, **record.written}
                record.cd = record.cd or was.cd
                record.fields_fp = record.fields_fp or was.fields_fp
                record.pairs = {**was.pairs, **record.pairs}
                return Change(record.uuid)

            for i in range(0, len(keys), BATCH):
                batch = keys[i : i + BATCH]
                with self.r.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.hgetall(key)
                    hashes = pipe.execute()
                legacy, gone = {}, []
                for key, fields in zip(batch, hashes, strict=True):
                    job = key.decode()[len(old_jobs) :]
                    try:
                        if fields and id_bytes(job) is not None:
                            legacy[job] = _legacy_record(job, fields)
                        gone.append(key)
                    except (ValueError, KeyError, TypeError) as exc:  # kept, and said
                        log.error(
                            "store.upgrade_unreadable", sm8_job_uuid=job[:60], reason=repr(exc)
                        )
                self._write_links({j: r.cd for j, r in legacy.items() if r.cd is not None})
                self._update(list(legacy), merge)
                if gone:
                    self.r.delete(*gone)
                moved += len(legacy)
            if self.r.exists(self.key("cdjob")):
                links = self.r.hgetall(self.key("cdjob"))
                with self.r.pipeline(transaction=False) as pipe:
                    for ref, job in links.items():
                        slot, target = self._ref_slot(ref.decode()), id_bytes(job.decode())
                        if slot is not None and target is not None:
                            pipe.hset(slot[0], slot[1], target)
                    pipe.execute()
                self.r.delete(self.key("cdjob"))
            self.r.set(self.key("layout"), LAYOUT)
        finally:
            with contextlib.suppress(LockError):  # expired during a long move: nothing to free
                lock.release()
        if moved:
            log.info("store.layout_upgraded", jobs=moved)
        return moved

    def job_for_cd(self, ref: str | int) -> str | None:
        slot = self._ref_slot(str(ref).strip().lower())
        if slot is None:
            return None
        found = self.r.hget(*slot)
        return unpack_id(bytes(found)) if found else None

    def cd_views(self, refs: Iterable[str]) -> dict[str, CdView | None]:
        """The stored Coredination views of several linked jobs, keyed by ServiceM8 job uuid."""
        refs = list(refs)
        if not refs:
            return {}
        with self.r.pipeline(transaction=False) as pipe:
            for job_uuid in refs:
                pipe.hget(*self._job_slot(job_uuid))
            raws = pipe.execute()
        return {j: self._decode(j, raw).cd for j, raw in zip(refs, raws, strict=True)}

    # --- dirty jobs ------------------------------------------------------------------------------
    def mark_dirty(self, job_uuids: Iterable[str]) -> None:
        with self.r.pipeline() as pipe:
            for job_uuid in job_uuids:
                pipe.hincrby(self.key("dirty"), job_uuid, 1)
            pipe.execute()

    def dirty(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("dirty"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def dirty_generation(self, job_uuid: str) -> int | None:
        value = self.r.hget(self.key("dirty"), job_uuid)
        return int(value) if value is not None else None

    def clear_dirty(self, job_uuid: str, generation: int | None) -> bool:
        """Forget the dirty mark if nobody bumped it since ``generation`` was read."""
        if generation is None:
            return True
        # A compare-and-delete must be one step; WATCH/MULTI would retry on every other job's mark.
        return bool(self._clear_dirty(keys=[self.key("dirty")], args=[job_uuid, str(generation)]))

    # --- the API budget --------------------------------------------------------------------------
    def take_slot(
        self, api: str, windows: Sequence[SlotWindow], now: float, max_wait: float
    ) -> Slot:
        """One call of ``api`` now or within ``max_wait`` seconds, in every window at once."""
        if not windows:
            return Slot(True, 0.0, None)
        keys = [self.key(f"budget:{api}:{w.name}") for w in windows]
        args: list[str] = [repr(now), repr(max_wait)]
        for w in windows:
            args += [str(max(1, w.fill)), str(w.keep), repr(w.span)]
        wait, blocking, taken = self._take_slot(keys=keys, args=args)
        name = windows[int(blocking) - 1].name if int(blocking) else None
        return Slot(bool(taken), max(0.0, float(wait)), name)

    def slots_used(self, api: str, window: SlotWindow, now: float) -> tuple[int, float | None]:
        """Calls of ``api`` in the span before ``now`` (and reserved after it), and when the
        oldest of them leaves the window."""
        raw = self.r.lrange(self.key(f"budget:{api}:{window.name}"), 0, window.keep - 1)
        times = [float(t) for t in raw if float(t) > now - window.span]
        return len(times), (min(times) + window.span if times else None)

    def claim_enqueue(self, job_uuid: str, ttl: int = 300) -> bool:
        """True if no sync of this job is queued yet (and now one is)."""
        return bool(self.r.set(self.key(f"queued:{job_uuid}"), "1", nx=True, ex=ttl))

    def release_enqueue(self, job_uuid: str) -> None:
        self.r.delete(self.key(f"queued:{job_uuid}"))

    @contextlib.contextmanager
    def poll_lock(self, name: str, timeout: float = 300.0) -> Iterator[bool]:
        """One poll of a system at a time across every host; yields False when another runs."""
        lock = self.r.lock(self.key(f"lock:poll:{name}"), timeout=timeout, blocking=False)
        acquired = bool(lock.acquire(blocking=False))
        try:
            yield acquired
        finally:
            if acquired:
                with contextlib.suppress(LockError):
                    lock.release()

    def record_failure(self, task_id: str | None, now: float) -> tuple[float, int]:
        """Count a failure of this task (its retries share the task id): (first failure, how
        many failures before this one). Budget waits are not failures and are not counted."""
        key = self.key(f"fail:{task_id}")
        with self.r.pipeline() as pipe:
            pipe.hsetnx(key, "first", repr(now))
            pipe.hincrby(key, "n", 1)
            pipe.expire(key, 7200)
            pipe.hget(key, "first")
            _, count, _, first = pipe.execute()
        return float(first), int(count) - 1

    def forget_failure(self, task_id: str | None) -> None:
        self.r.delete(self.key(f"fail:{task_id}"))

    # --- webhook deliveries and liveness ---------------------------------------------------------
    def first_delivery(self, delivery: str, ttl: int) -> bool:
        """True the first time a webhook delivery is seen within ``ttl`` seconds."""
        return bool(self.r.set(self.key(f"seen:{delivery}"), "1", nx=True, ex=ttl))

    def forget_delivery(self, delivery: str) -> None:
        """Undo ``first_delivery`` when enqueueing failed, so a redelivery is not dropped."""
        self.r.delete(self.key(f"seen:{delivery}"))

    def note_webhook(self, system: str, now: float) -> None:
        """A valid webhook from ``system`` arrived (its polls may then run less often)."""
        self.r.hset(self.key("cursor"), f"webhook:{system}", repr(now))

    def heartbeat(self, worker: str, now: float, ttl: int) -> None:
        self.r.set(self.key(f"alive:{worker}"), repr(now), ex=ttl)

    def live_workers(self) -> dict[str, float]:
        keys = list(self.r.scan_iter(match=self.key("alive:*"), count=1000))
        values = self.r.mget(keys) if keys else []
        start = len(self.key("alive:"))
        return {k.decode()[start:]: float(v) for k, v in zip(keys, values, strict=True) if v}

    def beat_alive(self) -> bool:
        """celery-redbeat holds this lock (with an expiry it renews) while a beat runs."""
        return bool(self.r.exists(self.key(BEAT_LOCK)))

    def ping(self) -> bool:
        return bool(self.r.ping())

    def queue_length(self, name: str) -> int:
        """Messages waiting in a broker list under this connection's prefix."""
        return int(self.r.llen(self.key(name)))

    # --- pauses and deferred work ----------------------------------------------------------------
    def set_pause(self, api: str, seconds: float, reason: str, kind: str) -> None:
        until = time.time() + seconds
        value = _dump({"until": until, "reason": reason, "kind": kind})
        self.r.set(self.key(f"pause:{api}"), value, px=max(1, int(seconds * 1000)))

    def pause(self, api: str) -> dict[str, Any] | None:
        raw = self.r.get(self.key(f"pause:{api}"))
        return json.loads(raw) if raw else None

    def clear_pause(self, api: str) -> None:
        self.r.delete(self.key(f"pause:{api}"))

    def defer(self, due: float, message: Mapping[str, Any]) -> None:
        self.r.zadd(self.key("deferred"), {_dump(dict(message)): due})

    def take_due(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        """Deferred messages now due. Each is handed out once: only the caller whose ZREM
        removed it gets it, so two releasers never enqueue the same message."""
        key = self.key("deferred")
        due = []
        for raw in self.r.zrangebyscore(key, "-inf", now, start=0, num=limit):
            if self.r.zrem(key, raw):
                due.append(json.loads(raw))
        return due

    def deferred_count(self) -> int:
        return int(self.r.zcard(self.key("deferred")))

    # --- dead letters ----------------------------------------------------------------------------
    def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = self.r.xrange(self.key("dlq"), count=count)
        return [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
            for entry_id, data in rows
        ]

    def dead_letter(self, entry: Mapping[str, Any]) -> str:
        """Append an entry (already free of secrets) to the dead-letter stream; return its id."""
        fields = {
            k: v if isinstance(v, str) else _dump(v) for k, v in entry.items() if v is not None
        }
        return str(self.r.xadd(self.key("dlq"), fields).decode())

    def get_dead_letter(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.key("dlq"), min=entry_id, max=entry_id)
        if not rows:
            return None
        return {k.decode(): v.decode() for k, v in rows[0][1].items()}

    def drop_dead_letter(self, entry_id: str) -> bool:
        return bool(self.r.xdel(self.key("dlq"), entry_id))

    def dead_letter_count(self) -> int:
        return int(self.r.xlen(self.key("dlq")))

    # --- locks -----------------------------------------------------------------------------------
    def job_lock(
        self, job_uuid: str, timeout: float = 120.0, blocking_timeout: float = 10.0
    ) -> Lock:
        """One writer per job: webhook, poll and retry paths all take this lock."""
        lock: Lock = self.r.lock(
            self.key(f"lock:{job_uuid}"), timeout=timeout, blocking_timeout=blocking_timeout
        )
        return lock

    # --- staff map -------------------------------------------------------------------------------
    def staff_map(self) -> StaffMap:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key("map:s2u"))
            pipe.smembers(self.key("map:manual"))
            s2u_raw, manual_raw = pipe.execute()
        s2u = {k.decode(): int(v) for k, v in s2u_raw.items()}
        return StaffMap(
            s2u, {u: s for s, u in s2u.items()}, frozenset(m.decode() for m in manual_raw)
        )

    def link_staff(self, staff_uuid: str, user_id: int, *, manual: bool) -> None:
        staff_map = self.staff_map()
        with self.r.pipeline() as pipe:
            old_staff = staff_map.u2s.get(user_id)
            if old_staff is not None and old_staff != staff_uuid:
                pipe.hdel(self.key("map:s2u"), old_staff)
            old_user = staff_map.s2u.get(staff_uuid)
            if old_user is not None:
                pipe.hdel(self.key("map:u2s"), str(old_user))
            pipe.hset(self.key("map:s2u"), staff_uuid, str(user_id))
            pipe.hset(self.key("map:u2s"), str(user_id), staff_uuid)
            if manual:
                pipe.sadd(self.key("map:manual"), staff_uuid)
            pipe.execute()

    def unlink_staff(self, staff_uuid: str, *, manual: bool) -> int | None:
        user = self.r.hget(self.key("map:s2u"), staff_uuid)
        with self.r.pipeline() as pipe:
            pipe.hdel(self.key("map:s2u"), staff_uuid)
            if user is not None:
                pipe.hdel(self.key("map:u2s"), user.decode())
            if manual:
                pipe.sadd(self.key("map:manual"), staff_uuid)
            pipe.execute()
        return int(user) if user is not None else None

    def save_directory(self, kind: str, entries: Mapping[str, dict[str, Any]]) -> None:
        key = self.key(f"dir:{kind}")
        with self.r.pipeline() as pipe:
            pipe.delete(key)
            if entries:
                pipe.hset(key, mapping={k: _dump(v) for k, v in entries.items()})
            pipe.execute()

    def directory(self, kind: str) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key(f"dir:{kind}"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    # --- records that cannot be read ------------------------------------------------------------
    def set_invalid(self, record: str, reason: str, now: float) -> bool:
        """Park an unreadable record with its reason; True the first time it is parked."""
        value = _dump({"reason": reason, "since": now})
        return bool(self.r.hsetnx(self.key("invalid"), record, value))

    def invalid(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("invalid"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def clear_invalid(self, records: Iterable[str]) -> None:
        records = list(records)
        if records:
            self.r.hdel(self.key("invalid"), *records)

    # --- pending pairs ---------------------------------------------------------------------------
    def set_pending(self, job_uuid: str, who: str, reason: str) -> None:
        field_ = f"{job_uuid}|{who}"
        if not self.r.hexists(self.key("pending"), field_):
            self.r.hset(
                self.key("pending"), field_, _dump({"reason": reason, "since": time.time()})
            )

    def clear_pending(self, job_uuid: str, who: str) -> None:
        self.r.hdel(self.key("pending"), f"{job_uuid}|{who}")

    def pending(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("pending"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def requeue_pending(self) -> set[str]:
        """Mark every job with a parked pair dirty again (after the staff map changed)."""
        jobs = {k.split("|", 1)[0] for k in self.pending()}
        if jobs:
            self.mark_dirty(jobs)
        return jobs

    # --- cursors and counters --------------------------------------------------------------------
    def cursor(self, name: str) -> str | None:
        value = self.r.hget(self.key("cursor"), name)
        return value.decode() if value is not None else None

    def set_cursor(self, name: str, value: str) -> None:
        self.r.hset(self.key("cursor"), name, value)

    def count(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        with self.r.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                pipe.hincrby(self.key("stats"), name, n)
            pipe.execute()

    def stats(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("stats"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def wipe(self) -> int:
        """Delete every key of this connection (tests and benchmarks)."""
        keys = list(self.r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i : i + 500])
        return len(keys)
