"""The webhook receiver, ``/healthz`` and ``/metrics`` (FastAPI under uvicorn).

A webhook view verifies, enqueues and answers; nothing else (thin edges). Deliveries are
*hints*: each names a record, and the queued task re-reads it through the REST API, so a forged,
lost, duplicated or reordered delivery can delay a change but never corrupt one.

- ServiceM8 documents no signature (docs/servicem8-api.md#webhooks), so the callback URL carries a
  secret token (``/webhooks/servicem8/{WEBHOOK_TOKEN}``), compared in constant time. A wrong or
  missing token is 401 and enqueues nothing. Coredination's signing is undocumented
  (docs/coredination-api.md#webhooks): same scheme.
- ServiceM8's ``mode=subscribe`` handshake is answered with the challenge alone.
- Bodies over ``WEBHOOK_MAX_BODY_BYTES`` are 413, media types other than JSON, form, JWT or plain
  text are 415, unreadable bodies are 400; unknown objects and events are 200 and ignored.
- Deliveries are de-duplicated in Redis by (record, change stamp) for ``WEBHOOK_DEDUPE_SECONDS``
  (deliveries with no stamp: by body, for ten minutes). If enqueueing fails the mark is undone and
  the answer is 503, so a redelivery is not dropped.
- The token never reaches a log line: uvicorn's access log (which prints paths) is off and the
  bridge logs its own ``webhook.received`` event without the path.
- ``/metrics`` answers a scrape bearing ``METRICS_TOKEN``, or with it unset loopback clients
  alone (``bridge/web/metrics.py``): the port is public, and its figures are the operator's.

With ``SERVICEM8_OAUTH_*`` set it also serves the ServiceM8 add-on's activation pages
(``bridge/web/activation.py``).

Everything blocking (Redis, the broker) runs in the thread pool, so the event loop only reads
bodies and answers well inside ServiceM8's 10-second limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.concurrency import run_in_threadpool

from bridge.config import Settings
from bridge.connections import ConnectionRegistry, SecretBox
from bridge.coredination.webhooks import coredination_hints
from bridge.log import get_logger
from bridge.ops.fleet_status import fleet_metrics
from bridge.process.runtime import Runtime
from bridge.queues import (
    READ_HINTS,
    WEBHOOK_COREDINATION_JOB,
    WEBHOOK_SERVICEM8_ACTIVITY,
    WEBHOOK_SERVICEM8_ALLOCATION,
    WEBHOOK_SERVICEM8_JOB,
)
from bridge.servicem8.webhooks import handshake, servicem8_hints
from bridge.store import ALIVE_SECONDS, Stores
from bridge.store.hints import Arrival
from bridge.store.keys import FleetKeys
from bridge.web.activation import activation_for, add_activation_routes
from bridge.web.fleet import Receivers
from bridge.web.metrics import metrics_refusal
from mappings.stamps import SM8_STAMP
from mappings.webhooks import BadPayload, Hint, Parsed, decode_body

log = get_logger(__name__)

TASKS = {
    "servicem8.joballocation": WEBHOOK_SERVICEM8_ALLOCATION,
    "servicem8.jobactivity": WEBHOOK_SERVICEM8_ACTIVITY,
    "servicem8.job": WEBHOOK_SERVICEM8_JOB,
    "coredination.job": WEBHOOK_COREDINATION_JOB,
}
PARSERS: dict[str, Callable[[Any], Parsed]] = {
    "servicem8": servicem8_hints,
    "coredination": coredination_hints,
}
MEDIA_TYPES = {
    "",
    "application/json",
    "application/x-www-form-urlencoded",
    "application/jwt",
    "text/plain",
}
UNSTAMPED_DEDUPE_SECONDS = 600


class Send(Protocol):
    """Queue a task (``bridge.queues.Enqueuer.send``)."""

    def __call__(
        self, task: str, args: list[str], /, *, countdown: float | None = None
    ) -> None: ...


@dataclass
class Reply:
    status: int
    body: dict[str, Any] | str

    def response(self) -> Response:
        if isinstance(self.body, str):
            return PlainTextResponse(self.body, status_code=self.status)
        return JSONResponse(self.body, status_code=self.status)


def _changed_at(stamp: str) -> str:
    """The change time a ServiceM8 hint's stamp starts with (``time|fields``), or ""."""
    head = stamp.split("|", 1)[0].strip()
    return head if SM8_STAMP.match(head) else ""


class Receiver:
    """The webhook logic, apart from HTTP: token, parse, de-duplicate, enqueue."""

    def __init__(
        self, settings: Settings, stores: Stores, send: Send, connection: str | None = None
    ) -> None:
        """``settings`` hold the token (a registry connection's own, ``Connection.settings``);
        ``connection``: the registry connection it receives for (None: the deployment's)."""
        token = settings.webhook_token
        self.token = token.get_secret_value().encode() if token is not None else None
        self.settings = settings
        self.activity = stores.activity
        self.hints = stores.hints
        self.send = send
        self.connection = connection
        self.active = True  # False: a paused or unpaired connection's deliveries are dropped

    def authentic(self, token: str | None) -> bool:
        if self.token is None or token is None:
            return False
        return hmac.compare_digest(token.encode(), self.token)

    def handle(self, source: str, raw: bytes, content_type: str) -> Reply:
        """Everything after the token check and the body limits (run in the thread pool)."""
        if not self.active:  # its poll catches the change once it is active again
            self.activity.count({f"webhook.{source}.ignored": 1})
            return Reply(200, {"enqueued": 0, "duplicates": 0,
                               "ignored": ["connection not active"]})  # fmt: skip
        try:
            body = decode_body(raw, content_type)
            challenge = handshake(body) if source == "servicem8" else None
            if challenge is not None:
                log.info("webhook.handshake", source=source)
                return Reply(200, challenge.challenge)
            parsed = PARSERS[source](body)
        except BadPayload as exc:
            return self.unusable(source, str(exc))
        enqueued, duplicates = 0, 0
        for hint in parsed.hints:
            delivery = self._delivery_key(hint, raw)
            ttl = self.settings.webhook_dedupe_seconds if hint.stamp else UNSTAMPED_DEDUPE_SECONDS
            if not self.activity.first_delivery(delivery, ttl):
                duplicates += 1
                continue
            try:
                self._queue(hint)
            except Exception as exc:
                # Answered 2xx all the same (ServiceM8 turns off a subscription whose deliveries
                # keep failing): the poll catches the change, and the metric counts it.
                self.activity.forget_delivery(delivery)
                self.activity.count({f"webhook.{source}.enqueue_failed": 1})
                log.error("webhook.enqueue_failed", source=source, error=type(exc).__name__)
                return Reply(202, {"enqueued": enqueued, "error": "not queued; the poll will "
                                   "catch the change"})  # fmt: skip
            enqueued += 1
        if parsed.hints:  # per system, and per object (its own poll may then stretch)
            self.activity.note_webhook([source, *{h.kind for h in parsed.hints}], time.time())
        self.activity.count(
            {
                f"webhook.{source}.enqueued": enqueued,
                f"webhook.{source}.duplicate": duplicates,
                f"webhook.{source}.ignored": len(parsed.ignored),
            }
        )
        log.info(
            "webhook.received",
            source=source,
            enqueued=enqueued,
            duplicates=duplicates,
            ignored=parsed.ignored[:5] or None,
        )
        return Reply(200, {"enqueued": enqueued, "duplicates": duplicates,
                           "ignored": parsed.ignored[:20]})  # fmt: skip

    def _queue(self, hint: Hint) -> None:
        """One task per hint, or for ServiceM8 with coalescing on, the hint gathered with the
        others of its object (``bridge.store.hints``): a lone hint is read at once, a burst's
        by one reader per window."""
        window = self.settings.hint_coalesce_ms
        if hint.kind == "coredination.job":
            self.send(TASKS[hint.kind], [hint.ref, *hint.event])
        elif window <= 0:
            self.send(TASKS[hint.kind], [hint.ref])
        else:
            arrival = self.hints.add(hint.kind, hint.ref, _changed_at(hint.stamp), window)
            if arrival is not Arrival.NONE:
                wait = window / 1000 if arrival is Arrival.AFTER_WINDOW else None
                self.send(READ_HINTS, [hint.kind.removeprefix("servicem8.")], countdown=wait)

    def unusable(self, source: str, reason: str) -> Reply:
        """An authenticated delivery the bridge cannot use (unreadable, too large, another media
        type): counted as ``rejected`` and answered 200, since ServiceM8 deactivates a
        subscription whose deliveries keep failing; the poll catches whatever it was about."""
        with contextlib.suppress(redis.RedisError):  # uncounted then; the log line still tells
            self.activity.count({f"webhook.{source}.rejected": 1})
        log.warning("webhook.rejected", source=source, reason=reason)
        return Reply(200, {"enqueued": 0, "duplicates": 0, "ignored": [reason]})

    @staticmethod
    def _delivery_key(hint: Hint, raw: bytes) -> str:
        stamp = hint.stamp or "body:" + hashlib.sha256(raw).hexdigest()
        return hashlib.sha256(f"{hint.kind}|{hint.ref}|{stamp}".encode()).hexdigest()[:32]


class _Body(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Body(413, f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Body(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def health(runtime: Runtime, now: float | None = None) -> tuple[bool, dict[str, Any]]:
    """Redis reachable, beat holding its lock (so ticking), a worker heartbeat in the last
    ``ALIVE_SECONDS``."""
    now = time.time() if now is None else now
    checks: dict[str, Any] = {}
    try:
        runtime.stores.activity.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any failure to answer is "down", whatever the client raised
        checks["redis"] = f"down ({type(exc).__name__})"
        return False, checks
    checks["beat"] = (
        "ok" if runtime.stores.activity.beat_alive() else "no beat holds the schedule lock"
    )
    alive = {
        w: t for w, t in runtime.stores.activity.live_workers().items() if now - t < ALIVE_SECONDS
    }
    checks["workers"] = len(alive)
    healthy = checks["beat"] == "ok" and bool(alive)
    return healthy, checks


class StatusCollector:
    """Prometheus metrics read from Redis at scrape time (every process's work shows, not only
    this one's). Makes no API call."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # The registry's public part only (no key is decrypted for metrics).
        keys = FleetKeys.for_deployment(runtime.lanes)
        self.fleet = ConnectionRegistry(runtime.redis, SecretBox(()), keys=keys)

    def collect(self) -> Sequence[Metric]:
        from bridge.ops.status import status

        data = status(self.runtime)
        gauges: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            gauges.append(g)

        gauge("bridge_links", "Linked ServiceM8 jobs.", data["links"])
        gauge("bridge_staff_mapped", "ServiceM8 staff mapped to Coredination users.",
              data["staff_mapped"])  # fmt: skip
        gauge("bridge_pending_mappings", "Pairs parked until their staff member is mapped.",
              data["pending"])  # fmt: skip
        gauge("bridge_dead_letters", "Operations given up on (sm8cd dlq list).",
              data["dead_letters"])  # fmt: skip
        gauge("bridge_deferred", "Tasks waiting for budget or a long retry.", data["deferred"])
        gauge("bridge_invalid_records", "Records an API returned that cannot be read, parked.",
              data["invalid_records"])  # fmt: skip
        gauge("bridge_dirty_jobs", "Jobs with changes not yet synced.", data["dirty_jobs"])
        # The same heartbeats and lock /healthz reads (see health()).
        activity, now = self.runtime.stores.activity, time.time()
        alive = sum(1 for t in activity.live_workers().values() if now - t < ALIVE_SECONDS)
        gauge("bridge_live_workers", f"Workers with a heartbeat in the last {ALIVE_SECONDS} s.",
              alive)  # fmt: skip
        gauge("bridge_beat_up", "1 while a beat holds the schedule lock (celery-redbeat), else 0.",
              1.0 if activity.beat_alive() else 0.0)  # fmt: skip
        lag = GaugeMetricFamily(
            "bridge_cursor_lag_seconds",
            "Seconds since the last complete poll of each system (its cursor covers changes up "
            "to then).",
            labels=["system"],
        )
        for system, age in data["poll_age_seconds"].items():
            if age is not None:
                lag.add_metric([system], age)
        gauges.append(lag)
        used = GaugeMetricFamily("bridge_budget_used", "API calls taken in the current window.",
                                 labels=["api", "window"])  # fmt: skip
        limit = GaugeMetricFamily("bridge_budget_limit", "API calls allowed per window.",
                                  labels=["api", "window"])  # fmt: skip
        for api, rows in data["budget"].items():
            for row in rows:
                used.add_metric([api, row["window"]], row["used"])
                limit.add_metric([api, row["window"]], row["limit"])
        gauges += [used, limit]
        paused = GaugeMetricFamily("bridge_api_paused", "1 while an API is paused (429, auth).",
                                   labels=["api"])  # fmt: skip
        for api in ("servicem8", "coredination"):
            paused.add_metric([api], 1.0 if api in data["paused"] else 0.0)
        gauges.append(paused)
        subscribed = GaugeMetricFamily(
            "bridge_webhook_subscription_active",
            "1 while ServiceM8 shows the bridge's subscription for the object active, 0 while it "
            "is deactivated or missing (read by the health check).",
            labels=["object"],
        )
        delivered = GaugeMetricFamily(
            "bridge_webhook_last_delivery_age_seconds",
            "Seconds since a webhook about the object last arrived.",
            labels=["object"],
        )
        for name, sub in data["subscriptions"].items():
            if sub["active"] is not None:
                subscribed.add_metric([name], 1.0 if sub["active"] else 0.0)
            if sub["last_delivery_seconds_ago"] is not None:
                delivered.add_metric([name], sub["last_delivery_seconds_ago"])
        gauges += [subscribed, delivered]
        syncs = CounterMetricFamily("bridge_sync", "Sync outcomes by direction.",
                                    labels=["direction", "outcome"])  # fmt: skip
        hooks = CounterMetricFamily("bridge_webhooks", "Webhook deliveries by source and result.",
                                    labels=["source", "result"])  # fmt: skip
        for name, value in sorted(data["counters"].items()):
            parts = name.split(".")
            if parts[0] == "webhook" and len(parts) == 3:
                hooks.add_metric(parts[1:], value)
            elif len(parts) == 2:
                syncs.add_metric(parts, value)
        return [*gauges, syncs, hooks, *fleet_metrics(self.fleet)]


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
    send: Send | None = None,
) -> FastAPI:
    """The ASGI app. With no arguments (``uvicorn --factory``) it reads the settings."""
    if settings is None:
        from bridge.config import load_settings

        settings = load_settings()
    if runtime is None:
        from bridge.process.runtime import build

        runtime = build(settings)
    if send is None:
        from bridge.queues import Enqueuer

        send = Enqueuer.for_broker(runtime.redis_url, settings.bridge_connection_id).send

    receivers = Receivers(Receiver(settings, runtime.stores, send), settings, runtime, Receiver)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(runtime))
    app = FastAPI(title="ServiceM8 ⇄ Coredination bridge", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip

    @app.post("/webhooks/{source}/{token}", include_in_schema=False)
    async def webhook(source: str, token: str, request: Request) -> Response:
        return await _webhook(source, token, request)

    @app.post("/webhooks/{source}", include_in_schema=False)
    async def webhook_without_token(source: str, request: Request) -> Response:
        return await _webhook(source, None, request)

    async def _webhook(source: str, token: str | None, request: Request) -> Response:
        if source not in PARSERS:
            return Reply(404, {"error": "unknown webhook source"}).response()
        if receivers.own.token is None:
            return Reply(404, {"error": "webhooks are not configured (WEBHOOK_TOKEN)"}).response()
        receiver = await run_in_threadpool(receivers.find, token)
        if receiver is None:
            log.warning("webhook.unauthorised", source=source)
            return Reply(401, {"error": "wrong or missing token"}).response()
        # From here on every answer is a 2xx: the sender is ours, and ServiceM8 deactivates a
        # subscription whose deliveries keep failing. What cannot be used is counted, and the
        # poll catches the change it was about.
        content_type = request.headers.get("content-type", "")
        if content_type.split(";", 1)[0].strip().lower() not in MEDIA_TYPES:
            reason = "unsupported content type"
            return (await run_in_threadpool(receiver.unusable, source, reason)).response()
        try:
            raw = await _read_body(request, settings.webhook_max_body_bytes)
        except _Body as exc:
            return (await run_in_threadpool(receiver.unusable, source, exc.message)).response()
        try:
            reply = await run_in_threadpool(receiver.handle, source, raw, content_type)
        except redis.RedisError as exc:  # Redis restarting: the polls catch up
            log.error("webhook.redis_unavailable", source=source, error=type(exc).__name__)
            reply = Reply(202, {"enqueued": 0, "error": "not queued; the poll will catch the "
                                "change"})  # fmt: skip
        return reply.response()

    @app.get("/webhooks/servicem8/{token}", include_in_schema=False)
    async def challenge_by_get(token: str, request: Request) -> Response:
        """ServiceM8's subscription check, when it comes as a GET with the same parameters."""
        if receivers.own.token is None or await run_in_threadpool(receivers.find, token) is None:
            return Reply(401, {"error": "wrong or missing token"}).response()
        try:
            challenge = handshake(dict(request.query_params))
        except BadPayload as exc:
            return Reply(400, {"error": str(exc)}).response()
        if challenge is None:
            return Reply(404, {"error": "not a subscription check"}).response()
        log.info("webhook.handshake", source="servicem8", method="GET")
        return Reply(200, challenge.challenge).response()

    activation = activation_for(settings, runtime)
    if activation is not None:
        add_activation_routes(app, activation)

    @app.get("/healthz")
    def healthz() -> Response:
        healthy, checks = health(runtime)
        return JSONResponse({"healthy": healthy, **checks}, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        refused = metrics_refusal(settings.metrics_token, request)
        if refused is not None:
            return refused
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app
