"""The decision for one pair: push ServiceM8's presence, pull Coredination's, or neither.

Conflicts: when both sides changed since the last agreed snapshot, the later change wins
(ServiceM8 ``edit_date`` vs Coredination event time, both as UTC epoch ms); a tie goes to the side
named by the tie rule (ServiceM8 by default). This module is the conflict rule alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mappings.presence import Presence, in_step
from mappings.state import PairSnapshot

TieRule = Literal["servicem8", "coredination"]


@dataclass(frozen=True)
class Side:
    presence: Presence
    changed_ms: int | None = None
    # ServiceM8's side only: in step with a person FINISHED in Coredination although its presence
    # is not FINISHED (its live bookings are finished or fixed: ``presence.finish_in_step``).
    finishable: bool = False


@dataclass(frozen=True)
class Decision:
    action: Literal["in_step", "push", "pull", "skip"]
    target: Presence | None = None
    reason: str = ""


IN_STEP = Decision("in_step")


def decide(
    snapshot: PairSnapshot | None, sm8: Side, cd: Side, tie: TieRule = "servicem8"
) -> Decision:
    """Push ServiceM8's presence to Coredination, pull Coredination's to ServiceM8, or neither.

    ========================  ==============================================================
    situation                 decision
    ========================  ==============================================================
    in step                   nothing
    no snapshot, CD absent    push ("new in ServiceM8")
    no snapshot, SM8 absent   pull ("new in Coredination")
    no snapshot, both differ  the later change
    only ServiceM8 changed    push
    only Coredination changed pull
    both changed              the later change; a tie goes to ``tie``
    ========================  ==============================================================
    """
    if in_step(sm8.presence, cd.presence) or (cd.presence == Presence.FINISHED and sm8.finishable):
        return IN_STEP
    if snapshot is None:
        # First sight: existence beats absence; two different presences go to the later change.
        if cd.presence == Presence.ABSENT:
            return Decision("push", sm8.presence, "new in ServiceM8")
        if sm8.presence == Presence.ABSENT:
            return Decision("pull", cd.presence, "new in Coredination")
        return _later(sm8, cd, tie, "first sight, both present")
    sm8_changed = sm8.presence != snapshot.sm8
    cd_changed = cd.presence != snapshot.cd
    if sm8_changed and not cd_changed:
        return Decision("push", sm8.presence, "changed in ServiceM8")
    if cd_changed and not sm8_changed:
        return Decision("pull", cd.presence, "changed in Coredination")
    return _later(sm8, cd, tie, "changed on both sides")


def _later(sm8: Side, cd: Side, tie: TieRule, why: str) -> Decision:
    left = sm8.changed_ms if sm8.changed_ms is not None else -1
    right = cd.changed_ms if cd.changed_ms is not None else -1
    if left > right or (left == right and tie == "servicem8"):
        return Decision("push", sm8.presence, f"{why}: ServiceM8 is later")
    return Decision("pull", cd.presence, f"{why}: Coredination is later")
