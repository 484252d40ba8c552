"""The API budget's Redis side: moving-window slots and pauses, keyed by the account the limit
belongs to (``bridge.store.keys.budget_key``), so every connection on one account and every process
on every host draw from one budget. The policy (which windows, bulk reserve, when to pause) is
``bridge.http.budget``'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bridge.store.keys import blocks_key, budget_key, pause_key
from bridge.store.parked import dump

# Take (or reserve) one call in every window of an API, atomically for every process on every
# host. KEYS: one list per window, newest first. ARGV: now, max_wait, then per window the limit
# this caller may fill (bulk work leaves a reserve), the limit kept, and the span in seconds.
# A window whose last `fill` entries span less than `span` is full until its `fill`-th newest
# entry is `span` old. The call goes at the latest such time (or now); if that is more than
# max_wait away nothing is taken and the wait is returned, else the time is recorded in every
# window. Returns {wait as text, index of the window that decided it (0: none), taken 0/1}.
_TAKE_SLOT = """
local now = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local at, blocking = now, 0
for i, key in ipairs(KEYS) do
  local fill = tonumber(ARGV[3 * i])
  local span = tonumber(ARGV[3 * i + 2])
  local head = redis.call('LINDEX', key, 0)
  if head and tonumber(head) > at then at = tonumber(head) end
  local nth = redis.call('LINDEX', key, fill - 1)
  if nth and tonumber(nth) + span > at then
    at = tonumber(nth) + span
    blocking = i
  end
end
local wait = at - now
if wait > max_wait then return {tostring(wait), blocking, 0} end
for i, key in ipairs(KEYS) do
  local keep = tonumber(ARGV[3 * i + 1])
  local span = tonumber(ARGV[3 * i + 2])
  redis.call('LPUSH', key, string.format('%.6f', at))
  redis.call('LTRIM', key, 0, keep - 1)
  redis.call('PEXPIRE', key, math.ceil((span + wait) * 1000) + 1000)
end
return {tostring(wait), blocking, 1}
"""


@dataclass(frozen=True)
class SlotWindow:
    name: str
    fill: int  # how many calls this caller may see in the span (less than keep for bulk work)
    keep: int  # the window's limit
    span: float  # seconds, margin included


@dataclass(frozen=True)
class Slot:
    taken: bool
    wait: float  # seconds until the call may go (0: now)
    window: str | None  # the window that made it wait


# Merge budget lists: KEYS[1] the target, the rest sources; ARGV[1] how many entries to keep.
# The union, newest first, without repeats, trimmed; the target keeps the longest expiry.
_MERGE = """
local all, ttl = {}, redis.call('PTTL', KEYS[1])
for _, key in ipairs(KEYS) do
  for _, t in ipairs(redis.call('LRANGE', key, 0, -1)) do table.insert(all, t) end
  local left = redis.call('PTTL', key)
  if left > ttl then ttl = left end
end
if #all == 0 then return 0 end
table.sort(all, function(a, b) return tonumber(a) > tonumber(b) end)
redis.call('DEL', KEYS[1])
local kept, last = 0, nil
for _, t in ipairs(all) do  -- the same call seen twice (merged before) counts once
  if kept >= tonumber(ARGV[1]) then break end
  if t ~= last then redis.call('RPUSH', KEYS[1], t); kept = kept + 1; last = t end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return #all
"""


def short_window(seconds: float) -> str:
    """The name ServiceM8's short window goes by in budget keys: ``minute``, or ``10s`` where
    tests shorten it (``bridge.http.budget.servicem8_windows``)."""
    return "minute" if seconds == 60 else f"{seconds:g}s"


class BudgetStore:
    def __init__(self, redis: Any) -> None:
        self.r = redis
        # EVALSHA after the first call: the budget script runs before every API call.
        self._take_slot = redis.register_script(_TAKE_SLOT)
        self._merge = redis.register_script(_MERGE)

    def take_slot(
        self, api: str, account: str, windows: Sequence[SlotWindow], now: float, max_wait: float
    ) -> Slot:
        """One call of ``api`` now or within ``max_wait`` seconds, in every window at once."""
        if not windows:
            return Slot(True, 0.0, None)
        keys = [budget_key(api, account, w.name) for w in windows]
        args: list[str] = [repr(now), repr(max_wait)]
        for w in windows:
            args += [str(max(1, w.fill)), str(w.keep), repr(w.span)]
        wait, blocking, taken = self._take_slot(keys=keys, args=args)
        name = windows[int(blocking) - 1].name if int(blocking) else None
        return Slot(bool(taken), max(0.0, float(wait)), name)

    def slots_used(
        self, api: str, account: str, window: SlotWindow, now: float
    ) -> tuple[int, float | None]:
        """Calls in the span before ``now`` (and reserved after it), and when the oldest of them
        leaves the window."""
        raw = self.r.lrange(budget_key(api, account, window.name), 0, window.keep - 1)
        times = [float(t) for t in raw if float(t) > now - window.span]
        return len(times), (min(times) + window.span if times else None)

    def set_pause(self, api: str, account: str, seconds: float, reason: str, kind: str) -> None:
        value = dump({"until": time.time() + seconds, "reason": reason, "kind": kind})
        self.r.set(pause_key(api, account), value, px=max(1, int(seconds * 1000)))

    def pause(self, api: str, account: str) -> dict[str, Any] | None:
        raw = self.r.get(pause_key(api, account))
        return json.loads(raw) if raw else None

    def first_pause(self, api: str, accounts: Sequence[str]) -> dict[str, Any] | None:
        """The first pause in force among ``accounts``, in one round trip."""
        raws = self.r.mget([pause_key(api, a) for a in accounts])
        return next((json.loads(raw) for raw in raws if raw), None)

    def gate_state(
        self, api: str, accounts: Sequence[str], credential: str, operation: str, now: float
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The first pause in force among ``accounts`` and the block in force on ``operation``
        for ``credential`` (a missing scope), in one round trip."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.mget([pause_key(api, a) for a in accounts])
            pipe.hget(blocks_key(api, credential), operation)
            raws, raw_block = pipe.execute()
        pause = next((json.loads(raw) for raw in raws if raw), None)
        block = json.loads(raw_block) if raw_block else None
        return pause, block if block and float(block["until"]) > now else None

    def set_block(self, api: str, credential: str, operation: str, seconds: float,
                  reason: str, scope: str | None, now: float) -> None:  # fmt: skip
        key = blocks_key(api, credential)
        value = dump({"until": now + seconds, "reason": reason, "scope": scope})
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(key, operation, value)
            # Every block lasts as long, so the newest outlives the others.
            pipe.expire(key, max(1, int(seconds) + 1))
            pipe.execute()

    def blocks(self, api: str, credential: str, now: float) -> dict[str, dict[str, Any]]:
        """The blocks in force for ``credential``, by operation."""
        raw: dict[bytes, bytes] = self.r.hgetall(blocks_key(api, credential))
        rows = {k.decode(): json.loads(v) for k, v in raw.items()}
        return {op: row for op, row in rows.items() if float(row["until"]) > now}

    def merge_into(
        self,
        api: str,
        account: str,
        others: Sequence[str],
        legacy: Sequence[str],
        windows: Sequence[tuple[str, int]],
    ) -> None:
        """Count calls recorded under other accounts (``others``) and under legacy key prefixes
        (``{prefix}budget:{api}:{window}``, ``{prefix}pause:{api}``) into ``account``'s budget,
        and carry a legacy pause over. One atomic script per window."""
        for name, keep in windows:
            sources = [budget_key(api, a, name) for a in others]
            sources += [f"{prefix}budget:{api}:{name}" for prefix in legacy]
            self._merge(keys=[budget_key(api, account, name), *sources], args=[keep])
        for prefix in legacy:
            old = f"{prefix}pause:{api}"
            ttl = int(self.r.pttl(old))
            raw = self.r.get(old)
            if raw and ttl > 0:
                self.r.set(pause_key(api, account), raw, px=ttl, nx=True)

    def clear_pause(self, api: str, account: str) -> None:
        self.r.delete(pause_key(api, account))
