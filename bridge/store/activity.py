"""What the parts report of themselves: poll cursors and times, counters, the accounts the API
budgets belong to, webhook deliveries seen, worker heartbeats and beat's lock."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bridge.store.keys import Keys

TIMEZONE_SECONDS = 86_400  # how long a read timezone is trusted before it is read again
OBJECT_STATE = "object:"  # cursor entries of objects refused, or read whole (object_states)


def resolved_accounts(redis: Any, connections: Sequence[str]) -> dict[str, dict[str, str]]:
    """What the workers of each connection resolved of its accounts (its ``account`` hash:
    ``servicem8`` once learnt, and ``{api}~stand-in``, the key digests), in one round trip; a
    connection whose workers never ran has none."""
    with redis.pipeline(transaction=False) as pipe:
        for connection in connections:
            pipe.hgetall(Keys(connection).account)
        rows: list[dict[bytes, bytes]] = pipe.execute()
    return {
        connection: {k.decode(): v.decode() for k, v in row.items()}
        for connection, row in zip(connections, rows, strict=True)
    }


def subscription_field(name: str) -> str:
    """The cursor entry of what is known of ``name``'s webhook subscription."""
    return f"subscription:{name}"


class ActivityStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys
        self._local = threading.local()  # ``held``: the cursor hash a poll read once

    # --- cursors and counters --------------------------------------------------------------------
    @contextlib.contextmanager
    def holding(self) -> Iterator[dict[str, str]]:
        """The cursor hash, read once for a poll that holds its system's lock: until the block
        ends, this thread's cursor reads answer from it and its writes here keep it current.
        Another process's writes meanwhile (a webhook's mark) are seen by the next poll."""
        self._local.held = self.cursors()
        try:
            yield self._local.held
        finally:
            self._local.held = None

    def _held(self) -> dict[str, str] | None:
        return getattr(self._local, "held", None)

    def cursor(self, name: str) -> str | None:
        held = self._held()
        if held is not None:
            return held.get(name)
        value = self.r.hget(self.keys.cursor, name)
        return value.decode() if value is not None else None

    def cursors(self) -> dict[str, str]:
        held = self._held()
        if held is not None:
            return dict(held)
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.cursor)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def set_cursor(self, name: str, value: str) -> None:
        self.set_cursors({name: value})

    def set_cursors(self, values: Mapping[str, str]) -> None:
        """Several cursor entries in one write."""
        self.r.hset(self.keys.cursor, mapping=dict(values))
        held = self._held()
        if held is not None:
            held.update(values)

    def _forget_cursors(self, *names: str) -> None:
        self.r.hdel(self.keys.cursor, *names)
        held = self._held()
        if held is not None:
            for name in names:
                held.pop(name, None)

    def count(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        with self.r.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                pipe.hincrby(self.keys.stats, name, n)
            pipe.execute()

    def stats(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.stats)
        return {k.decode(): int(v) for k, v in raw.items()}

    # --- accounts --------------------------------------------------------------------------------
    def account(self, api: str) -> str | None:
        value = self.r.hget(self.keys.account, api)
        return value.decode() if value is not None else None

    def set_account(self, api: str, account: str) -> None:
        self.r.hset(self.keys.account, api, account)

    def known_timezone(self) -> str | None:
        """The ServiceM8 account's timezone as a process of the connection last read it."""
        value = self.r.get(self.keys.timezone)
        return value.decode() if value is not None else None

    def keep_timezone(self, name: str) -> None:
        self.r.set(self.keys.timezone, name, ex=TIMEZONE_SECONDS)

    def note_stand_ins(self, stand_ins: Iterable[tuple[str, str]]) -> None:
        named = {f"{api}~stand-in": account for api, account in stand_ins}
        self.r.hset(self.keys.account, mapping=named)

    def accounts(self) -> list[tuple[str, str]]:
        """(api, account) for every account this connection drew a budget from."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.account)
        return [(k.decode().split("~")[0], v.decode()) for k, v in raw.items()]

    # --- webhook deliveries ----------------------------------------------------------------------
    def first_delivery(self, delivery: str, ttl: int) -> bool:
        """True the first time a webhook delivery is seen within ``ttl`` seconds."""
        return bool(self.r.set(self.keys.seen(delivery), "1", nx=True, ex=ttl))

    def forget_delivery(self, delivery: str) -> None:
        """Undo ``first_delivery`` when enqueueing failed, so a redelivery is not dropped."""
        self.r.delete(self.keys.seen(delivery))

    def note_webhook(self, names: str | Iterable[str], now: float) -> None:
        """A valid webhook arrived from a system about the objects named (``servicem8``,
        ``servicem8.jobactivity``): their polls may then run less often."""
        names = [names] if isinstance(names, str) else list(names)
        self.set_cursors({f"webhook:{n}": repr(now) for n in names})

    def subscription(self, name: str) -> str | None:
        """What is known of the webhook subscription for ``name`` (``servicem8.jobactivity``):
        ``active``, or ``poll-only: <why>``; None when the bridge never subscribed it."""
        return self.cursor(subscription_field(name))

    def set_subscription(self, name: str, state: str) -> None:
        self.set_cursor(subscription_field(name), state[:300])

    def subscription_health(self, name: str) -> dict[str, Any] | None:
        """What the last health check read of the subscription (``bridge.ops.subscriptions``)."""
        raw = self.cursor(f"subscription-health:{name}")
        return json.loads(raw) if raw else None

    def set_subscription_health(self, name: str, health: Mapping[str, Any]) -> None:
        self.set_cursor(f"subscription-health:{name}", json.dumps(dict(health), sort_keys=True))

    def forget_subscription(self, name: str) -> None:
        self._forget_cursors(f"subscription:{name}", f"subscription-health:{name}")

    # --- the poll plan (mappings.pollplan) -------------------------------------------------------
    def count_polls(self, day: str, calls: int, cursors: Mapping[str, str] | None = None) -> None:
        """Calls ServiceM8's polls made on ``day`` (the account's date), kept two days; with
        ``cursors``, those entries written in the same round trip (``set_cursors``)."""
        key = self.keys.key(f"poll-calls:{day}")
        with self.r.pipeline(transaction=False) as pipe:
            pipe.incrby(key, calls)
            pipe.expire(key, 2 * 86_400)
            if cursors:
                pipe.hset(self.keys.cursor, mapping=dict(cursors))
            pipe.execute()
        held = self._held()
        if cursors and held is not None:
            held.update(cursors)

    def polls_on(self, day: str) -> int:
        return int(self.r.get(self.keys.key(f"poll-calls:{day}")) or 0)

    def poll_plan(self) -> dict[str, Any] | None:
        raw = self.cursor("poll-plan")
        return json.loads(raw) if raw else None

    def set_poll_plan(self, plan: Mapping[str, Any]) -> None:
        self.set_cursor("poll-plan", json.dumps(dict(plan), sort_keys=True))

    # --- objects the account refuses, or reads in full (bridge.sync.ingest) ----------------------
    def object_states(self, known: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """What is known of each polled object that does not poll as planned, by name
        (``servicem8.joballocation``): ``{"state": "unavailable" | "read-in-full", "reason",
        "since", "checked"}``. From ``known`` (the cursors, already read) when given."""
        rows = self.cursors() if known is None else known
        return {
            name.removeprefix(OBJECT_STATE): json.loads(raw)
            for name, raw in rows.items()
            if name.startswith(OBJECT_STATE)
        }

    def set_object_state(self, name: str, state: Mapping[str, Any]) -> None:
        self.set_cursor(f"{OBJECT_STATE}{name}", json.dumps(dict(state), sort_keys=True))

    def clear_object_state(self, name: str) -> None:
        self._forget_cursors(f"{OBJECT_STATE}{name}")

    # --- what ``sm8cd probe`` found (bridge.probe) ---------------------------------------------
    def probe(self) -> dict[str, Any] | None:
        raw = self.cursor("probe")
        return json.loads(raw) if raw else None

    def set_probe(self, report: Mapping[str, Any]) -> None:
        self.set_cursor("probe", json.dumps(dict(report), sort_keys=True))

    # --- liveness --------------------------------------------------------------------------------
    def heartbeat(self, worker: str, now: float, ttl: int) -> None:
        """One sorted set of workers by their last heartbeat, so reading who is alive is one
        command whatever else the keyspace holds; entries older than ``ttl`` are dropped here."""
        key = self.keys.key("alive")
        with self.r.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {worker: now})
            pipe.zremrangebyscore(key, "-inf", now - 10 * ttl)
            pipe.execute()

    def live_workers(self) -> dict[str, float]:
        """Every worker with a recent heartbeat, and when it last sent one."""
        rows = self.r.zrange(self.keys.key("alive"), 0, -1, withscores=True)
        return {member.decode(): float(score) for member, score in rows}

    def beat_alive(self) -> bool:
        """celery-redbeat holds this lock (with an expiry it renews) while a beat runs."""
        return bool(self.r.exists(self.keys.beat_lock))

    def ping(self) -> bool:
        return bool(self.r.ping())

    def queue_length(self, name: str) -> int:
        """Messages waiting in a broker list under this connection's prefix."""
        return int(self.r.llen(self.keys.key(name)))
