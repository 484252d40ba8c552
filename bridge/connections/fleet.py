"""``FleetView``: what one process knows of its deployment's connections, for the workers that run
them all on shared lanes (``tasks.app.BridgeApp.bridge_runtime``, docs/connections.md#shared-lanes).

A task names its connection; the process looks the connection up here before every task, so a
pause or a change reaches every worker within ``REFRESH_SECONDS`` without a message to each. The
snapshot is one ``HGETALL`` of the registry's public part (no secret: keys are read, and
decrypted, only when a connection's runtime is built).

Imports the registry and the settings; never ``tasks``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge.config import Settings
from bridge.connections.models import Connection
from bridge.connections.registry import ConnectionRegistry
from bridge.connections.schedule import Claimed, FleetSchedule, member, split
from bridge.connections.secrets import SecretBox
from bridge.log import get_logger
from bridge.queues import MATCH_STAFF, RELEASE_DEFERRED, SWEEP
from bridge.redis import conn as redis_conn
from bridge.store.hints import waiting_key
from bridge.store.keys import FleetKeys, Keys
from bridge.sync.hints import HINTED

log = get_logger(__name__)

REFRESH_SECONDS = 5.0  # how stale a process's view of the registry may be


class FleetView:
    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,
    ) -> None:
        self.pid = os.getpid()
        self.clock = clock
        self.client = (
            client if client is not None else redis_conn.client(redis_url, health_check_interval=30)
        )
        self.keys = FleetKeys.for_deployment(settings.bridge_connection_id)
        self.registry = ConnectionRegistry(
            self.client, SecretBox.from_settings(settings), keys=self.keys
        )
        self._entries: dict[str, Connection] = {}
        self._read_at: float | None = None
        self._raw: dict[Any, Any] | None = None
        self.generation = 0  # moves on whenever a read finds the registry changed
        self._bad: set[str] = set()
        self._planned = -1
        self._active = 0  # active entries in ``_entries``, counted when they are read

    def _fresh(self, force: bool = False) -> dict[str, Connection]:
        now = self.clock()
        if force or self._read_at is None or now - self._read_at >= REFRESH_SECONDS:
            raw = self.registry.raw_entries()
            if raw == self._raw:  # unchanged: nothing to decode again (the tick reads it each s)
                self._read_at = now
                return self._entries
            self._raw = raw
            found, bad = self.registry.readable(raw)
            for connection_id in set(bad) - self._bad:  # once per process and entry
                log.error("fleet.connection_unreadable", connection=connection_id)
            self._bad = set(bad)
            entries = {c.id: c for c in found}
            if entries != self._entries:
                self.generation += 1
            self._entries, self._read_at = entries, now
            self._active = sum(1 for c in entries.values() if c.status == "active")
        return self._entries

    def unreadable(self, connection_id: str) -> bool:
        """Its registry entry cannot be read (damaged, or a newer version's)."""
        return connection_id in self._bad

    def entries(self) -> dict[str, Connection]:
        """Every readable connection of the registry, by id (``generation`` moves on a change)."""
        return dict(self._fresh())

    def entry(self, connection_id: str) -> Connection | None:
        return self._fresh().get(connection_id)

    def entries_now(self) -> dict[str, Connection]:
        """Every readable connection, read from the registry now (after a change of our own)."""
        return dict(self._fresh(force=True))

    def due_work(
        self,
        schedule: FleetSchedule,
        settings: Settings,
        periodic: Callable[[Settings], Mapping[str, float]],
        now: float,
    ) -> list[Claimed]:
        """The items due now for every active connection, the environment's included (one
        scheduler for all), each booked for its next time (``FleetSchedule``). ``periodic``: a
        connection's periodic tasks and their intervals, from its settings. The environment's
        connection joins the registry here should nothing have added it yet."""
        entries = self._fresh(force=True)  # planned from what the registry holds now
        if settings.bridge_connection_id not in entries and not self.unreadable(
            settings.bridge_connection_id
        ):
            self.registry.upsert_environment(settings)
            entries = self._fresh(force=True)
        active = [c for c in entries.values() if c.status == "active"]
        if self._planned != self.generation:
            work = {
                member(c.id, task): every
                for c in active
                for task, every in periodic(c.settings(settings)).items()
            }
            held = schedule.r.hkeys(schedule.keys.every)
            before = {split(m.decode() if isinstance(m, bytes) else m)[0] for m in held}
            schedule.plan(work, now)
            self._planned = self.generation
            # A connection new to the schedule matches its staff at once, not at a time spread
            # over the match's interval: its first job syncs find their people mapped.
            starting = [Claimed(c.id, MATCH_STAFF, now) for c in active if c.id not in before]
            schedule.due_again(starting, now)
        if not active:
            return []
        released = [Claimed(connection, RELEASE_DEFERRED, due)
                    for connection, due in schedule.take_deferred(now)]  # fmt: skip
        return self.worth_a_task(schedule.claim(now), now) + released

    def shared(self) -> bool:
        """More than one active connection: each then runs within its fair share of the lanes
        (``Admission``). Alone, a connection has every worker, as a single-account deployment
        always had: there is nobody to be fair to. Asked before every task: counted once per
        read of the registry, not per question."""
        self._fresh()
        return self._active > 1

    def worth_a_task(self, items: list[Claimed], now: float) -> list[Claimed]:
        """``items`` less those that would find nothing to do: a sweep of a connection with no
        job dirty and no hint waiting, a release with no deferred work due. One pipelined
        command per such item, so a thousand idle connections cost Redis a few commands a
        second rather than the workers a few hundred tasks."""
        checked = [item for item in items if item.task in GUARDS]
        if not checked:
            return items
        with self.client.pipeline(transaction=False) as pipe:
            for item in checked:
                GUARDS[item.task](pipe, Keys(item.connection), now)
            found = pipe.execute()
        idle = {item for item, n in zip(checked, found, strict=True) if not n}
        return [item for item in items if item not in idle]


def _sweep_guard(pipe: Any, keys: Keys, now: float) -> None:
    pipe.exists(keys.dirty, *(waiting_key(keys, f"servicem8.{obj}") for obj in HINTED))


def _release_guard(pipe: Any, keys: Keys, now: float) -> None:
    pipe.zcount(keys.deferred, "-inf", repr(now))


# The periodic tasks that often have nothing to do, and how to tell (a count: 0 is nothing).
GUARDS: dict[str, Callable[[Any, Keys, float], None]] = {
    SWEEP: _sweep_guard,
    RELEASE_DEFERRED: _release_guard,
}
