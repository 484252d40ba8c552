"""A job sync's store access in two round trips: what it reads under its lock (``load``) and
what it leaves there (``settle``), docs/how-it-works.md#one-read-one-write.

``settle`` sends in one pipeline: the reverse links, the record written compare-and-set against
the bytes loaded and only while the sync's lock is still its own, with the dirty mark cleared
and the expiry reminder set in the same script; the pairs parked or cleared; the trail entry;
the activity counts. When the record changed meanwhile (a poll's ingest), it is read and written
again through ``JobStore.update``; when the lock was lost, only the write markers are kept (the
worker that holds the job now stores its own view).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridge.log import get_logger
from bridge.store.codec import encode
from bridge.store.jobs import CLEAR_DIRTY_FN, PUT_JOB_FN, JobStore, _decode, queue_links
from bridge.store.lua import queue
from bridge.store.staff import StaffMap, StaffStore
from bridge.store.trail import Kept
from mappings import transitions
from mappings.state import JobRecord
from mappings.transitions import Change, SyncWrite

log = get_logger(__name__)

# KEYS: the record's bucket, dirty, expiring, links count, catch-up, in-flight, the job's lock.
# ARGV: field, the bytes loaded, the new bytes ('' = unchanged), job, '1' to mark it dirty, an
# expiry reminder in ms (''), the dirty generation to clear ('' = keep the marks, '-' = none to
# clear but the in-flight mark), now, the lock's token ('' = no lock).
# Returns -1 when the lock is not the sync's, 0 when the record changed since it was loaded.
_SETTLE = (
    PUT_JOB_FN
    + CLEAR_DIRTY_FN
    + """
if ARGV[9] ~= '' and redis.call('GET', KEYS[7]) ~= ARGV[9] then return -1 end
if put_job() == 0 then return 0 end
if ARGV[7] ~= '' then clear_dirty(KEYS[2], KEYS[5], KEYS[6], ARGV[4], ARGV[7], ARGV[8]) end
return 1
"""
)
# Pairs parked or cleared (``ParkedStore.set_pending``: the same reason keeps its first time).
# KEYS: the pending hash. ARGV: now, then a field and a reason per pair ('' clears it).
_PARKS = """
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    local held = redis.call('HGET', KEYS[1], ARGV[i])
    if not held or cjson.decode(held)['reason'] ~= ARGV[i + 1] then
      local entry = cjson.encode({reason = ARGV[i + 1], since = tonumber(ARGV[1])})
      redis.call('HSET', KEYS[1], ARGV[i], entry)
    end
  end
end
return 1
"""


@dataclass
class SyncLoad:
    """What a job's sync reads under its lock, in one round trip."""

    record: JobRecord
    raw: bytes | None  # the record's bytes, to write it back compare-and-set
    flight: str | None  # a sync's in-flight mark left by a worker that died mid-write
    generation: int | None  # the dirty mark's, cleared at the end unless bumped since
    excluded: bool
    settled: str | None  # the scope the connection's jobs were last marked under
    staff: StaffMap
    cd_deleted: dict[str, Any] | None  # the job's parked deletion in Coredination, if any


@dataclass
class Settlement:
    """What a sync leaves in the store, written at its end in one round trip (``settle``)."""

    writes: list[SyncWrite] = field(default_factory=list)
    parks: dict[str, str | None] = field(default_factory=dict)  # who → reason, None: cleared
    expiry_ms: int | None = None  # the job's next expiry reminder
    staff: StaffMap | None = None  # the staff map, as loaded with the record

    def park(self, who: str, reason: str | None) -> None:
        self.parks[who] = reason

    def forget_view(self) -> None:
        """The Coredination job turned out gone while the sync ran: of what it meant to leave,
        only the write markers stay, so its end cannot put the old view or snapshots back over
        the job's forgetting (written at once: ``JobStore.forget_cd``)."""
        self.writes = [SyncWrite(w.job_uuid, w.written, w.at) for w in self.writes if w.written]


def load(jobs: JobStore, staff: StaffStore, job_uuid: str, settled: str,
         deleted: str) -> SyncLoad:  # fmt: skip
    """The record and every mark a sync reads, with the staff map: one round trip.
    ``settled``: the scope's cursor entry; ``deleted``: the parked deletion's ``who``."""
    keys = jobs.keys
    bucket, field_ = jobs._slot(job_uuid)
    with jobs.r.pipeline(transaction=False) as pipe:
        pipe.hget(bucket, field_)
        pipe.hget(keys.inflight, job_uuid)
        pipe.hget(keys.dirty, job_uuid)
        pipe.hexists(keys.excluded, job_uuid)
        pipe.hget(keys.cursor, settled)
        pipe.hget(keys.pending, f"{job_uuid}|{deleted}")
        staff.queue_map(pipe)
        raw, flight, generation, excluded, held, entry, *staff_rows = pipe.execute()
    return SyncLoad(
        record=_decode(jobs, job_uuid, raw)[0],
        raw=raw,
        flight=None if flight is None else flight.decode(),
        generation=None if generation is None else int(generation),
        excluded=bool(excluded),
        settled=None if held is None else held.decode(),
        staff=staff.read_map(staff_rows),
        cd_deleted=None if entry is None else dict(json.loads(entry)),
    )


def settle(
    jobs: JobStore,
    loaded: SyncLoad,
    done: Settlement,
    *,
    lock: Any,
    clear: bool,
    trail: Kept | None,
    counts: Mapping[str, int],
    now: float | None = None,
) -> None:
    """Leave what the sync did: one round trip unless the record changed since it was loaded
    or the lock was lost. ``clear``: the sync ended, so its dirty mark (unless bumped since)
    and its in-flight mark go."""
    job = loaded.record.uuid
    keys, now = jobs.keys, time.time() if now is None else now
    writes = [w for w in done.writes if not w.empty]
    record, change = _applied(jobs, job, loaded.raw, writes)
    new = encode(record, jobs.cd_uuid(job)) if change.write and writes else b""
    if new == (loaded.raw or b""):
        new = b""
    generation = "" if not clear else "-" if loaded.generation is None else str(loaded.generation)
    bucket, field_ = jobs._slot(job)
    token = lock.local.token if lock is not None else None
    with jobs.r.pipeline(transaction=False) as pipe:
        queue_links(jobs, {w.job_uuid: w.view for w in writes if w.view is not None}, pipe)
        at = len(pipe.command_stack)  # the settle script's reply, after the links'
        queue(pipe, _SETTLE, [
            bucket, keys.dirty, keys.expiring, keys.links_count, keys.catchup, keys.inflight,
            keys.job_lock(job),
        ], [
            field_, loaded.raw or b"", new, job, "1" if change.dirty else "0",
            "" if done.expiry_ms is None else str(done.expiry_ms), generation, repr(now),
            token or "",
        ])  # fmt: skip
        if done.parks:
            args: list[Any] = [repr(now)]
            for who, reason in done.parks.items():
                args += [f"{job}|{who}", reason or ""]
            queue(pipe, _PARKS, [keys.pending], args)
        if trail is not None:
            jobs.trail.append(job, trail, pipe)
        for name, n in counts.items():
            pipe.hincrby(keys.stats, name, n)
        outcome = pipe.execute()[at]
    if outcome == 1:
        loaded.raw = new or loaded.raw  # what a later settle of the same sync compares with
        return
    if outcome == -1:  # another worker holds the job: keep our write markers only
        log.warning("sync.lease_lost", sm8_job_uuid=job)
        markers = [SyncWrite(w.job_uuid, w.written, w.at) for w in writes if w.written]
        jobs.save_syncs(markers)
        return
    # The record changed since it was loaded: read, apply and write again, then the marks.
    jobs.update([job], lambda r: _apply(r, writes))
    if done.expiry_ms is not None:
        jobs.remind_expiry(job, done.expiry_ms)
    if clear:
        jobs.clear_dirty(job, loaded.generation, now)
    loaded.raw = jobs.r.hget(bucket, field_)


def _applied(
    jobs: JobStore, job: str, raw: bytes | None, writes: Sequence[SyncWrite]
) -> tuple[JobRecord, Change]:
    record = _decode(jobs, job, raw)[0]
    return record, _apply(record, writes)


def _apply(record: JobRecord, writes: Sequence[SyncWrite]) -> Change:
    dirty = False
    for w in writes:
        dirty |= transitions.apply_sync(record, w).dirty
    return replace(Change(record.uuid), dirty=dirty)
