"""The Celery app, built by ``create_app``: nothing is read at import.

``celery -A tasks worker|beat`` finds the module-level ``app``, made by ``create_app()`` with no
settings: importing this module reads no environment, no ``.env`` and no Redis. The settings are
read the first time Celery needs a value that comes from them (the broker URL, the queues, the
schedule: a worker or beat at start-up), and a missing or malformed one, or no ``REDIS_URL``,
ends the process there with one line and exit code 2.

How: the configuration source (``config_source``, Celery's documented lazy configuration: "the
configuration will be read only when required") is a mapping whose keys are fixed. Celery sets
itself up and binds the tasks from the fixed values (serializer, acks, time limits), so the task
registry can be listed without settings; a value derived from the settings is computed on its
first read. (``app.on_configure`` would not do: binding a task already configures the app.)

The configuration, deliberately at-least-once:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is redelivered;
- prefetch 1: a worker holds one message at a time, so a kill strands at most one;
- JSON only, results ignored, soft/hard time limits;
- ``visibility_timeout`` 300 s: longer than the hard time limit (150 s) and than any countdown
  the bridge uses (at most 60 s), so Redis never redelivers a message that is still alive, and a
  message stranded by a killed worker comes back within five minutes. The dirty-job sweep makes
  even that wait harmless: a stranded sync is queued again by the next sweep.
- Celery does not take over logging: ``bridge.log`` renders its records, secrets redacted.
- Task events off until someone watches: Flower turns them on in every worker while it runs (its
  ``enable_events``, every few seconds), so an idle fleet does not pay three published events per
  task (about a tenth of its CPU) for a monitor nobody runs; no "sent" event either.
- Queues by kind of work, checked in priority order: interactive (webhooks) before sync (polls)
  before poll before bulk (backfill).
- Beat runs celery-redbeat: the schedule and a lock live in Redis, so a second beat waits as a
  standby instead of double-firing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import redis
import structlog
from celery import Celery, current_app
from celery.signals import heartbeat_sent, setup_logging, task_postrun, task_prerun
from kombu.entity import Queue

from bridge.config import Settings, load_settings
from bridge.connections.process import ProcessFleet, servicem8_credentials
from bridge.connections.schedule import Claimed
from bridge.connections.uniqueness import refuse_duplicates
from bridge.errors import ConfigError, ConnectionPaused
from bridge.log import configure_logging, get_logger
from bridge.process.runtime import Runtime, build, with_sentinel_settings
from bridge.queues import (
    CHECK_SUBSCRIPTIONS,
    FLEET_TICK,
    MATCH_STAFF,
    POLL_CYCLE,
    QUEUE_KINDS,
    RECONCILE,
    RELEASE_DEFERRED,
    SWEEP,
    queue_name,
    task_routes,
    transport_options,
)
from bridge.redis import conn as redis_conn
from bridge.store.activity import ActivityStore
from bridge.store.keys import ALIVE_SECONDS, Keys

log = get_logger(__name__)

HARD_TIME_LIMIT = 150
SOFT_TIME_LIMIT = 120
# The longest wait a task spends as a countdown. Celery turns a countdown into an ETA message the
# worker holds in memory outside its prefetch limit (celery/celery#3640), so anything longer goes
# to the deferred set, which beat's release task re-enqueues when due (every 2 s).
MAX_COUNTDOWN = 5
FLEET_TICK_SECONDS = 1.0

ServiceM8Gate = Literal["shared", "open"]

# Values that need no settings: enough for Celery to set itself up and bind the tasks.
FIXED: dict[str, Any] = {
    "broker_connection_retry_on_startup": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_ignore_result": True,
    "result_backend": None,
    "task_soft_time_limit": SOFT_TIME_LIMIT,
    "task_time_limit": HARD_TIME_LIMIT,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,  # Flower enables them while it runs
    "task_send_sent_event": False,
    "beat_scheduler": "redbeat.RedBeatScheduler",
}


def _redis_url(settings: Settings) -> str:
    """``REDIS_URL``; a Sentinel one with the master's name written in (bridge/redis/conn.py)."""
    if settings.redis_url is None:
        return ""
    return with_sentinel_settings(settings, settings.redis_url.get_secret_value())


def _broker(settings: Settings) -> dict[str, Any]:
    """``broker_url`` and ``broker_transport_options``: for one Redis, ``REDIS_URL`` and the
    bridge's transport options as they are; for a Sentinel group, kombu's form of it with the
    same transport options and the master's name."""
    return redis_conn.broker_settings(
        _redis_url(settings), transport_options(settings.bridge_connection_id)
    )


def _redbeat(settings: Settings) -> dict[str, Any]:
    """``redbeat_redis_url`` and ``redbeat_redis_options``. The options are set, empty for one
    Redis, so redbeat stops falling back to (and warning about) the broker's transport options;
    for a Sentinel group they hold the sentinels and the master's name."""
    return redis_conn.redbeat_settings(_redis_url(settings))


def _poll_tick(settings: Settings) -> float:
    return min(_sm8_poll(settings), settings.coredination_poll_seconds)


def _sm8_poll(settings: Settings) -> float:
    """The shortest ServiceM8 poll interval: the fixed one, or the planner's lower bound."""
    return settings.servicem8_poll_seconds or settings.poll_min_seconds


def _queues(settings: Settings) -> list[Queue]:
    return [Queue(queue_name(settings.bridge_connection_id, kind)) for kind in QUEUE_KINDS]


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat runs one entry: the fleet tick, which queues every connection's periodic work
    (``periodic_work``), the environment's connection included. One scheduler for all."""
    return {"fleet-tick": {"task": FLEET_TICK, "schedule": FLEET_TICK_SECONDS}}


def periodic_work(settings: Settings) -> dict[str, float]:
    """A connection's periodic tasks and their intervals, from its settings (its webhook health
    check included: its callback URLs carry its own token). The fleet tick plans them."""
    tick = _poll_tick(settings)
    work = {
        # One cycle task ingests both systems (each at its own interval) before syncing.
        POLL_CYCLE: tick,
        MATCH_STAFF: float(settings.staff_match_seconds),
        # Deferred work is released when due by the deployment's index of it (the fleet tick
        # reads it every second); this is the safety net for a release that died on its way.
        RELEASE_DEFERRED: 60.0,
        SWEEP: max(2.0, min(30.0, tick)),
    }
    if settings.reconcile_seconds:
        work[RECONCILE] = float(settings.reconcile_seconds)
    if settings.webhook_health_seconds and settings.webhook_public_url:
        work[CHECK_SUBSCRIPTIONS] = float(settings.webhook_health_seconds)
    return work


# Values that come from the settings, each computed on its first read.
FROM_SETTINGS: dict[str, Callable[[Settings], Any]] = {
    "broker_url": lambda s: _broker(s)["broker_url"],
    "broker_transport_options": lambda s: _broker(s)["broker_transport_options"],
    "task_queues": _queues,
    "task_default_queue": lambda s: queue_name(s.bridge_connection_id, "sync"),
    "task_routes": lambda s: task_routes(s.bridge_connection_id),
    "redbeat_redis_url": lambda s: _redbeat(s)["redbeat_redis_url"],
    "redbeat_redis_options": lambda s: _redbeat(s)["redbeat_redis_options"],
    "redbeat_key_prefix": lambda s: Keys(s.bridge_connection_id).redbeat_prefix,
    "redbeat_lock_timeout": lambda s: max(30, int(3 * min(_sm8_poll(s), 60))),
    "beat_max_loop_interval": lambda s: min(5.0, _poll_tick(s) / 2),
    "beat_schedule": beat_schedule,
}


def checked(settings: Settings | None) -> Settings:
    """The settings (read now when not given), fit for a worker or beat; otherwise one line on
    stderr and exit code 2, never a traceback."""
    try:
        settings = load_settings() if settings is None else settings
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    if settings.redis_url is None:
        sys.stderr.write(
            "error: REDIS_URL is required for Celery workers and beat "
            "('sm8cd run' starts an embedded Redis and sets it for them)\n"
        )
        raise SystemExit(2)
    try:
        redis_conn.check(settings.redis_url.get_secret_value())
    except ConfigError as exc:  # the message names the hosts, never a password
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    return settings


class CeleryConfig(Mapping[str, Any]):
    """Celery's configuration source: the keys of ``FIXED`` and ``FROM_SETTINGS``. The settings
    are read (or checked, when given) on the first read of a value that needs them."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._given = settings
        self._settings: Settings | None = None
        self._derived: dict[str, Any] = {}

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = checked(self._given)
        return self._settings

    @property
    def settings_read(self) -> bool:
        return self._settings is not None

    def __getitem__(self, key: str) -> Any:
        if key in FIXED:
            return FIXED[key]
        if key not in self._derived:
            self._derived[key] = FROM_SETTINGS[key](self.settings())  # KeyError: not ours
        return self._derived[key]

    def __contains__(self, key: object) -> bool:
        # Without this, Mapping would answer by reading the value (and the settings).
        return key in FIXED or key in FROM_SETTINGS

    def __iter__(self) -> Iterator[str]:
        yield from FIXED
        yield from FROM_SETTINGS

    def __len__(self) -> int:
        return len(FIXED) + len(FROM_SETTINGS)


class BridgeApp(Celery):  # type: ignore[misc]
    """A Celery app that also knows its settings (read on first use, through its configuration
    source) and how its tasks reach ServiceM8 (``servicem8_gate``), and builds each process's
    runtime from them."""

    def __init__(
        self,
        main: str = "bridge",
        *,
        config_source: CeleryConfig | None = None,
        servicem8_gate: ServiceM8Gate = "shared",
        **kwargs: Any,
    ) -> None:
        self.bridge_config = config_source if config_source is not None else CeleryConfig()
        self.servicem8_gate: ServiceM8Gate = servicem8_gate
        # By connection: (pid, registry revision, runtime).
        self._runtimes: dict[str, tuple[int, int | None, Runtime]] = {}
        self._fleet: ProcessFleet | None = None
        self._alive: ActivityStore | None = None
        self._redbeat_redis: Any = None
        super().__init__(main, config_source=self.bridge_config, **kwargs)

    def __reduce_keys__(self) -> dict[str, Any]:
        return {**super().__reduce_keys__(), "servicem8_gate": self.servicem8_gate}

    def bridge_settings(self) -> Settings:
        return self.bridge_config.settings()

    @property
    def redbeat_redis(self) -> Any:
        """Beat's Redis client: ``redbeat.schedulers.get_redis`` takes it from this attribute
        when it is set, else builds one and sets it. For a Sentinel group it is the bridge's
        own master client (bridge/redis/conn.py), which retries across a failover: redbeat's
        retries nothing on its Sentinel connections, so renewing beat's lock during a failover
        ended beat. For one Redis it stays redbeat's own."""
        if self._redbeat_redis is None:
            url = _redis_url(self.bridge_settings())
            if redis_conn.is_sentinel(url):
                self._redbeat_redis = redis_conn.client(url, decode_responses=True)
        return self._redbeat_redis

    @redbeat_redis.setter
    def redbeat_redis(self, client: Any) -> None:
        self._redbeat_redis = client

    def bridge_runtime(self, connection: str | None = None) -> Runtime:
        """The runtime of ``connection`` in this process, built on first use (after the prefork
        fork, never before). Every connection is the registry's, the environment's included
        (it joins at its first task should nothing have added it yet): built from its entry
        (its settings, its keys), over one Redis client for them all, and built again when the
        entry changes. ``None`` (a message of a release before every task named its connection)
        is the environment's. A connection that is not active (or not in the registry) raises
        ``ConnectionPaused``: its tasks are skipped, and nothing is lost."""
        settings = self.bridge_settings()
        own = settings.bridge_connection_id
        wanted = connection or own
        fleet = self.fleet().view
        # A connection added a moment ago may be newer than this process's view: read again.
        entry = fleet.entry(wanted) or fleet.entries_now().get(wanted)
        if entry is None and wanted == own and not fleet.unreadable(own):
            fleet.registry.upsert_environment(settings)
            entry = fleet.entries_now().get(wanted)
        if entry is None or entry.status != "active":
            self._drop_runtime(wanted)  # removed or paused: its clients go
        if entry is None:
            status = "unreadable in the registry" if fleet.unreadable(wanted) else (
                "not in the registry")  # fmt: skip
            raise ConnectionPaused(wanted, status, None)
        if entry.status != "active":
            raise ConnectionPaused(wanted, entry.status, entry.reason)

        def built() -> Runtime:
            loaded = fleet.registry.load(wanted, settings)
            credentials = servicem8_credentials(loaded, self.fleet().keeper)
            runtime = self._build(loaded.settings, client=fleet.client, deployment=own,
                                  servicem8_credentials=credentials,
                                  session=self.fleet().session)  # fmt: skip
            # One account pair, one connection: the later of two on the same pair is paused
            # before it syncs anything (docs/connections.md#one-account-pair-one-connection).
            refuse_duplicates(
                fleet.registry, loaded.connection, runtime.budget.accounts, fleet.entries().values()
            )
            return runtime

        return self._runtime_for(wanted, entry.revision, built)

    def _drop_runtime(self, connection: str) -> None:
        held = self._runtimes.pop(connection, None)
        if held is not None and held[0] == os.getpid():  # a parent's is not this process's
            held[2].close()

    def _build(self, settings: Settings, **kwargs: Any) -> Runtime:
        return build(
            settings, _redis_url(self.bridge_settings()), servicem8_gate=self.servicem8_gate,
            **kwargs,
        )  # fmt: skip

    def _runtime_for(
        self, connection: str, revision: int | None, make: Callable[[], Runtime]
    ) -> Runtime:
        """The cached runtime of ``connection``, built again after a fork or when its registry
        entry's ``revision`` moved."""
        held = self._runtimes.get(connection)
        if held is not None and held[0] == os.getpid() and held[1] == revision:
            return held[2]
        self._drop_runtime(connection)
        runtime = make()
        self._runtimes[connection] = (os.getpid(), revision, runtime)
        return runtime

    def fleet(self) -> ProcessFleet:
        """This process's parts for the registry's connections (``ProcessFleet``)."""
        if self._fleet is None or self._fleet.pid != os.getpid():
            settings = self.bridge_settings()
            self._fleet = ProcessFleet(settings, _redis_url(settings))
        return self._fleet

    def fleet_due(self, now: float) -> list[Claimed]:
        """The registry connections' periodic work due now (``FleetView.due_work``)."""
        return self.fleet().due(now, periodic_work)

    def heartbeat(self, worker: str) -> None:
        """A worker's heartbeat, written to Redis for ``/healthz``. A failed write only makes the
        worker look dead for a while."""
        with contextlib.suppress(redis.RedisError):
            if self._alive is None:
                settings = self.bridge_settings()
                self._alive = ActivityStore(
                    redis_conn.client(_redis_url(settings)), Keys(settings.bridge_connection_id)
                )
            self._alive.heartbeat(worker, time.time(), ALIVE_SECONDS)


def create_app(
    settings: Settings | None = None, *, servicem8_gate: ServiceM8Gate = "shared"
) -> BridgeApp:
    """The bridge's Celery app. ``settings``: given (tests, benchmarks), or read from the
    environment when first needed. ``servicem8_gate="open"``: ServiceM8 calls skip the shared
    budget (only for the benchmark that shows why it exists, ``bench.rate_limited_app``).

    The tasks (``tasks.jobs``, shared tasks) join every app this builds."""
    return BridgeApp("bridge", config_source=CeleryConfig(settings), servicem8_gate=servicem8_gate)


def _running_app() -> BridgeApp:
    """The app this process runs: Celery's current app (the worker's, beat's, or the last one
    built) when it is ours, else the module's."""
    running = current_app._get_current_object()
    return running if isinstance(running, BridgeApp) else app


# --- process hooks: connected once, acting for the app that runs --------------------------------
@setup_logging.connect
def _logging(**_: object) -> None:
    settings = _running_app().bridge_settings()
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: object = None, **_: object) -> None:
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect
def _unbind_task(**_: object) -> None:
    structlog.contextvars.clear_contextvars()


@heartbeat_sent.connect
def _alive(sender: object = None, **_: object) -> None:
    """Every worker heartbeat (about every 2 s), in the worker's main process."""
    eventer = getattr(sender, "eventer", None)
    owner = getattr(eventer, "app", None)
    if isinstance(owner, BridgeApp):
        name = getattr(eventer, "hostname", None)
        owner.heartbeat(name or f"{socket.gethostname()}:{os.getpid()}")


app = create_app()
