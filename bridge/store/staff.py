"""The staff ⇄ user map (by e-mail, overridable by hand) and the directories read from both APIs
(staff, users, allocation windows), with when each was last fetched."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.store.keys import Keys
from bridge.store.parked import dump


@dataclass(frozen=True)
class StaffMap:
    s2u: dict[str, int]
    u2s: dict[int, str]
    manual: frozenset[str]


class StaffStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    def staff_map(self) -> StaffMap:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.staff_to_user)
            pipe.smembers(self.keys.manual_links)
            s2u_raw, manual_raw = pipe.execute()
        s2u = {k.decode(): int(v) for k, v in s2u_raw.items()}
        return StaffMap(
            s2u, {u: s for s, u in s2u.items()}, frozenset(m.decode() for m in manual_raw)
        )

    def mapped_count(self) -> int:
        return int(self.r.hlen(self.keys.staff_to_user))

    def link(self, staff_uuid: str, user_id: int, *, manual: bool) -> None:
        current = self.staff_map()
        with self.r.pipeline() as pipe:
            old_staff = current.u2s.get(user_id)
            if old_staff is not None and old_staff != staff_uuid:
                pipe.hdel(self.keys.staff_to_user, old_staff)
            old_user = current.s2u.get(staff_uuid)
            if old_user is not None:
                pipe.hdel(self.keys.user_to_staff, str(old_user))
            pipe.hset(self.keys.staff_to_user, staff_uuid, str(user_id))
            pipe.hset(self.keys.user_to_staff, str(user_id), staff_uuid)
            if manual:
                pipe.sadd(self.keys.manual_links, staff_uuid)
            pipe.execute()

    def unlink(self, staff_uuid: str, *, manual: bool) -> int | None:
        user = self.r.hget(self.keys.staff_to_user, staff_uuid)
        with self.r.pipeline() as pipe:
            pipe.hdel(self.keys.staff_to_user, staff_uuid)
            if user is not None:
                pipe.hdel(self.keys.user_to_staff, user.decode())
            if manual:
                pipe.sadd(self.keys.manual_links, staff_uuid)
            pipe.execute()
        return int(user) if user is not None else None

    def save_directory(self, kind: str, entries: Mapping[str, dict[str, Any]]) -> None:
        key = self.keys.directory(kind)
        with self.r.pipeline() as pipe:
            pipe.delete(key)
            if entries:
                pipe.hset(key, mapping={k: dump(v) for k, v in entries.items()})
            pipe.execute()

    def directory(self, kind: str) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.directory(kind))
        return {k.decode(): json.loads(v) for k, v in raw.items()}
