"""``sm8cd probe --writes`` and the bridge's own ServiceM8 subscriptions (docs/probe.md): whether
the probe's scratch subscriptions replaced them, and posting them again afterwards."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.ops.subscriptions import resubscribe_servicem8, row_active, servicem8_subscriptions
from bridge.probe._common import Report
from bridge.process.runtime import Runtime

QUESTION = "Does a second subscription to an object leave the bridge's own in place?"


def replaced_objects(rt: Runtime, ours: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Objects whose subscription of the bridge's the scratch ones replaced (gone from the list,
    under another uuid, or no longer active)."""
    now = servicem8_subscriptions(rt)
    return [obj for obj, row in sorted(ours.items())
            if obj not in now or now[obj].get("uuid") != row.get("uuid")
            or (row_active(row) and not row_active(now[obj]))]  # fmt: skip


def subscribe_ours_again(
    rt: Runtime, report: Report, ours: Mapping[str, Mapping[str, Any]], replaced: list[str]
) -> None:
    """The bridge's own subscriptions are posted again whatever ServiceM8 did (their key
    replaces each with itself), and what it did is recorded as ``subscriptions_coexist``."""
    if not ours:
        saw, why = "the bridge has no subscription to compare", "subscribe, then probe again"
        report.add("servicem8", "subscriptions_coexist", QUESTION, saw, None, dialect=False,
                   why=why)  # fmt: skip
        return
    states = resubscribe_servicem8(rt, sorted(ours))
    back = servicem8_subscriptions(rt)
    for obj in sorted(ours):
        if obj not in back or not row_active(back[obj]):
            report.left_behind.append(
                f"the bridge's servicem8 {obj} subscription ({states[obj][:80]}): run "
                "'sm8cd webhooks subscribe'"
            )
    saw = (f"replaced the bridge's {', '.join(replaced)}; subscribed again" if replaced
           else "the bridge's subscriptions stayed; posted again all the same")  # fmt: skip
    report.add("servicem8", "subscriptions_coexist", QUESTION, saw, not replaced, dialect=False)
