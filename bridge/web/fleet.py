"""Webhooks per connection (docs/connections.md#webhooks): which receiver a delivery's token
belongs to. The deployment's own connection keeps ``WEBHOOK_TOKEN``; each registry connection's
callback URLs carry a token derived from it and the connection's id
(``connection_webhook_token``), so nothing is stored: the receiver keeps, per connection, the
SHA-256 of its token and finds a delivery's connection by the hash of the token it came with.
The view of the registry is read again at most every 5 s (``FleetView``); a paused or unpaired
connection's deliveries are answered 200 and dropped (its polls catch up once it is active).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from celery import Celery

from bridge.config import Settings
from bridge.connections.admission import Admission
from bridge.connections.fleet import FleetView
from bridge.process.runtime import Runtime
from bridge.queues import Enqueuer, sender
from bridge.store import Stores


class Receiving(Protocol):
    active: bool

    def authentic(self, token: str | None) -> bool: ...


R = TypeVar("R", bound=Receiving)


class Receivers(Generic[R]):
    def __init__(
        self,
        own: R,
        settings: Settings,
        runtime: Runtime,
        make: Callable[[Settings, Stores, Any, str | None], R],
    ) -> None:
        """``own``: the deployment's receiver; ``make(settings, stores, send, connection)``
        builds a registry connection's."""
        self.own, self.settings, self.runtime, self.make = own, settings, runtime, make
        self.view = FleetView(settings, runtime.redis_url, client=runtime.redis)
        self._by_hash: dict[str, R] = {}  # sha256(token) → receiver
        self._generation = -1
        self._sender: Celery | None = None

    def find(self, token: str | None) -> R | None:
        """The receiver whose token this is (the deployment's or a registry connection's), or
        None: a wrong or missing token."""
        if token is None:
            return None
        if self.own.authentic(token):
            return self.own
        if self.settings.webhook_token is None:
            return None
        self._refresh()
        return self._by_hash.get(hashlib.sha256(token.encode()).hexdigest())

    def _refresh(self) -> None:
        entries = self.view.entries()  # read again at most every REFRESH_SECONDS
        if self.view.generation == self._generation:
            return
        self._generation = self.view.generation
        own = self.settings.bridge_connection_id
        if self._sender is None:
            self._sender = sender(self.runtime.redis_url, own)
        admission = Admission(self.runtime.redis, self.view.keys,
                              self.settings.connection_max_tasks)  # fmt: skip
        by_hash = {}
        for connection in entries.values():
            if connection.id == own:
                continue  # the deployment's own receives with WEBHOOK_TOKEN
            settings = connection.settings(self.settings)
            assert settings.webhook_token is not None
            send = Enqueuer(self._sender, own, connection.id, admission.offer).send
            receiver = self.make(settings, Stores.connect(self.runtime.redis, connection.id),
                                 send, connection.id)  # fmt: skip
            receiver.active = connection.status == "active"
            digest = hashlib.sha256(settings.webhook_token.get_secret_value().encode())
            by_hash[digest.hexdigest()] = receiver
        self._by_hash = by_hash
