"""The webhook receiver, ``/healthz`` and ``/metrics`` (FastAPI under uvicorn).

A webhook view verifies, enqueues and answers; nothing else (thin edges). Deliveries are
*hints*: each names a record, and the queued task re-reads it through the REST API, so a forged,
lost, duplicated or reordered delivery can delay a change but never corrupt one.

- ServiceM8 documents no signature (docs/servicem8-api.md#webhooks), so the callback URL carries a
  secret token (``/webhooks/servicem8/{WEBHOOK_TOKEN}``), compared in constant time. A wrong or
  missing token is 401 and enqueues nothing. Coredination's signing is undocumented
  (docs/coredination-api.md#webhooks): same scheme.
- ServiceM8's ``mode=subscribe`` handshake is answered with the challenge alone.
- No answer is ever a 410, which makes ServiceM8 delete the subscription at once (``NeverGone``).
- Bodies over ``WEBHOOK_MAX_BODY_BYTES`` are 413, media types other than JSON, form, JWT or plain
  text are 415, unreadable bodies are 400; unknown objects and events are 200 and ignored.
- Deliveries are de-duplicated in Redis by (record, change stamp) for ``WEBHOOK_DEDUPE_SECONDS``
  (deliveries with no stamp: by body, for ten minutes). If enqueueing fails the mark is undone and
  the answer is 503, so a redelivery is not dropped.
- The token never reaches a log line: uvicorn's access log (which prints paths) is off and the
  bridge logs its own ``webhook.received`` event without the path.
- ``/metrics`` answers a scrape bearing ``METRICS_TOKEN``, or with it unset loopback clients
  alone (``bridge/web/metrics.py``): the port is public, and its figures are the operator's.
  ``/healthz`` answers anyone, and names stale connections only to those same clients. What
  both read, at a fixed cost per scrape: ``bridge/web/health.py``.

With ``SERVICEM8_OAUTH_*`` set it also serves the ServiceM8 add-on's activation pages
(``bridge/web/activation.py``); with ``CONSOLE_PASSWORD`` set, the operator console
(``bridge/web/console``, ``/console``).

Everything blocking (Redis, the broker) runs in the thread pool, so the event loop only reads
bodies and answers well inside ServiceM8's 10-second limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool

from bridge.config import Settings
from bridge.coredination.webhooks import coredination_hints
from bridge.log import get_logger
from bridge.process.runtime import Runtime
from bridge.queues import (
    READ_HINTS,
    WEBHOOK_COREDINATION_JOB,
    WEBHOOK_SERVICEM8_ACTIVITY,
    WEBHOOK_SERVICEM8_ALLOCATION,
    WEBHOOK_SERVICEM8_JOB,
)
from bridge.servicem8.webhooks import delivery_time, handshake, servicem8_hints
from bridge.store import Stores
from bridge.store.hints import Arrival
from bridge.web.activation import activation_for, add_activation_routes
from bridge.web.console import add_console_routes
from bridge.web.fleet import Receivers
from bridge.web.health import StatusCollector, health
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


def _zone(name: str | None) -> tzinfo | None:
    try:
        return ZoneInfo(name) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


class Receiver:
    """The webhook logic, apart from HTTP: token, parse, de-duplicate, enqueue."""

    def __init__(
        self, settings: Settings, stores: Stores, send: Send, connection: str | None = None
    ) -> None:
        """``settings`` hold the token (a registry connection's own, ``Connection.settings``);
        ``connection``: the connection it receives for."""
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
            arrival = self.hints.add(hint.kind, hint.ref, self._changed_at(hint.stamp), window)
            if arrival is not Arrival.NONE:
                wait = window / 1000 if arrival is Arrival.AFTER_WINDOW else None
                self.send(READ_HINTS, [hint.kind.removeprefix("servicem8.")], countdown=wait)

    def _changed_at(self, stamp: str) -> str:
        """The change time a ServiceM8 hint's stamp starts with (``time|fields``) as the
        account's stamp, or "". Only a time with an offset (``…Z``) needs the account's zone,
        read then from Redis where the connection's processes keep it."""
        head = stamp.split("|", 1)[0].strip()
        if not head or SM8_STAMP.match(head):
            return delivery_time(head, None)
        return delivery_time(head, _zone(self.activity.known_timezone()))

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


class NeverGone:
    """ASGI wrapper: no answer of this app is ever a 410. ServiceM8 retries a failed delivery
    for about three days but deletes a subscription at once on a 410
    (docs/servicem8-api.md#webhooks), so whatever a route, FastAPI or a library would answer
    410 goes out as 404 (logged, without the path: it holds the token)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def guarded(message: Any) -> None:
            if message.get("type") == "http.response.start" and message.get("status") == 410:
                log.error("web.gone_replaced", method=scope.get("method"))
                message = {**message, "status": 404}
            await send(message)

        await self.app(scope, receive, guarded)


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

        send = Enqueuer.for_broker(runtime.redis_url, runtime.lanes, runtime.connection).send

    receivers = Receivers(
        Receiver(settings, runtime.stores, send, runtime.connection), settings, runtime, Receiver
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(runtime))
    app = FastAPI(title="ServiceM8 ⇄ Coredination bridge", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.add_middleware(NeverGone)

    @app.post("/webhooks/{source}/{token}", include_in_schema=False)
    async def webhook(source: str, token: str, request: Request) -> Response:
        return await _webhook(source, token, request)

    @app.post("/webhooks/{source}", include_in_schema=False)
    async def webhook_without_token(source: str, request: Request) -> Response:
        return await _webhook(source, None, request)

    async def _webhook(source: str, token: str | None, request: Request) -> Response:
        if source not in PARSERS:
            return Reply(404, {"error": "unknown webhook source"}).response()
        if not receivers.configured:
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
        if await run_in_threadpool(receivers.find, token) is None:
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
    add_console_routes(app, settings, runtime, receivers.view)

    def answer(request: Request, connections: bool) -> Response:
        # Anyone may ask (load balancers, orchestrators); stale connections are named only to
        # the clients /metrics answers, since the port is public.
        named = metrics_refusal(settings.metrics_token, request) is None
        healthy, checks = health(runtime, named=named, connections=connections)
        return JSONResponse({"healthy": healthy, **checks}, status_code=200 if healthy else 503)

    @app.get("/healthz")
    def healthz(request: Request) -> Response:
        """The deployment's parts: for load balancers and restarts."""
        return answer(request, connections=False)

    @app.get("/healthz/connections")
    def healthz_connections(request: Request) -> Response:
        """Also every active connection's polls: for monitoring each tenant."""
        return answer(request, connections=True)

    @app.get("/metrics")
    def metrics(request: Request) -> Response:
        refused = metrics_refusal(settings.metrics_token, request)
        if refused is not None:
            return refused
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    return app
