"""The facts the bridge keeps of ServiceM8 records: canonical values, not wire records.

The translation from each API's wire models into these lives with that API's client
(``bridge.servicem8.translate``); the rules read only these. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AllocationFacts:
    """What the bridge keeps of one ServiceM8 booking (its canonical state): a job allocation (a
    flexible booking: a date at most, in a window) or, with ``fixed``, a job activity booked from
    ``date_ms`` to ``end_ms`` exactly (docs/servicem8-api.md#bookings). A fixed booking has no
    completion: time worked is another record, never a booking."""

    uuid: str
    job_uuid: str
    staff_uuid: str | None
    active: bool
    date_ms: int | None  # allocation_date, UTC epoch ms (read in the account's timezone)
    window: tuple[int, int] | None  # allocation window start/end, minutes from midnight
    completed_ms: int | None
    expires_ms: int | None
    edited_ms: int | None  # edit_date; None when we wrote it and have not read it back
    by_bridge: bool = False  # created by the bridge from a Coredination resource
    fixed: bool = False  # a job activity (fixed booking) rather than a job allocation
    end_ms: int | None = None  # a fixed booking's end
    # ``edited_ms`` of the bridge's own last write, once read back: a change time that is the
    # bridge's, not a person's (the deletion rule counts only people's changes)
    own_ms: int | None = None

    def live(self, now_ms: int) -> bool:
        return self.active and not (self.expires_ms is not None and self.expires_ms <= now_ms)

    def same_state(self, other: AllocationFacts) -> bool:
        """Equal apart from the change times: a re-read of our own write is not a change."""
        times = {"edited_ms": None, "own_ms": None}
        return asdict(self) | times == asdict(other) | times

    @property
    def changed_by_person(self) -> bool:
        """Its last change is someone's, not the bridge's own write read back."""
        return self.edited_ms is not None and self.edited_ms != self.own_ms


@dataclass(frozen=True)
class JobFacts:
    """What the bridge keeps of one ServiceM8 job."""

    uuid: str
    active: bool
    number: str | None
    description: str | None
    address: str | None
    lat: float | None
    lng: float | None
    # ServiceM8's job status (``Quote``, ``Work Order``, ``Unsuccessful``, ``Completed``) and
    # category uuid, as scope reads them (docs/scope.md); None when not known
    status: str | None = None
    category_uuid: str | None = None
