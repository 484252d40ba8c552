"""What every sync use case shares: the stores, the two API ports, the clock, the options, and a
report of what was done. Also the job lease, which a use case holds per call (never on an object
that outlives it)."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from uuid import UUID

from redis.lock import Lock

from bridge.errors import Api
from bridge.http.fence import fenced
from bridge.servicem8.models import AllocationWindow
from bridge.store import Stores
from bridge.store.settle import Settlement
from bridge.store.work import WorkStore
from bridge.sync.ports import CoredinationPort, ServiceM8Port
from mappings.decision import TieRule
from mappings.planners import BookingKind
from mappings.pollplan import PollBudget
from mappings.scope import Horizon, Scope
from mappings.trail import KEEP, Draft

# Cursor names in the ``cursor`` hash (bridge.store.keys): one per polled object and system.
CURSOR_SM8_ALLOCATIONS = "servicem8:joballocation"
CURSOR_SM8_ACTIVITIES = "servicem8:jobactivity"
CURSOR_SM8_JOBS = "servicem8:job"
CURSOR_CD_JOBS = "coredination:job"
CURSORS = {
    "servicem8.joballocation": CURSOR_SM8_ALLOCATIONS,
    "servicem8.jobactivity": CURSOR_SM8_ACTIVITIES,
    "servicem8.job": CURSOR_SM8_JOBS,
    "coredination.job": CURSOR_CD_JOBS,
}
CURSOR_CD_CENSUS = "census:coredination"  # when the last census began
CURSOR_CD_CENSUS_SIZE = "census:coredination:jobs"  # how many jobs the last census listed
SYSTEMS: tuple[Api, ...] = ("servicem8", "coredination")
# The parked entry (``job|cd-deleted``) of a job whose Coredination job a dispatcher deleted.
CD_DELETED = "cd-deleted"
CD_DELETED_REASON = (
    "deleted in Coredination: created again at the next ServiceM8 change to a booking on the"
    " job, or now with 'sm8cd sync --job J'; no ServiceM8 booking was touched"
)
WINDOWS_MAX_AGE = 3600.0


def polled(system: str) -> str:
    """The cursor entry holding when ``system`` was last polled whole."""
    return f"polled:{system}"


@dataclass
class SyncOptions:
    tie: TieRule = "servicem8"
    sm8_overlap: timedelta = timedelta(minutes=15)
    cd_overlap_ms: int = 60_000
    send_message: bool = False
    # The kind of ServiceM8 booking made for a person scheduled in Coredination: ``auto`` makes a
    # fixed booking on a timed job and a flexible one otherwise (SERVICEM8_PULL_BOOKING).
    pull_booking: BookingKind = "auto"
    # The job lock is a lease, renewed before every write. It outlives one slow request (two read
    # timeouts) but not much more, so a killed holder blocks the job only briefly.
    lock_seconds: float = 65.0
    # ServiceM8's polls planned from the day's budget (docs/operations.md#poll-plan); None: each
    # object at the fixed SERVICEM8_POLL_SECONDS.
    poll_budget: PollBudget | None = None
    # The Coredination census: this often a poll lists every job instead of the changed ones,
    # which shows deleted jobs by their absence (docs/coredination-api.md); 0: never.
    cd_census_seconds: float = 300.0
    # What the connection syncs: the horizon in days, job statuses and categories, staff left
    # out (the SCOPE_* settings, docs/scope.md); jobs excluded by hand are in the store.
    scope: Scope = field(default_factory=Scope)
    # Each job's trail (``mappings.trail``): the entries kept, newest; 0: none (TRAIL_ENTRIES).
    trail_entries: int = KEEP


@dataclass
class Report:
    """What a use case did, by ``side.outcome`` (``coredination.scheduled``, ``skipped.reason``)."""

    counts: Counter[str] = field(default_factory=Counter)
    trail: Draft = field(default_factory=Draft)  # a job sync's decisions (``mappings.trail``)
    # What a job sync leaves in the store, written in one step at its end
    settle: Settlement = field(default_factory=Settlement)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def merge(self, other: Report) -> Report:
        self.counts.update(other.counts)
        return self

    def writes(self, side: str) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(f"{side}."))


class Lease:
    """A held job lock, renewed as each write leaves (the fence, ``bridge.http.fence``), so a
    worker that lost the job stops before sending. The sync's first write also leaves the job's
    in-flight mark (``WorkStore.renew_noting``), in the same round trip as its renewal."""

    def __init__(
        self, lock: Lock | None, work: WorkStore | None = None, job_uuid: str = ""
    ) -> None:
        self.lock = lock
        self._work, self._job = work, job_uuid
        self._mark: str | None = "1" if work is not None else None  # None: sent, or none kept

    def renew(self) -> None:
        if self.lock is not None:
            self.lock.reacquire()

    def before_write(self) -> None:
        """The fence's check as a write leaves: the lease renewed (raises when it is lost), and
        before the sync's first write, the in-flight mark with it."""
        if self._mark is None or self._work is None:
            self.renew()
            return
        mark, self._mark = self._mark, None
        self._work.renew_noting(self.lock, self._job, mark)

    def note_write(self, what: str) -> None:
        """What the in-flight mark says once the first write leaves (a create's body digest),
        unless a write has left already."""
        if self._mark is not None:
            self._mark = what

    def owned(self) -> bool:
        return self.lock is None or bool(self.lock.owned())


@dataclass
class Windows:
    """ServiceM8's allocation windows, shared through Redis by every process, with a short
    in-process cache."""

    rows: dict[str, AllocationWindow] | None = None
    at: float = 0.0
    # Whether the account's allocations are unavailable, and when that was read (pull_booking).
    allocations_unavailable: bool = False
    allocations_at: float | None = None


@dataclass
class SyncContext:
    stores: Stores
    sm8: ServiceM8Port
    cd: CoredinationPort
    ns: UUID
    options: SyncOptions = field(default_factory=SyncOptions)
    clock: Callable[[], float] = time.time
    windows: Windows = field(default_factory=Windows)
    # ServiceM8 calls of the account in the last day, by the shared budget (0: not known).
    calls_last_day: Callable[[], int] = lambda: 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def tz(self) -> tzinfo:
        return self.sm8.tz

    def horizon(self, now_ms: int) -> Horizon:
        """The connection's scope at ``now_ms``, in the account's timezone."""
        return self.options.scope.at(now_ms, self.tz)

    @contextlib.contextmanager
    def locked(self, job_uuid: str) -> Iterator[Lease]:
        """One writer per job, for the length of the block."""
        lock = self.stores.work.job_lock(job_uuid, timeout=self.options.lock_seconds)
        with lock:
            lease = Lease(lock, self.stores.work, job_uuid)
            with fenced(lease.before_write):
                yield lease

    def pull_booking(self) -> BookingKind:
        """The kind of booking made for a person scheduled in Coredination: the option, except
        that ``auto`` makes fixed bookings while the account's allocations are unavailable (its
        allocation list refused for good, ``bridge.sync.ingest``). Read from Redis at most once
        a minute per process."""
        kind = self.options.pull_booking
        if kind != "auto":
            return kind  # an operator's choice stands
        now, cache = self.clock(), self.windows
        if cache.allocations_at is None or now - cache.allocations_at >= 60:
            row = self.stores.activity.object_states().get("servicem8.joballocation") or {}
            cache.allocations_unavailable = row.get("state") == "unavailable"
            cache.allocations_at = now
        return "fixed" if cache.allocations_unavailable else kind

    def allocation_windows(self, refresh: bool = False) -> dict[str, AllocationWindow]:
        """Listed once an hour, or when an allocation names one we do not know (at most once a
        minute)."""
        now, cache = self.clock(), self.windows
        if cache.rows is not None and not refresh and now - cache.at < 60:
            return cache.rows
        staff, activity = self.stores.staff, self.stores.activity
        rows, fetched = staff.directory("windows"), activity.cursor("fetched:windows")
        age = now - float(fetched) if fetched else math.inf
        if age > WINDOWS_MAX_AGE or (refresh and age > 60):
            listed = self.sm8.list_allocation_windows()
            keep = {"uuid", "name", "start_time", "end_time"}
            rows = {w.uuid.lower(): w.model_dump(include=keep) for w in listed}
            staff.save_directory("windows", rows)
            activity.set_cursor("fetched:windows", repr(now))
        cache.rows = {u: AllocationWindow.model_validate(r) for u, r in rows.items()}
        cache.at = now
        return cache.rows
