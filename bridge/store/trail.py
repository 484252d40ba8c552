"""Each job's trail (``mappings.trail``): its last entries, newest first, in one list per job
that expires a while after its last entry. Written in the same round trip as the sync's cleared
dirty mark (``JobStore.clear_dirty``); read by ``sm8cd explain`` and the console."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.store.keys import Keys
from mappings.trail import KEEP, KEEP_DAYS


@dataclass(frozen=True)
class Kept:
    """One entry to keep, and the job's ServiceM8 number (``explain`` finds a job by it)."""

    entry: bytes
    number: str | None = None
    keep: int = KEEP  # entries kept of the job's trail, newest


class TrailStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    def append(self, job_uuid: str, kept: Kept, client: Any = None) -> None:
        """Add one entry (on ``client``, a pipeline the caller executes, else at once)."""
        pipe = client if client is not None else self.r.pipeline(transaction=False)
        key = self.keys.trail(job_uuid)
        pipe.lpush(key, kept.entry)
        pipe.ltrim(key, 0, kept.keep - 1)
        pipe.expire(key, KEEP_DAYS * 86_400)
        if kept.number:
            pipe.hset(self.keys.job_numbers, kept.number, job_uuid)
        if client is None:
            pipe.execute()

    def job_for_number(self, number: str) -> str | None:
        """The ServiceM8 job of that number, among the jobs with a trail."""
        found = self.r.hget(self.keys.job_numbers, number.strip())
        return None if found is None else bytes(found).decode()

    def entries(self, job_uuid: str) -> list[bytes]:
        """The job's entries, oldest first."""
        return list(reversed(self.r.lrange(self.keys.trail(job_uuid), 0, -1)))

    def size(self, job_uuid: str) -> int:
        """The bytes Redis holds for the job's trail (``MEMORY USAGE``), 0 for none."""
        return int(self.r.memory_usage(self.keys.trail(job_uuid)) or 0)
