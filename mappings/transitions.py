"""Record transitions: how a job's record changes when the bridge learns or writes something.

Each function edits a ``JobRecord`` in place and returns a ``Change`` saying what the store must
do (write the record back, bump the job's dirty mark, set an expiry reminder), or ``None`` when
nothing changed. The store runs them inside its compare-and-set loop, so a transition may run
more than once on fresh reads of the same record: they must stay pure. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from mappings.facts import AllocationFacts, JobFacts
from mappings.state import CdView, JobRecord, PairSnapshot


@dataclass(frozen=True)
class Change:
    """What a change to a job record did: ``write`` the record back, bump the dirty mark,
    remind of an allocation expiry (epoch ms)."""

    job_uuid: str
    write: bool = True
    dirty: bool = False
    expires_ms: int | None = None


@dataclass(frozen=True)
class SyncWrite:
    """What one sync of a job leaves in its record (``apply_sync``)."""

    job_uuid: str
    written: list[AllocationFacts] = field(default_factory=list)
    at: float = 0.0
    view: CdView | None = None
    fields_fp: str | None = None
    pairs: Mapping[str, PairSnapshot] = field(default_factory=dict)
    dirty: bool = False  # mark the job to sync, in the same step

    @property
    def empty(self) -> bool:
        return (
            not (self.written or self.view is not None or self.fields_fp is not None or self.pairs)
            and not self.dirty
        )


def ingest_allocations(
    record: JobRecord, facts: Iterable[AllocationFacts], read_started: float | None
) -> Change | None:
    """What ServiceM8 says of the job's allocations.

    A record equal to what we hold (apart from ``edit_date``, which our own writes do not know)
    is an echo or a re-read of the overlap window: stored quietly, the job is not marked dirty.
    A deleted record the bridge never saw is not kept at all (it would make the job known).
    A record the bridge wrote after ``read_started`` (the moment the read began) is older than
    our write and is ignored: a stale read must never undo our own write. An allocation once
    known as the bridge's stays the bridge's; a fixed booking the bridge made stops being the
    bridge's once the office moves it. A record whose fields are unchanged keeps the
    change time it had: ``edit_date`` alone moving is no change.
    """
    facts = list(facts)
    wrote, dirty = False, False
    for fact in facts:
        written = record.written.get(fact.uuid)
        settled = False
        if written is not None:
            if read_started is None or written >= read_started:
                continue
            del record.written[fact.uuid]  # a read begun after our write settles it
            wrote = settled = True
        previous = record.allocations.get(fact.uuid)
        if previous is None and not fact.active:
            continue  # deleted before the bridge ever saw it (a poll's overlap): nothing to keep
        if previous is not None and previous.fixed and (
            not previous.by_bridge or (fact.date_ms, fact.end_ms) != (previous.date_ms,
                                                                      previous.end_ms)
        ):  # fmt: skip
            # A fixed booking the bridge made that the office moved is the office's from then
            # on: it sets the job's time and is never moved from Coredination again.
            fact = replace(fact, by_bridge=False)
        elif previous is not None and previous.by_bridge and not fact.by_bridge:
            fact = replace(fact, by_bridge=True)
        elif previous is None and fact.by_bridge and fact.own_ms is None:
            # The bridge's own booking met before its write marker was kept (the sync that made
            # it was killed just after the write): only the bridge makes a booking of a uuid it
            # derives, so its change time is the bridge's, which the deletion rule never counts.
            fact = replace(fact, own_ms=fact.edited_ms)
        if previous is not None and previous.edited_ms is not None and previous.same_state(fact):
            # Only edit_date moved (a booking opened on the phone): the change time stays when
            # the fields the rules read last changed, so it wins no conflict.
            fact = replace(fact, edited_ms=previous.edited_ms, own_ms=previous.own_ms)
        elif previous is not None and previous.same_state(fact):
            # Our own write read back as we wrote it: its change time is the bridge's, and
            # stays marked so until someone changes the booking.
            fact = replace(fact, own_ms=fact.edited_ms if settled else previous.own_ms)
        if previous == fact:
            continue
        record.allocations[fact.uuid] = fact
        wrote = True
        if previous is None or not previous.same_state(fact):
            dirty = True
    expiries = [f.expires_ms for f in facts if f.active and f.expires_ms is not None]
    if not (wrote or expiries):
        return None
    return Change(
        record.uuid, write=wrote, dirty=dirty, expires_ms=min(expiries) if expiries else None
    )


def ingest_job(record: JobRecord, fact: JobFacts, *, only_known: bool) -> Change | None:
    """Job details from ServiceM8; ``only_known``: ignore a job the bridge holds nothing of."""
    if record.details == fact or (only_known and record.empty):
        return None
    record.details = fact
    return Change(record.uuid, dirty=True)


def set_details(record: JobRecord, fact: JobFacts) -> Change:
    record.details = fact
    return Change(record.uuid)


def forget_cd(record: JobRecord) -> Change:
    """The Coredination job is gone: drop our view and the pairs' snapshots, and mark the job to
    sync, which creates it again with the people the ServiceM8 bookings name. The snapshots go
    too: against a snapshot, a job created empty would read as everyone taken off in
    Coredination, and the sync would delete their ServiceM8 bookings."""
    record.cd, record.fields_fp, record.pairs = None, None, {}
    return Change(record.uuid, dirty=True)


def apply_sync(record: JobRecord, w: SyncWrite) -> Change:
    """What one sync did: allocations it wrote (each with the write marker ``at``), the
    Coredination view, the body fingerprint and the pair snapshots."""
    for fact in w.written:
        record.allocations[fact.uuid] = fact
        record.written[fact.uuid] = w.at
    if w.view is not None:
        record.cd = w.view
    if w.fields_fp is not None:
        record.fields_fp = w.fields_fp
    record.pairs.update(w.pairs)
    return Change(record.uuid, dirty=w.dirty)


def merge(record: JobRecord, older: JobRecord) -> Change:
    """Merge a record kept in an older layout into the current one; what is newer stays."""
    record.details = record.details or older.details
    record.allocations = {**older.allocations, **record.allocations}
    record.written = {**older.written, **record.written}
    record.cd = record.cd or older.cd
    record.fields_fp = record.fields_fp or older.fields_fp
    record.pairs = {**older.pairs, **record.pairs}
    return Change(record.uuid)
