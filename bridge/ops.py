"""Read-only views for operators: what ``bridge status`` and ``/metrics`` show. No API calls."""

from __future__ import annotations

import time
from typing import Any

from bridge.runtime import Runtime
from bridge.sync.engine import CURSOR_CD_JOBS, CURSOR_SM8_ALLOCATIONS, CURSOR_SM8_JOBS


def status(rt: Runtime) -> dict[str, Any]:
    store = rt.store
    now = time.time()
    pauses = {}
    for api in ("servicem8", "coredination"):
        pause = store.pause(api)
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
    pending = store.pending()
    return {
        "connection": rt.settings.bridge_connection_id,
        "links": store.count_keys("job:*"),
        "staff_mapped": len(store.staff_map().s2u),
        "dirty_jobs": len(store.dirty()),
        "pending": len(pending),
        "pending_examples": [
            {"pair": key, "reason": value["reason"]} for key, value in list(pending.items())[:10]
        ],
        "dead_letters": store.dead_letter_count(),
        "deferred": store.deferred_count(),
        "paused": pauses,
        "budget": budget,
        "cursors": {
            "servicem8.joballocation": store.cursor(CURSOR_SM8_ALLOCATIONS),
            "servicem8.job": store.cursor(CURSOR_SM8_JOBS),
            "coredination.job": store.cursor(CURSOR_CD_JOBS),
        },
        "counters": store.stats(),
    }
