"""The values of the connection registry: a ``Connection`` (its public part, what ``bridge
connections show`` prints) and its ``ConnectionSecrets`` (kept apart, encrypted at rest), and the
connection an environment makes by itself (docs/connections.md#the-default-connection).

A connection's settings overrides are restricted to ``OVERRIDABLE`` and validated by the very
``Settings`` fields they override, so a value the environment would refuse is refused here too.
Pure values: no Redis, no key material.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from bridge.config import COREDINATION_DEFAULT_URL, SERVICEM8_DEFAULT_URL, Settings
from bridge.errors import ConfigError

SCHEMA_VERSION = 1  # of the JSON stored for both parts; see ``bridge.connections.registry``
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # BRIDGE_CONNECTION_ID's, bridge/config.py
ConnectionId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Status = Literal["active", "paused", "authorised"]
STATUSES: tuple[Status, ...] = ("active", "paused", "authorised")
# The API-key setting of a connection that holds an OAuth grant (``Connection.settings``).
OAUTH_KEY_PREFIX = "oauth-grant-of:"

# The settings a connection may set for itself; every other setting is the deployment's.
OVERRIDABLE = (
    "servicem8_timezone",
    "servicem8_poll_seconds",
    "coredination_poll_seconds",
    "conflict_tie_winner",
    "servicem8_pull_booking",
    "scope_horizon_days",
    "scope_job_statuses",
    "scope_job_categories",
    "scope_staff_left_out",
)
# One model whose fields are those settings' own fields (type, bounds, choices, description).
_Overrides: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "Overrides",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (Settings.model_fields[name].annotation, Settings.model_fields[name])
        for name in OVERRIDABLE
    },
)


def validate_overrides(values: Mapping[str, object]) -> dict[str, Any]:
    """``values`` (field or environment names) checked as the settings they override; raises
    ``ValueError`` with one line per problem, naming each by its environment name."""
    given = {str(name).lower(): value for name, value in values.items()}
    unknown = sorted(name.upper() for name in given if name not in OVERRIDABLE)
    if unknown:
        allowed = ", ".join(name.upper() for name in OVERRIDABLE)
        raise ValueError(f"{', '.join(unknown)} cannot be set per connection (only {allowed})")
    try:
        checked = _Overrides.model_validate(given)
    except ValidationError as exc:
        raise ValueError(_problems(exc)) from None
    result = checked.model_dump(include=set(given))
    zone = result.get("servicem8_timezone")
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"SERVICEM8_TIMEZONE {zone!r} is not an IANA timezone") from None
    return result


class Connection(BaseModel):
    """One ServiceM8 account paired with one Coredination group. ``id`` never changes: every
    Redis key (``b:{id}:``) and every derived id of the connection depends on it.

    ``status``: ``active`` syncs; ``paused`` does not, and ``reason`` says why; ``authorised``
    is an OAuth grant waiting for an operator to pair it with a Coredination account, and
    nothing syncs (docs/connections.md#states)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: ConnectionId
    label: str | None = Field(
        None, max_length=100, description="A name for people (the activation's, or set at add)."
    )
    servicem8_account: str | None = Field(None, description="The vendor uuid, once known.")
    coredination_group: str | None = Field(
        None,
        description="Its Coredination key's digest, standing for the group the key is "
        "authorised for (Coredination names none). Kept by the registry with the key; none for "
        "the environment's keys.",
    )  # see docs/connections.md#one-account-pair-one-connection
    servicem8_base_url: str = SERVICEM8_DEFAULT_URL
    coredination_base_url: str = COREDINATION_DEFAULT_URL
    status: Status = "active"
    reason: str | None = Field(None, max_length=500, description="Why it is paused.")
    created: int = Field(0, ge=0, description="Epoch seconds.")
    changed: int = Field(0, ge=0, description="Epoch seconds of the last change.")
    revision: int = Field(
        0, ge=0, description="Counts every change, keys included: the workers build the "
        "connection's runtime again when it moves (docs/connections.md#shared-lanes).",
    )  # fmt: skip
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Settings of its own (OVERRIDABLE names)."
    )
    keys: Literal["stored", "environment"] = Field(
        "stored",
        description="Where its API keys come from: the registry's encrypted secrets, "
        "or the environment (the deployment's own connection): never stored.",
    )  # see docs/connections.md#the-default-connection

    @field_validator("servicem8_base_url", "coredination_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return Settings._http_url(value)

    @field_validator("servicem8_account")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        return value.lower() if value else None  # as bridge.http.accounts keeps it

    @field_validator("overrides", mode="before")
    @classmethod
    def _overrides(cls, value: object) -> object:
        return validate_overrides(value) if isinstance(value, Mapping) else value

    def settings(self, base: Settings, secrets: ConnectionSecrets | None = None) -> Settings:
        """``base`` as this connection sees it: its id, base URLs and overrides, and, when given,
        its API keys (a ServiceM8 OAuth grant has no setting: the caller reads it from the
        secrets)."""
        update: dict[str, Any] = {
            "bridge_connection_id": self.id,
            "servicem8_base_url": self.servicem8_base_url,
            "coredination_base_url": self.coredination_base_url,
            **self.overrides,
        }
        if secrets is not None and secrets.servicem8_api_key is not None:
            update["servicem8_api_key"] = secrets.servicem8_api_key
        elif secrets is not None and secrets.servicem8_grant is not None:
            # Never the environment's key for this account: a stand-in no API accepts, which
            # also names the connection's budget until its account is learnt (bridge.http.accounts).
            update["servicem8_api_key"] = SecretStr(f"{OAUTH_KEY_PREFIX}{self.id}")
        if secrets is not None and secrets.coredination_api_key is not None:
            update["coredination_api_key"] = secrets.coredination_api_key
        if base.webhook_token is not None and self.id != base.bridge_connection_id:
            # Its webhooks come to a path of its own (docs/connections.md#webhooks).
            secret = base.webhook_token.get_secret_value()
            update["webhook_token"] = SecretStr(connection_webhook_token(secret, self.id))
        # The values were validated as these very fields (``validate_overrides``).
        return base.model_copy(update=update)


class ServiceM8Grant(BaseModel):
    """A ServiceM8 OAuth grant (docs/servicem8-api.md#oauth): the refresh token changes at every
    refresh, so grant updates are stored whole and at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    access_token: SecretStr
    refresh_token: SecretStr
    expires_at: int = Field(ge=0, description="Epoch seconds the access token expires at.")


class ConnectionSecrets(BaseModel):
    """A connection's keys, only ever stored encrypted. ServiceM8 takes an API key or an OAuth
    grant, not both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    servicem8_api_key: SecretStr | None = None
    servicem8_grant: ServiceM8Grant | None = None
    coredination_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _one_servicem8_credential(self) -> ConnectionSecrets:
        if self.servicem8_api_key is not None and self.servicem8_grant is not None:
            raise ValueError("ServiceM8 takes an API key or an OAuth grant, not both")
        return self

    @property
    def has_servicem8(self) -> bool:
        return self.servicem8_api_key is not None or self.servicem8_grant is not None

    @property
    def has_coredination(self) -> bool:
        return self.coredination_api_key is not None

    @property
    def empty(self) -> bool:
        return not (self.has_servicem8 or self.has_coredination)

    def values(self) -> list[str]:
        """Every secret held, for the log redactor."""
        fields = [self.servicem8_api_key, self.coredination_api_key]
        if self.servicem8_grant is not None:
            fields += [self.servicem8_grant.access_token, self.servicem8_grant.refresh_token]
        return [f.get_secret_value() for f in fields if f is not None and f.get_secret_value()]

    def describe(self) -> dict[str, str]:
        """Which credentials are set, never what they are (for ``sm8cd connections show``)."""
        if self.servicem8_grant is not None:
            servicem8 = f"oauth grant (access token expires at {self.servicem8_grant.expires_at})"
        else:
            servicem8 = "api key set" if self.servicem8_api_key is not None else "not set"
        coredination = "api key set" if self.coredination_api_key is not None else "not set"
        return {"servicem8": servicem8, "coredination": coredination}

    def to_plain(self) -> dict[str, Any]:
        """The plaintext JSON-able form, for encryption only."""
        plain: dict[str, Any] = {"v": SCHEMA_VERSION}
        for name in ("servicem8_api_key", "coredination_api_key"):
            value = getattr(self, name)
            if value is not None:
                plain[name] = value.get_secret_value()
        if self.servicem8_grant is not None:
            grant = self.servicem8_grant
            plain["servicem8_grant"] = {
                "access_token": grant.access_token.get_secret_value(),
                "refresh_token": grant.refresh_token.get_secret_value(),
                "expires_at": grant.expires_at,
            }
        return plain


def connection_webhook_token(secret: str, connection_id: str) -> str:
    """The token in a registry connection's webhook callback URLs: derived from the deployment's
    ``WEBHOOK_TOKEN`` and the connection's id, so the receiver tells the connection by its token
    and nothing needs storing; one connection's token says nothing of another's."""
    mac = hmac.new(secret.encode(), f"connection:{connection_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:40]


def make_connection(**fields: Any) -> Connection:
    """A ``Connection`` from ``fields``, or one ``ConfigError`` line per problem (for commands:
    the id, a URL, a status or an override that would not do)."""
    now = int(time.time())
    fields.setdefault("created", now)
    fields.setdefault("changed", fields["created"])
    try:
        return Connection(**fields)
    except ValidationError as exc:
        raise ConfigError(f"connection {fields.get('id')!r}: {_problems(exc)}") from None


def default_connection(settings: Settings) -> Connection:
    """The connection the environment makes: named by ``BRIDGE_CONNECTION_ID``, with the
    environment's base URLs and keys (``keys="environment"``: its keys are never stored). It is
    upserted into the registry at start (``ConnectionRegistry.upsert_environment``), so adding
    another connection never stops it."""
    return Connection(
        id=settings.bridge_connection_id,
        servicem8_base_url=settings.servicem8_base_url,
        coredination_base_url=settings.coredination_base_url,
        keys="environment",
    )


def default_secrets(settings: Settings) -> ConnectionSecrets:
    """The default connection's keys: ``SERVICEM8_API_KEY`` and ``COREDINATION_API_KEY``."""
    return ConnectionSecrets(
        servicem8_api_key=settings.servicem8_api_key,
        coredination_api_key=settings.coredination_api_key,
    )


def _problems(exc: ValidationError) -> str:
    """One line per error, without the input value (which may be a secret)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "value"
        if where in OVERRIDABLE:
            where = where.upper()
        message = error["msg"]
        if error["type"] == "value_error":  # a validator's own message, without "Value error, "
            message = str(error.get("ctx", {}).get("error", message))
        # The overrides' messages name each override already.
        problems.append(message if where == "overrides" else f"{where} {message}")
    return "; ".join(problems)
