"""``FleetHealth``: each active connection's poll health and its figures, kept as work happens so
that reading the fleet's health costs a fixed number of Redis commands however many connections
the deployment runs (docs/connections.md#fleet-status, docs/operations.md#health).

The fleet tick writes (``bridge.connections.process.ProcessFleet``): ``watch`` when the registry
changes (who is active, each one's allowance, the counts by status), ``observe`` for each poll
cycle it claims (that connection's last whole poll, dead letters and waiting tasks, read from its
own keys). ``/healthz``, ``/metrics`` and ``sm8cd status`` read, never more than ``WORST``
connections by name and ``LATENESS_SAMPLE`` lateness entries.

The keys (``FleetKeys``), each bounded by the deployment's active connections:

- ``polled`` (zset): connection → its last whole poll, the older of its two systems' (epoch s);
  when it has had none since it was first watched (it became active, or this release started),
  that moment. Never moves back.
- ``stale-at`` (zset): connection → ``polled`` + its allowance: past it, the connection is stale.
- ``dead-letters`` (zset): connection → its dead letters, while above 0.
- ``health`` (hash): ``dead_letters`` and ``waiting`` (the totals of the watched connections),
  ``waiting:{connection}`` (while above 0), ``status:{status}`` (registry entries by status).

Imports the key schema only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bridge.store.keys import FleetKeys, Keys
from bridge.store.lua import queue

WORST = 5  # the connections a reader names, per figure: the worst few, never all of them
LATENESS_SAMPLE = 1000  # the newest start delays a reader looks at (the list keeps 20,000)
OBSERVE_BATCH = 200  # connections per script run: none holds Redis for long

# KEYS[1..4]: polled, stale-at, dead-letters, health. Shared by both scripts: a connection's
# dead letters and waiting tasks, set to new counts with the totals moved by the difference.
_FIGURES = """
local function figures(id, dead, waiting)
  local was = tonumber(redis.call('ZSCORE', KEYS[3], id) or 0)
  if dead ~= was then
    redis.call('HINCRBY', KEYS[4], 'dead_letters', dead - was)
    if dead > 0 then redis.call('ZADD', KEYS[3], dead, id) else redis.call('ZREM', KEYS[3], id) end
  end
  local field = 'waiting:' .. id
  local waited = tonumber(redis.call('HGET', KEYS[4], field) or 0)
  if waiting ~= waited then
    redis.call('HINCRBY', KEYS[4], 'waiting', waiting - waited)
    if waiting > 0 then redis.call('HSET', KEYS[4], field, waiting)
    else redis.call('HDEL', KEYS[4], field) end
  end
end
-- The connection's watched poll time: the later of what it was (``now`` when first watched) and
-- ``last`` (its last whole poll, or nil); its stale time with it.
local function polled(id, now, last, allowance)
  local was = tonumber(redis.call('ZSCORE', KEYS[1], id))
  local at = was or now
  if last and last > at then at = last end
  if at ~= was then redis.call('ZADD', KEYS[1], at, id) end
  redis.call('ZADD', KEYS[2], at + allowance, id)
end
"""
# ARGV: now, then (connection, allowance) pairs: the active connections. Others are forgotten.
_WATCH = (
    _FIGURES
    + """
local now, active = tonumber(ARGV[1]), {}
for i = 2, #ARGV, 2 do active[ARGV[i]] = tonumber(ARGV[i + 1]) end
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if not active[id] then
    figures(id, 0, 0)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
for id, allowance in pairs(active) do polled(id, now, nil, allowance) end
"""
)
# KEYS[5..]: per connection, its cursor hash, its dead-letter stream and its L waiting lists.
# ARGV: now, F, L, the F cursor fields of its systems' last whole polls, then (connection,
# allowance) pairs in the order of the keys.
_OBSERVE = (
    _FIGURES
    + """
local now, F, L = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fields = {}
for i = 1, F do fields[i] = ARGV[3 + i] end
local n = 0
for a = 4 + F, #ARGV, 2 do
  local id, allowance, k = ARGV[a], tonumber(ARGV[a + 1]), 4 + n * (2 + L)
  local stamps, last, whole = {}, nil, F > 0
  if whole then stamps = redis.call('HMGET', KEYS[k + 1], unpack(fields)) end
  for i = 1, F do
    local t = stamps[i] and tonumber(stamps[i])
    if not t then whole = false elseif not last or t < last then last = t end
  end
  polled(id, now, whole and last or nil, allowance)
  local waiting = 0
  for i = 1, L do waiting = waiting + redis.call('LLEN', KEYS[k + 2 + i]) end
  figures(id, redis.call('XLEN', KEYS[k + 2]), waiting)
  n = n + 1
end
"""
)


@dataclass(frozen=True)
class Stale:
    """An active connection with no whole poll within its allowance."""

    connection: str
    polled_seconds_ago: float  # since its last whole poll (or since it was first watched)
    allowed_seconds: float

    def why(self) -> str:
        return (f"no whole poll of both systems for {self.polled_seconds_ago:.0f} s "
                f"(allowed {self.allowed_seconds:.0f} s)")  # fmt: skip


@dataclass(frozen=True)
class PollHealth:
    """What /healthz reads: how many watched connections are stale, and the most overdue few."""

    watched: int = 0
    stale: int = 0
    named: tuple[Stale, ...] = ()


@dataclass(frozen=True)
class FleetFigures:
    """What /metrics reads, bounded whatever the fleet's size."""

    polls: PollHealth = field(default_factory=PollHealth)
    oldest: tuple[tuple[str, float], ...] = ()  # (connection, seconds since its last whole poll)
    dead_letters: int = 0
    most_dead_letters: tuple[tuple[str, int], ...] = ()
    waiting: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # empty: never written by a tick
    lateness: tuple[tuple[float, str, float], ...] = ()  # (at, task, seconds late), newest first


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class FleetHealth:
    def __init__(
        self,
        redis: Any,
        keys: FleetKeys,
        *,
        poll_fields: Sequence[str] = (),
        lanes: Sequence[str] = (),
    ) -> None:
        """``poll_fields``: the cursor entries of each system's last whole poll; ``lanes``: the
        admission lanes a connection's tasks wait in (both needed by the writer only)."""
        self.r = redis
        self.keys = keys
        self.poll_fields = list(poll_fields)
        self.lanes = list(lanes)
        self._watch = redis.register_script(_WATCH)
        self._observe = redis.register_script(_OBSERVE)

    def _figure_keys(self) -> list[str]:
        k = self.keys
        return [k.polled, k.stale_at, k.dead_letters, k.health]

    # --- the writer (the fleet tick) ------------------------------------------------------------
    def watch(self, active: Mapping[str, float], statuses: Mapping[str, int], now: float) -> None:
        """Watch exactly the ``active`` connections (id → allowance in seconds): a new one counts
        from ``now``, one no longer active is forgotten with its figures. ``statuses``: the
        registry's entries by status, every status named. One step, O(connections): run when
        the registry changes, not per scrape."""
        args: list[Any] = [repr(now)]
        for connection, allowance in active.items():
            args += [connection, repr(allowance)]
        with self.r.pipeline(transaction=True) as pipe:
            queue(pipe, self._watch, self._figure_keys(), args)
            pipe.hset(self.keys.health, mapping={f"status:{s}": n for s, n in statuses.items()})
            pipe.execute()

    def observe(self, connections: Mapping[str, float], now: float) -> None:
        """Record what each connection's keys say now (id → allowance): its last whole poll, its
        dead letters and its waiting tasks. One round trip, a script run per ``OBSERVE_BATCH``
        connections (each one atomic), O(connections given)."""
        if not connections:
            return
        items = list(connections.items())
        with self.r.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), OBSERVE_BATCH):
                keys = self._figure_keys()
                args = [repr(now), len(self.poll_fields), len(self.lanes), *self.poll_fields]
                for connection, allowance in items[start : start + OBSERVE_BATCH]:
                    own = Keys(connection)
                    keys += [own.cursor, own.dlq]
                    keys += [own.admission_waiting(lane) for lane in self.lanes]
                    args += [connection, repr(allowance)]
                queue(pipe, self._observe, keys, args)
            pipe.execute()

    # --- the readers (/healthz, /metrics, sm8cd status) ----------------------------------------
    def _stale_reads(self, pipe: Any, now: float, k: int) -> None:
        pipe.zcard(self.keys.polled)
        pipe.zcount(self.keys.stale_at, "-inf", repr(now))
        pipe.zrangebyscore(self.keys.stale_at, "-inf", repr(now), start=0, num=k, withscores=True)

    def _stale(self, answers: Sequence[Any], now: float) -> PollHealth:
        """Three answers of ``_stale_reads``, and one more read when some are stale: when the
        named ones last polled."""
        watched, count, worst = answers
        named: tuple[Stale, ...] = ()
        if worst:
            ids = [_text(member) for member, _ in worst]
            polled = self.r.zmscore(self.keys.polled, ids)
            named = tuple(
                Stale(c, round(now - float(p), 1), round(float(due) - float(p), 1))
                for c, (_, due), p in zip(ids, worst, polled, strict=True)
                if p is not None
            )
        return PollHealth(int(watched), int(count), named)

    def poll_health(self, now: float, k: int = WORST) -> PollHealth:
        """How many watched connections are stale at ``now``, the ``k`` most overdue named.
        Three commands in one round trip, a fourth when some are stale."""
        with self.r.pipeline(transaction=False) as pipe:
            self._stale_reads(pipe, now, k)
            answers = pipe.execute()
        return self._stale(answers, now)

    def figures(
        self, now: float, statuses: Sequence[str], k: int = WORST, sample: int = LATENESS_SAMPLE
    ) -> FleetFigures:
        """Everything /metrics shows of the fleet: a fixed number of commands (seven in one
        round trip, an eighth when some connections are stale), ``k`` connections named per
        figure, the newest ``sample`` lateness entries."""
        k_ = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            self._stale_reads(pipe, now, k)
            pipe.zrange(k_.polled, 0, k - 1, withscores=True)
            pipe.zrevrange(k_.dead_letters, 0, k - 1, withscores=True)
            pipe.hmget(k_.health, ["dead_letters", "waiting", *(f"status:{s}" for s in statuses)])
            pipe.lrange(k_.lateness, 0, sample - 1)
            *stale, oldest, dead, totals, late = pipe.execute()
        dead_letters, waiting, *counts = totals
        lateness = []
        for raw in late:
            at, task, seconds = _text(raw).split(" ")
            lateness.append((float(at), task, float(seconds)))
        return FleetFigures(
            polls=self._stale(stale, now),
            oldest=tuple((_text(c), round(now - float(t), 1)) for c, t in oldest),
            dead_letters=int(dead_letters or 0),
            most_dead_letters=tuple((_text(c), int(n)) for c, n in dead),
            waiting=int(waiting or 0),
            statuses={s: int(n) for s, n in zip(statuses, counts, strict=True) if n is not None},
            lateness=tuple(lateness),
        )

    def stale_at(self, connections: Sequence[str]) -> list[float | None]:
        """When each of ``connections`` turns (or turned) stale; None: not watched. One
        command (``sm8cd status``, which lists every connection anyway)."""
        if not connections:
            return []
        found = self.r.zmscore(self.keys.stale_at, list(connections))
        return [None if t is None else float(t) for t in found]
