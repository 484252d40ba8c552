"""Machinery both simulators share: a threaded HTTP/1.1 server with a tiny router, request counts,
strict sliding-window rate limits, fault knobs, an injectable clock and a webhook deliverer.

The rate limit is a sliding log: a request is refused when the window ending now already holds the
limit, so no span of ``window`` seconds ever passes more than ``limit`` accepted requests. That is
the strictest reading of "180 per minute", which ServiceM8 does not define further
(docs/servicem8-api.md#limits). The day limit is either such a rolling window or a calendar day
that starts at a midnight the simulator names (``SlidingLimiter.admit``'s ``day_start``).
"""

from __future__ import annotations

import heapq
import json
import random
import re
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import requests

Handler = Callable[["SimRequest", dict[str, str]], "SimReply"]


@dataclass
class SimRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        """Coredination flags: true when present, whatever the value
        (docs/coredination-api.md#conventions)."""
        if name not in self.query:
            return False
        value = self.query[name][0].lower()
        return value not in {"false", "0", "no"}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body.strip() else None

    def form(self) -> dict[str, str]:
        parsed = parse_qs(self.body.decode("utf-8"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def fields(self) -> dict[str, Any]:
        """A JSON object body, or a form-encoded one (ServiceM8 accepts both)."""
        ctype = (self.header("content-type") or "").lower()
        if "application/x-www-form-urlencoded" in ctype:
            return self.form()
        data = self.json()
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SimError(400, "request body must be a JSON object")
        return data


@dataclass
class SimReply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


class SimError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Faults:
    """Fault knobs. Rates are probabilities per API request; admin calls are never faulted."""

    latency: float = 0.0  # seconds added to every API response
    latency_jitter: float = 0.0  # plus uniform 0..jitter seconds
    error_rate: float = 0.0  # answer error_status instead of handling
    error_status: int = 500
    timeout_rate: float = 0.0  # hold the response for timeout_seconds (past the client's timeout)
    timeout_seconds: float = 5.0
    reset_rate: float = 0.0  # drop the connection with a TCP reset, nothing answered
    burst_429: int = 0  # the next N API requests answer 429
    seed: int | None = None
    # One record refused: a request whose path contains a key gets (status, message) instead,
    # e.g. {job_uuid: (403, "…")}; checked after authentication, before the handler.
    refusals: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class Limits:
    per_minute: int | None = None
    per_day: int | None = None
    minute_window: float = 60.0
    day_window: float = 86_400.0


@dataclass
class WebhookFaults:
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    max_delay: float = 0.0  # each delivery waits uniform 0..max_delay s, which reorders them
    paused: bool = False  # hold deliveries until unpaused


class SlidingLimiter:
    def __init__(self) -> None:
        self.minute: deque[float] = deque()
        self.day: deque[float] = deque()

    def admit(self, now: float, limits: Limits, day_start: float | None = None) -> str | None:
        """Record and admit a request, or return the window ("minute"/"day") that refuses it.

        ``day_start`` is the instant the current calendar day began (a midnight, as a Unix time):
        given, the day count holds only requests since then, so it restarts at each midnight;
        without it the day is a window of ``day_window`` seconds ending now, like the minute.
        """
        for log_, limit, window, name in (
            (self.day, limits.per_day, limits.day_window, "day"),
            (self.minute, limits.per_minute, limits.minute_window, "minute"),
        ):
            if name == "day" and day_start is not None:
                while log_ and log_[0] < day_start:
                    log_.popleft()
            else:
                while log_ and log_[0] <= now - window:
                    log_.popleft()
            if limit is not None and len(log_) >= limit:
                return name
        if limits.per_day is not None:
            self.day.append(now)
        if limits.per_minute is not None:
            self.minute.append(now)
        return None

    def clear(self) -> None:
        self.minute.clear()
        self.day.clear()


OnResult = Callable[[bool, str], None]
_Queued = tuple[float, int, str, bytes, str, OnResult | None]


class Deliverer:
    """Posts webhook bodies from a background thread, with drop / duplicate / delay faults.

    Each attempt's outcome goes to the ``on_result`` its ``post`` named, if any: ``(True, "")``
    for a 2xx, else ``(False, reason)`` with a reason such as ``"HTTP 503"``, ``"timeout"`` or
    ``"connection refused"``, so a simulator can act on failed deliveries as ServiceM8 does. The
    callback runs on the delivery thread with no lock of the deliverer held; it takes its
    simulator's lock itself, which the thread never holds while it posts. A dropped delivery
    (``drop_rate``) is never attempted, so it reports nothing.
    """

    def __init__(self, rng: random.Random, timeout: float = 10.0) -> None:
        self.faults = WebhookFaults()
        self.rng = rng
        self.timeout = timeout  # seconds per attempt: ServiceM8 allows a callback 10
        self.stats: Counter[str] = Counter()
        self._heap: list[_Queued] = []
        self._inflight = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()

    def post(
        self,
        url: str,
        body: bytes,
        content_type: str = "application/json",
        on_result: OnResult | None = None,
    ) -> None:
        with self._cond:
            copies = 1
            if self.rng.random() < self.faults.drop_rate:
                self.stats["dropped"] += 1
                return
            if self.rng.random() < self.faults.duplicate_rate:
                copies = 2
                self.stats["duplicated"] += 1
            for _ in range(copies):
                due = time.monotonic() + self.rng.uniform(0, self.faults.max_delay)
                self._seq += 1
                heapq.heappush(self._heap, (due, self._seq, url, body, content_type, on_result))
                self.stats["queued"] += 1
            self._cond.notify()

    def pending(self) -> int:
        """Deliveries not yet settled: queued, or being posted right now."""
        with self._cond:
            return len(self._heap) + self._inflight

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (
                    not self._heap or self.faults.paused or self._heap[0][0] > time.monotonic()
                ):
                    wait = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(timeout=0.05 if self.faults.paused else wait)
                if self._stopped:
                    return
                _, _, url, body, ctype, on_result = heapq.heappop(self._heap)
                self._inflight += 1
            try:
                ok, reason = self._attempt(url, body, ctype)
                if on_result is not None:
                    try:
                        on_result(ok, reason)
                    except Exception:  # a broken callback must not stop every later delivery
                        self.stats["callback_errors"] += 1
            finally:
                with self._cond:
                    self._inflight -= 1

    def _attempt(self, url: str, body: bytes, ctype: str) -> tuple[bool, str]:
        """One POST: whether it counts as delivered (a 2xx in time), and why not."""
        try:
            response = self._session.post(
                url, data=body, headers={"Content-Type": ctype}, timeout=self.timeout
            )
        except requests.Timeout:  # before ConnectionError: a connect timeout is both
            self.stats["failed"] += 1
            return False, "timeout"
        except requests.ConnectionError as exc:
            self.stats["failed"] += 1
            refused = "refused" in str(exc).lower()
            return False, "connection refused" if refused else "connection failed"
        except requests.RequestException as exc:
            self.stats["failed"] += 1
            return False, type(exc).__name__
        ok = 200 <= response.status_code < 300
        self.stats["delivered" if ok else "rejected"] += 1
        return ok, "" if ok else f"HTTP {response.status_code}"

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


class SimServer:
    """A simulator: routes, state lock, counts, limits, faults, clock and admin routes.

    Subclasses register API routes with ``route()`` and decide auth in ``authenticate()``.
    """

    name = "sim"

    def __init__(
        self, *, seed: int | None = None, clock: Callable[[], float] | None = None
    ) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self._base_clock = clock or time.time
        self.clock_offset = 0.0
        self.faults = Faults(seed=seed)
        self.limits = Limits()
        self.limiter = SlidingLimiter()
        self.counts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()  # faults injected, by kind
        self.statuses: Counter[int] = Counter()
        self.calls: deque[tuple[float, str, str, int]] = deque(maxlen=500_000)
        self.deliverer = Deliverer(self.rng)
        self._routes: list[tuple[str, re.Pattern[str], str, Handler, bool]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._register_admin()

    # --- clock -------------------------------------------------------------------------------
    dialect: Any  # each simulator's frozen dataclass of named switches

    def set_dialect(self, **switches: Any) -> None:
        """Change some of the dialect's switches (a 400 for an unknown one or a bad value)."""
        unknown = sorted(set(switches) - {f.name for f in fields(self.dialect)})
        if unknown:
            raise SimError(400, f"unknown dialect switch {unknown[0]!r}")
        try:
            with self.lock:
                self.dialect = replace(self.dialect, **switches)
        except ValueError as exc:
            raise SimError(400, str(exc)) from None

    def now(self) -> float:
        """The simulator's time (Unix seconds): its clock, moved by ``clock_offset``."""
        return self._base_clock() + self.clock_offset

    def play_at(self, instant: float) -> None:
        """Play the account from ``instant`` (Unix seconds) on: the clock jumps there and runs
        on, and every stamp, "today" and day limit follows it (a test crossing a daylight-saving
        change sets the bridge's clock to ``now`` too, so both sides agree on the instant)."""
        with self.lock:
            self.clock_offset = instant - self._base_clock()

    def day_start(self, now: float) -> float | None:
        """The midnight the day limit's count restarts at, or None for a rolling day window
        (``SlidingLimiter.admit``). Rolling here; a simulator whose API has a calendar day
        overrides it."""
        return None

    # --- routing -----------------------------------------------------------------------------
    def route(
        self, method: str, pattern: str, name: str, handler: Handler, *, api: bool = True
    ) -> None:
        self._routes.append((method, re.compile(f"^{pattern}$"), name, handler, api))

    def authenticate(self, request: SimRequest) -> bool:
        return True

    def error_reply(self, status: int, message: str) -> SimReply:
        return SimReply(status, {"errorCode": status, "message": message})

    def rate_limited_reply(self, window: str) -> SimReply:
        return SimReply(429, {"message": f"Too many requests per {window}"})

    def unauthorized_reply(self) -> SimReply:
        return self.error_reply(401, "Authentication failed")

    # --- serving -----------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        sim = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes; without NODELAY, Nagle's algorithm and
                # the client's delayed ACK add ~40 ms to every response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = SimRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply = sim.dispatch(request, self)
                if reply is None:  # connection was reset on purpose
                    self.close_connection = True
                    return
                payload = reply.encoded()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(payload)
                    except (BrokenPipeError, ConnectionResetError):
                        # The client gave up waiting (a held response, by a timeout fault).
                        self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        server = ThreadingHTTPServer((host, port), _Handler)
        server.daemon_threads = True
        server.request_queue_size = 128
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits one interval; keep it short
            name=f"{self.name}-http",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.deliverer.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SimServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dispatch(
        self, request: SimRequest, conn: BaseHTTPRequestHandler | None = None
    ) -> SimReply | None:
        for method, pattern, name, handler, is_api in self._routes:
            match = pattern.match(request.path)
            if match is None or method != request.method:
                continue
            if not is_api:
                return self._call(handler, request, match.groupdict())
            return self._api_call(name, handler, request, match.groupdict(), conn)
        if any(p.match(request.path) for _, p, _, _, _ in self._routes):
            return self.error_reply(405, "Method not allowed")
        return self.error_reply(404, "Resource not found")

    def _call(self, handler: Handler, request: SimRequest, params: dict[str, str]) -> SimReply:
        try:
            with self.lock:
                return handler(request, params)
        except SimError as exc:
            return self.error_reply(exc.status, exc.message)
        except (ValueError, UnicodeDecodeError) as exc:
            return self.error_reply(400, f"Malformed request: {exc}")

    def _api_call(
        self,
        name: str,
        handler: Handler,
        request: SimRequest,
        params: dict[str, str],
        conn: BaseHTTPRequestHandler | None,
    ) -> SimReply | None:
        name = name.format(**params) if "{" in name else name
        faults = self.faults
        with self.lock:
            roll = self.rng.random
            reset = roll() < faults.reset_rate
            hold = roll() < faults.timeout_rate
            error = roll() < faults.error_rate
            burst = faults.burst_429 > 0
            if burst:
                faults.burst_429 -= 1
            for kind, on in (("reset", reset), ("timeout", hold), ("error", error),
                             ("429", burst)):  # fmt: skip
                self.injected[kind] += on
        delay = faults.latency + (
            self.rng.uniform(0, faults.latency_jitter) if faults.latency_jitter else 0
        )
        if reset and conn is not None:
            self._record(name, request.method, 0)
            sock = conn.connection
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            return None
        if hold:
            time.sleep(faults.timeout_seconds)
        reply: SimReply
        if burst:
            reply = self.rate_limited_reply("minute")
        elif error:
            reply = self.error_reply(
                faults.error_status, "An unexpected error occurred. Please try again later."
            )
        elif not self.authenticate(request):
            reply = self.unauthorized_reply()
        else:
            with self.lock:
                now = self.now()
                refused = self.limiter.admit(now, self.limits, self.day_start(now))
            refusal = next(
                (r for key, r in list(faults.refusals.items()) if key in request.path), None
            )
            if refused:
                reply = self.rate_limited_reply(refused)
            elif refusal is not None:
                reply = self.error_reply(*refusal)
            else:
                reply = self._call(handler, request, params)
        if delay:
            time.sleep(delay)
        self._record(name, request.method, reply.status)
        return reply

    def _record(self, name: str, method: str, status: int) -> None:
        with self.lock:
            self.counts[f"{method} {name}"] += 1
            self.statuses[status] += 1
            self.calls.append((time.time(), method, name, status))

    # --- counts ------------------------------------------------------------------------------
    def count(self, method: str | None = None, name: str | None = None) -> int:
        with self.lock:
            return sum(
                n
                for key, n in self.counts.items()
                if (method is None or key.split(" ", 1)[0] == method)
                and (name is None or key.split(" ", 1)[1] == name)
            )

    def write_count(self) -> int:
        with self.lock:
            return sum(n for key, n in self.counts.items() if not key.startswith(("GET ", "HEAD ")))

    def read_count(self) -> int:
        return self.count("GET")

    def reset_counts(self) -> None:
        with self.lock:
            self.counts.clear()
            self.statuses.clear()
            self.calls.clear()

    def counts_snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "by_endpoint": dict(self.counts),
                "by_status": {str(k): v for k, v in self.statuses.items()},
                "total": sum(self.counts.values()),
                "reads": self.read_count(),
                "writes": self.write_count(),
                "rate_limited": self.statuses.get(429, 0),
                "webhooks": dict(self.deliverer.stats),
            }

    # --- admin surface -----------------------------------------------------------------------
    def _register_admin(self) -> None:
        def counts(req: SimRequest, _: dict[str, str]) -> SimReply:
            return SimReply(200, self.counts_snapshot())

        def reset_counts(req: SimRequest, _: dict[str, str]) -> SimReply:
            self.reset_counts()
            return SimReply(200, {"ok": True})

        def calls(req: SimRequest, _: dict[str, str]) -> SimReply:
            since = float(req.arg("since", "0") or 0)
            return SimReply(200, [list(c) for c in self.calls if c[0] >= since])

        def faults(req: SimRequest, _: dict[str, str]) -> SimReply:
            if req.method == "POST":
                self.set_faults(**(req.json() or {}))
            return SimReply(200, asdict(self.faults))

        def limits(req: SimRequest, _: dict[str, str]) -> SimReply:
            if req.method == "POST":
                self.set_limits(**(req.json() or {}))
            return SimReply(200, asdict(self.limits))

        def webhooks(req: SimRequest, _: dict[str, str]) -> SimReply:
            if req.method == "POST":
                for key, value in (req.json() or {}).items():
                    if not hasattr(self.deliverer.faults, key):
                        raise SimError(400, f"unknown webhook knob {key!r}")
                    setattr(self.deliverer.faults, key, value)
            return SimReply(
                200,
                {
                    "faults": asdict(self.deliverer.faults),
                    "stats": dict(self.deliverer.stats),
                    "pending": self.deliverer.pending(),
                },
            )

        def clock(req: SimRequest, _: dict[str, str]) -> SimReply:
            data = req.json() or {}
            if "advance" in data:
                self.clock_offset += float(data["advance"])
            if "offset" in data:
                self.clock_offset = float(data["offset"])
            if "at" in data:
                self.play_at(float(data["at"]))
            return SimReply(200, {"now": self.now(), "offset": self.clock_offset})

        self.route("GET", "/_admin/counts", "admin", counts, api=False)
        self.route("POST", "/_admin/counts/reset", "admin", reset_counts, api=False)
        self.route("GET", "/_admin/calls", "admin", calls, api=False)
        for method in ("GET", "POST"):
            self.route(method, "/_admin/faults", "admin", faults, api=False)
            self.route(method, "/_admin/limits", "admin", limits, api=False)
            self.route(method, "/_admin/webhooks", "admin", webhooks, api=False)
        self.route("POST", "/_admin/clock", "admin", clock, api=False)

    def set_faults(self, **knobs: Any) -> None:
        with self.lock:
            for key, value in knobs.items():
                if not hasattr(self.faults, key):
                    raise SimError(400, f"unknown fault knob {key!r}")
                setattr(self.faults, key, value)

    def set_limits(self, **knobs: Any) -> None:
        with self.lock:
            for key, value in knobs.items():
                if not hasattr(self.limits, key):
                    raise SimError(400, f"unknown limit {key!r}")
                setattr(self.limits, key, value)
            self.limiter.clear()
