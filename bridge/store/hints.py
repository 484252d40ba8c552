"""Webhook hints waiting to be read together (docs/operations.md#hint-coalescing).

A hint is "record X of object O changed". Instead of one read per hint, hints of one object
gather for a short window and one reader then reads them all at once. The hints, not the task
that reads them, are the durable part: each stays in Redis until a reader has ingested what it
said, so a reader that dies leaves them for the next.

Per object: a sorted set of uuids scored by when the hint last arrived (Redis's clock, so hosts'
clocks do not matter), a hash of the earliest change time each hint carried, a window key (set
by the first hint of a window, so one reader is queued per window), a "recent" key (a hint within
two windows: a burst is under way, so hints are gathered; after a quiet spell a lone hint is read
at once), and a lease held by the one reader at work. A hint that arrives again while its
record is being read keeps a score newer than the read, so it is not cleared with the others and
is read again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from bridge.store.keys import Keys

_ADD = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[2] ~= '' then
  local old = redis.call('HGET', KEYS[2], ARGV[1])
  if not old or ARGV[2] < old then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local busy = redis.call('EXISTS', KEYS[4]) == 1
redis.call('SET', KEYS[4], '1', 'PX', 2 * tonumber(ARGV[3]))
if not busy then return 2 end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
return 1
"""
_TAKE = """
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local times = {}
if #ids > 0 then times = redis.call('HMGET', KEYS[2], unpack(ids)) end
for i = 1, #ids do times[i] = times[i] or '' end
return {tostring(now), ids, times}
"""
_DONE = """
local upto = tonumber(ARGV[2])
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= upto then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return redis.call('ZCARD', KEYS[1])
"""
_OLDEST = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return false end
return now - tonumber(first[2])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
MAX_BATCH = 1000  # hints one reader takes at once (the rest wait for the next window)


class Arrival(IntEnum):
    """What a hint's arrival asks of the receiver (``HintStore.add``)."""

    NONE = 0
    AFTER_WINDOW = 1
    NOW = 2


@dataclass(frozen=True)
class HintBatch:
    """What one reader took: the uuids, the change time each hint named ("" when none), and the
    instant (Redis ms) up to which hints are cleared once they are ingested."""

    token: str
    upto_ms: int
    uuids: list[str]
    times: list[str]


def waiting_key(keys: Keys, kind: str) -> str:
    """The zset of ``kind``'s waiting hints (it exists while one waits)."""
    return keys.key(f"hints:{kind}")


class HintStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys
        self._add = redis.register_script(_ADD)
        self._take = redis.register_script(_TAKE)
        self._done = redis.register_script(_DONE)
        self._oldest = redis.register_script(_OLDEST)
        self._renew = redis.register_script(_RENEW)

    def _keys(self, kind: str) -> list[str]:
        k = self.keys.key
        return [waiting_key(self.keys, kind), k(f"hint-times:{kind}"), k(f"hint-window:{kind}")]

    def add(self, kind: str, uuid: str, changed_at: str, window_ms: int) -> Arrival:
        """Record a hint, and say whether to queue a reader: ``NOW`` for the first hint after a
        quiet spell (two windows without one: a lone change is read at once), ``AFTER_WINDOW``
        for the first of a window while hints keep coming (read with those that follow), or
        ``NONE`` when a reader is queued already."""
        keys = [*self._keys(kind), self.keys.key(f"hint-recent:{kind}")]
        return Arrival(int(self._add(keys=keys, args=[uuid, changed_at, window_ms])))

    def take(self, kind: str, token: str, lease_ms: int) -> HintBatch | None:
        """The waiting hints, under a lease of ``lease_ms`` for this reader (``token``); None
        while another reader holds it."""
        hints, times, _ = self._keys(kind)
        lease = self.keys.key(f"hint-lease:{kind}")
        got = self._take(keys=[hints, times, lease], args=[token, lease_ms, MAX_BATCH])
        if not got:
            return None
        upto, uuids, stamps = got
        return HintBatch(token, int(upto), [u.decode() for u in uuids],
                         [s.decode() if isinstance(s, bytes) else "" for s in stamps])  # fmt: skip

    def done(self, kind: str, batch: HintBatch) -> int:
        """Clear the hints the batch covered and give up the lease; returns how many wait still
        (arrived since, or beyond the batch's size)."""
        hints, times, _ = self._keys(kind)
        lease = self.keys.key(f"hint-lease:{kind}")
        left = self._done(
            keys=[hints, times, lease], args=[batch.token, batch.upto_ms, *batch.uuids]
        )
        return int(left)

    def renew(self, kind: str, token: str, lease_ms: int) -> bool:
        """Extend this reader's lease while it still holds it (False: it lapsed)."""
        return bool(self._renew(keys=[self.keys.key(f"hint-lease:{kind}")], args=[token, lease_ms]))

    def lease_held(self, kind: str) -> bool:
        return bool(self.r.exists(self.keys.key(f"hint-lease:{kind}")))

    def release(self, kind: str, token: str) -> None:
        """Give up the lease without clearing anything (the read failed: the hints wait)."""
        self._done(keys=[*self._keys(kind)[:2], self.keys.key(f"hint-lease:{kind}")],
                   args=[token, -1])  # fmt: skip

    def oldest_ms(self, kind: str) -> int | None:
        """How long the oldest waiting hint has waited, or None when none waits."""
        age = self._oldest(keys=[self._keys(kind)[0]])
        return None if age is None else int(age)

    def open_window(self, kind: str, window_ms: int) -> bool:
        """Open a window unless one is open (True: the caller queues its reader)."""
        return bool(self.r.set(self._keys(kind)[2], "1", nx=True, px=window_ms))
