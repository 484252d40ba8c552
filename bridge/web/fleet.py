"""Webhooks per connection (docs/connections.md#webhooks): which receiver a delivery's token
belongs to. The environment's connection keeps ``WEBHOOK_TOKEN``; each other connection's
callback URLs carry a token derived from it and the connection's id
(``connection_webhook_token``), so nothing is stored: the receiver keeps, per connection, the
SHA-256 of its token and finds a delivery's connection by the hash of the token it came with.
The view of the registry is read again at most every 5 s (``FleetView``); a paused or unpaired
connection's deliveries are answered 200 and dropped (its polls catch up once it is active).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
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
        given: R,
        settings: Settings,
        runtime: Runtime,
        make: Callable[[Settings, Stores, Any, str | None], R],
    ) -> None:
        """``given``: the receiver of the connection ``runtime`` is for (the web process's own
        runtime, built already); ``make(settings, stores, send, connection)`` builds the
        others'. Every connection is found the same way: by the hash of its token."""
        self.given, self.settings, self.runtime, self.make = given, settings, runtime, make
        self.view = FleetView(settings, runtime.redis_url, client=runtime.redis)
        self._by_hash: dict[str, R] = {}  # sha256(token) → receiver
        self._generation = -1
        self._sender: Celery | None = None

    @property
    def configured(self) -> bool:
        """Whether webhooks can be received at all (``WEBHOOK_TOKEN`` set)."""
        token = self.settings.webhook_token
        return token is not None and bool(token.get_secret_value())

    def find(self, token: str | None) -> R | None:
        """The receiver whose token this is, or None: a wrong or missing token."""
        if token is None or not self.configured:
            return None
        self._refresh()
        return self._by_hash.get(hashlib.sha256(token.encode()).hexdigest())

    def _refresh(self) -> None:
        entries = self.view.entries()  # read again at most every REFRESH_SECONDS
        if self.runtime.connection not in entries:  # it receives before any worker ran
            self.view.registry.upsert_environment(self.settings)
            entries = self.view.entries_now()
        if self.view.generation == self._generation:
            return
        self._generation = self.view.generation
        lanes = self.runtime.lanes
        if self._sender is None:
            self._sender = sender(self.runtime.redis_url, lanes)
        admission = Admission(self.runtime.redis, self.view.keys,
                              self.settings.connection_max_tasks)  # fmt: skip

        def admit(connection: str, lane: str, message: Mapping[str, Any]) -> bool:
            # Within its fair share while the deployment has several active connections.
            return not self.view.shared() or admission.offer(connection, lane, message)

        built = {self.runtime.connection: self.given}
        by_hash = {}
        for connection in entries.values():
            settings = connection.settings(self.settings)
            assert settings.webhook_token is not None
            receiver = built.get(connection.id)
            if receiver is None:
                send = Enqueuer(self._sender, lanes, connection.id, admit).send
                receiver = self.make(settings, Stores.connect(self.runtime.redis, connection.id),
                                     send, connection.id)  # fmt: skip
            receiver.active = connection.status == "active"
            digest = hashlib.sha256(settings.webhook_token.get_secret_value().encode())
            by_hash[digest.hexdigest()] = receiver
        self._by_hash = by_hash
