"""The staff ⇄ user map (by e-mail, overridable by hand), the directories read from both APIs
(staff, users, allocation windows), the last whole match, the matches asked per person and the
lock that keeps matches one at a time."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.lock import Lock

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
        self._matched = False  # a whole match is on record (it stays so: kept once seen)

    def staff_map(self) -> StaffMap:
        with self.r.pipeline(transaction=False) as pipe:
            self.queue_map(pipe)
            return self.read_map(pipe.execute())

    def queue_map(self, pipe: Any) -> None:
        """The staff map's reads, on a pipeline the caller executes (``read_map`` its replies)."""
        pipe.hgetall(self.keys.staff_to_user)
        pipe.smembers(self.keys.manual_links)

    def read_map(self, replies: Sequence[Any]) -> StaffMap:
        s2u_raw, manual_raw = replies
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

    # --- the last whole match, matches asked per person, one match at a time ---------------------
    def last_match(self) -> dict[str, str]:
        """``at`` (when the last whole match read both lists) and ``users`` (``listed`` or
        ``missing``); empty before the first."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.staff_match)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def matched_once(self) -> bool:
        """A whole match is on record. Asked before every job sync, so once true it is answered
        from memory: the record is never removed while the connection's keys live."""
        if not self._matched:
            self._matched = bool(self.r.exists(self.keys.staff_match))
        return self._matched

    def record_match(self, at: float, *, users: str) -> None:
        self.r.hset(self.keys.staff_match, mapping={"at": repr(at), "users": users})
        self._matched = True

    def ask(self, people: Iterable[str], seconds: float) -> list[str]:
        """Ask a match for each of ``people`` (``S`` or ``u:U``) unless one was asked or made
        for them in the last ``seconds``, by any process; returns those asked now."""
        people = sorted(set(people))
        if not people:
            return []
        ttl = max(1, int(seconds))
        with self.r.pipeline(transaction=False) as pipe:
            for person in people:
                pipe.set(self.keys.staff_asked(person), b"1", nx=True, ex=ttl)
            claimed = pipe.execute()
        return [p for p, new in zip(people, claimed, strict=True) if new]

    def asked(self, people: Iterable[str], seconds: float) -> None:
        """A match has just been made for ``people``: none is asked again for ``seconds``."""
        people = sorted(set(people))
        if not people:
            return
        ttl = max(1, int(seconds))
        with self.r.pipeline(transaction=False) as pipe:
            for person in people:
                pipe.set(self.keys.staff_asked(person), b"1", ex=ttl)
            pipe.execute()

    def first_try(self, seconds: float) -> bool:
        """Whether this caller may try the first match now: at most once in ``seconds``,
        whichever process asks (the others wait rather than each spend a call on it)."""
        ttl = max(1, int(seconds))
        return bool(self.r.set(self.keys.staff_first_try, b"1", nx=True, ex=ttl))

    def hold_first_try(self, seconds: float) -> None:
        """The first match waits ``seconds`` (its budget is spent): nobody tries before."""
        self.r.set(self.keys.staff_first_try, b"1", ex=max(1, math.ceil(seconds)))

    def first_try_wait(self) -> float:
        """How long until the first match may be tried again (at least half a second)."""
        left = self.r.pttl(self.keys.staff_first_try)
        return max(0.5, int(left) / 1000 if left and int(left) > 0 else 0.5)

    def match_lock(self, timeout: float, blocking_timeout: float) -> Lock:
        """One staff match at a time across every process. ``with`` it raises redis-py's
        ``LockError`` when another holds it past ``blocking_timeout`` (a task then retries)."""
        lock: Lock = self.r.lock(
            self.keys.staff_lock, timeout=timeout, blocking_timeout=blocking_timeout
        )
        return lock
