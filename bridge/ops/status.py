"""What ``sm8cd status`` and ``/metrics`` show. Reads Redis only, makes no API call."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.config import scope as scope_of
from bridge.ops.subscriptions import SUBSCRIBED
from bridge.process.runtime import Runtime
from bridge.store.activity import ActivityStore
from bridge.sync.context import CURSORS, SYSTEMS, polled
from bridge.sync.ingest import ALLOCATIONS, UNAVAILABLE


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
    objects = stores.activity.object_states(cursors)
    return {
        "connection": rt.settings.bridge_connection_id,
        "pull_booking": rt.settings.servicem8_pull_booking,
        # What is made now: ``auto`` makes fixed bookings while allocations are unavailable.
        "pull_booking_now": "fixed"
        if rt.settings.servicem8_pull_booking == "auto" and _unavailable(objects, ALLOCATIONS)
        else rt.settings.servicem8_pull_booking,
        "objects": objects,
        "blocked": _blocked(rt, now),
        "links": stores.jobs.count(),
        "staff_mapped": stores.staff.mapped_count(),
        "dirty_jobs": stores.jobs.dirty_count(),
        "catch_up": catch_up(*stores.work.catch_up(), now),
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
        "scope": scope_view(rt, now),
    }


# A backlog is shown as progress from this many jobs to sync: a few jobs waiting (a webhook's,
# one held by its budget) are the everyday, not a catch-up.
CATCH_UP_SHOWN = 10


def catch_up(done: int, left: int, since: float | None, now: float) -> dict[str, Any] | None:
    """A first sync's or backfill's progress: N of M jobs synced, and the time left at the rate
    since its first job was synced (None: no backlog worth showing)."""
    if since is None or left < CATCH_UP_SHOWN:
        return None
    took = max(0.0, now - since)
    rate = done / took if done and took > 0 else None
    return {
        "done": done,
        "of": done + left,
        "since": since,
        "per_second": round(rate, 2) if rate else None,
        "eta_seconds": round(left / rate) if rate else None,
    }


EXCLUDED_SHOWN = 50  # excluded jobs listed by name (all are counted)


def scope_view(rt: Runtime, now: float) -> dict[str, Any]:
    """What the connection syncs (docs/scope.md): its settings, the horizon as of now in the
    account's timezone (as the bridge last read it; none before), and the jobs excluded by
    hand, with who excluded each and when."""
    scope = scope_of(rt.settings)
    zone = rt.settings.servicem8_timezone or rt.stores.activity.known_timezone()
    horizon = None
    if zone:
        try:
            tz = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
        if tz is not None:
            start = scope.at(int(now * 1000), tz).start_ms
            horizon = datetime.fromtimestamp(start / 1000, tz).isoformat()
    excluded = rt.stores.scope.excluded()
    shown = sorted(excluded.items(), key=lambda kv: float(kv[1].get("at") or 0), reverse=True)
    return {
        "horizon_days": scope.horizon_days,
        "horizon": horizon,
        "timezone": zone,
        "job_statuses": [v.strip() for v in rt.settings.scope_job_statuses.split(",")]
        if scope.statuses
        else "*",
        "job_categories": sorted(scope.categories) or "*",
        "staff_left_out": sorted(scope.staff_left_out),
        "excluded_count": len(excluded),
        "excluded": dict(shown[:EXCLUDED_SHOWN]),
    }


def _unavailable(objects: dict[str, dict[str, Any]], name: str) -> bool:
    return (objects.get(name) or {}).get("state") == UNAVAILABLE


def _blocked(rt: Runtime, now: float) -> dict[str, dict[str, Any]]:
    """Operations refused for a missing scope (docs/how-it-works.md#refusals), by API: the
    scope to grant, why, and how long until one call tries again."""
    out: dict[str, dict[str, Any]] = {}
    for api in SYSTEMS:
        rows = rt.budget.blocks(api)
        if rows:
            out[api] = {
                operation: {
                    "scope": row.get("scope"),
                    "reason": row.get("reason"),
                    "seconds_left": round(max(0.0, float(row["until"]) - now), 1),
                }
                for operation, row in rows.items()
            }
    return out


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
