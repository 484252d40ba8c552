"""Parked work: pairs waiting for something an operator or the map must supply (``pending``), and
records an API returned that cannot be read (``invalid``). Both are shown by ``sm8cd status``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from bridge.store.keys import Keys


def dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class ParkedStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    # --- records that cannot be read ------------------------------------------------------------
    def set_invalid(self, record: str, reason: str, now: float) -> bool:
        """Park an unreadable record with its reason; True the first time it is parked."""
        value = dump({"reason": reason, "since": now})
        return bool(self.r.hsetnx(self.keys.invalid, record, value))

    def invalid(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.invalid)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def invalid_count(self) -> int:
        return int(self.r.hlen(self.keys.invalid))

    def clear_invalid(self, records: Iterable[str]) -> None:
        records = list(records)
        if records:
            self.r.hdel(self.keys.invalid, *records)

    # --- pending pairs ---------------------------------------------------------------------------
    def set_pending(self, job_uuid: str, who: str, reason: str, since: float | None = None) -> None:
        """Park the pair of job and staff member (``who``: S, or ``u:U`` for a user). Parked
        again for the same reason, it keeps the time it was first parked (``since``: that time
        when it is known to be earlier than now)."""
        field_ = f"{job_uuid}|{who}"
        held = self.r.hget(self.keys.pending, field_)
        if held is None or json.loads(held).get("reason") != reason:
            when = time.time() if since is None else since
            self.r.hset(self.keys.pending, field_, dump({"reason": reason, "since": when}))

    def pending_entry(self, job_uuid: str, who: str) -> dict[str, Any] | None:
        held = self.r.hget(self.keys.pending, f"{job_uuid}|{who}")
        return None if held is None else dict(json.loads(held))

    def clear_pending(self, job_uuid: str, who: str) -> None:
        self.r.hdel(self.keys.pending, f"{job_uuid}|{who}")

    def pending(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.pending)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def pending_of(self, job_uuid: str, who: list[str]) -> dict[str, dict[str, Any]]:
        """Of these people on the job, those parked → ``{"reason","since"}`` (one command)."""
        if not who:
            return {}
        found = self.r.hmget(self.keys.pending, [f"{job_uuid}|{w}" for w in who])
        return {w: json.loads(v) for w, v in zip(who, found, strict=True) if v is not None}

    def pending_count(self) -> int:
        return int(self.r.hlen(self.keys.pending))

    def pending_jobs(self) -> set[str]:
        return {k.split("|", 1)[0] for k in self.pending()}
