"""The link store: the only code that speaks Redis commands (the broker and redbeat aside).

One class per consumer, over one ``Keys`` object that owns every key name (the key schema is its
docstring): ``JobStore`` (job records and links, by compare-and-set; dirty marks), ``StaffStore``
(the staff ⇄ user map, directories), ``ParkedStore`` (pending pairs, unreadable records),
``ScopeStore`` (jobs left out by hand), ``BudgetStore`` (API budget slots and pauses, keyed by
account), ``WorkStore`` (queue claims,
locks, failures, deferred work, dead letters) and ``ActivityStore`` (cursors, counters, accounts,
deliveries, heartbeats). ``Stores`` bundles them for one connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.store.activity import ActivityStore
from bridge.store.budget import BudgetStore, Slot, SlotWindow
from bridge.store.hints import HintBatch, HintStore
from bridge.store.jobs import JobStore, StoreBusy
from bridge.store.keys import ALIVE_SECONDS, Keys, account_prefix
from bridge.store.legacy import upgrade_layout
from bridge.store.parked import ParkedStore
from bridge.store.scope import ScopeStore
from bridge.store.staff import StaffMap, StaffStore
from bridge.store.trail import TrailStore
from bridge.store.work import WorkStore

__all__ = [
    "ALIVE_SECONDS",
    "ActivityStore",
    "BudgetStore",
    "HintBatch",
    "HintStore",
    "JobStore",
    "Keys",
    "ParkedStore",
    "ScopeStore",
    "Slot",
    "SlotWindow",
    "StaffMap",
    "StaffStore",
    "StoreBusy",
    "Stores",
    "WorkStore",
]


@dataclass
class Stores:
    """Every store of one connection, over one Redis client."""

    redis: Any
    keys: Keys
    jobs: JobStore
    staff: StaffStore
    parked: ParkedStore
    budget: BudgetStore
    work: WorkStore
    activity: ActivityStore
    hints: HintStore
    scope: ScopeStore
    trail: TrailStore

    @classmethod
    def connect(cls, redis: Any, connection_id: str) -> Stores:
        # redis-py types every reply as "Awaitable[T] | T" (sync and async share stubs); the stores
        # take the client as Any to keep their decoding readable.
        keys = Keys(connection_id)
        parked = ParkedStore(redis, keys)
        trail = TrailStore(redis, keys)
        return cls(
            redis=redis,
            keys=keys,
            jobs=JobStore(redis, keys, parked, trail),
            staff=StaffStore(redis, keys),
            parked=parked,
            budget=BudgetStore(redis),
            work=WorkStore(redis, keys),
            activity=ActivityStore(redis, keys),
            hints=HintStore(redis, keys),
            scope=ScopeStore(redis, keys),
            trail=trail,
        )

    def upgrade_layout(self) -> int:
        moved = upgrade_layout(self.jobs)
        self.jobs.recount()
        return moved

    def wipe(self) -> int:
        """Delete every key of this connection and of the API accounts it resolved (tests and
        benchmarks)."""
        patterns = [self.keys.prefix + "*"]
        patterns += [account_prefix(api, a) + "*" for api, a in self.activity.accounts()]
        keys = [k for p in patterns for k in self.redis.scan_iter(match=p, count=1000)]
        for i in range(0, len(keys), 500):
            self.redis.delete(*keys[i : i + 500])
        return len(keys)
