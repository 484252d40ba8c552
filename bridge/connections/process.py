"""``ProcessFleet``: what one worker or beat process holds for its deployment's registry
connections, built on first use after the prefork fork (``tasks.app.BridgeApp.fleet``): its view
of the registry, the schedule the fleet tick claims from, the fair shares of the shared lanes,
the ServiceM8 token keeper, the record of how late claimed work started, and each active
connection's poll health as the tick sees it (``bridge.store.fleet_health``).

Imports the registry's parts; never ``tasks``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping

import redis

from bridge.config import Settings
from bridge.connections.activation import token_keeper
from bridge.connections.admission import LANES, Admission
from bridge.connections.fleet import FleetView
from bridge.connections.models import STATUSES, Connection
from bridge.connections.registry import Loaded
from bridge.connections.schedule import Claimed, FleetSchedule
from bridge.errors import ConnectionPaused
from bridge.http import Credentials
from bridge.http.transport import shared_session
from bridge.queues import POLL_CYCLE
from bridge.servicem8.tokens import BearerAuth, TokenKeeper
from bridge.store.fleet_health import FleetHealth
from bridge.sync.context import SYSTEMS, polled

LATENESS_KEPT = 20_000  # the newest start delays kept (``note_lateness``)
STALE_FACTOR = 3  # a connection is stale after this many of its longest poll intervals
WATCH_AGAIN_SECONDS = 300.0  # who is watched is written again this often, changed or not


def stale_after(settings: Settings) -> float:
    """How long a connection may go without a whole poll of both systems before it counts as
    stale (docs/operations.md#health): three times its longest poll interval, the planned
    ServiceM8 one's bound (or its fixed one), Coredination's, and the stretched one while
    webhooks arrive. 900 s with the default settings."""
    longest = max(
        settings.servicem8_poll_seconds or settings.poll_max_seconds,
        settings.coredination_poll_seconds,
        settings.poll_seconds_with_webhooks,
    )
    return STALE_FACTOR * longest


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
        self.health = FleetHealth(
            client, keys, poll_fields=[polled(system) for system in SYSTEMS], lanes=LANES
        )
        self._watched: tuple[int, float] | None = None  # (view generation, when)
        self._allowed: dict[str, tuple[int, float]] = {}  # id → (revision, stale_after)

    def due(self, now: float, periodic: Callable[[Settings], Mapping[str, float]]) -> list[Claimed]:
        """The registry connections' periodic work due now (``FleetView.due_work``), each
        claimed poll cycle's connection observed on the way (``watch_polls``)."""
        items = self.view.due_work(self.schedule, self.settings, periodic, now)
        self.watch_polls(items, now)
        return items

    def watch_polls(self, items: list[Claimed], now: float) -> None:
        """Keep the fleet's health figures (``FleetHealth``) as the tick works: who is watched
        (the active connections) when the registry changes, and for each poll cycle claimed now,
        what its connection's keys say: its last whole poll (so a connection whose polls stopped
        is seen within one poll interval), dead letters and waiting tasks. The cost follows the
        work claimed, never the fleet's size. A failed write loses one observation; the
        claimed work is queued all the same."""
        with contextlib.suppress(redis.RedisError):
            entries = self.view.entries()  # as ``due_work`` just read them
            watched = self._watched
            if (
                watched is None
                or watched[0] != self.view.generation
                or now - watched[1] >= WATCH_AGAIN_SECONDS
            ):
                self._watch(entries, now)
            claimed = {
                item.connection: self._allowance(entry)
                for item in items
                if item.task == POLL_CYCLE
                and (entry := entries.get(item.connection)) is not None
                and entry.status == "active"
            }
            self.health.observe(claimed, now)

    def _watch(self, entries: Mapping[str, Connection], now: float) -> None:
        """Who is watched: the active connections, each with its allowance; and the registry's
        entries by status."""
        active = {c.id: self._allowance(c) for c in entries.values() if c.status == "active"}
        counts = Counter(c.status for c in entries.values())
        statuses: dict[str, int] = {s: counts[s] for s in STATUSES}
        self.health.watch(active, statuses, now)
        self._watched = (self.view.generation, now)
        self._allowed = {c: held for c, held in self._allowed.items() if c in entries}

    def _allowance(self, connection: Connection) -> float:
        """``stale_after`` of the connection's own settings (its overrides may set its poll
        intervals), computed again when its entry changes."""
        held = self._allowed.get(connection.id)
        if held is None or held[0] != connection.revision:
            held = (connection.revision, stale_after(connection.settings(self.settings)))
            self._allowed[connection.id] = held
        return held[1]

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
