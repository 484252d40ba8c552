"""Jobs an operator left out of the sync by hand (``sm8cd exclude JOB`` / ``include JOB``), with
who did it and when: one hash, ``excluded``. The engine reads it as one scope input beside the
connection's settings (docs/scope.md#one-job-left-alone)."""

from __future__ import annotations

import json
from typing import Any

from bridge.store.keys import Keys


class ScopeStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.r = redis
        self.keys = keys

    def exclude(self, job_uuid: str, by: str, at: float, note: str | None = None) -> bool:
        """Leave the job alone from its next sync on; True unless it was excluded already (then
        the first exclusion, with its author and time, stays)."""
        entry = {"by": by, "at": at, **({"note": note} if note else {})}
        return bool(self.r.hsetnx(self.keys.excluded, job_uuid, json.dumps(entry)))

    def include(self, job_uuid: str) -> bool:
        """Sync the job again; True when it was excluded."""
        return bool(self.r.hdel(self.keys.excluded, job_uuid))

    def is_excluded(self, job_uuid: str) -> bool:
        return bool(self.r.hexists(self.keys.excluded, job_uuid))

    def excluded(self) -> dict[str, dict[str, Any]]:
        """Every excluded job → ``{"by", "at"[, "note"]}``."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.excluded)
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def excluded_count(self) -> int:
        return int(self.r.hlen(self.keys.excluded))
