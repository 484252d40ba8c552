"""The stored form of the registry's two parts: a connection's public part as JSON, its secrets as
one Fernet token of their JSON. Both carry ``"v"``, the schema version, so a later layout can be
told apart and read by a loader of its own. No message made here holds a stored value: a damaged
secret would otherwise be quoted by pydantic.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bridge.connections.models import SCHEMA_VERSION, Connection, ConnectionSecrets
from bridge.connections.secrets import SecretBox
from bridge.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def seal(box: SecretBox, secrets: ConnectionSecrets) -> str:
    return box.encrypt(json.dumps(secrets.to_plain()).encode())


def unseal(box: SecretBox, connection_id: str, token: Any) -> ConnectionSecrets:
    """The secrets of a token (none for no token)."""
    if token is None:
        return ConnectionSecrets()
    try:
        plain = box.decrypt(token)
    except ConfigError as exc:
        raise ConfigError(f"connection {connection_id!r}: {exc}") from None
    return _valid(ConnectionSecrets, connection_id, "secrets", plain)


def encode(connection: Connection) -> str:
    return json.dumps({"v": SCHEMA_VERSION, **connection.model_dump(mode="json")})


def decode(connection_id: str, raw: Any) -> Connection:
    return _valid(Connection, connection_id, "record", raw)


def _valid(model: type[M], connection_id: str, what: str, raw: Any) -> M:
    data = _versioned(connection_id, what, raw)
    try:
        return model.model_validate(data)
    except ValidationError:  # its message would quote the values: secrets, for the secrets
        raise ConfigError(f"connection {connection_id!r}: its stored {what} is damaged") from None


def _versioned(connection_id: str, what: str, raw: Any) -> dict[str, Any]:
    """The stored JSON object without its schema version, which must be this code's."""
    try:
        data = json.loads(raw)
        version = data.pop("v", None)
    except (ValueError, AttributeError):  # not JSON, or not an object
        raise ConfigError(f"connection {connection_id!r}: its stored {what} is damaged") from None
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"connection {connection_id!r}: its {what} was stored by another "
            f"version of the bridge (schema {version!r}, this one reads "
            f"{SCHEMA_VERSION})"
        )
    result: dict[str, Any] = data
    return result


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
