"""What ``sm8cd status`` and ``/metrics`` show. Reads Redis only, makes no API call."""

from __future__ import annotations

import time
from typing import Any

from bridge.ops.subscriptions import SUBSCRIBED
from bridge.process.runtime import Runtime
from bridge.store.activity import ActivityStore
from bridge.sync.context import CURSORS, SYSTEMS, polled


def status(rt: Runtime) -> dict[str, Any]:
    stores = rt.stores
    now = time.time()
    pauses = {}
    for api in SYSTEMS:
        pause = rt.budget.pause(api)
        if pause is not None:
            pauses[api] = {
                "kind": pause["kind"],
                "reason": pause["reason"],
                "seconds_left": round(max(0.0, float(pause["until"]) - now), 1),
            }
    budget = {
        api: [
            {"window": u.window, "limit": u.limit, "used": u.used, "frees_in": round(u.frees_in, 1)}
            for u in rows
        ]
        for api, rows in rt.budget.usage().items()
    }
    pending = stores.parked.pending()
    invalid = stores.parked.invalid()
    cursors = stores.activity.cursors()
    return {
        "connection": rt.settings.bridge_connection_id,
        "pull_booking": rt.settings.servicem8_pull_booking,
        "links": stores.jobs.count(),
        "staff_mapped": stores.staff.mapped_count(),
        "dirty_jobs": stores.jobs.dirty_count(),
        "pending": len(pending),
        "pending_examples": [
            {"pair": key, "reason": value["reason"]} for key, value in list(pending.items())[:10]
        ],
        "invalid_records": len(invalid),
        "invalid_examples": [
            {"record": key, "reason": value["reason"]} for key, value in list(invalid.items())[:10]
        ],
        "dead_letters": stores.work.dead_letter_count(),
        "failed_jobs": {
            job: {"reason": value["reason"], "since": value["since"], "dlq": value["dlq"]}
            for job, value in list(stores.work.failed_jobs().items())[:20]
        },
        "deferred": stores.work.deferred_count(),
        "paused": pauses,
        "budget": budget,
        "accounts": {api: rt.budget.accounts(api) for api in SYSTEMS},
        "cursors": {shown: cursors.get(name) for shown, name in CURSORS.items()},
        "subscriptions": {
            name: _subscription(stores.activity, cursors, name, now) for name in SUBSCRIBED
        },
        "poll_age_seconds": {
            system: round(now - float(at), 1) if at else None
            for system in SYSTEMS
            for at in [cursors.get(polled(system))]
        },
        "counters": stores.activity.stats(),
        "dialect": _dialect(stores.activity.probe(), now),
        "poll_plan": stores.activity.poll_plan(),
    }


def _subscription(
    activity: ActivityStore, cursors: dict[str, str], name: str, now: float
) -> dict[str, Any]:
    """One object's webhook subscription: the state the bridge acts on (``active``,
    ``poll-only: …``, ``inactive: …``, or None when never subscribed), what the last health check
    read from ServiceM8, and how long ago a webhook about the object last arrived."""
    health = activity.subscription_health(name) or {}
    delivered = cursors.get(f"webhook:{name}")
    checked = health.get("checked_at")
    return {
        "state": cursors.get(f"subscription:{name}"),
        "active": health.get("active"),
        "last_failure_reason": health.get("last_failure_reason") or None,
        "last_failure_at": health.get("last_failure_at") or None,
        "last_delivery_seconds_ago": round(now - float(delivered), 1) if delivered else None,
        "checked_seconds_ago": round(now - float(checked), 1) if checked else None,
    }


def _dialect(found: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """The readings ``sm8cd probe`` stored for this account, or a note that there are none."""
    if found is None:
        return {"probed": False, "note": "not probed: the bridge assumes the harder reading of "
                                         "every open question (run 'sm8cd probe')"}  # fmt: skip
    return {
        "probed": True,
        "probed_seconds_ago": round(now - float(found.get("probed_at") or now), 1),
        "writes": bool(found.get("writes")),
        **(found.get("dialect") or {}),
        "left_behind": found.get("left_behind") or [],
    }
