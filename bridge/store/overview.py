"""One connection at a glance, for the operator console (``bridge/web/console``): its parked
pairs and jobs, dead letters, excluded jobs, staff and cursors, read at a fixed cost.

Every list is read in one pipeline of a fixed number of commands whatever the account's size:
each hash by its length and one ``HSCAN`` of at most about ``limit`` fields (Redis returns a small
hash whole and a large one a page at a time), the dead letters by ``XRANGE … COUNT``. A second
round trip reads whether the dead letters shown are resolved. Makes no API call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bridge.store.keys import Keys

SHOWN = 50  # rows of each list a page shows (each list's length is counted whole)


@dataclass
class Some:
    """Up to ``SHOWN`` entries of a list and how many it holds in all."""

    total: int = 0
    rows: dict[str, Any] = field(default_factory=dict)

    @property
    def more(self) -> int:
        return max(0, self.total - len(self.rows))


@dataclass
class Overview:
    pending: Some
    failed_jobs: Some
    excluded: Some
    dead_letters: Some  # id → fields, oldest first, ``resolved_at`` on the resolved ones
    staff: dict[str, dict[str, Any]]  # the ServiceM8 staff directory
    users: dict[str, dict[str, Any]]  # the Coredination users directory
    staff_to_user: dict[str, int]
    cursors: dict[str, str]
    dirty: int
    deferred: int
    accounts: dict[str, str]


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {"reason": "unreadable entry"}


def _some(total: int, scanned: Any, limit: int) -> Some:
    _cursor, fields = scanned
    rows = {k.decode(): _json(v) for k, v in list(fields.items())[:limit]}
    return Some(int(total), rows)


class OverviewStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    def read(self, limit: int = SHOWN) -> Overview:
        k = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            for key in (k.pending, k.failed_jobs, k.excluded):
                pipe.hlen(key)
                pipe.hscan(key, 0, count=limit)
            pipe.xlen(k.dlq)
            pipe.xrange(k.dlq, count=limit)
            pipe.hgetall(k.directory("staff"))
            pipe.hgetall(k.directory("users"))
            pipe.hgetall(k.staff_to_user)
            pipe.hgetall(k.cursor)
            pipe.hlen(k.dirty)
            pipe.zcard(k.deferred)
            pipe.hgetall(k.account)
            (pending_n, pending, failed_n, failed, excluded_n, excluded, dlq_n, dlq, staff, users,
             s2u, cursors, dirty, deferred, accounts) = pipe.execute()  # fmt: skip
        letters = {i.decode(): {f.decode(): v.decode() for f, v in data.items()} for i, data in dlq}
        if letters:
            resolved = self.r.hmget(k.dlq_resolved, list(letters))
            for entry, at in zip(letters.values(), resolved, strict=True):
                if at is not None:
                    entry["resolved_at"] = at.decode()

        def text(raw: dict[bytes, bytes]) -> dict[str, str]:
            return {a.decode(): b.decode() for a, b in raw.items()}

        return Overview(
            pending=_some(pending_n, pending, limit),
            failed_jobs=_some(failed_n, failed, limit),
            excluded=_some(excluded_n, excluded, limit),
            dead_letters=Some(int(dlq_n), letters),
            staff={a.decode(): _json(b) for a, b in staff.items()},
            users={a.decode(): _json(b) for a, b in users.items()},
            staff_to_user={a.decode(): int(b) for a, b in s2u.items()},
            cursors=text(cursors),
            dirty=int(dirty),
            deferred=int(deferred),
            accounts=text(accounts),
        )
