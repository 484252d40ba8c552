"""Many accounts in one deployment: the connection registry in Redis, each connection's settings
overrides, and its secrets encrypted at rest (docs/connections.md).

``ConnectionRegistry`` stores and changes connections (``registry``); ``Connection`` and
``ConnectionSecrets`` are its values (``models``); ``states`` holds the status rules as pure
functions; ``SecretBox`` encrypts with ``BRIDGE_SECRET_KEYS`` (``secrets``); ``stored`` is the
stored form of both parts. With an empty registry, ``default_connection`` is the one the
environment makes, so a single-account deployment runs as before.

Not wired into the workers yet. Imports ``bridge.config``, ``bridge.errors``, ``bridge.log`` and
``bridge.store.keys`` only; never ``tasks``.
"""

from bridge.connections.models import (
    OVERRIDABLE,
    STATUSES,
    Connection,
    ConnectionSecrets,
    ServiceM8Grant,
    Status,
    default_connection,
    default_secrets,
    make_connection,
    validate_overrides,
)
from bridge.connections.registry import ConnectionRegistry, Loaded
from bridge.connections.secrets import SecretBox, new_key

__all__ = [
    "OVERRIDABLE",
    "STATUSES",
    "Connection",
    "ConnectionRegistry",
    "ConnectionSecrets",
    "Loaded",
    "SecretBox",
    "ServiceM8Grant",
    "Status",
    "default_connection",
    "default_secrets",
    "make_connection",
    "new_key",
    "validate_overrides",
]
