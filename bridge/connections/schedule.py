"""``FleetSchedule``: the periodic work of every registry connection (polls, sweeps, the staff
match, deferred work, reconciles) in one sorted set, claimed by one ticking task about every
second (docs/connections.md#one-scheduler-tick).

One beat entry per connection would not do: celery-redbeat's dynamic entries misfire
(sibson/redbeat#290), and beat's loop grows with the entries. Here the tick's cost grows with
the work that is due, not with the connections: a Lua script takes what is due and books its
next time in the same step, so two ticks (a standby beat, a redelivered message) never claim
one item twice. A connection's first times are spread over its intervals by a hash of its id,
so a thousand connections do not all poll in the same second.

Imports only the key schema; never ``tasks``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from bridge.store.keys import FleetKeys

# KEYS: due (zset), every (hash). ARGV: now, limit. Due members move to now + their interval;
# a member with no interval left (its connection is gone) is dropped instead. Returns member,
# due time, member, due time, ... (the times as strings, Lua's numbers would lose the fraction).
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[2]))
local now = tonumber(ARGV[1])
for i = 1, #due, 2 do
  local member = due[i]
  local every = tonumber(redis.call('HGET', KEYS[2], member))
  if every then
    redis.call('ZADD', KEYS[1], now + every, member)
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return due
"""

# KEYS: the deployment's deferred index. ARGV: now, limit. Takes the connections whose earliest
# deferred work is due (each handed out once), returning connection, due time, ...
_TAKE_DEFERRED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
return due
"""

CLAIM_LIMIT = 1000  # items one tick takes at most; the rest are taken by the next


class Claimed(NamedTuple):
    """One claimed item: whose, which task, and when it was due (epoch seconds)."""

    connection: str
    task: str
    due: float


def member(connection: str, task: str) -> str:
    return f"{connection}|{task}"


def split(item: str) -> tuple[str, str]:
    connection, _, task = item.partition("|")
    return connection, task


def offset(connection: str, every: float) -> float:
    """Where in its interval a connection's work falls: the same for the same id, spread
    evenly over many ids."""
    return (zlib.crc32(connection.encode()) % 1000) / 1000 * every


class FleetSchedule:
    def __init__(self, redis: Any, keys: FleetKeys | None = None) -> None:
        self.r = redis
        self.keys = keys or FleetKeys()
        self._claim = redis.register_script(_CLAIM)
        self._take_deferred = redis.register_script(_TAKE_DEFERRED)

    def plan(self, work: Mapping[str, float], now: float) -> None:
        """Make the schedule hold exactly ``work`` (member → interval in seconds): new members
        get their first time (spread by ``offset``), changed intervals take effect at the next
        claim, members of connections no longer active are dropped."""
        held: dict[Any, Any] = self.r.hgetall(self.keys.every)
        current = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in held.items()}
        gone = [m for m in current if m not in work]
        changed = {m: every for m, every in work.items() if current.get(m) != every}
        if not gone and not changed:
            return
        with self.r.pipeline(transaction=True) as pipe:
            if gone:
                pipe.hdel(self.keys.every, *gone)
                pipe.zrem(self.keys.due, *gone)
            if changed:
                pipe.hset(self.keys.every, mapping={m: repr(e) for m, e in changed.items()})
                first = {m: now + offset(split(m)[0], e) for m, e in changed.items()}
                # New members get their first time; a shortened interval takes effect now
                # rather than after the old one ran out (``lt``: never later than booked).
                added = {m: t for m, t in first.items() if m not in current}
                shortened = {m: t for m, t in first.items() if m in current}
                if added:
                    pipe.zadd(self.keys.due, added, nx=True)
                if shortened:
                    pipe.zadd(self.keys.due, shortened, lt=True)
            pipe.execute()

    def claim(self, now: float, limit: int = CLAIM_LIMIT) -> list[Claimed]:
        """The items due by ``now``, each booked for its next time."""
        flat = self._claim(keys=[self.keys.due, self.keys.every], args=[repr(now), limit])
        items = []
        for raw, due in zip(flat[::2], flat[1::2], strict=True):
            connection, task = split(raw.decode() if isinstance(raw, bytes) else raw)
            items.append(Claimed(connection, task, float(due)))
        return items

    def take_deferred(self, now: float, limit: int = CLAIM_LIMIT) -> list[tuple[str, float]]:
        """The connections with deferred work due by ``now`` (``FleetKeys.deferred``), each
        taken from the index: its release task indexes again whatever it leaves."""
        flat = self._take_deferred(keys=[self.keys.deferred], args=[repr(now), limit])
        return [(raw.decode() if isinstance(raw, bytes) else raw, float(due))
                for raw, due in zip(flat[::2], flat[1::2], strict=True)]  # fmt: skip

    def due_again(self, items: list[Claimed], now: float) -> None:
        """Claimed items that were not queued after all (the tick failed part-way): due now."""
        if items:
            self.r.zadd(self.keys.due, {member(i.connection, i.task): now for i in items})

    def size(self) -> int:
        return int(self.r.zcard(self.keys.due))
