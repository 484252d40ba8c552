"""Operator views and actions: what ``bridge status`` and ``/metrics`` show (no API calls), and
the webhook subscriptions."""

from __future__ import annotations

import re
import time
from typing import Any

from bridge.config import Settings
from bridge.errors import ConfigError, Rejected
from bridge.log import get_logger
from bridge.runtime import Runtime
from bridge.servicem8.webhooks import SUBSCRIBED_FIELDS
from bridge.sync.context import CURSORS, SYSTEMS, polled

log = get_logger(__name__)


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
        "deferred": stores.work.deferred_count(),
        "paused": pauses,
        "budget": budget,
        "accounts": {api: rt.budget.accounts(api) for api in SYSTEMS},
        "cursors": {shown: cursors.get(name) for shown, name in CURSORS.items()},
        "subscriptions": {
            name: cursors.get(f"subscription:{name}")
            for name in [f"servicem8.{obj}" for obj in SUBSCRIBED_FIELDS]
        },
        "poll_age_seconds": {
            system: round(now - float(at), 1) if at else None
            for system in SYSTEMS
            for at in [cursors.get(polled(system))]
        },
        "counters": stores.activity.stats(),
    }


# --- webhook subscriptions ------------------------------------------------------------------------
def callback_urls(settings: Settings) -> dict[str, str]:
    """Where each system should post, token included (a secret: never print these whole)."""
    if not settings.webhook_public_url or settings.webhook_token is None:
        raise ConfigError("WEBHOOK_PUBLIC_URL and WEBHOOK_TOKEN are needed to subscribe webhooks")
    base = settings.webhook_public_url.rstrip("/")
    token = settings.webhook_token.get_secret_value()
    return {s: f"{base}/webhooks/{s}/{token}" for s in ("servicem8", "coredination")}


def masked(url: str) -> str:
    """A callback URL with its token (current or old) hidden."""
    return re.sub(r"(/webhooks/[A-Za-z0-9]+/)[^/?#]+", r"\1<WEBHOOK_TOKEN>", url)


def _ours(url: str, callback: str) -> bool:
    """Ours whatever its token: the same receiver and system (so a rotated token's old
    subscriptions are found too)."""
    return masked(url) == masked(callback)


def subscribe_webhooks(rt: Runtime) -> list[str]:
    """Subscribe ServiceM8 object webhooks (job activities, jobs, job allocations) and a
    Coredination job webhook to this bridge's receiver. Safe to repeat: existing subscriptions for
    the same URL are kept."""
    urls = callback_urls(rt.settings)
    connection = rt.settings.bridge_connection_id
    done = []
    for obj, fields in SUBSCRIBED_FIELDS.items():
        # Each object on its own: ServiceM8 refuses objects it cannot send (job allocations,
        # docs/servicem8-api.md#webhooks), and a refused one is polled as before. The key names
        # the connection, since a second subscription with the same key replaces the first.
        name = f"servicem8.{obj}"
        try:
            # ServiceM8 checks the URL by the challenge handshake before it answers.
            rt.sm8.subscribe_object(obj, fields, urls["servicem8"],
                                    unique_id=f"bridge-{connection}-{obj}"[:100])  # fmt: skip
        except Rejected as exc:
            why = f"ServiceM8 refused the subscription (HTTP {exc.status}): {exc}"[:200]
            rt.stores.activity.set_subscription(name, f"poll-only: {why}")
            log.info("webhooks.poll_only", object=obj, status=exc.status)
            done.append(f"servicem8 {obj} poll-only ({why})")
            continue
        rt.stores.activity.set_subscription(name, "active")
        done.append(f"servicem8 {obj}")
    hooks = rt.cd.list_webhooks()
    if not any(h.get("url") == urls["coredination"] for h in hooks):
        rt.cd.subscribe_webhook(urls["coredination"], channels=("job",))
    done.append("coredination job")
    return done


def list_webhooks(rt: Runtime) -> list[dict[str, str]]:
    rows = []
    for sub in rt.sm8.list_subscriptions():
        url = str(sub.get("callback_url") or sub.get("url") or "")
        rows.append({"system": "servicem8", "what": str(sub.get("object") or sub.get("event")),
                     "url": masked(url)})  # fmt: skip
    for hook in rt.cd.list_webhooks():
        rows.append({"system": "coredination", "what": ",".join(hook.get("channels") or []),
                     "url": masked(str(hook.get("url") or ""))})  # fmt: skip
    return rows


def unsubscribe_webhooks(rt: Runtime) -> list[str]:
    """Remove this bridge's subscriptions: those pointing at its receiver, with any token."""
    urls = callback_urls(rt.settings)
    done = []
    for sub in rt.sm8.list_subscriptions():
        url = str(sub.get("callback_url") or "")
        if _ours(url, urls["servicem8"]) and sub.get("object"):
            rt.sm8.unsubscribe(object=str(sub["object"]), callback_url=url)
            done.append(f"servicem8 {sub['object']}")
    for hook in rt.cd.list_webhooks():
        if _ours(str(hook.get("url") or ""), urls["coredination"]):
            rt.cd.delete_webhook(hook["id"])
            done.append("coredination job")
    return done
