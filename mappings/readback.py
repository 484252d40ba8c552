"""The read-back rule: where Coredination may ignore a resource operation (``schedule`` or
``assign`` on a resource at work, docs/coredination-api.md#resources) or its answer was lost, the
bridge reads the job back and judges what it sees (``read_back``); a pair whose op Coredination
kept out is held as both sides are (``mappings.plan.hold``, with ``held_reason``). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mappings.planners import CdOp
from mappings.presence import Presence, cd_presence
from mappings.state import CdView

# Resource states at work: what ``schedule`` or ``assign`` does to them is not documented
# (docs/coredination-api.md#resources), so the bridge reads the job back after sending one to a
# resource the job already holds (the view may not know it is at work yet).
AT_WORK = frozenset({"ACCEPTED", "IN_TRANSIT", "ON_STATION", "STARTED", "PAUSED", "FINISHED"})
ABSENT_STATES = frozenset({"UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE"})  # no one there


@dataclass(frozen=True)
class ResourceOp:
    user: int
    op: CdOp
    state_after: str | None  # the user's resource state once done (None: removed)
    before: str | None = None  # the state it was planned against (None: no resource)

    @property
    def uncertain(self) -> bool:
        """Whether the op may not take: ``schedule`` or ``assign`` on a resource the job already
        holds. The view may say SCHEDULED of a resource the worker has meanwhile accepted or
        finished, so any resource there may be at work; a new one cannot be (nor costs a read)."""
        return (
            self.op in ("schedule", "assign")
            and self.before is not None
            and (self.before.upper() not in ABSENT_STATES)
        )


ReadBack = Literal["took", "ignored", "moved"]


def read_back(op: ResourceOp, seen: str | None) -> ReadBack:
    """What the job read back after ``op`` says of it: the user is where the op puts them
    (``took``), exactly as before (``ignored``: Coredination kept them), or elsewhere
    (``moved``: someone acted meanwhile; the bridge decides again with the fresh view)."""
    if cd_presence(seen) == (cd_presence(op.state_after) or Presence.ABSENT):
        return "took"
    if (seen or "").upper() == (op.before or "").upper():
        return "ignored"
    return "moved"


def held_reason(state: str | None, sm8: Presence) -> str:
    """Why a held pair stays as it is (``bridge status``): the return-visit rule."""
    state = (state or "").upper()
    if state == "FINISHED":
        return (
            "return visit: booked again in ServiceM8, but Coredination keeps the user FINISHED"
            " on this job; dispatch the visit in Coredination (held until either side changes)"
        )
    return (
        f"Coredination keeps the user {state[:20]} (at work) and did not take the change to"
        f" {sm8.value}; held until either side changes"
    )


def take_read(view: CdView, seen: CdView) -> None:
    """Fold a job just read (``seen``) into the view the sync holds: its resources as read, and
    the later of what was known and what the job shows for each change time. A Coredination
    without change stamps shows none, and the bridge's own last writes must still bound a
    deletion."""
    view.resources = seen.resources
    view.changed_ms = {u: max(view.changed_ms.get(u, 0), seen.changed_ms.get(u, 0))
                       for u in {*view.changed_ms, *seen.changed_ms}}  # fmt: skip
    view.modified_ms = max((t for t in (view.modified_ms, seen.modified_ms) if t is not None),
                           default=None)  # fmt: skip
