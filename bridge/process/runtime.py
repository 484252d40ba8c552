"""Builds the stores, clients, budget and sync context from settings, for the Celery tasks, the
web receiver and the CLI alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

import redis
import requests

from bridge.config import Settings, scope
from bridge.coredination import CoredinationClient
from bridge.errors import ConfigError
from bridge.http import CallGate, Credentials, OpenGate
from bridge.http.accounts import AccountIds, key_digest
from bridge.http.budget import Budget, Window, servicem8_windows
from bridge.redis import conn as redis_conn
from bridge.redis.server import EmbeddedRedis
from bridge.servicem8 import ServiceM8Client
from bridge.store import Stores
from bridge.sync import Engine, SyncContext, SyncOptions
from mappings.ids import connection_namespace
from mappings.pollplan import PollBudget


@dataclass
class Runtime:
    settings: Settings
    redis_url: str
    redis: redis.Redis
    stores: Stores
    engine: Engine
    budget: Budget
    sm8: ServiceM8Client
    cd: CoredinationClient
    embedded: EmbeddedRedis | None = field(default=None)
    # The deployment's name (the environment's ``BRIDGE_CONNECTION_ID``): it names the Celery
    # lanes every connection of the deployment shares (bridge/queues.py). ``None``: this
    # runtime's own connection, as in a single-account deployment.
    deployment: str | None = None
    owns_redis: bool = True  # False: the client is shared with the other connections' runtimes

    @property
    def connection(self) -> str:
        return self.settings.bridge_connection_id

    @property
    def lanes(self) -> str:
        """Whose Celery queues this runtime's work goes to."""
        return self.deployment or self.connection

    def close(self) -> None:
        if self.owns_redis:
            self.redis.close()
        if self.embedded is not None:
            self.embedded.release()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def resolve_redis(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """``REDIS_URL``, or an embedded server in the state folder when it is unset. A Sentinel
    URL comes back with the master's name (and the sentinels' password) written in, so the
    processes and senders handed only the URL reach the same group."""
    if settings.redis_url is not None:
        return with_sentinel_settings(settings, settings.redis_url.get_secret_value()), None
    server = EmbeddedRedis(settings.bridge_state_dir / "redis").start()
    return server.url, server


def with_sentinel_settings(settings: Settings, redis_url: str) -> str:
    """``redis_url`` with ``REDIS_SENTINEL_MASTER``/``REDIS_SENTINEL_PASSWORD`` written into it
    when it names a Sentinel group that does not say them itself; other URLs unchanged."""
    password = settings.redis_sentinel_password
    return redis_conn.with_settings(
        redis_url,
        settings.redis_sentinel_master,
        password.get_secret_value() if password is not None else None,
    )


def build(
    settings: Settings,
    redis_url: str | None = None,
    *,
    budget_wait: float | None = None,
    servicem8_gate: Literal["shared", "open"] = "shared",
    client: redis.Redis | None = None,
    deployment: str | None = None,
    servicem8_credentials: Credentials | None = None,
    session: requests.Session | None = None,
) -> Runtime:
    """Wire everything. ``budget_wait``: how long a call may wait in place for its budget slot
    (default ``BUDGET_MAX_SLEEP_SECONDS``; a one-off command waits longer rather than fail).
    ``servicem8_gate="open"``: ServiceM8 calls skip the shared budget (``bench.rate_limited_app``
    only, the benchmark that shows why the shared budget exists). ``client``: a Redis client to
    share (one connection of many, ``tasks.app.BridgeApp.bridge_runtime``); ``deployment``: whose
    lanes its work goes to (``Runtime.deployment``); ``servicem8_credentials``: how ServiceM8
    calls authenticate, when not by ``SERVICEM8_API_KEY`` (a connection's OAuth grant);
    ``session``: HTTP sessions to share with other connections' runtimes (``shared_session``)."""
    embedded = None
    if redis_url is None:
        redis_url, embedded = resolve_redis(settings)
    redis_url = with_sentinel_settings(settings, redis_url)
    owns_redis = client is None
    if client is None:
        client = redis_conn.client(redis_url, health_check_interval=30)  # ConfigError: malformed
    try:
        client.ping()
    except redis.RedisError as exc:
        if owns_redis:
            client.close()
        raise ConfigError(f"REDIS_URL: cannot reach Redis ({type(exc).__name__})") from None
    stores = Stores.connect(client, settings.bridge_connection_id)
    stores.upgrade_layout()  # links kept by an earlier build, moved once (no-op afterwards)
    sm8_client: ServiceM8Client | None = None

    accounts = AccountIds(
        stores.activity,
        {
            "servicem8": key_digest(
                settings.servicem8_base_url, settings.servicem8_api_key.get_secret_value()
            ),
            "coredination": key_digest(
                settings.coredination_base_url, settings.coredination_api_key.get_secret_value()
            ),
        },
    )

    def day_tz() -> tzinfo:
        if settings.servicem8_day_reset_timezone:
            return ZoneInfo(settings.servicem8_day_reset_timezone)
        # Never a call from here: this runs while a 429 is being handled.
        return sm8_client.known_tz if sm8_client is not None else UTC

    budget = Budget(
        store=stores.budget,
        accounts=accounts,
        windows={
            "servicem8": servicem8_windows(
                settings.servicem8_rate_per_minute,
                settings.servicem8_rate_per_day,
                settings.servicem8_rate_window_seconds,
                settings.budget_margin_seconds,
            ),
            "coredination": [
                Window(
                    "minute",
                    settings.coredination_rate_per_minute,
                    60,
                    settings.budget_margin_seconds,
                )
            ],
        },
        bulk_reserve_share=settings.bulk_reserve_share,
        auth_pause_seconds=settings.auth_pause_seconds,
        day_reset_tz=day_tz,
        max_sleep=settings.budget_max_sleep_seconds if budget_wait is None else budget_wait,
    )
    sm8_gate: CallGate = budget if servicem8_gate == "shared" else OpenGate()
    sm8_client = ServiceM8Client.from_settings(
        settings, gate=sm8_gate, accounts=accounts, credentials=servicem8_credentials,
        session=session, timezones=stores.activity,
    )  # fmt: skip
    legacy = [stores.keys.prefix]  # budgets were per connection before accounts
    accounts.on_learn.append(lambda api, account: budget.adopt(api, account, legacy))
    options = SyncOptions(
        tie=settings.conflict_tie_winner,
        sm8_overlap=timedelta(seconds=settings.servicem8_poll_overlap_seconds),
        send_message=settings.coredination_send_message,
        pull_booking=settings.servicem8_pull_booking,
        lock_seconds=2 * settings.http_read_timeout + 5,
        poll_budget=None if settings.servicem8_poll_seconds else _poll_budget(settings),
        cd_census_seconds=settings.coredination_census_seconds,
        scope=scope(settings),
        trail_entries=settings.trail_entries,
    )
    cd_client = CoredinationClient.from_settings(settings, gate=budget, session=session)
    _apply_probe(stores.activity.probe(), cd_client)

    def calls_last_day() -> int:
        return next((u.used for u in budget.usage()["servicem8"] if u.window == "day"), 0)

    ctx = SyncContext(
        stores,
        sm8_client,
        cd_client,
        connection_namespace(settings.bridge_connection_id),
        options,
        calls_last_day=calls_last_day,
    )
    return Runtime(
        settings,
        redis_url,
        client,
        stores,
        Engine(ctx),
        budget,
        sm8_client,
        cd_client,
        embedded,
        deployment=deployment,
        owns_redis=owns_redis,
    )


def _apply_probe(found: dict[str, Any] | None, cd: CoredinationClient) -> None:
    """What ``sm8cd probe`` proved missing on this account is not tried again by every process
    (docs/probe.md). Without a probe every switch keeps its harder reading: the clients try, and
    learn from the refusal."""
    readings = ((found or {}).get("dialect") or {}).get("coredination") or {}
    cd.unassign_missing = readings.get("unassign") is False
    cd.users_missing = readings.get("users_endpoint") is False


def _poll_budget(settings: Settings) -> PollBudget:
    busy_from, busy_to = settings.busy_span()
    return PollBudget(
        day_limit=settings.servicem8_rate_per_day,
        share=settings.poll_budget_share,
        busy_from=busy_from,
        busy_to=busy_to,
        min_seconds=settings.poll_min_seconds,
        max_seconds=settings.poll_max_seconds,
    )
