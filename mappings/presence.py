"""Presence: how each side of a pair is reduced to one value the decision compares.

The unit of sync is a *pair*: one ServiceM8 job J with one staff member S, against the Coredination
job ``uuid5(ns, J)`` with the user U mapped to S. S's side is every booking of S on J, of both
kinds: flexible (job allocations) and fixed (job activities with ``activity_was_scheduled``). Both
sides are reduced to a ``Presence``:

==========  ======================================  =========================================
Presence    ServiceM8 (bookings of S on J)          Coredination (U's resource on the job)
==========  ======================================  =========================================
ABSENT      none live (deleted, expired, or none),  none, UNASSIGNED, DECLINED, CANCELED,
            or the job itself is deleted            INACTIVE
ASSIGNED    open flexible ones only, none dated     ASSIGNED
SCHEDULED   a live fixed one, or an open flexible   SCHEDULED, ACCEPTED, IN_TRANSIT,
            one with a date                         ON_STATION, STARTED, PAUSED
FINISHED    live flexible ones only, every one      FINISHED
            with a completion time
==========  ======================================  =========================================

"Live" is active and not past ``expiry_timestamp``; "open" is live and not completed (a finished
visit is history: next to an open booking it changes nothing). A fixed booking is always open: a
fixed booking whose end has passed still schedules the person (history does not unschedule
anyone), and time worked (``activity_was_recorded``) or automated activities are no bookings at
all. Coredination has no operation that finishes a resource, so a FINISHED ServiceM8 pair is in
step with a present Coredination resource; ServiceM8 has no completion on a fixed booking, so a
FINISHED Coredination resource is in step with bookings that are all finished or fixed
(``finish_in_step``). The deleted job is the job planner's reading (``mappings.plan``).

Under a horizon (``mappings.scope``) the ServiceM8 side is read from the person's bookings in
scope only (``current_presence``): history neither puts anyone on a job nor takes anyone off.

Pure: no I/O, and nothing here knows either API's wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from mappings.facts import AllocationFacts, JobFacts
from mappings.scope import Horizon, job_open


class Presence(StrEnum):
    ABSENT = "absent"
    ASSIGNED = "assigned"
    SCHEDULED = "scheduled"
    FINISHED = "finished"


CD_PRESENCE: dict[str, Presence] = {
    "UNASSIGNED": Presence.ABSENT,
    "DECLINED": Presence.ABSENT,
    "CANCELED": Presence.ABSENT,
    "INACTIVE": Presence.ABSENT,
    "ASSIGNED": Presence.ASSIGNED,
    "SCHEDULED": Presence.SCHEDULED,
    "ACCEPTED": Presence.SCHEDULED,
    "IN_TRANSIT": Presence.SCHEDULED,
    "ON_STATION": Presence.SCHEDULED,
    "STARTED": Presence.SCHEDULED,
    "PAUSED": Presence.SCHEDULED,
    "FINISHED": Presence.FINISHED,
}


def cd_presence(resource_state: str | None) -> Presence | None:
    """A Coredination resource state as a Presence; ``None`` for a state we do not know."""
    if resource_state is None:
        return Presence.ABSENT
    return CD_PRESENCE.get(resource_state.upper())


def sm8_presence(allocations: Iterable[AllocationFacts], now_ms: int) -> Presence:
    """Finished visits are history: a person with an open booking is as that booking says. A
    fixed booking is always open and always timed: it schedules the person."""
    live = [a for a in allocations if a.live(now_ms)]
    if not live:
        return Presence.ABSENT
    open_ = [a for a in live if a.fixed or a.completed_ms is None]
    if not open_:
        return Presence.FINISHED
    if any(a.fixed or a.date_ms is not None for a in open_):
        return Presence.SCHEDULED
    return Presence.ASSIGNED


def finish_in_step(allocations: Iterable[AllocationFacts], now_ms: int) -> bool:
    """Whether a person FINISHED in Coredination is in step with their bookings: every live one
    finished, or fixed (ServiceM8 has no completion on a fixed booking; it stays as it is)."""
    live = [a for a in allocations if a.live(now_ms)]
    return bool(live) and all(a.fixed or a.completed_ms is not None for a in live)


def pair_in_step(allocations: Iterable[AllocationFacts], cd: Presence, now_ms: int) -> bool:
    """Both sides of a pair in step, read from the bookings themselves."""
    bookings = list(allocations)
    if cd == Presence.FINISHED and finish_in_step(bookings, now_ms):
        return True
    return in_step(sm8_presence(bookings, now_ms), cd)


def in_step(sm8: Presence, cd: Presence) -> bool:
    if sm8 == cd:
        return True
    # Coredination cannot finish a resource through its API: a finished allocation is in step
    # with a user still present on the job.
    return sm8 == Presence.FINISHED and cd in (Presence.SCHEDULED, Presence.ASSIGNED)


def current_presence(
    allocations: Iterable[AllocationFacts],
    now_ms: int,
    horizon: Horizon,
    job: JobFacts | None,
    kept: Presence | None = None,
) -> Presence | None:
    """The ServiceM8 side of a pair under ``horizon`` (docs/scope.md#pairs): the presence of the
    person's live bookings in scope; ``None`` when the person has bookings on the job but none,
    live or gone, is in scope (the side is silent: history pushes nothing, and its deletion is
    no change). A booking in scope that was deleted or expired still speaks: the person is
    ABSENT; and so is a person with no booking on the job at all (none ever, or every one moved
    to someone else).

    ``kept``: the side's presence in the pair's snapshot. When only bookings leaving scope moved
    the presence (over every live booking it is still ``kept``), the side has not changed:
    ``kept`` stays, so a booking ageing out never unschedules anyone."""
    bookings = list(allocations)
    opened = job_open(job)
    if bookings and not any(horizon.admits(a, opened) for a in bookings):
        return None
    live = [a for a in bookings if a.live(now_ms)]
    presence = sm8_presence([a for a in live if horizon.admits(a, opened)], now_ms)
    if kept is not None and presence != kept and sm8_presence(live, now_ms) == kept:
        return kept
    return presence
