"""The state model: everything the bridge holds of one linked job, as plain values.

The link store (``bridge.store``) persists a ``JobRecord`` per ServiceM8 job; the record
transitions (``mappings.transitions``) change it; the job planner (``mappings.plan``) reads it.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mappings.facts import AllocationFacts, JobFacts
from mappings.presence import Presence


@dataclass(frozen=True)
class PairSnapshot:
    """Both sides' presence when the pair was last in step. ``held``: not in step, and kept so
    on purpose: Coredination ignored the bridge's write to a resource at work (read back), and
    the pair stays as both sides hold it until one of them changes (``mappings.plan``, the
    return-visit rule in docs/coredination-api.md#resources)."""

    sm8: Presence
    cd: Presence
    held: bool = False


@dataclass
class CdView:
    """The Coredination side of a linked job as last seen or written by the bridge."""

    id: int | None
    uuid: str
    resources: dict[int, str] = field(default_factory=dict)  # user id → resource state
    changed_ms: dict[int, int] = field(default_factory=dict)  # user id → last event time
    modified_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None  # the job's end: endTime, or start + duration (None: neither set)
    all_day: bool = False  # startTime and endTime are dates, not times

    @property
    def timed(self) -> bool:
        """The job has a start time (not a date alone)."""
        return self.start_ms is not None and not self.all_day


@dataclass
class JobRecord:
    """Everything the bridge holds of one linked job."""

    uuid: str
    details: JobFacts | None = None
    allocations: dict[str, AllocationFacts] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)  # allocation → when we wrote it
    cd: CdView | None = None
    fields_fp: str | None = None
    pairs: dict[str, PairSnapshot] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.details is None and not self.allocations and self.cd is None
