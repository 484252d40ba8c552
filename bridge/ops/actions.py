"""What an operator does to a connection, for ``sm8cd`` and the console alike
(``bridge/web/console``): both call these, so a button does exactly what its command does.

Each takes the connection's stores (and, to queue work, a sender for its lanes) and makes no API
call: a replayed operation runs on the workers, and a staff link takes effect as the jobs it
parked sync again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from bridge.connections.admission import Admission
from bridge.connections.registry import ConnectionRegistry
from bridge.connections.secrets import SecretBox
from bridge.queues import Enqueuer
from bridge.store import Stores
from bridge.store.keys import FleetKeys
from bridge.sync.staff import relink

# ``Enqueuer.send`` of the connection's lanes: (task, args, kwargs=…).
Send = Callable[..., None]


class NoSuchEntry(LookupError):
    """A dead letter named that is not there (dropped or replayed already)."""


def enqueuer(
    redis: Any, redis_url: str, deployment: str, connection: str, max_tasks: int
) -> Enqueuer:
    """Sends an operator's tasks for ``connection`` to the deployment's lanes, within the
    connection's fair share while the deployment has several (docs/connections.md#fair-shares)."""
    keys = FleetKeys.for_deployment(deployment)
    connections = ConnectionRegistry(redis, SecretBox(()), keys=keys).list()
    admit = None
    if sum(1 for c in connections if c.status == "active") > 1:
        admit = Admission(redis, keys, max_tasks).offer
    return Enqueuer.for_broker(redis_url, deployment, connection, admit)


def dead_letter_rows(stores: Stores, count: int) -> list[dict[str, Any]]:
    """The oldest ``count`` dead letters, each with ``id``, ``count`` (how often its cause failed:
    one entry per cause) and ``resolved_at`` once its job synced after all."""
    letters = stores.work.dead_letters(count)
    resolved = stores.work.resolved_of([entry_id for entry_id, _ in letters])
    return [
        {"id": entry_id, "count": "1", **fields,
         **({"resolved_at": str(resolved[entry_id])} if entry_id in resolved else {})}
        for entry_id, fields in letters
    ]  # fmt: skip


def selected(stores: Stores, entry_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The named dead letters in full (``NoSuchEntry`` names any that are missing)."""
    wanted = list(dict.fromkeys(entry_ids))
    found = {e: stores.work.get_dead_letter(e) for e in wanted}
    missing = [e for e, entry in found.items() if entry is None]
    if missing:
        raise NoSuchEntry(f"no dead letter {', '.join(missing)}")
    return [{"id": e, **(entry or {})} for e, entry in found.items()]


def replay(stores: Stores, send: Send, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Queue each dead letter's operation again (for the workers) and remove it from the dead
    letters; the ids replayed."""
    replayed = []
    for row in rows:
        send(row["task"], json.loads(row.get("args", "[]")),
             kwargs=json.loads(row.get("kwargs", "{}")))  # fmt: skip
        stores.work.drop_dead_letter(row["id"])
        replayed.append(row["id"])
    return replayed


def drop(stores: Stores, rows: Iterable[dict[str, Any]]) -> list[str]:
    """Remove dead letters without replaying them; the ids removed."""
    return [row["id"] for row in rows if stores.work.drop_dead_letter(row["id"])]


def link_staff(stores: Stores, staff_uuid: str, user_id: int) -> set[str]:
    """Link a staff member to a user by hand (automatic matching leaves it alone); every job
    with a parked pair syncs again. The jobs marked."""
    return relink(stores, staff_uuid, user_id)
