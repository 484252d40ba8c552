"""HTTP plumbing shared by both clients: pooled sessions, timeouts, a short in-process retry, and
the call gate (the shared budget) every request passes first.

Each API classifies its own answers (``bridge.servicem8.classify``,
``bridge.coredination.classify``): a pure function of (status, headers, body, exception) that
returns an ``Outcome``. ``raise_for`` turns an outcome into the error tree of ``bridge.errors``.
Tests drive both with hand-built values, no HTTP stubbing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests
from pydantic import SecretStr
from requests.adapters import HTTPAdapter

from bridge.errors import (
    AlreadyExists,
    Api,
    ApiError,
    AuthError,
    Forbidden,
    NotFound,
    NotInGoodStanding,
    RateLimited,
    Rejected,
    ScopeMissing,
    Unavailable,
    WebhooksRefused,
    Window,
)
from bridge.http.fence import check_fence
from bridge.log import get_logger, redactor

log = get_logger(__name__)

OutcomeKind = Literal[
    "ok",
    "rate_limited",
    "unavailable",
    "auth",  # the credential's: the API is paused
    "unpaid",  # 402, the account's standing: the API is held for hours
    "forbidden",  # one record refused
    "scope_missing",  # a named scope missing: that kind of operation is blocked
    "webhooks_refused",  # webhook subscription calls refused: the object is polled only
    "not_found",
    "rejected",
    "exists",
]
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
EXCERPT_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reason: str
    window: Window | None = None
    scope: str | None = None  # scope_missing: the scope to grant
    operation: str | None = None  # scope_missing: the kind of operation blocked

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


OK = Outcome("ok", "ok")


def message_of(body: str) -> str:
    """The ``message`` of a JSON error body, or the text itself."""
    text = body.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return text
        if isinstance(data, dict):
            for key in ("message", "error", "errorMessage"):
                if isinstance(data.get(key), str):
                    return str(data[key])
    return text


def transport_failure(exc: BaseException) -> Outcome:
    if isinstance(exc, requests.Timeout):
        return Outcome("unavailable", "timeout")
    return Outcome("unavailable", f"connection failed: {type(exc).__name__}")


def by_status(
    status: int, message: str, operation: str = "", *, scope: str | None = None
) -> Outcome:
    short = message[:120] or f"HTTP {status}"
    if 200 <= status < 300:
        return OK
    if status >= 500:
        return Outcome("unavailable", f"HTTP {status}: {short}")
    if status in (401, 402, 403):
        return refusal(status, short, operation, scope=scope)
    if status == 404:
        return Outcome("not_found", f"HTTP 404: {short}")
    return Outcome("rejected", f"HTTP {status}: {short}")


# Objects whose refusal is the credential's whatever the operation: the account's own record.
ACCOUNT_OBJECTS = frozenset({"vendor"})
WEBHOOK_OBJECT = "webhook"


def refusal(status: int, short: str, operation: str, *, scope: str | None = None) -> Outcome:
    """401 / 402 / 403 by what was refused (docs/how-it-works.md#refusals).

    ``operation`` is ``object.verb`` as the clients name their calls (``job.list``,
    ``jobactivity.create``, ``webhook.subscribe``); an unnamed one is the credential's.
    - 402: the account is not in good standing (``unpaid``): held for hours.
    - 401 or 403 on a webhook subscription call: webhooks are unavailable for this credential.
    - 401: the credential's (``auth``).
    - 403 naming a scope: that kind of operation is blocked (``scope_missing``).
    - 403 on the account's own record, a whole list or an unnamed call: the credential's.
    - 403 on one record: that record only (``forbidden``).
    """
    reason = f"HTTP {status}: {short}"
    obj, verb = operation.split(".")[0], operation.rsplit(".", 1)[-1]
    if status == 402:
        return Outcome("unpaid", f"{reason} (account not in good standing)")
    if obj == WEBHOOK_OBJECT:
        return Outcome("webhooks_refused", f"{reason} (webhooks unavailable for this credential)")
    if status == 401:
        return Outcome("auth", reason)
    if scope is not None:
        grant = "the scope it names" if scope == "?" else f"the {scope} scope"
        return Outcome("scope_missing", f"{reason} (grant {grant})", scope=scope,
                       operation=operation or None)  # fmt: skip
    if not operation or obj in ACCOUNT_OBJECTS or verb == "list":
        return Outcome("auth", reason)
    return Outcome("forbidden", reason)


class Classifier(Protocol):
    """One API's reading of an answer: pure, from (status, headers, body, exception) and the
    operation's name (``job.list``), to an ``Outcome``."""

    def __call__(
        self,
        status: int | None,
        headers: Mapping[str, str] | None = None,
        body: str = "",
        exc: BaseException | None = None,
        operation: str = "",
    ) -> Outcome: ...


def raise_for(
    outcome: Outcome,
    *,
    api: Api,
    status: int | None,
    operation: str,
    body: str = "",
    request_id: str | None = None,
) -> None:
    """Raise the error of the tree that ``outcome`` calls for; return quietly when it is ok."""
    if outcome.ok:
        return
    excerpt = redactor.text(body[:EXCERPT_CHARS]) if body else None
    common: dict[str, Any] = {
        "api": api,
        "status": status,
        "operation": operation,
        "body_excerpt": excerpt,
        "request_id": request_id,
    }
    reason = redactor.text(f"{api} {operation}: {outcome.reason}")
    if outcome.kind == "rate_limited":
        raise RateLimited(reason, window=outcome.window, **common)
    if outcome.kind == "scope_missing":
        raise ScopeMissing(reason, scope=outcome.scope, **common)
    error_type: type[ApiError] = {
        "unavailable": Unavailable,
        "auth": AuthError,
        "unpaid": NotInGoodStanding,
        "forbidden": Forbidden,
        "webhooks_refused": WebhooksRefused,
        "not_found": NotFound,
        "rejected": Rejected,
        "exists": AlreadyExists,
    }[outcome.kind]
    raise error_type(reason, **common)


# --- credentials ---------------------------------------------------------------------------------


class Credentials(Protocol):
    """Supplies the auth headers for one request."""

    def headers(self) -> dict[str, str]: ...


@runtime_checkable
class Renewable(Protocol):
    """Credentials that can be renewed when the API refuses them (an OAuth access token that
    was revoked or ended early): ``refused`` gets the headers a 401 refused and renews them,
    answering True, and the call is tried again as if it had not reached the API; False (they
    were renewed a moment ago and refused again) leaves the 401 as it is. It may raise instead,
    e.g. ``GrantRevoked`` (``bridge.servicem8.oauth.BearerAuth``)."""

    def refused(self, headers: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True)
class ApiKeyAuth:
    header: str
    key: SecretStr

    def headers(self) -> dict[str, str]:
        return {self.header: self.key.get_secret_value()}


# --- the call gate (shared budget) ----------------------------------------------------------------


class CallGate(Protocol):
    """Asked before every request and told every outcome. The shared Redis budget implements it;
    ``before_call`` raises ``BudgetExhausted`` when there is no token, so nothing is sent."""

    def before_call(self, api: Api, operation: str = "") -> None: ...

    def after_call(self, api: Api, outcome: Outcome) -> None: ...


class OpenGate:
    """No budget: every call goes. For tests of the clients alone and one-off commands."""

    def before_call(self, api: Api, operation: str = "") -> None:
        return None

    def after_call(self, api: Api, outcome: Outcome) -> None:
        return None


# --- transport -----------------------------------------------------------------------------------


ORIGINS_HELD = 64  # origins whose environment settings a session keeps (the APIs' few hosts)


class Session(requests.Session):
    """A ``requests.Session`` that reads the environment's proxy and CA bundle settings once
    per origin rather than at every request: requests scans the whole environment each time,
    about a twelfth of an idle fleet's CPU. A process's environment does not change while it
    runs; what requests does with the settings is unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], Any] = {}  # requests' own settings type

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        parts = urlsplit(str(url))
        try:
            key = (parts.scheme, parts.netloc, frozenset((proxies or {}).items()), stream,
                   verify, cert)  # fmt: skip
            held = self._environment.get(key)
        except TypeError:  # a setting that is no plain value: as requests does, every time
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        if held is None:
            if len(self._environment) >= ORIGINS_HELD:
                self._environment.clear()
            own = dict(proxies) if proxies is not None else None
            held = super().merge_environment_settings(url, own, stream, verify, cert)
            self._environment[key] = held
        return {**held, "proxies": dict(held["proxies"])}


def new_session(pool_size: int = 16, hosts: int = 2) -> requests.Session:
    session = Session()
    adapter = HTTPAdapter(pool_connections=hosts, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def shared_session() -> requests.Session:
    """One session for the calls of many connections in a process (their accounts share the
    two APIs' hosts): one pool of sockets rather than one per connection. It keeps no cookie, so
    nothing one account's answers set is ever sent with another's requests."""
    session = new_session(pool_size=16, hosts=8)
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return session


class Transport:
    """Sends one API's requests: gate, auth, timeouts, classification, short retry."""

    def __init__(
        self,
        *,
        api: Api,
        base_url: str,
        credentials: Credentials,
        classify: Classifier,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        gate: CallGate | None = None,
        session: requests.Session | None = None,
        quick_retries: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api: Api = api
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials
        self.classify = classify
        self.timeout = (connect_timeout, read_timeout)
        self.gate: CallGate = gate or OpenGate()
        self.session = session or new_session()
        self.quick_retries = quick_retries
        self.sleep = sleep

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        form: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send, classify, and return the response of a successful call; raise otherwise.

        A request that is safe to repeat (by method, or ``idempotent=True`` for a create with a
        client-supplied id) gets ``quick_retries`` more tries after a 5xx, timeout or reset.
        ``idempotent=False`` sends it once whatever the method: a ServiceM8 DELETE toggles a
        record, so its caller reads the record back instead (docs/servicem8-api.md#delete).
        Each try takes from the gate. Longer waits are the task layer's job
        (docs/operations.md#budget).
        """
        repeatable = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        attempt = 0
        while True:
            try:
                return self._send_once(method, path, operation, params, json_body, form)
            except Unavailable:
                if not repeatable or attempt >= self.quick_retries:
                    raise
                self.sleep(0.5 * (1.5**attempt))
                attempt += 1

    def _send_once(
        self,
        method: str,
        path: str,
        operation: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        form: Mapping[str, Any] | None,
    ) -> requests.Response:
        self.gate.before_call(self.api, operation)
        if method.upper() != "GET":
            check_fence()  # the lease still ours as the write leaves, not only when decided
        headers = {"Accept": "application/json", **self.credentials.headers()}
        started = time.monotonic()
        response: requests.Response | None = None
        try:
            response = self.session.request(
                method,
                self.url(path),
                params=params,
                json=json_body,
                data=form,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            outcome = self.classify(None, None, "", exc, operation)
            status: int | None = None
            body = ""
        else:
            status = response.status_code
            body = response.text
            outcome = self.classify(status, response.headers, body, None, operation)
        if (
            status == 401
            and isinstance(self.credentials, Renewable)
            and self.credentials.refused(headers)
        ):
            # Renewed: the refusal was the old token's, so no auth pause; the call is tried
            # again by the quick retry or by its task.
            outcome = Outcome("unavailable", f"{outcome.reason}; credentials renewed")
        self.gate.after_call(self.api, outcome)
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        if outcome.ok and response is not None:
            log.debug("http.call", api=self.api, operation=operation, status=status, ms=elapsed_ms)
            return response
        log.warning(
            "http.call_failed",
            api=self.api,
            operation=operation,
            status=status,
            outcome=outcome.kind,
            reason=outcome.reason,
            ms=elapsed_ms,
        )
        request_id = response.headers.get("x-request-id") if response is not None else None
        raise_for(
            outcome,
            api=self.api,
            status=status,
            operation=operation,
            body=body,
            request_id=request_id,
        )
        raise AssertionError("unreachable")  # pragma: no cover
