"""The link store: the only module that speaks Redis commands.

Key schema (every key starts with ``b:{connection}:``; ``J`` is a ServiceM8 job uuid, ``S`` a staff
uuid, ``A`` an allocation uuid, ``U`` a Coredination user id, ``C`` a Coredination job uuid):

====================  ======  ====================================================================
key                   type    what it holds
====================  ======  ====================================================================
``job:{J}``           hash    everything known of one linked job, so one HGETALL loads it:
                              ``d`` job facts; ``a:{A}`` allocation facts; ``w:{A}`` when the
                              bridge last wrote A (until a later read settles it); ``c`` the
                              Coredination view (id, uuid, resources, their event times); ``f`` the
                              fingerprint of the job body last written; ``p:{S}`` pair snapshot
                              ``"<sm8 presence>|<cd presence>"`` when last in step
``cdjob``             hash    ``C`` and Coredination job id → ``J`` (the reverse link)
``dirty``             hash    ``J`` → generation; a job to sync. Ingest bumps it, a finished sync
                              removes it only if unchanged, so no change is lost to a race
``map:s2u``           hash    ``S`` → ``U`` (staff ⇄ user map; ``map:u2s`` the reverse)
``map:manual``        set     ``S`` linked or unlinked by hand: automatic matching leaves them be
``dir:staff``         hash    ``S`` → ``{"email","name","active"}`` from ServiceM8
``dir:users``         hash    ``U`` → ``{"email","name","active"}`` from Coredination
``invalid``           hash    ``"{api}.{object}:{id}"`` → ``{"reason","since"}``: records an API
                              returned that cannot be read, skipped until they read cleanly
``pending``           hash    ``"J|S"`` or ``"J|u:U"`` → ``{"reason","since"}``, parked pairs
``cursor``            hash    poll high-water marks, by ``system:object``
``expiring``          zset    ``J`` by the earliest future ``expiry_timestamp`` of its live
                              allocations: expiry changes nothing in ServiceM8, so no poll sees it
``stats``             hash    counters by ``direction.outcome``
``queued:{J}``        string  set while a sync of J is queued, so a busy poll does not queue twice
``dlq``               stream  dead letters: what was given up on, why, and how to replay it
``fail:{task id}``    string  when a retried task first failed (expires after two hours)
``pause:{api}``       string  ``{"until","reason","kind"}`` while an API is paused (429 or bad
                              credentials); expires by itself
``deferred``          zset    tasks waiting longer than a countdown may, by due time
``budget:{api}:{w}``  list    the moving-window budget: the times of the last ``limit`` calls
                              (taken or reserved) in window ``w``, newest first
``lock:{J}``          string  the per-job lock (redis-py ``Lock``: token + expiry)
``seen:{delivery}``   string  a webhook delivery already enqueued (expires: de-duplication window)
``alive:{worker}``    string  a worker's last heartbeat (expires after ``ALIVE_SECONDS``)
====================  ======  ====================================================================

Writes that must agree (job facts and the dirty mark, a link and its reverse) go in one
``MULTI``/``EXEC`` transaction.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from redis.lock import Lock

from mappings.rules import AllocationFacts, JobFacts, PairSnapshot, Presence

REDBEAT_PREFIX = "redbeat:"  # celery-redbeat's keys, under this connection's prefix
BEAT_LOCK = REDBEAT_PREFIX + ":lock"
ALIVE_SECONDS = 30  # a worker whose last heartbeat is older than this counts as dead


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _alloc_from(raw: str) -> AllocationFacts:
    data = json.loads(raw)
    if data.get("window") is not None:
        data["window"] = tuple(data["window"])
    return AllocationFacts(**data)


@dataclass
class CdView:
    """The Coredination side of a linked job as last seen or written by the bridge."""

    id: int | None
    uuid: str
    resources: dict[int, str] = field(default_factory=dict)  # user id → resource state
    changed_ms: dict[int, int] = field(default_factory=dict)  # user id → last event time
    modified_ms: int | None = None
    start_ms: int | None = None

    def to_json(self) -> str:
        return _dump(
            {
                "id": self.id,
                "uuid": self.uuid,
                "r": {str(k): v for k, v in self.resources.items()},
                "t": {str(k): v for k, v in self.changed_ms.items()},
                "m": self.modified_ms,
                "s": self.start_ms,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> CdView:
        data = json.loads(raw)
        return cls(
            id=data["id"],
            uuid=data["uuid"],
            resources={int(k): v for k, v in data["r"].items()},
            changed_ms={int(k): v for k, v in data["t"].items()},
            modified_ms=data["m"],
            start_ms=data.get("s"),
        )


@dataclass
class JobRecord:
    """One ``job:{J}`` hash, decoded."""

    uuid: str
    details: JobFacts | None = None
    allocations: dict[str, AllocationFacts] = field(default_factory=dict)
    cd: CdView | None = None
    fields_fp: str | None = None
    pairs: dict[str, PairSnapshot] = field(default_factory=dict)


@dataclass(frozen=True)
class StaffMap:
    s2u: dict[str, int]
    u2s: dict[int, str]
    manual: frozenset[str]


# Take (or reserve) one call in every window of an API, atomically for every process on every
# host. KEYS: one list per window, newest first. ARGV: now, max_wait, then per window the limit
# this caller may fill (bulk work leaves a reserve), the limit kept, and the span in seconds.
# A window whose last `fill` entries span less than `span` is full until its `fill`-th newest
# entry is `span` old. The call goes at the latest such time (or now); if that is more than
# max_wait away nothing is taken and the wait is returned, else the time is recorded in every
# window. Returns {wait as text, index of the window that decided it (0: none), taken 0/1}.
_CLEAR_DIRTY = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0"
)
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


class Store:
    def __init__(self, redis: Redis, connection_id: str) -> None:
        # redis-py types every reply as "Awaitable[T] | T" (sync and async share stubs); Any keeps
        # the decoding below readable.
        self.r: Any = redis
        self.prefix = f"b:{connection_id}:"
        # EVALSHA after the first call: the budget script runs before every API call.
        self._take_slot = redis.register_script(_TAKE_SLOT)
        self._clear_dirty = redis.register_script(_CLEAR_DIRTY)

    def key(self, name: str) -> str:
        return self.prefix + name

    # --- jobs ------------------------------------------------------------------------------------
    def load_job(self, job_uuid: str) -> JobRecord:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key(f"job:{job_uuid}"))
        record = JobRecord(job_uuid)
        for k, v in raw.items():
            name, value = k.decode(), v.decode()
            if name == "d":
                record.details = JobFacts(**json.loads(value))
            elif name == "c":
                record.cd = CdView.from_json(value)
            elif name == "f":
                record.fields_fp = value
            elif name.startswith("a:"):
                record.allocations[name[2:]] = _alloc_from(value)
            elif name.startswith("w:"):
                continue
            elif name.startswith("p:"):
                sm8, cd = value.split("|")
                record.pairs[name[2:]] = PairSnapshot(Presence(sm8), Presence(cd))
        return record

    def known_jobs(self) -> list[str]:
        prefix = self.key("job:")
        return [k.decode()[len(prefix) :] for k in self.r.scan_iter(match=prefix + "*", count=1000)]

    def ingest_allocations(
        self, facts: Iterable[AllocationFacts], read_started: float | None = None
    ) -> set[str]:
        """Store what ServiceM8 says; mark dirty the jobs whose allocations really changed.

        A record equal to what we hold (apart from ``edit_date``, which our own writes do not know)
        is an echo or a re-read of the overlap window: it is stored quietly, nothing is marked.
        A record the bridge wrote after ``read_started`` (the moment the read began) is older
        than our write and is ignored: a stale read must never undo our own write.
        """
        by_job: dict[str, list[AllocationFacts]] = {}
        for fact in facts:
            by_job.setdefault(fact.job_uuid, []).append(fact)
        changed: set[str] = set()
        for job_uuid, batch in by_job.items():
            key = self.key(f"job:{job_uuid}")
            fields = [f"a:{f.uuid}" for f in batch] + [f"w:{f.uuid}" for f in batch]
            held = self.r.hmget(key, fields)
            updates: dict[str, str] = {}
            settled: list[str] = []
            dirty = False
            for fact, old, written in zip(
                batch, held[: len(batch)], held[len(batch) :], strict=True
            ):
                if written is not None:
                    if read_started is None or float(written) >= read_started:
                        continue
                    settled.append(f"w:{fact.uuid}")
                previous = _alloc_from(old.decode()) if old else None
                if previous is not None and previous.by_bridge and not fact.by_bridge:
                    fact = AllocationFacts(**{**asdict(fact), "by_bridge": True})
                if previous == fact:
                    continue
                updates[f"a:{fact.uuid}"] = _dump(asdict(fact))
                if previous is None or not previous.same_state(fact):
                    dirty = True
            if updates or settled:
                with self.r.pipeline() as pipe:
                    if updates:
                        pipe.hset(key, mapping=updates)
                    if settled:
                        pipe.hdel(key, *settled)
                    if dirty:
                        pipe.hincrby(self.key("dirty"), job_uuid, 1)
                    pipe.execute()
            if dirty:
                changed.add(job_uuid)
            expiries = [f.expires_ms for f in batch if f.active and f.expires_ms is not None]
            if expiries:
                self.r.zadd(self.key("expiring"), {job_uuid: min(expiries)}, lt=True)
        return changed

    def due_expiries(self, now_ms: int) -> set[str]:
        """Jobs with an allocation expired by now: mark them dirty and forget the reminder."""
        due = {j.decode() for j in self.r.zrangebyscore(self.key("expiring"), "-inf", now_ms)}
        if due:
            with self.r.pipeline() as pipe:
                pipe.zrem(self.key("expiring"), *due)
                for job_uuid in due:
                    pipe.hincrby(self.key("dirty"), job_uuid, 1)
                pipe.execute()
        return due

    def ingest_jobs(self, facts: Iterable[JobFacts], only_known: bool = False) -> set[str]:
        """Store job details; mark dirty the jobs whose details changed."""
        changed: set[str] = set()
        for fact in facts:
            key = self.key(f"job:{fact.uuid}")
            if only_known and not self.r.exists(key):
                continue
            old = self.r.hget(key, "d")
            new = _dump(asdict(fact))
            if old is not None and old.decode() == new:
                continue
            previous = JobFacts(**json.loads(old)) if old else None
            with self.r.pipeline() as pipe:
                pipe.hset(key, "d", new)
                if previous is None or asdict(previous) | {"edited_ms": 0} != asdict(fact) | {
                    "edited_ms": 0
                }:
                    pipe.hincrby(self.key("dirty"), fact.uuid, 1)
                    changed.add(fact.uuid)
                pipe.execute()
        return changed

    def save_details(self, facts: JobFacts) -> None:
        self.r.hset(self.key(f"job:{facts.uuid}"), "d", _dump(asdict(facts)))

    def save_written(self, job_uuid: str, facts: Iterable[AllocationFacts], at: float) -> None:
        """Store allocations as the bridge just wrote them, with a write marker (see ingest)."""
        mapping: dict[str, str] = {}
        for fact in facts:
            mapping[f"a:{fact.uuid}"] = _dump(asdict(fact))
            mapping[f"w:{fact.uuid}"] = repr(at)
        if mapping:
            self.r.hset(self.key(f"job:{job_uuid}"), mapping=mapping)

    def forget_cd(self, job_uuid: str) -> None:
        """The Coredination job is gone: drop our view so the next sync creates it again."""
        self.r.hdel(self.key(f"job:{job_uuid}"), "c", "f")

    def save_cd(self, job_uuid: str, view: CdView, fields_fp: str | None = None) -> None:
        """Store the Coredination view of a job and its reverse link, together."""
        mapping = {"c": view.to_json()}
        if fields_fp is not None:
            mapping["f"] = fields_fp
        with self.r.pipeline() as pipe:
            pipe.hset(self.key(f"job:{job_uuid}"), mapping=mapping)
            links = {view.uuid: job_uuid}
            if view.id is not None:
                links[str(view.id)] = job_uuid
            pipe.hset(self.key("cdjob"), mapping=links)
            pipe.execute()

    def save_pairs(self, job_uuid: str, pairs: Mapping[str, PairSnapshot]) -> None:
        mapping = {f"p:{s}": f"{p.sm8.value}|{p.cd.value}" for s, p in pairs.items()}
        if mapping:
            self.r.hset(self.key(f"job:{job_uuid}"), mapping=mapping)

    def job_for_cd(self, ref: str | int) -> str | None:
        found = self.r.hget(self.key("cdjob"), str(ref).lower())
        return found.decode() if found else None

    def cd_views(self, refs: Iterable[str]) -> dict[str, CdView | None]:
        """The stored Coredination views of several linked jobs, keyed by ServiceM8 job uuid."""
        refs = list(refs)
        if not refs:
            return {}
        with self.r.pipeline(transaction=False) as pipe:
            for job_uuid in refs:
                pipe.hget(self.key(f"job:{job_uuid}"), "c")
            raws = pipe.execute()
        return {
            j: CdView.from_json(raw.decode()) if raw else None
            for j, raw in zip(refs, raws, strict=True)
        }

    # --- dirty jobs ------------------------------------------------------------------------------
    def mark_dirty(self, job_uuids: Iterable[str]) -> None:
        with self.r.pipeline() as pipe:
            for job_uuid in job_uuids:
                pipe.hincrby(self.key("dirty"), job_uuid, 1)
            pipe.execute()

    def dirty(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("dirty"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def dirty_generation(self, job_uuid: str) -> int | None:
        value = self.r.hget(self.key("dirty"), job_uuid)
        return int(value) if value is not None else None

    def clear_dirty(self, job_uuid: str, generation: int | None) -> bool:
        """Forget the dirty mark if nobody bumped it since ``generation`` was read."""
        if generation is None:
            return True
        # A compare-and-delete must be one step; WATCH/MULTI would retry on every other job's mark.
        return bool(self._clear_dirty(keys=[self.key("dirty")], args=[job_uuid, str(generation)]))

    # --- the API budget --------------------------------------------------------------------------
    def take_slot(
        self, api: str, windows: Sequence[SlotWindow], now: float, max_wait: float
    ) -> Slot:
        """One call of ``api`` now or within ``max_wait`` seconds, in every window at once."""
        if not windows:
            return Slot(True, 0.0, None)
        keys = [self.key(f"budget:{api}:{w.name}") for w in windows]
        args: list[str] = [repr(now), repr(max_wait)]
        for w in windows:
            args += [str(max(1, w.fill)), str(w.keep), repr(w.span)]
        wait, blocking, taken = self._take_slot(keys=keys, args=args)
        name = windows[int(blocking) - 1].name if int(blocking) else None
        return Slot(bool(taken), max(0.0, float(wait)), name)

    def slots_used(self, api: str, window: SlotWindow, now: float) -> tuple[int, float | None]:
        """Calls of ``api`` in the span before ``now`` (and reserved after it), and when the
        oldest of them leaves the window."""
        raw = self.r.lrange(self.key(f"budget:{api}:{window.name}"), 0, window.keep - 1)
        times = [float(t) for t in raw if float(t) > now - window.span]
        return len(times), (min(times) + window.span if times else None)

    def claim_enqueue(self, job_uuid: str, ttl: int = 300) -> bool:
        """True if no sync of this job is queued yet (and now one is)."""
        return bool(self.r.set(self.key(f"queued:{job_uuid}"), "1", nx=True, ex=ttl))

    def release_enqueue(self, job_uuid: str) -> None:
        self.r.delete(self.key(f"queued:{job_uuid}"))

    @contextlib.contextmanager
    def poll_lock(self, name: str, timeout: float = 300.0) -> Iterator[bool]:
        """One poll of a system at a time across every host; yields False when another runs."""
        lock = self.r.lock(self.key(f"lock:poll:{name}"), timeout=timeout, blocking=False)
        acquired = bool(lock.acquire(blocking=False))
        try:
            yield acquired
        finally:
            if acquired:
                with contextlib.suppress(LockError):
                    lock.release()

    def record_failure(self, task_id: str | None, now: float) -> tuple[float, int]:
        """Count a failure of this task (its retries share the task id): (first failure, how
        many failures before this one). Budget waits are not failures and are not counted."""
        key = self.key(f"fail:{task_id}")
        with self.r.pipeline() as pipe:
            pipe.hsetnx(key, "first", repr(now))
            pipe.hincrby(key, "n", 1)
            pipe.expire(key, 7200)
            pipe.hget(key, "first")
            _, count, _, first = pipe.execute()
        return float(first), int(count) - 1

    def forget_failure(self, task_id: str | None) -> None:
        self.r.delete(self.key(f"fail:{task_id}"))

    # --- webhook deliveries and liveness ---------------------------------------------------------
    def first_delivery(self, delivery: str, ttl: int) -> bool:
        """True the first time a webhook delivery is seen within ``ttl`` seconds."""
        return bool(self.r.set(self.key(f"seen:{delivery}"), "1", nx=True, ex=ttl))

    def forget_delivery(self, delivery: str) -> None:
        """Undo ``first_delivery`` when enqueueing failed, so a redelivery is not dropped."""
        self.r.delete(self.key(f"seen:{delivery}"))

    def note_webhook(self, system: str, now: float) -> None:
        """A valid webhook from ``system`` arrived (its polls may then run less often)."""
        self.r.hset(self.key("cursor"), f"webhook:{system}", repr(now))

    def heartbeat(self, worker: str, now: float, ttl: int) -> None:
        self.r.set(self.key(f"alive:{worker}"), repr(now), ex=ttl)

    def live_workers(self) -> dict[str, float]:
        keys = list(self.r.scan_iter(match=self.key("alive:*"), count=1000))
        values = self.r.mget(keys) if keys else []
        start = len(self.key("alive:"))
        return {k.decode()[start:]: float(v) for k, v in zip(keys, values, strict=True) if v}

    def beat_alive(self) -> bool:
        """celery-redbeat holds this lock (with an expiry it renews) while a beat runs."""
        return bool(self.r.exists(self.key(BEAT_LOCK)))

    def ping(self) -> bool:
        return bool(self.r.ping())

    def queue_length(self, name: str) -> int:
        """Messages waiting in a broker list under this connection's prefix."""
        return int(self.r.llen(self.key(name)))

    # --- pauses and deferred work ----------------------------------------------------------------
    def set_pause(self, api: str, seconds: float, reason: str, kind: str) -> None:
        until = time.time() + seconds
        value = _dump({"until": until, "reason": reason, "kind": kind})
        self.r.set(self.key(f"pause:{api}"), value, px=max(1, int(seconds * 1000)))

    def pause(self, api: str) -> dict[str, Any] | None:
        raw = self.r.get(self.key(f"pause:{api}"))
        return json.loads(raw) if raw else None

    def clear_pause(self, api: str) -> None:
        self.r.delete(self.key(f"pause:{api}"))

    def defer(self, due: float, message: Mapping[str, Any]) -> None:
        self.r.zadd(self.key("deferred"), {_dump(dict(message)): due})

    def take_due(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        """Deferred messages now due. Each is handed out once: only the caller whose ZREM
        removed it gets it, so two releasers never enqueue the same message."""
        key = self.key("deferred")
        due = []
        for raw in self.r.zrangebyscore(key, "-inf", now, start=0, num=limit):
            if self.r.zrem(key, raw):
                due.append(json.loads(raw))
        return due

    def deferred_count(self) -> int:
        return int(self.r.zcard(self.key("deferred")))

    # --- dead letters ----------------------------------------------------------------------------
    def dead_letters(self, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        rows = self.r.xrange(self.key("dlq"), count=count)
        return [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in data.items()})
            for entry_id, data in rows
        ]

    def dead_letter(self, entry: Mapping[str, Any]) -> str:
        """Append an entry (already free of secrets) to the dead-letter stream; return its id."""
        fields = {
            k: v if isinstance(v, str) else _dump(v) for k, v in entry.items() if v is not None
        }
        return str(self.r.xadd(self.key("dlq"), fields).decode())

    def get_dead_letter(self, entry_id: str) -> dict[str, str] | None:
        rows = self.r.xrange(self.key("dlq"), min=entry_id, max=entry_id)
        if not rows:
            return None
        return {k.decode(): v.decode() for k, v in rows[0][1].items()}

    def drop_dead_letter(self, entry_id: str) -> bool:
        return bool(self.r.xdel(self.key("dlq"), entry_id))

    def dead_letter_count(self) -> int:
        return int(self.r.xlen(self.key("dlq")))

    def count_keys(self, pattern: str) -> int:
        return sum(1 for _ in self.r.scan_iter(match=self.key(pattern), count=1000))

    # --- locks -----------------------------------------------------------------------------------
    def job_lock(
        self, job_uuid: str, timeout: float = 120.0, blocking_timeout: float = 10.0
    ) -> Lock:
        """One writer per job: webhook, poll and retry paths all take this lock."""
        lock: Lock = self.r.lock(
            self.key(f"lock:{job_uuid}"), timeout=timeout, blocking_timeout=blocking_timeout
        )
        return lock

    # --- staff map -------------------------------------------------------------------------------
    def staff_map(self) -> StaffMap:
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key("map:s2u"))
            pipe.smembers(self.key("map:manual"))
            s2u_raw, manual_raw = pipe.execute()
        s2u = {k.decode(): int(v) for k, v in s2u_raw.items()}
        return StaffMap(
            s2u, {u: s for s, u in s2u.items()}, frozenset(m.decode() for m in manual_raw)
        )

    def link_staff(self, staff_uuid: str, user_id: int, *, manual: bool) -> None:
        staff_map = self.staff_map()
        with self.r.pipeline() as pipe:
            old_staff = staff_map.u2s.get(user_id)
            if old_staff is not None and old_staff != staff_uuid:
                pipe.hdel(self.key("map:s2u"), old_staff)
            old_user = staff_map.s2u.get(staff_uuid)
            if old_user is not None:
                pipe.hdel(self.key("map:u2s"), str(old_user))
            pipe.hset(self.key("map:s2u"), staff_uuid, str(user_id))
            pipe.hset(self.key("map:u2s"), str(user_id), staff_uuid)
            if manual:
                pipe.sadd(self.key("map:manual"), staff_uuid)
            pipe.execute()

    def unlink_staff(self, staff_uuid: str, *, manual: bool) -> int | None:
        user = self.r.hget(self.key("map:s2u"), staff_uuid)
        with self.r.pipeline() as pipe:
            pipe.hdel(self.key("map:s2u"), staff_uuid)
            if user is not None:
                pipe.hdel(self.key("map:u2s"), user.decode())
            if manual:
                pipe.sadd(self.key("map:manual"), staff_uuid)
            pipe.execute()
        return int(user) if user is not None else None

    def save_directory(self, kind: str, entries: Mapping[str, dict[str, Any]]) -> None:
        key = self.key(f"dir:{kind}")
        with self.r.pipeline() as pipe:
            pipe.delete(key)
            if entries:
                pipe.hset(key, mapping={k: _dump(v) for k, v in entries.items()})
            pipe.execute()

    def directory(self, kind: str) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key(f"dir:{kind}"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    # --- records that cannot be read ------------------------------------------------------------
    def set_invalid(self, record: str, reason: str, now: float) -> bool:
        """Park an unreadable record with its reason; True the first time it is parked."""
        value = _dump({"reason": reason, "since": now})
        return bool(self.r.hsetnx(self.key("invalid"), record, value))

    def invalid(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("invalid"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def clear_invalid(self, records: Iterable[str]) -> None:
        records = list(records)
        if records:
            self.r.hdel(self.key("invalid"), *records)

    # --- pending pairs ---------------------------------------------------------------------------
    def set_pending(self, job_uuid: str, who: str, reason: str) -> None:
        field_ = f"{job_uuid}|{who}"
        if not self.r.hexists(self.key("pending"), field_):
            self.r.hset(
                self.key("pending"), field_, _dump({"reason": reason, "since": time.time()})
            )

    def clear_pending(self, job_uuid: str, who: str) -> None:
        self.r.hdel(self.key("pending"), f"{job_uuid}|{who}")

    def pending(self) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("pending"))
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def requeue_pending(self) -> set[str]:
        """Mark every job with a parked pair dirty again (after the staff map changed)."""
        jobs = {k.split("|", 1)[0] for k in self.pending()}
        if jobs:
            self.mark_dirty(jobs)
        return jobs

    # --- cursors and counters --------------------------------------------------------------------
    def cursor(self, name: str) -> str | None:
        value = self.r.hget(self.key("cursor"), name)
        return value.decode() if value is not None else None

    def set_cursor(self, name: str, value: str) -> None:
        self.r.hset(self.key("cursor"), name, value)

    def count(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        with self.r.pipeline(transaction=False) as pipe:
            for name, n in counts.items():
                pipe.hincrby(self.key("stats"), name, n)
            pipe.execute()

    def stats(self) -> dict[str, int]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.key("stats"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def wipe(self) -> int:
        """Delete every key of this connection (tests, and ``bridge reset``)."""
        keys = list(self.r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i : i + 500])
        return len(keys)
