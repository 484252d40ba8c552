"""Every Redis key the bridge uses, in one place (the only other place a key is spelled is
celery-redbeat's and kombu's own, under the prefixes named here).

Keys of one connection start with ``b:{connection}:``. The API budget and its pauses belong to the
account the limit belongs to (ServiceM8 counts "per add-on per account",
docs/servicem8-api.md#limits), so two connections on one account share them: they start with
``b:acct:{api}:{account}:``.
``J`` is a ServiceM8 job uuid, ``S`` a staff uuid, ``A`` an allocation uuid, ``U`` a Coredination
user id, ``C`` a Coredination job uuid:

=========================  ======  ===============================================================
key                        type    what it holds
=========================  ======  ===============================================================
``jobs:{n}``               hash    one of ``JOB_BUCKETS`` buckets: ``J`` (16 bytes) → the job's
                                   record (``bridge.store.codec``): job facts, allocation facts,
                                   write markers, the Coredination view, the body fingerprint and
                                   the pair snapshots. ``n`` = CRC32(J) mod buckets
``cdref:{n}``              hash    one of ``REF_BUCKETS`` buckets: ``C`` (16 bytes) or the
                                   Coredination job id (text) → ``J`` (16 bytes), the reverse link
``cdlinks``                string  how many ``cdref`` fields are uuids: linked Coredination jobs
                                   (the census compares it with the linked jobs a list shows)
``dirty``                  hash    ``J`` → generation; a job to sync. Ingest bumps it, a finished
                                   sync removes it only if unchanged, so no change is lost to a race
``inflight``               hash    ``J`` → what a sync of ``J`` had on its way to an API: the body
                                   digest of a ``PUT`` creating its Coredination job, else ``1``.
                                   Set before its first write, gone when a sync of it ends; found
                                   by the next sync, the job is read before anything is written
``catchup``                hash    ``since`` (when the first job of a backlog was synced), ``done``
                                   (jobs synced since): a first sync's or backfill's progress,
                                   gone when no job is dirty
``expiring``               zset    ``J`` by the earliest future ``expiry_timestamp`` of its live
                                   allocations, or moment a dated booking of it leaves scope:
                                   neither changes anything in ServiceM8, no poll sees it
``map:s2u`` / ``map:u2s``  hash    ``S`` → ``U`` (staff ⇄ user map) and its reverse
``map:manual``             set     ``S`` linked or unlinked by hand: matching leaves them be
``dir:{kind}``             hash    directories read from the APIs: ``staff``, ``users``,
                                   ``windows`` (allocation windows)
``staff:match``            hash    the last whole staff match: ``at`` (when it read both lists)
                                   and ``users`` (``listed``, or ``missing`` where Coredination
                                   has no users list); absent until the first one
``staff:asked:{P}``        string  a match was asked for person ``P`` (``S``, or ``u:U``) in the
                                   last minute (expiring): at most one a minute each, whichever
                                   process asks
``staff:first-try``        string  set (expiring) when a job sync tried the connection's first
                                   staff match: the syncs waiting for it try again after that
``lock:staff``             string  one staff match at a time (redis-py ``Lock``: token + expiry)
``invalid``                hash    ``"{api}.{object}:{id}"`` → ``{"reason","since"}``: records an
                                   API returned that cannot be read; ``"redis.job:{J}"``, a job
                                   record found damaged (until rewritten)
``pending``                hash    ``"J|S"`` or ``"J|u:U"`` → ``{"reason","since"}``, parked pairs
``excluded``               hash    ``J`` → ``{"by","at"[,"note"]}``: a job an operator left out of
                                   the sync (``sm8cd exclude``; docs/scope.md)
``cursor``                 hash    poll high-water marks and times, by ``system:object``
``account``                hash    api → the account its budget belongs to, once resolved, and
                                   ``{api}~stand-in`` → the key's digest (the Coredination
                                   group's identity, bridge/connections/uniqueness.py)
``stats``                  hash    counters by ``direction.outcome``
``queued:{J}``             string  set while a sync of J is queued, so a poll does not queue twice
``dlq``                    stream  dead letters: what was given up on, why, how to replay it
``dlq:cause``              hash    cause → the id of its one dead letter (a repeat updates it)
``dlq:resolved``           hash    dead letter id → when its job later synced (kept, marked)
``failed``                 hash    ``J`` → ``{"reason","generation","dlq","since"}``: a job whose
                                   sync failed for good, parked until a change or a replay
``fail:{task id}``         hash    when a retried task first failed, and how often (2 h expiry)
``deferred``               zset    tasks waiting longer than a countdown may, by due time
``lock:{J}``               string  the per-job lock (redis-py ``Lock``: token + expiry)
``lock:poll:{system}``     string  one poll of a system at a time (30 s, renewed while it runs)
``seen:{delivery}``        string  a webhook delivery already enqueued (de-duplication window)
``alive:{worker}``         string  a worker's last heartbeat (expires after ``ALIVE_SECONDS``)
``layout`` / ``lock:upgrade``      the store layout marker and the lock of its upgrade
``job:{J}`` / ``cdjob``            the first layout's keys, moved by ``bridge.store.legacy``
``redbeat:…`` / ``celery:…``       celery-redbeat's schedule and lock; the broker's queues
``b:acct:{api}:{acct}:budget:{w}`` list: the moving-window budget of window ``w``, newest first
``b:acct:{api}:{acct}:pause``      string ``{"until","reason","kind"}`` while that API is paused
``b:fleet:{d}:connections``        hash: connection id → JSON of its public part (status, reason,
                                   base URLs, account, settings overrides; bridge/connections).
                                   ``d``: the deployment (its ``BRIDGE_CONNECTION_ID``), whose
                                   workers run these connections on its lanes
``b:fleet:{d}:secrets``            hash: connection id → Fernet token of its keys' JSON (never
                                   plain text; docs/connections.md#secrets-at-rest)
``b:fleet:{d}:due``                zset ``{connection}|{task}`` → when it is next due: the
                                   periodic work of every registry connection, claimed by the
                                   fleet tick (bridge/connections/schedule.py)
``b:fleet:{d}:every``              hash ``{connection}|{task}`` → its interval in seconds
``b:fleet:{d}:oauth:state:{s}``    string ``{"label","issued_at"}``: an OAuth ``state`` the bridge
                                   issued; expires (600 s), deleted when used
                                   (docs/servicem8-oauth.md#state)
``b:fleet:{d}:oauth:pending``      zset: pending states by expiry, at most 1,000 (the public page
                                   cannot grow Redis without bound)
``b:fleet:{d}:oauth:starts:{c}``   string: activation starts of client ``c`` this minute (at most
                                   10; an IPv6 client by its /64), expiring
``b:fleet:{d}:console:key``        string: 32 random bytes the console's sessions are signed with
``b:fleet:{d}:console:fails:{c}``  string: failed console sign-ins of client ``c`` this minute
``b:fleet:{d}:deferred``           zset: connection → when its earliest deferred task is due; the
                                   fleet tick takes each as it falls due and queues its release
``b:fleet:{d}:waiting``            set: registry connections with tasks waiting for a slot
``b:fleet:{d}:lateness``           list, newest first: ``"at task seconds"``, how late each task
                                   the fleet tick claimed started (the newest 20,000)
``b:fleet:{d}:polled``             zset: active connection → its last whole poll (the older of
                                   its two systems'), or when it was first watched if it has had
                                   none since (bridge/store/fleet_health.py; the fleet tick
                                   keeps it, /healthz and /metrics read it)
``b:fleet:{d}:stale-at``           zset: active connection → ``polled`` + its allowance (three
                                   times its longest poll interval): past it, it is stale
``b:fleet:{d}:dead-letters``       zset: active connection → its dead letters, while above 0
``b:fleet:{d}:health``             hash: ``dead_letters``, ``waiting`` (totals of the active
                                   connections), ``waiting:{c}`` (while above 0),
                                   ``status:{s}`` (registry entries by status)
``lock:oauth``             string  the connection's single-flight token refresh lock (redis-py)
``admission:slots``        zset    task id → when its slot lapses: the connection's tasks in the
                                   lanes or running (bridge/connections/admission.py)
``admission:waiting:{l}``  list    the connection's task messages waiting for a slot, lane ``l``
``admission:held``         string  set (expiring) while the connection's budget is spent: none
                                   of its waiting tasks is admitted
``servicem8-timezone``     string  the ServiceM8 account's timezone as last read (one day)
=========================  ======  ===============================================================

The connection registry's keys belong to no connection (``b:fleet:``), so the ids ``fleet`` and
``acct`` are refused by the registry: that connection's keys would share a prefix with them, and
wiping it would wipe the registry or the accounts' budgets.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Job records live in JOB_BUCKETS hashes and reverse links in REF_BUCKETS hashes, chosen by the
# CRC32 of the id: a top-level key per job would cost about 80 bytes more per link. A record is
# over 64 bytes, so its bucket is a plain hash table; a reverse-link bucket holds short values and
# stays in Redis's compact listpack encoding up to ``hash-max-listpack-entries`` fields (512 by
# default; two per link, so about 500,000 links per connection), past which it still works with
# more memory per link. Never change these counts on a live store: records would be looked for in
# the wrong bucket.
JOB_BUCKETS = 1024
REF_BUCKETS = 2048
ALIVE_SECONDS = 30  # a worker whose last heartbeat is older than this counts as dead


@dataclass(frozen=True)
class Keys:
    connection: str

    @property
    def prefix(self) -> str:
        return f"b:{self.connection}:"

    def key(self, name: str) -> str:
        return self.prefix + name

    # --- job records and links -------------------------------------------------------------------
    def job_bucket(self, field: bytes) -> str:
        return self.key(f"jobs:{zlib.crc32(field) % JOB_BUCKETS}")

    def job_buckets(self) -> list[str]:
        return [self.key(f"jobs:{n}") for n in range(JOB_BUCKETS)]

    def ref_bucket(self, field: bytes) -> str:
        return self.key(f"cdref:{zlib.crc32(field) % REF_BUCKETS}")

    def ref_buckets(self) -> list[str]:
        return [self.key(f"cdref:{n}") for n in range(REF_BUCKETS)]

    @property
    def dirty(self) -> str:
        return self.key("dirty")

    @property
    def catchup(self) -> str:
        return self.key("catchup")

    @property
    def inflight(self) -> str:
        return self.key("inflight")

    @property
    def admission_slots(self) -> str:
        return self.key("admission:slots")

    def admission_waiting(self, lane: str) -> str:
        return self.key(f"admission:waiting:{lane}")

    @property
    def admission_held(self) -> str:
        return self.key("admission:held")

    @property
    def timezone(self) -> str:
        return self.key("servicem8-timezone")

    @property
    def expiring(self) -> str:
        return self.key("expiring")

    # --- staff, directories, parked records ------------------------------------------------------
    @property
    def staff_to_user(self) -> str:
        return self.key("map:s2u")

    @property
    def user_to_staff(self) -> str:
        return self.key("map:u2s")

    @property
    def manual_links(self) -> str:
        return self.key("map:manual")

    def directory(self, kind: str) -> str:
        return self.key(f"dir:{kind}")

    @property
    def staff_match(self) -> str:
        return self.key("staff:match")

    def staff_asked(self, person: str) -> str:
        return self.key(f"staff:asked:{person}")

    @property
    def staff_first_try(self) -> str:
        return self.key("staff:first-try")

    @property
    def staff_lock(self) -> str:
        return self.key("lock:staff")

    @property
    def invalid(self) -> str:
        return self.key("invalid")

    @property
    def pending(self) -> str:
        return self.key("pending")

    @property
    def excluded(self) -> str:
        return self.key("excluded")

    # --- work bookkeeping ------------------------------------------------------------------------
    @property
    def cursor(self) -> str:
        return self.key("cursor")

    @property
    def account(self) -> str:
        return self.key("account")

    @property
    def stats(self) -> str:
        return self.key("stats")

    @property
    def links_count(self) -> str:
        return self.key("links")

    @property
    def cd_links_count(self) -> str:
        return self.key("cdlinks")

    def trail(self, job_uuid: str) -> str:
        return self.key(f"trail:{job_uuid}")

    @property
    def job_numbers(self) -> str:
        return self.key("trail-numbers")

    def queued(self, job_uuid: str) -> str:
        return self.key(f"queued:{job_uuid}")

    @property
    def dlq(self) -> str:
        return self.key("dlq")

    @property
    def dlq_causes(self) -> str:
        return self.key("dlq:cause")

    @property
    def dlq_resolved(self) -> str:
        return self.key("dlq:resolved")

    @property
    def failed_jobs(self) -> str:
        return self.key("failed")

    def failure(self, task_id: str | None) -> str:
        return self.key(f"fail:{task_id}")

    @property
    def deferred(self) -> str:
        return self.key("deferred")

    def job_lock(self, job_uuid: str) -> str:
        return self.key(f"lock:{job_uuid}")

    def poll_lock(self, system: str) -> str:
        return self.key(f"lock:poll:{system}")

    def seen(self, delivery: str) -> str:
        return self.key(f"seen:{delivery}")

    # --- layout, and other programs' keys ------------------------------------------------------
    @property
    def layout(self) -> str:
        return self.key("layout")

    @property
    def upgrade_lock(self) -> str:
        return self.key("lock:upgrade")

    @property
    def legacy_job_prefix(self) -> str:
        return self.key("job:")

    @property
    def legacy_reverse(self) -> str:
        return self.key("cdjob")

    @property
    def redbeat_prefix(self) -> str:
        return self.key("redbeat:")

    @property
    def beat_lock(self) -> str:
        return self.redbeat_prefix + ":lock"  # celery-redbeat's lock key under its prefix

    @property
    def broker_prefix(self) -> str:
        return self.key("celery:")


def account_prefix(api: str, account: str) -> str:
    """Keys of one API account, shared by every connection on it."""
    return f"b:acct:{api}:{account}:"


def budget_key(api: str, account: str, window: str) -> str:
    return account_prefix(api, account) + f"budget:{window}"


def pause_key(api: str, account: str) -> str:
    return account_prefix(api, account) + "pause"


def blocks_key(api: str, account: str) -> str:
    """Kinds of operation a credential may not do (a 403 naming a missing scope): a hash of
    operation → ``{"until","reason","scope"}``, kept under the credential's stand-in."""
    return account_prefix(api, account) + "blocks"


# --- the fleet: keys of no single connection (docs/connections.md#the-registrys-keys) ----------
FLEET_PREFIX = "b:fleet:"
RESERVED_CONNECTION_IDS = frozenset({"fleet", "acct"})  # b:fleet:…, b:acct:… are taken


@dataclass(frozen=True)
class FleetKeys:
    """The keys of one deployment's connection registry and schedule (``for_deployment``)."""

    prefix: str = FLEET_PREFIX + "default:"

    @classmethod
    def for_deployment(cls, deployment: str) -> FleetKeys:
        """Two deployments on one Redis (say staging and production) keep two registries."""
        return cls(f"{FLEET_PREFIX}{deployment}:")

    @property
    def connections(self) -> str:
        return self.prefix + "connections"

    @property
    def secrets(self) -> str:
        return self.prefix + "secrets"

    @property
    def due(self) -> str:
        return self.prefix + "due"

    @property
    def every(self) -> str:
        return self.prefix + "every"

    @property
    def waiting(self) -> str:
        """Set: connections with messages waiting for a slot (``bridge.connections.admission``)."""
        return self.prefix + "waiting"

    @property
    def deferred(self) -> str:
        """Zset: connection → its earliest deferred task's due time (``WorkStore.defer``)."""
        return self.prefix + "deferred"

    @property
    def console_key(self) -> str:
        return self.prefix + "console:key"

    def console_fails(self, client: str) -> str:
        return self.prefix + f"console:fails:{client}"

    @property
    def lateness(self) -> str:
        """List, newest first: "at task seconds" for each claimed task's start delay."""
        return self.prefix + "lateness"

    # --- each active connection's health, kept by the fleet tick (store/fleet_health.py) -------
    @property
    def polled(self) -> str:
        """Zset: connection → its last whole poll (or when it was first watched)."""
        return self.prefix + "polled"

    @property
    def stale_at(self) -> str:
        """Zset: connection → when it turns stale without another whole poll."""
        return self.prefix + "stale-at"

    @property
    def dead_letters(self) -> str:
        """Zset: connection → its dead letters, while above 0."""
        return self.prefix + "dead-letters"

    @property
    def health(self) -> str:
        """Hash: the fleet's totals, waiting tasks per connection, entries by status."""
        return self.prefix + "health"
