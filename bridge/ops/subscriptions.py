"""The bridge's webhook subscriptions in both systems: subscribe, list, unsubscribe, and the
health check beat runs (docs/servicem8-api.md#webhooks).

ServiceM8 offers webhooks for some objects only, turns a subscription off after repeated failed
deliveries, and brings one back when it is posted again with the same key. So each object is
subscribed on its own, a refusal is recorded as "poll-only" for that object, and the health check
lists every subscription (``status=all``), records what ServiceM8 says of each of ours and posts
again the ones ServiceM8 turned off or lost. An object's poll stretches only while its own
subscription is active and its webhooks arrive (``bridge.sync.cycle``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from bridge.config import Settings
from bridge.errors import ApiError, ConfigError, Rejected, WebhooksRefused
from bridge.log import get_logger, redactor
from bridge.process.runtime import Runtime
from bridge.servicem8.webhooks import SUBSCRIBED_FIELDS

log = get_logger(__name__)

ACTIVE = "active"
POLL_ONLY = "poll-only"  # ServiceM8 refuses this object (or webhooks to this credential): polled
FAILED = "failed"  # it did not work this time (the receiver did not answer, …): tried again
SUBSCRIBED = [f"servicem8.{obj}" for obj in SUBSCRIBED_FIELDS]
# ServiceM8's answer for an object it offers no webhooks for (docs/servicem8-api.md#webhooks).
_OBJECT_REFUSED = re.compile(r"does not support subscription", re.IGNORECASE)


def callback_urls(settings: Settings) -> dict[str, str]:
    """Where each system should post, token included (a secret: never print these whole). An
    empty token (compose passes ``WEBHOOK_TOKEN=`` when it is unset) is no token."""
    token_set = settings.webhook_token is not None and settings.webhook_token.get_secret_value()
    if not settings.webhook_public_url or not token_set:
        raise ConfigError("WEBHOOK_PUBLIC_URL and WEBHOOK_TOKEN are needed to subscribe webhooks")
    assert settings.webhook_token is not None
    base = settings.webhook_public_url.rstrip("/")
    token = settings.webhook_token.get_secret_value()
    return {s: f"{base}/webhooks/{s}/{token}" for s in ("servicem8", "coredination")}


def masked(url: str) -> str:
    """A callback URL with its token (current or old) hidden."""
    return re.sub(r"(/webhooks/[A-Za-z0-9]+/)[^/?#]+", r"\1<WEBHOOK_TOKEN>", url)


def unique_id(connection: str, obj: str) -> str:
    """ServiceM8's create-or-update key: a second subscription with the same key replaces the
    first, so it names the connection (two connections on one account keep one each)."""
    return f"bridge-{connection}-{obj}"[:100]


def _ours(url: str, callback: str) -> bool:
    """Ours whatever its token: the same receiver and system (so a rotated token's old
    subscriptions are found too)."""
    return masked(url) == masked(callback)


def _flag(value: Any) -> bool:
    """ServiceM8 flags come as 1/0, "1"/"0" or booleans; a row without ``active`` is live."""
    return value is None or str(value).strip().lower() not in ("0", "false", "")


# --- subscribe, list, unsubscribe -------------------------------------------------------------
def _subscribe_servicem8(rt: Runtime, obj: str, callback: str) -> str:
    """Post one object's subscription and record the outcome: ``active``; ``poll-only: why``
    when ServiceM8 refuses the object, or webhooks to this credential (its polls carry it);
    ``failed: why`` when it did not work this time (the receiver did not answer the challenge,
    ServiceM8 did not answer): the health check posts it again. Returns the recorded state."""
    name = f"servicem8.{obj}"
    try:
        # ServiceM8 checks the URL by the challenge handshake before it answers.
        rt.sm8.subscribe_object(
            obj,
            SUBSCRIBED_FIELDS[obj],
            callback,
            unique_id=unique_id(rt.settings.bridge_connection_id, obj),
        )
    except ApiError as exc:
        why = masked(redactor.text(str(exc)))
        if isinstance(exc, Rejected) and _OBJECT_REFUSED.search(str(exc)):
            state = f"{POLL_ONLY}: ServiceM8 refused the subscription (HTTP {exc.status}): {why}"
        elif isinstance(exc, WebhooksRefused):  # never an API pause (bridge.http.transport)
            state = (f"{POLL_ONLY}: webhooks unavailable for this credential "
                     f"(HTTP {exc.status}): {why}")  # fmt: skip
        else:
            state = f"{FAILED}: {why}"
        rt.stores.activity.set_subscription(name, state[:200])
        log.info("webhooks.not_subscribed", object=obj, status=exc.status, state=state[:40])
        return state[:200]
    rt.stores.activity.set_subscription(name, ACTIVE)
    return ACTIVE


def _subscribe_coredination(rt: Runtime, callback: str) -> str:
    try:
        hooks = rt.cd.list_webhooks()
        if not any(h.get("url") == callback for h in hooks):
            rt.cd.subscribe_webhook(callback, channels=("job",))
    except WebhooksRefused as exc:
        why = masked(redactor.text(str(exc)))
        return f"{POLL_ONLY}: webhooks unavailable for this credential: {why}"[:200]
    except ApiError as exc:
        return f"{FAILED}: {masked(redactor.text(str(exc)))}"[:200]
    return ACTIVE


def subscribe_webhooks(rt: Runtime) -> list[str]:
    """Subscribe ServiceM8 object webhooks (job activities, jobs, job allocations) and a
    Coredination job webhook to this bridge's receiver. Safe to repeat: existing subscriptions for
    the same URL are kept. Each object on its own: ServiceM8 refuses objects it cannot send (job
    allocations, docs/servicem8-api.md#webhooks), and a refused one is polled as before. One line
    per subscription: ``servicem8 job``, or with its state after it when not active
    (``failed: …`` tells the caller something it was asked to do did not happen)."""
    urls = callback_urls(rt.settings)
    done = []
    for obj in SUBSCRIBED_FIELDS:
        state = _subscribe_servicem8(rt, obj, urls["servicem8"])
        done.append(f"servicem8 {obj}" if state == ACTIVE else f"servicem8 {obj} {state}")
    state = _subscribe_coredination(rt, urls["coredination"])
    done.append("coredination job" if state == ACTIVE else f"coredination job {state}")
    return done


def failed(done: list[str]) -> list[str]:
    """The lines of ``subscribe_webhooks`` that did not work (as opposed to an object refused)."""
    return [line for line in done if f" {FAILED}: " in line]


def list_webhooks(rt: Runtime) -> list[dict[str, str]]:
    rows = []
    for sub in rt.sm8.list_subscriptions():
        url = str(sub.get("callback_url") or sub.get("url") or "")
        rows.append(
            {
                "system": "servicem8",
                "what": str(sub.get("object") or sub.get("event")),
                "url": masked(url),
                "active": "yes" if _flag(sub.get("active")) else "no",
                "last_failure_reason": str(sub.get("last_failure_reason") or ""),
            }
        )
    for hook in rt.cd.list_webhooks():
        rows.append(
            {
                "system": "coredination",
                "what": ",".join(hook.get("channels") or []),
                "url": masked(str(hook.get("url") or "")),
                "active": "yes",
                "last_failure_reason": "",
            }
        )
    return rows


def unsubscribe_webhooks(rt: Runtime) -> list[str]:
    """Remove this bridge's subscriptions: those pointing at its receiver, with any token, each
    deleted by its uuid."""
    urls = callback_urls(rt.settings)
    done = []
    for sub in rt.sm8.list_subscriptions():
        url = str(sub.get("callback_url") or "")
        if _ours(url, urls["servicem8"]) and sub.get("object") and sub.get("uuid"):
            rt.sm8.delete_subscription(str(sub["uuid"]))
            obj = str(sub["object"])
            rt.stores.activity.forget_subscription(f"servicem8.{obj}")
            done.append(f"servicem8 {obj}")
    for hook in rt.cd.list_webhooks():
        if _ours(str(hook.get("url") or ""), urls["coredination"]):
            rt.cd.delete_webhook(hook["id"])
            done.append("coredination job")
    return done


# --- health -------------------------------------------------------------------------------------
def _our_rows(rows: list[dict[str, Any]], callback: str) -> dict[str, dict[str, Any]]:
    """Our subscription per object; where a rotated token left two, the live one, and of equals
    the one with the current URL."""
    ours: dict[str, dict[str, Any]] = {}
    for row in rows:
        obj = str(row.get("object") or "").lower()
        if obj not in SUBSCRIBED_FIELDS or not _ours(str(row.get("callback_url") or ""), callback):
            continue

        def rank(r: Mapping[str, Any]) -> tuple[bool, bool]:
            return _flag(r.get("active")), r.get("callback_url") == callback

        if obj not in ours or rank(row) > rank(ours[obj]):
            ours[obj] = row
    return ours


def servicem8_subscriptions(rt: Runtime) -> dict[str, dict[str, Any]]:
    """This bridge's ServiceM8 subscriptions as ServiceM8 lists them now, by object (one call,
    nothing written; ``sm8cd doctor``)."""
    return _our_rows(rt.sm8.list_subscriptions(), callback_urls(rt.settings)["servicem8"])


def resubscribe_servicem8(rt: Runtime, objects: list[str]) -> dict[str, str]:
    """Post this bridge's subscription of each object again (after ``sm8cd probe``'s scratch
    subscriptions, which ServiceM8 may let replace ours): the state recorded, by object."""
    callback = callback_urls(rt.settings)["servicem8"]
    return {obj: _subscribe_servicem8(rt, obj, callback) for obj in objects}


def coredination_subscribed(rt: Runtime) -> bool:
    """Coredination lists a webhook to this bridge's receiver (one call, nothing written)."""
    callback = callback_urls(rt.settings)["coredination"]
    return any(_ours(str(h.get("url") or ""), callback) for h in rt.cd.list_webhooks())


def row_active(row: Mapping[str, Any]) -> bool:
    return _flag(row.get("active"))


def _stamp(value: Any) -> str:
    text = str(value or "")
    return "" if text.startswith("0000-00-00") else text


def check_subscriptions(rt: Runtime, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Beat's health check of this bridge's ServiceM8 subscriptions: one API call (the list)
    while all is well. Records each one's ``active``, ``last_failure_reason`` and
    ``last_failure_at`` (shown by ``sm8cd status`` and ``/metrics``), and posts again every one
    of ours that ServiceM8 deactivated or lost, or lists with other fields than the rules read.
    An object refused as poll-only, or never subscribed, is left alone. Returns what it
    recorded, by object name."""
    now = time.time() if now is None else now
    activity = rt.stores.activity
    if not rt.settings.webhook_public_url or rt.settings.webhook_token is None:
        return {}
    callback = callback_urls(rt.settings)["servicem8"]
    try:
        rows = _our_rows(rt.sm8.list_subscriptions(), callback)
    except WebhooksRefused as exc:
        return _refused_to_credential(rt, exc)
    recorded: dict[str, dict[str, Any]] = {}
    for obj in SUBSCRIBED_FIELDS:
        name = f"servicem8.{obj}"
        state, row = activity.subscription(name), rows.get(obj)
        if row is None and (state is None or state.startswith(POLL_ONLY)):
            continue
        health: dict[str, Any] = {
            "active": row is not None and _flag(row.get("active")),
            "last_failure_reason": masked(
                redactor.text(str((row or {}).get("last_failure_reason") or ""))
            )[:200],
            "last_failure_at": _stamp((row or {}).get("last_failure_at")),
            "checked_at": now,
        }
        if row is None:
            health["last_failure_reason"] = "not in ServiceM8's list of subscriptions"
        if not health["active"]:
            health = _reactivate(rt, obj, callback, health, now)
        elif row is not None and _stale_fields(row, obj):
            health = _post_fields(rt, obj, callback, health, now)
        else:
            activity.set_subscription(name, ACTIVE)
        activity.set_subscription_health(name, health)
        recorded[name] = health
    return recorded


def _stale_fields(row: Mapping[str, Any], obj: str) -> bool:
    """ServiceM8 lists the subscription with other fields than the rules read now (a field
    added since it was posted). A row that lists no fields is not compared."""
    listed = row.get("fields")
    if isinstance(listed, str):
        names = {f.strip() for f in listed.split(",") if f.strip()}
    elif isinstance(listed, list):
        names = {str(f).strip() for f in listed if str(f).strip()}
    else:
        return False
    return bool(names) and names != set(SUBSCRIBED_FIELDS[obj])


def _post_fields(
    rt: Runtime, obj: str, callback: str, health: dict[str, Any], now: float
) -> dict[str, Any]:
    """Post an active subscription again with the fields the rules read (its key replaces it),
    so a field added to ``SUBSCRIBED_FIELDS`` needs no manual re-subscribe."""
    log.info("webhooks.subscription_fields_changed", object=obj)
    if _subscribe_servicem8(rt, obj, callback) != ACTIVE:
        rt.stores.activity.set_subscription(f"servicem8.{obj}", ACTIVE)  # the old one still works
        return {**health, "fields_update_refused_at": now}
    rt.stores.activity.count({"webhook.servicem8.fields_updated": 1})
    return {**health, "fields_updated_at": now}


def _refused_to_credential(rt: Runtime, exc: WebhooksRefused) -> dict[str, dict[str, Any]]:
    """ServiceM8 refused to list subscriptions to this credential: every object the bridge
    subscribes is polled only (its poll keeps its own interval), shown in ``sm8cd status``;
    the API is not paused, and the next check asks again."""
    why = masked(redactor.text(str(exc)))
    state = f"{POLL_ONLY}: webhooks unavailable for this credential (HTTP {exc.status}): {why}"
    for obj in SUBSCRIBED_FIELDS:
        rt.stores.activity.set_subscription(f"servicem8.{obj}", state[:200])
    log.warning("webhooks.refused_to_credential", status=exc.status, reason=exc.reason)
    return {}


def _reactivate(
    rt: Runtime, obj: str, callback: str, health: dict[str, Any], now: float
) -> dict[str, Any]:
    """Post the subscription again (ServiceM8 reactivates one posted again with its key). While
    that fails, for instance because the receiver does not answer the challenge, the object is
    recorded as inactive, so its poll keeps its own interval."""
    name = f"servicem8.{obj}"
    reason = health["last_failure_reason"] or "deactivated by ServiceM8"
    rt.stores.activity.set_subscription(name, f"inactive: {reason}"[:200])
    rt.stores.activity.set_subscription_health(name, health)
    log.warning("webhooks.subscription_inactive", object=obj, reason=reason)
    state = _subscribe_servicem8(rt, obj, callback)
    if state != ACTIVE:
        # Refused now: an API change or a receiver that does not answer the challenge.
        rt.stores.activity.set_subscription(name, f"inactive: {reason}; re-post refused"[:200])
        rt.stores.activity.count({"webhook.servicem8.repost_refused": 1})
        why = state.removeprefix(f"{POLL_ONLY}: ").removeprefix(f"{FAILED}: ")
        return {**health, "repost_refused": why}
    rt.stores.activity.count({"webhook.servicem8.reactivated": 1})
    log.info("webhooks.subscription_reactivated", object=obj)
    return {**health, "active": True, "reactivated_at": now}
