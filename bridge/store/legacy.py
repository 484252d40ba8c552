"""The first store layout (a ``job:{J}`` hash of JSON fields per job and one ``cdjob`` reverse
hash), read once and moved into packed records by ``upgrade_layout``. Nothing else reads it."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Mapping

from redis.exceptions import LockError

from bridge.log import get_logger
from bridge.store.codec import id_bytes
from bridge.store.jobs import BATCH, JobStore
from mappings import transitions
from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence
from mappings.state import CdView, JobRecord, PairSnapshot

log = get_logger(__name__)

LAYOUT = b"2"  # the store's layout: 2 = packed records in buckets


def legacy_record(job_uuid: str, fields: Mapping[bytes, bytes]) -> JobRecord:
    """A ``job:{J}`` hash of the first layout, decoded."""
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


def _merge(older: Mapping[str, JobRecord], record: JobRecord) -> transitions.Change:
    return transitions.merge(record, older[record.uuid])


def upgrade_layout(jobs: JobStore) -> int:
    """Move links kept in the first layout into packed records, then delete the old keys; return
    how many jobs moved. Safe to run from every process at once (one moves while the others wait,
    then find nothing) and to interrupt (a job's old key goes only after its record is written; a
    record already written is merged, never replaced). Costs one GET when there is nothing to do."""
    r, keys = jobs.r, jobs.keys
    if r.get(keys.layout) == LAYOUT:  # the usual case: one read at start
        return 0
    old_jobs = keys.legacy_job_prefix

    def old_keys() -> list[bytes]:
        return [k for k in r.scan_iter(match=old_jobs + "*", count=1000)
                if b":" not in k[len(old_jobs):]]  # fmt: skip

    if not old_keys() and not r.exists(keys.legacy_reverse):
        r.set(keys.layout, LAYOUT)
        return 0
    # Others wait for the move rather than start on half the links. A holder killed mid-move
    # frees the lock within a minute; a second mover is safe (records merge).
    lock = r.lock(keys.upgrade_lock, timeout=60, blocking_timeout=300)
    if not lock.acquire():
        raise LockError("another process has been moving the first layout's links for 5 min")
    try:
        found = old_keys()
        moved = 0
        for i in range(0, len(found), BATCH):
            batch = found[i : i + BATCH]
            with r.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.hgetall(key)
                hashes = pipe.execute()
            legacy: dict[str, JobRecord] = {}
            gone = []
            for key, fields in zip(batch, hashes, strict=True):
                job = key.decode()[len(old_jobs) :]
                try:
                    if fields and id_bytes(job) is not None:
                        legacy[job] = legacy_record(job, fields)
                    gone.append(key)
                except (ValueError, KeyError, TypeError) as exc:  # kept, and said
                    log.error("store.upgrade_unreadable", sm8_job_uuid=job[:60], reason=repr(exc))
            jobs.write_links({j: rec.cd for j, rec in legacy.items() if rec.cd is not None})
            jobs.update(legacy, functools.partial(_merge, legacy))
            if gone:
                r.delete(*gone)
            moved += len(legacy)
        if r.exists(keys.legacy_reverse):
            links = r.hgetall(keys.legacy_reverse)
            with r.pipeline(transaction=False) as pipe:
                for ref, job in links.items():
                    slot, target = jobs._ref_slot(ref.decode()), id_bytes(job.decode())
                    if slot is not None and target is not None:
                        pipe.hset(slot[0], slot[1], target)
                pipe.execute()
            r.delete(keys.legacy_reverse)
            r.delete(keys.cd_links_count)  # written around the count: made again when read
        r.set(keys.layout, LAYOUT)
    finally:
        with contextlib.suppress(LockError):  # expired during a long move: nothing to free
            lock.release()
    if moved:
        log.info("store.layout_upgraded", jobs=moved)
    return moved
