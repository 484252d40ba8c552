"""``ProcessFleet``: what one worker or beat process holds for its deployment's registry
connections, built on first use after the prefork fork (``tasks.app.BridgeApp.fleet``): its view
of the registry, the schedule the fleet tick claims from, the fair shares of the shared lanes,
the ServiceM8 token keeper, and the record of how late claimed work started.

Imports the registry's parts; never ``tasks``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping

import redis

from bridge.config import Settings
from bridge.connections.activation import token_keeper
from bridge.connections.admission import Admission
from bridge.connections.fleet import FleetView
from bridge.connections.registry import Loaded
from bridge.connections.schedule import Claimed, FleetSchedule
from bridge.errors import ConnectionPaused
from bridge.http import Credentials
from bridge.http.transport import shared_session
from bridge.servicem8.tokens import BearerAuth, TokenKeeper

LATENESS_KEPT = 20_000  # the newest start delays kept (``note_lateness``)


class ProcessFleet:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.view = FleetView(settings, redis_url)
        client, keys = self.view.client, self.view.keys
        self.schedule = FleetSchedule(client, keys)
        self.admission = Admission(client, keys, settings.connection_max_tasks)
        self.keeper = token_keeper(settings, client, self.view.registry)  # None: no OAuth
        self.session = shared_session()  # every registry connection's calls in this process

    def due(self, now: float, periodic: Callable[[Settings], Mapping[str, float]]) -> list[Claimed]:
        """The registry connections' periodic work due now (``FleetView.due_work``)."""
        return self.view.due_work(self.schedule, self.settings, periodic, now)

    def note_lateness(self, task: str, seconds: float) -> None:
        """How late a task the fleet tick claimed started (the ``fleet`` benchmark reads it):
        the newest ``LATENESS_KEPT`` as ``"at task seconds"`` in one capped list. A failed
        write loses one figure, nothing else."""
        entry = f"{time.time():.3f} {task} {max(0.0, seconds):.3f}"
        with (
            contextlib.suppress(redis.RedisError),
            self.view.client.pipeline(transaction=False) as pipe,
        ):
            pipe.lpush(self.view.keys.lateness, entry)
            pipe.ltrim(self.view.keys.lateness, 0, LATENESS_KEPT - 1)
            pipe.execute()


def servicem8_credentials(loaded: Loaded, keeper: TokenKeeper | None) -> Credentials | None:
    """How a registry connection's ServiceM8 calls authenticate: by its grant (``BearerAuth``)
    or by its API key (None: the settings' key). ``ConnectionPaused`` when its keys cannot be
    used: never the environment's keys for another account (docs/connections.md)."""
    connection = loaded.connection.id
    if not loaded.secrets.has_coredination:
        raise ConnectionPaused(connection, "waiting", "it has no Coredination key")
    if loaded.secrets.servicem8_grant is not None:
        if keeper is None:
            raise ConnectionPaused(connection, "waiting", "it holds a ServiceM8 OAuth grant "
                                   "and SERVICEM8_OAUTH_* is not set")  # fmt: skip
        return BearerAuth(keeper, connection)
    if loaded.secrets.servicem8_api_key is None:
        raise ConnectionPaused(connection, "waiting", "it has no ServiceM8 key or grant")
    return None
