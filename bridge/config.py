"""Settings: the only module that reads the environment (and a ``.env`` file).

Every secret is a ``SecretStr`` so ``repr()`` and logs show ``**********``.
``load_settings()`` turns a missing or malformed variable into one ``ConfigError`` line
naming it, never a traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigError
from bridge.store.keys import RESERVED_CONNECTION_IDS
from mappings.scope import Scope, names

SERVICEM8_DEFAULT_URL = "https://api.servicem8.com/api_1.0"
COREDINATION_DEFAULT_URL = "https://app.coredination.net/api/1"
SERVICEM8_AUTHORIZE_URL = "https://go.servicem8.com/oauth/authorize"
SERVICEM8_TOKEN_URL = "https://go.servicem8.com/oauth/access_token"  # noqa: S105 (a URL)
# ServiceM8's job statuses (docs/servicem8-api.md#records), as SCOPE_JOB_STATUSES names them.
JOB_STATUSES = ("Quote", "Work Order", "Unsuccessful", "Completed")
UUID_TEXT = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def _job_statuses(value: str) -> str:
    """``*``, or ServiceM8 job statuses, comma-separated (SCOPE_JOB_STATUSES)."""
    given = names(value.split(","))
    unknown = sorted(given - names(JOB_STATUSES))
    if value.strip() != "*" and (unknown or not given):
        raise ValueError(f"must be * or job statuses among {', '.join(JOB_STATUSES)}, "
                         f"comma-separated (not {', '.join(unknown) or 'empty'})")  # fmt: skip
    return value


def _uuid_list(value: str | None) -> str | None:
    """Uuids, comma-separated (SCOPE_JOB_CATEGORIES, SCOPE_STAFF_LEFT_OUT)."""
    bad = [
        v.strip() for v in (value or "").split(",") if v.strip() and not UUID_TEXT.match(v.strip())
    ]
    if bad:
        raise ValueError(f"must be uuids, comma-separated ({bad[0][:40]!r} is none)")
    return value


JobStatuses = Annotated[str, AfterValidator(_job_statuses)]
UuidList = Annotated[str | None, AfterValidator(_uuid_list)]


class Settings(BaseSettings):
    """One connection: a ServiceM8 account, a Coredination group, where the bridge keeps state.

    The field name in upper case is the environment variable (``servicem8_api_key`` is
    ``SERVICEM8_API_KEY``).
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- the two APIs -------------------------------------------------------------------------
    servicem8_api_key: SecretStr = Field(description="ServiceM8 API key (X-Api-Key header).")
    servicem8_base_url: str = Field(SERVICEM8_DEFAULT_URL, description="ServiceM8 REST base URL.")
    coredination_api_key: SecretStr = Field(description="Coredination API key (API-Key header).")
    coredination_base_url: str = Field(
        COREDINATION_DEFAULT_URL, description="Coredination REST base URL."
    )
    servicem8_timezone: str | None = Field(
        None, description="IANA zone of ServiceM8's stamps; default: the vendor's timezone_name."
    )

    # --- the bridge ------------------------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None, description="Redis for broker, links and budgets; unset: an embedded Redis."
    )
    redis_sentinel_master: str = Field(
        "mymaster",
        min_length=1,
        description="The Sentinel master name, for a REDIS_URL naming a Sentinel group "
        "(sentinel://[:password@]host1:26379,host2:26379/db, bridge/redis/conn.py) without "
        "?master=NAME.",
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description="Password of the sentinels themselves (their requirepass), for a "
        "sentinel:// REDIS_URL; the password in the URL is the Redis data nodes'.",
    )
    webhook_token: SecretStr | None = Field(
        None, description="Secret carried in webhook callback URLs; required by the web receiver."
    )
    webhook_public_url: str | None = Field(
        None,
        description="Where ServiceM8 and Coredination reach the web receiver (https://...); "
        "used by 'sm8cd webhooks subscribe'.",
    )
    webhook_max_body_bytes: int = Field(
        262_144, gt=0, description="Larger webhook bodies are not read (answered 200, counted)."
    )
    webhook_dedupe_seconds: int = Field(
        86_400, gt=0, description="How long a webhook delivery is remembered to drop repeats."
    )
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token /metrics requires; unset: loopback clients only."
    )
    console_password: SecretStr | None = Field(
        None, description="Operator console password (/console on the web port); unset: off."
    )
    console_user: str = Field("operator", min_length=1, description="The console's user name.")
    bridge_connection_id: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Names this connection; namespaces every Redis key and derived id.",
    )
    bridge_state_dir: Path = Field(
        Path(".bridge"), description="Local folder for the embedded Redis and other state."
    )
    bridge_secret_keys: SecretStr | None = Field(
        None,
        description="Fernet keys that encrypt the connection registry's secrets at rest, "
        "comma-separated: the first encrypts, every one decrypts (rotation: put a new key first, "
        "run 'sm8cd secrets rotate', then drop the old one). Make one with 'sm8cd secrets "
        "new-key'. Unset: connections with keys cannot be stored (docs/connections.md).",
    )

    connection_max_tasks: int = Field(
        2,
        ge=1,
        description="The most tasks one registry connection may have queued or running at "
        "once on the shared lanes (the rest wait in Redis, docs/connections.md#fair-shares); "
        "keep it below the deployment's worker processes. The deployment's own connection "
        "has no such limit.",
    )

    # --- ServiceM8 OAuth, for accounts that add the bridge as a public add-on ----------------
    # (docs/servicem8-oauth.md). Unset: no activation page, and a connection holding a grant waits.
    servicem8_oauth_client_id: str | None = Field(
        None, description="The add-on's OAuth client id (its App ID)."
    )
    servicem8_oauth_client_secret: SecretStr | None = Field(
        None, description="The add-on's OAuth client secret (its App Secret)."
    )
    servicem8_oauth_redirect_uri: str | None = Field(
        None,
        description="The redirect URI registered with ServiceM8 (https://.../oauth/servicem8/"
        "callback, served by 'sm8cd web'); never taken from a request.",
    )
    servicem8_oauth_authorize_url: str = Field(
        SERVICEM8_AUTHORIZE_URL, description="ServiceM8's authorize page."
    )
    servicem8_oauth_token_url: str = Field(
        SERVICEM8_TOKEN_URL, description="ServiceM8's token endpoint."
    )
    servicem8_oauth_refresh_margin_seconds: float = Field(
        300.0,
        ge=0,
        description="An access token with less left than this is refreshed before a call.",
    )

    # --- budgets (docs/operations.md#budget; ServiceM8's limits: docs/servicem8-api.md#limits) ---
    servicem8_rate_per_minute: int = Field(180, gt=0, description="ServiceM8 calls per window.")
    servicem8_rate_window_seconds: float = Field(
        60, gt=0, description="The 'minute' window's length (shorter in tests)."
    )
    servicem8_rate_per_day: int = Field(20_000, gt=0, description="ServiceM8 calls per day.")
    servicem8_day_reset_timezone: str | None = Field(
        None, description="Where ServiceM8's day ends; default: the account's timezone."
    )
    coredination_rate_per_minute: int = Field(600, gt=0)
    budget_margin_seconds: float = Field(
        1.0, ge=0, description="Added to every budget window, against request timing jitter."
    )
    budget_max_sleep_seconds: float = Field(
        2.0,
        ge=0,
        le=30,
        description="A call whose budget slot frees within this many seconds reserves it and "
        "waits in place; longer waits are deferred.",
    )
    bulk_reserve_share: float = Field(
        0.2, ge=0, lt=1, description="Share of each window that bulk work (backfill) may not take."
    )
    auth_pause_seconds: float = Field(
        300.0, gt=0, description="How long 401/402/403 pause an API before one probe call."
    )

    # --- sync ------------------------------------------------------------------------------------
    servicem8_poll_seconds: float | None = Field(
        None,
        gt=0,
        description="A fixed ServiceM8 poll interval for every object. Unset (the default): each "
        "object's interval is planned from the day's budget (POLL_BUDGET_SHARE, BUSY_HOURS).",
    )
    poll_budget_share: float = Field(
        0.5, gt=0, le=1, description="Share of SERVICEM8_RATE_PER_DAY that planned polls may spend."
    )
    busy_hours: str = Field(
        "06:00-19:00",
        pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$",
        description="The account's working hours (HH:MM-HH:MM, its timezone): planned polls run "
        "most often then.",
    )
    poll_min_seconds: float = Field(5.0, gt=0, description="Shortest planned poll interval.")
    poll_max_seconds: float = Field(300.0, gt=0, description="Longest planned poll interval.")
    coredination_poll_seconds: float = Field(60.0, gt=0, description="Coredination poll interval.")
    trail_entries: int = Field(12, ge=0, le=1000, description="Entries kept per job's trail "
                               "('sm8cd explain'), newest, 30 days at most. 0: none.")  # fmt: skip
    coredination_census_seconds: float = Field(
        300.0,
        ge=0,
        description="How often a Coredination poll lists every job instead of the changed ones "
        "once the account has 500 jobs or more (below that every poll does, at no extra call): "
        "a job deleted there shows by its absence. Set it to COREDINATION_POLL_SECONDS to notice "
        "at every poll in a large account, at one whole list per poll. 0: never.",
    )
    poll_seconds_with_webhooks: float = Field(
        300.0,
        ge=0,
        description="While a system's webhooks arrive, poll it only this often (0: never "
        "stretch the interval): the poll is then a safety net, and ServiceM8 calls are saved.",
    )
    reconcile_seconds: float = Field(
        86_400.0,
        ge=0,
        description="How often beat compares both systems whole and repairs drift (0: never).",
    )
    staff_match_seconds: float = Field(900.0, gt=0, description="Staff ⇄ user re-match interval.")
    hint_coalesce_ms: int = Field(
        500,
        ge=0,
        description="ServiceM8 webhook hints of one object wait up to this long to be read "
        "together in one list read (0: one read per hint).",
    )
    webhook_health_seconds: float = Field(
        900.0,
        ge=0,
        description="How often beat lists ServiceM8's webhook subscriptions and posts again any "
        "of the bridge's that ServiceM8 deactivated (0: never; runs only with "
        "WEBHOOK_PUBLIC_URL set). One API call each time.",
    )
    servicem8_poll_overlap_seconds: int = Field(
        900, ge=0, description="How far behind its cursor each ServiceM8 poll re-reads."
    )
    conflict_tie_winner: Literal["servicem8", "coredination"] = Field(
        "servicem8", description="Who wins when both sides changed at the same moment."
    )
    coredination_send_message: bool = Field(
        False, description="Ask Coredination to notify users the bridge schedules."
    )
    servicem8_pull_booking: Literal["auto", "flexible", "fixed"] = Field(
        "auto",
        description="The ServiceM8 booking made for a person scheduled in Coredination: auto, a "
        "fixed-time booking on a timed job and a flexible one otherwise; flexible, always a job "
        "allocation; fixed, always a fixed-time booking (for accounts without the Job "
        "Allocations add-on; an assignment without a time is then not booked).",
    )

    # --- scope: what syncs (docs/scope.md) --------------------------------------------------------
    scope_horizon_days: int = Field(
        1,
        ge=0,
        le=3650,
        description="Bookings before the start of the day this many days ago (in the account's "
        "timezone) are history and never create a Coredination job nor put anyone on one: 1, "
        "from the start of yesterday; 0, from the start of today.",
    )
    scope_job_statuses: JobStatuses = Field(
        "Quote,Work Order",
        min_length=1,
        description="The ServiceM8 job statuses that sync, comma-separated (Quote, Work Order, "
        "Unsuccessful, Completed), or * for every status; a job of another status is left alone.",
    )
    scope_job_categories: UuidList = Field(
        None,
        description="The ServiceM8 job categories that sync, as category uuids, comma-separated; "
        "unset: every category.",
    )
    scope_staff_left_out: UuidList = Field(
        None,
        description="ServiceM8 staff members whose bookings never sync, as staff uuids, "
        "comma-separated; unset: nobody is left out.",
    )

    # --- HTTP ------------------------------------------------------------------------------------
    http_connect_timeout: float = Field(5.0, gt=0, description="Seconds to open a connection.")
    http_read_timeout: float = Field(30.0, gt=0, description="Seconds to wait for a response.")

    # --- logging ---------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise."
    )

    @field_validator("servicem8_base_url", "coredination_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("bridge_connection_id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_CONNECTION_IDS:
            raise ValueError(f"{value!r} is taken by keys of no connection (b:{value}:...)")
        return value

    @field_validator("busy_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        for part in value.split("-"):
            hour, minute = (int(x) for x in part.split(":"))
            if hour > 23 or minute > 59:
                raise ValueError("must be HH:MM-HH:MM with times of day")
        return value

    def busy_span(self) -> tuple[time, time]:
        start, end = (part.split(":") for part in self.busy_hours.split("-"))
        return time(int(start[0]), int(start[1])), time(int(end[0]), int(end[1]))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, for the log redactor."""
        values = [
            self.servicem8_api_key,
            self.coredination_api_key,
            self.webhook_token,
            self.metrics_token,
            self.console_password,
            self.redis_sentinel_password,
            self.servicem8_oauth_client_secret,
        ]
        secrets = [v.get_secret_value() for v in values if v is not None]
        if self.bridge_secret_keys is not None:
            # Each key alone as well: a message may hold one key, not the whole list.
            keys = self.bridge_secret_keys.get_secret_value()
            secrets += [keys, *(k.strip() for k in keys.split(","))]
        if self.redis_url is not None:
            parts = urlsplit(self.redis_url.get_secret_value())
            if parts.password:
                secrets.append(parts.password)
            # A sentinel:// URL may carry the sentinels' password too (bridge/redis/conn.py).
            secrets += parse_qs(parts.query).get("sentinel_password", [])
        return [s for s in secrets if s]


def scope(settings: Settings) -> Scope:
    """The scope the settings name (``mappings.scope.Scope``; docs/scope.md)."""
    statuses = settings.scope_job_statuses.strip()
    return Scope(
        horizon_days=settings.scope_horizon_days,
        statuses=frozenset() if statuses == "*" else names(statuses.split(",")),
        categories=names((settings.scope_job_categories or "").split(",")),
        staff_left_out=names((settings.scope_staff_left_out or "").split(",")),
    )


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or raise ``ConfigError`` with one line naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            message = "is required" if error["type"] == "missing" else error["msg"]
            problems.append(f"{name} {message}")
        raise ConfigError("configuration: " + "; ".join(problems)) from None


# The prefixes of the bridge's own settings: a variable with one of them that no setting reads is
# most likely misspelt (WEBHOOK_TOKN), and silently ignoring it would leave the setting unset.
PREFIXES = ("BRIDGE_", "SERVICEM8_", "COREDINATION_", "WEBHOOK_", "REDIS_", "SCOPE_")


def unknown_settings(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """Each of ``names`` that looks like one of the bridge's settings but is none, with the
    nearest known name (or None)."""
    known = sorted(name.upper() for name in Settings.model_fields)
    found = []
    for name in sorted({n.upper() for n in names}):
        if name.startswith(PREFIXES) and name not in known:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            found.append((name, near[0] if near else None))
    return found


def env_file_names(path: Path = Path(".env")) -> list[str]:
    """The variable names a ``.env`` file sets (the settings read it too)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    names = []
    for line in lines:
        text = line.strip().removeprefix("export ").strip()
        if text and not text.startswith("#") and "=" in text:
            names.append(text.split("=", 1)[0].strip())
    return names
