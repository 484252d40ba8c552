"""Scope: which bookings and jobs the sync works with (docs/scope.md).

Only current and upcoming work syncs. A booking (``AllocationFacts``) is *in scope* when:

=====================================  ==================================================
booking                                in scope when
=====================================  ==================================================
fixed (a job activity booked)          its end (its start, without one) is after the
                                       horizon
flexible, dated (a job allocation)     its date is on or after the horizon
flexible, undated                      it is not completed, and its job is still open
=====================================  ==================================================

and it is live and its staff member is not left out. The *horizon* is the start of the local
day ``horizon_days`` before today in the account's timezone (1: the start of yesterday; 0: the
start of today), a UTC instant computed with the clock and the zone as parameters
(``mappings.stamps.day_start_ms``). A job is *open* unless its status is ``Completed`` or
``Unsuccessful`` (or it is deleted).

A job is *left out* as a whole when it is excluded by hand, or its status or category is not
among those the connection syncs. Otherwise a job with a live booking in scope is in scope: it
may get a Coredination job. A linked job keeps syncing while any of its bookings is in scope; a
person whose bookings on it are all history is *silent* on the ServiceM8 side (nothing of them is
pushed, deleted or unscheduled), and only a change made in Coredination still flows back
(``mappings.presence.current_presence``, ``mappings.plan``).

Pure: no I/O; the clock (``now_ms``) and the zone come in as values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING

from mappings.facts import AllocationFacts, JobFacts
from mappings.stamps import day_start_ms

if TYPE_CHECKING:  # mappings.state reads mappings.presence, which reads this module
    from mappings.state import JobRecord

DEFAULT_STATUSES = ("Quote", "Work Order")
CLOSED_STATUSES = frozenset({"completed", "unsuccessful"})  # lower case

# Why a job is not synced (``Horizon.left_out``), as ``sm8cd status`` and reports name it.
EXCLUDED = "excluded"
STATUS = "status"
CATEGORY = "category"
HISTORY = "history"  # no booking of the job is in scope: before the horizon, or finished


def names(values: Iterable[str]) -> frozenset[str]:
    """Setting values compared without regard to case or surrounding space."""
    return frozenset(v.strip().lower() for v in values if v and v.strip())


@dataclass(frozen=True)
class Scope:
    """What a connection syncs, as its settings say (``SCOPE_*``). Empty ``statuses`` or
    ``categories``: every status, every category. Values are compared in lower case (``names``):
    statuses by name, categories and staff by uuid."""

    horizon_days: int = 1
    statuses: frozenset[str] = field(default_factory=lambda: names(DEFAULT_STATUSES))
    categories: frozenset[str] = frozenset()
    staff_left_out: frozenset[str] = frozenset()

    def fingerprint(self) -> str:
        """The settings as one stable text: a change of scope is a change of it."""
        parts = [str(self.horizon_days), *(",".join(sorted(v)) for v in (
            self.statuses, self.categories, self.staff_left_out))]  # fmt: skip
        return "|".join(parts)

    def at(self, now_ms: int, tz: tzinfo) -> Horizon:
        """The scope at ``now_ms``: the horizon as an instant, in the account's zone ``tz``."""
        return Horizon(day_start_ms(now_ms, tz, self.horizon_days), self)


# Everything is in scope: for callers that judge without a scope (tests of other rules).
EVERYTHING = Scope(horizon_days=0, statuses=frozenset())


@dataclass(frozen=True)
class Horizon:
    """A scope at one moment: ``start_ms`` is the horizon (UTC epoch ms); bookings before it are
    history."""

    start_ms: int
    scope: Scope = field(default_factory=Scope)

    @classmethod
    def everything(cls) -> Horizon:
        """No horizon and no filter: every live booking is in scope."""
        return cls(-(2**62), EVERYTHING)

    # --- one booking -----------------------------------------------------------------------------
    def admits(self, booking: AllocationFacts, job_open: bool) -> bool:
        """Whether ``booking`` is current or upcoming (the table above; liveness aside)."""
        if booking.staff_uuid is not None and booking.staff_uuid in self.scope.staff_left_out:
            return False
        if booking.fixed:
            end = booking.end_ms if booking.end_ms is not None else booking.date_ms
            if end is not None:
                return end > self.start_ms
        elif booking.date_ms is not None:
            return booking.date_ms >= self.start_ms
        return booking.completed_ms is None and job_open

    def current(
        self, bookings: Iterable[AllocationFacts], now_ms: int, job: JobFacts | None
    ) -> list[AllocationFacts]:
        """The live bookings in scope, of a job whose facts are ``job`` (None: not read yet,
        taken as open)."""
        opened = job_open(job)
        return [b for b in bookings if b.live(now_ms) and self.admits(b, opened)]

    # --- one job ---------------------------------------------------------------------------------
    def left_out(self, job: JobFacts | None, *, excluded: bool = False) -> str | None:
        """Why the job is left out as a whole (``EXCLUDED``, ``STATUS``, ``CATEGORY``), or None.
        A job not read yet, or read before its status was kept, passes the filters it cannot be
        judged by."""
        if excluded:
            return EXCLUDED
        if job is None:
            return None
        statuses, categories = self.scope.statuses, self.scope.categories
        if statuses and job.status is not None and job.status.strip().lower() not in statuses:
            return STATUS
        if categories and (job.category_uuid or "").lower() not in categories:
            return CATEGORY
        return None

    def job_reason(
        self,
        job: JobFacts | None,
        bookings: Iterable[AllocationFacts],
        now_ms: int,
        *,
        excluded: bool = False,
    ) -> str | None:
        """Why the job is not in scope (``left_out``, or ``HISTORY``: no booking in scope), or
        None: it is, and may have a Coredination job."""
        reason = self.left_out(job, excluded=excluded)
        if reason is None and not self.current(bookings, now_ms, job):
            reason = HISTORY
        return reason


def leaves_scope_ms(booking: AllocationFacts, horizon_days: int, tz: tzinfo) -> int | None:
    """When the horizon passes ``booking`` (UTC epoch ms): a fixed booking leaves scope once the
    horizon reaches its end, a dated flexible one once the horizon is past its date; an undated
    one never does by time (None). That is the start of the local day ``horizon_days`` days after
    the first day that starts at or after that edge."""
    if booking.fixed:
        edge = booking.end_ms if booking.end_ms is not None else booking.date_ms
    else:
        edge = None if booking.date_ms is None else booking.date_ms + 1
    if edge is None:
        return None
    local = datetime.fromtimestamp(edge / 1000, tz).date()
    first = local if day_start_ms(edge, tz) == edge else local + timedelta(days=1)
    start = datetime.combine(first + timedelta(days=horizon_days), time(0), tzinfo=tz)
    return round(start.timestamp() * 1000)


def job_open(job: JobFacts | None) -> bool:
    """Still open: active, and not ``Completed`` or ``Unsuccessful`` (not read yet: open)."""
    if job is None:
        return True
    return job.active and (job.status or "").strip().lower() not in CLOSED_STATUSES


def later_expiry(record: JobRecord, now_ms: int, horizon: Horizon, tz: tzinfo) -> int | None:
    """The next moment the job must sync though nothing changes in either system (its reminder
    fires once): a live allocation expires, or a dated booking in scope leaves it, which may
    move the job's time to its next booking (docs/scope.md#jobs-in-scope)."""
    later = [a.expires_ms for a in record.allocations.values()
             if a.live(now_ms) and a.expires_ms is not None]  # fmt: skip
    for booking in horizon.current(record.allocations.values(), now_ms, record.details):
        if not booking.by_bridge:  # the bridge's own bookings never time the job
            leaves = leaves_scope_ms(booking, horizon.scope.horizon_days, tz)
            later += [leaves] if leaves is not None else []
    return min(later) if later else None
