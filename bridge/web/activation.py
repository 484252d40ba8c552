"""The ServiceM8 add-on's activation pages, served by ``sm8cd web`` when ``SERVICEM8_OAUTH_*`` is
set (docs/servicem8-oauth.md#activation):

- ``GET /oauth/servicem8/activate[?label=…]`` redirects to ServiceM8's authorize page with a fresh
  single-use ``state``. Anyone may start an activation: what it can make is an *authorised*
  connection, which syncs nothing until an operator pairs it. Starts are bounded per client
  address and in all (``bridge.connections.activation``): over either, 429 with ``Retry-After``.
- ``GET`` at the path of ``SERVICEM8_OAUTH_REDIRECT_URI`` is the callback. The state is checked
  first (a forged, used or expired one spends no code), then the code is exchanged and the grant
  stored (``bridge.connections.activation``).

No answer and no log line holds the code, the state or a token; every answer is plain text for
the person in the browser. Blocking work runs in the thread pool.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from bridge.config import Settings
from bridge.connections.activation import Activation, TooManyActivations
from bridge.connections.registry import ConnectionRegistry
from bridge.connections.secrets import SecretBox
from bridge.errors import ApiError, ConfigError, Rejected
from bridge.log import get_logger
from bridge.process.runtime import Runtime
from bridge.servicem8.oauth import InvalidState, OAuthConfig
from bridge.store.keys import FleetKeys

log = get_logger(__name__)

ACTIVATE_PATH = "/oauth/servicem8/activate"
REFUSED = {
    "rate": "Too many activations were started from your address in the last minute. Nothing "
    "was stored; wait a minute, then start the activation again.",
    "pending": "Too many activations are waiting to be finished on this bridge right now. "
    "Nothing was stored; start the activation again in a few minutes.",
}


def activation_for(settings: Settings, runtime: Runtime) -> Activation | None:
    """The deployment's activation, or None without an OAuth registration. A registration
    without ``BRIDGE_SECRET_KEYS`` is a ``ConfigError``: a grant is never stored in the clear."""
    config = OAuthConfig.from_settings(settings)
    if config is None:
        return None
    try:
        box = SecretBox.from_settings(settings)
    except ConfigError as exc:
        raise ConfigError(f"SERVICEM8_OAUTH_CLIENT_ID is set, so grants are kept: {exc}") from None
    registry = ConnectionRegistry(
        runtime.redis, box, keys=FleetKeys.for_deployment(settings.bridge_connection_id),
        environment=settings,
    )  # fmt: skip
    return Activation(registry, config, servicem8_base_url=settings.servicem8_base_url)


def add_activation_routes(app: FastAPI, activation: Activation) -> None:
    callback_path = urlsplit(activation.config.redirect_uri).path or "/"
    if callback_path == ACTIVATE_PATH:
        raise ConfigError("SERVICEM8_OAUTH_REDIRECT_URI must not be the activation page itself")

    @app.get(ACTIVATE_PATH, include_in_schema=False)
    async def activate(request: Request) -> Response:
        label = request.query_params.get("label")
        client = request.client.host if request.client is not None else ""
        try:
            url = await run_in_threadpool(activation.url, label, client)
        except TooManyActivations as exc:
            log.warning("oauth.activation_refused", why=exc.why)
            return _page(429, REFUSED[exc.why], {"Retry-After": str(exc.retry_after)})
        log.info("oauth.activation_started")
        return RedirectResponse(url, status_code=302)

    @app.get(callback_path, include_in_schema=False)
    async def callback(request: Request) -> Response:
        query = request.query_params
        error = query.get("error")
        if error is not None:
            log.info("oauth.activation_declined", error=error[:40])
            return _page(400, "ServiceM8 did not authorise the add-on. Nothing was stored; "
                              "start the activation again to connect the account.")  # fmt: skip
        state, code = query.get("state"), query.get("code")
        if not state or not code:
            return _page(400, "This is not a ServiceM8 activation answer (no code or state).")
        try:
            done = await run_in_threadpool(activation.complete, state, code)
        except InvalidState:
            log.warning("oauth.activation_refused", why="state")
            return _page(400, "This activation link is unknown, used already or expired. "
                              "Nothing was stored; start the activation again.")  # fmt: skip
        except Rejected:
            log.warning("oauth.activation_refused", why="code")
            return _page(400, "ServiceM8 refused the authorisation code (used or expired). "
                              "Nothing was stored; start the activation again.")  # fmt: skip
        except ApiError as exc:
            log.error("oauth.activation_failed", **exc.describe())
            return _page(502, "ServiceM8 could not be reached to finish the activation. "
                              "Nothing was stored; start the activation again.")  # fmt: skip
        connection = done.connection
        if done.new:
            text = (f"The ServiceM8 account is authorised as connection {connection.id}. "
                    "It syncs once an operator pairs it with a Coredination account.")  # fmt: skip
        else:
            text = (f"The ServiceM8 account's authorisation is renewed (connection "
                    f"{connection.id}, {connection.status}).")  # fmt: skip
        return _page(200, text)


def _page(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(text + "\n", status_code=status, headers=headers)
