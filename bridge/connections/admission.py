"""``Admission``: fair shares of the shared lanes (docs/connections.md#fair-shares).

Every connection of a deployment queues on the same four lanes, and the workers take the lanes in
priority order. Left alone, a noisy connection (a backfill of thousands of bookings, a burst of
webhooks) would fill a lane and hold every worker while the quiet connections' polls waited
behind it. So each connection may have at most ``limit`` tasks *in the lanes or running*
at once (``CONNECTION_MAX_TASKS``, below the deployment's worker processes): the rest wait in
Redis, in one list per lane, and each task that ends admits the connection's next one, most
urgent lane first. Each connection therefore holds at most ``limit`` workers, and the others
always find the remaining ones; within a connection, the lanes keep their order.

- ``offer`` at send: admitted (send it now) or kept waiting, in one Lua step.
- ``start`` when a task begins: a message that was not admitted by ``offer`` (a Celery retry, a
  sender of another process) takes a free slot or goes back to waiting (the task ends there).
- ``finish`` when it ends, however: its slot is freed and the next waiting messages admitted;
  the caller sends them.
- ``admit_waiting`` (the fleet tick, every second): connections with waiting messages and a free
  slot get them admitted, should a ``finish`` never have run (a worker killed mid-task: its slot
  lapses after ``HOLD_SECONDS``), or once a hold has ended.
- ``hold`` when a task finds its connection's budget spent: nothing more of the connection is
  admitted until the budget's slot is near, so its waiting work does not go round the lanes to
  find the budget spent again.

Shares apply while the deployment has more than one active connection (``FleetView.shared``):
a connection alone has every worker, whichever connection it is. A message popped and lost before
it reached the
broker (a crash between the two) is what the design already survives: dirty marks, the sweep and
the polls bring its work back.

Imports the key schema only; never ``tasks``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge.store.keys import FleetKeys, Keys

LANES = ("interactive", "sync", "poll", "bulk")  # the order waiting messages are admitted in
# A slot outlives any queued message (the broker's visibility timeout) and any run (the hard time
# limit) with room to spare: only a slot whose task was lost lapses.
HOLD_SECONDS = 300 + 150 + 60

# KEYS: slots (zset id -> lapse time), waiting lists (one per lane, LANES order), the fleet's set
# of connections with waiting messages, the connection's budget hold (a string that expires).
# ARGV: now, limit, lapse, connection, then per operation.
_PRELUDE = """
local now, limit, lapse, connection = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function waiting()
  local n = 0
  for i = 2, 5 do n = n + redis.call('LLEN', KEYS[i]) end
  return n
end
local function admit_next()
  local out = {}
  if redis.call('EXISTS', KEYS[7]) == 1 then return out end  -- its budget is spent: none yet
  while redis.call('ZCARD', KEYS[1]) < limit do
    local message = nil
    for i = 2, 5 do
      message = redis.call('LPOP', KEYS[i])
      if message then break end
    end
    if not message then break end
    redis.call('ZADD', KEYS[1], lapse, cjson.decode(message)['id'])
    table.insert(out, message)
  end
  if waiting() == 0 then redis.call('SREM', KEYS[6], connection) end
  return out
end
"""
# ARGV[5]: the lane's index (1..4), ARGV[6]: the message, ARGV[7]: its id. 1: send it now.
_OFFER = (
    _PRELUDE
    + """
if waiting() == 0 and redis.call('ZCARD', KEYS[1]) < limit
   and redis.call('EXISTS', KEYS[7]) == 0 then
  redis.call('ZADD', KEYS[1], lapse, ARGV[7])
  return 1
end
redis.call('RPUSH', KEYS[1 + tonumber(ARGV[5])], ARGV[6])
redis.call('SADD', KEYS[6], connection)
return 0
"""
)
# ARGV[5]: the lane's index, ARGV[6]: the message, ARGV[7]: its id. 1: run it.
_START = (
    _PRELUDE
    + """
if redis.call('ZSCORE', KEYS[1], ARGV[7]) then
  redis.call('ZADD', KEYS[1], lapse, ARGV[7])  -- running: held from now
  return 1
end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], lapse, ARGV[7])
  return 1
end
redis.call('LPUSH', KEYS[1 + tonumber(ARGV[5])], ARGV[6])  -- back at the head of its lane
redis.call('SADD', KEYS[6], connection)
return 0
"""
)
# ARGV[5]: the id that ended ("" for none). The messages admitted now, to send.
_FINISH = (
    _PRELUDE
    + """
if ARGV[5] ~= '' then redis.call('ZREM', KEYS[1], ARGV[5]) end
return admit_next()
"""
)

Message = dict[str, Any]


class Admission:
    def __init__(
        self,
        redis: Any,
        keys: FleetKeys,
        limit: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1:
            raise ValueError("a connection needs at least one slot")
        self.r, self.keys, self.limit, self.clock = redis, keys, limit, clock
        self._offer = redis.register_script(_OFFER)
        self._start = redis.register_script(_START)
        self._finish = redis.register_script(_FINISH)

    def _keys(self, connection: str) -> list[str]:
        own = Keys(connection)
        return [
            own.admission_slots,
            *(own.admission_waiting(lane) for lane in LANES),
            self.keys.waiting,
            own.admission_held,
        ]

    def _args(self, connection: str) -> list[Any]:
        now = self.clock()
        return [repr(now), self.limit, repr(now + HOLD_SECONDS), connection]

    def offer(self, connection: str, lane: str, message: Mapping[str, Any]) -> bool:
        """True: send ``message`` now (its slot is taken); False: it waits its turn."""
        args = [*self._args(connection), _lane(lane), json.dumps(message), message["id"]]
        return bool(self._offer(keys=self._keys(connection), args=args))

    def start(self, connection: str, lane: str, message: Mapping[str, Any]) -> bool:
        """True: run it; False: the connection's slots are taken, and the message waits again."""
        args = [*self._args(connection), _lane(lane), json.dumps(message), message["id"]]
        return bool(self._start(keys=self._keys(connection), args=args))

    def finish(self, connection: str, task_id: str | None) -> list[Message]:
        """Free ``task_id``'s slot; the connection's messages admitted now (send them)."""
        args = [*self._args(connection), task_id or ""]
        return [json.loads(m) for m in self._finish(keys=self._keys(connection), args=args)]

    def hold(self, connection: str, seconds: float) -> None:
        """The connection's budget is spent for ``seconds``: admit none of its waiting tasks
        until then (its running ones end, and its slots stay free for the others). Work whose
        budget is spent is not sent to the lanes to find it spent again."""
        ms = max(1, int(seconds * 1000))
        self.r.set(Keys(connection).admission_held, "1", px=ms)

    def admit_waiting(self) -> list[tuple[str, Message]]:
        """For every connection with waiting messages, those a free slot admits now."""
        admitted = []
        for raw in self.r.smembers(self.keys.waiting):
            connection = raw.decode() if isinstance(raw, bytes) else str(raw)
            admitted += [(connection, m) for m in self.finish(connection, None)]
        return admitted

    def waiting(self, connection: str) -> int:
        """How many of the connection's messages wait (``sm8cd status``)."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in self._keys(connection)[1:5]:
                pipe.llen(key)
            return sum(int(n) for n in pipe.execute())


def _lane(lane: str) -> int:
    return LANES.index(lane) + 1 if lane in LANES else LANES.index("sync") + 1
