"""A copy of one connection's state in another Redis, for work that must not write the real one
(the preview of the next sync, ``bridge.sync.preview``).

The copy reads each key by its type and writes it again (``DUMP``/``RESTORE`` would tie the copy
to servers of one RDB version, and the scratch server may be older than the real one). Only the
state the sync reads is copied: locks, the broker's queues, beat's schedule, webhook
de-duplication marks, heartbeats, claims and the dead-letter stream are left behind, so a job a
worker holds right now does not hold the copy up, and nothing of the copy can reach a worker.
Keys are copied one batch at a time, not in one transaction: a record a worker writes meanwhile
is copied as it was before or after that write, as a sync reading it then would find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.store.keys import Keys

# Names (after the connection's prefix) whose keys stay behind: nothing a sync reads.
LEFT_BEHIND = (
    "celery:",
    "redbeat:",
    "lock:",
    "seen:",
    "alive:",
    "admission:",
    "queued:",
    "fail:",
    "dlq",
)
BATCH = 500
COPIED = frozenset({"string", "hash", "set", "zset", "list"})


def copy_connection(source: Any, targets: Sequence[Any], keys: Keys) -> int:
    """Copy the connection's keys (``keys.prefix``) from ``source`` into each of ``targets``,
    with their time to live; returns how many keys were copied. ``source`` is only read."""
    names = [
        k
        for k in source.scan_iter(match=keys.prefix + "*", count=1000)
        if not _left_behind(k, keys.prefix)
    ]
    copied = 0
    for i in range(0, len(names), BATCH):
        copied += _copy_batch(source, targets, names[i : i + BATCH])
    return copied


def _left_behind(key: bytes | str, prefix: str) -> bool:
    name = key.decode() if isinstance(key, bytes) else key
    return name[len(prefix) :].startswith(LEFT_BEHIND)


def _copy_batch(source: Any, targets: Sequence[Any], names: list[bytes]) -> int:
    with source.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.type(name)
            pipe.pttl(name)
        found = pipe.execute()
    kinds = [_text(kind) for kind in found[0::2]]
    ttls = found[1::2]
    with source.pipeline(transaction=False) as pipe:
        for name, kind in zip(names, kinds, strict=True):
            _read(pipe, name, kind)
        values = pipe.execute()
    copied = 0
    for target in targets:
        copied = 0
        with target.pipeline(transaction=False) as pipe:
            for name, kind, ttl, value in zip(names, kinds, ttls, values, strict=True):
                if kind not in COPIED or value is None or (kind != "string" and not value):
                    continue  # gone since the scan, or a stream (nothing the sync reads)
                _write(pipe, name, kind, value)
                if ttl is not None and ttl > 0:
                    pipe.pexpire(name, ttl)
                copied += 1
            pipe.execute()
    return copied


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _read(pipe: Any, name: bytes, kind: str) -> None:
    if kind == "string":
        pipe.get(name)
    elif kind == "hash":
        pipe.hgetall(name)
    elif kind == "set":
        pipe.smembers(name)
    elif kind == "zset":
        pipe.zrange(name, 0, -1, withscores=True)
    elif kind == "list":
        pipe.lrange(name, 0, -1)
    else:  # "none" (gone since the scan) or a stream: nothing the sync reads
        pipe.echo(b"")


def _write(pipe: Any, name: bytes, kind: str, value: Any) -> None:
    if kind == "string":
        pipe.set(name, value)
    elif kind == "hash":
        pipe.hset(name, mapping=value)
    elif kind == "set":
        pipe.sadd(name, *value)
    elif kind == "zset":
        pipe.zadd(name, dict(value))
    elif kind == "list":
        pipe.rpush(name, *value)
