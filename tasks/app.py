"""Celery configuration, deliberately at-least-once:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a task whose worker dies is redelivered;
- prefetch 1: a worker holds one message at a time, so a kill strands at most one;
- JSON only, results ignored, soft/hard time limits;
- ``visibility_timeout`` 300 s: longer than the hard time limit (150 s) and than any countdown
  the bridge uses (at most 60 s), so Redis never redelivers a message that is still alive, and a
  message stranded by a killed worker comes back within five minutes. The dirty-job sweep makes
  even that wait harmless: a stranded sync is queued again by the next sweep.
- Celery does not take over logging: ``bridge.log`` renders its records, secrets redacted.
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

import redis
from celery import Celery
from celery.signals import heartbeat_sent, setup_logging, task_postrun, task_prerun
from kombu.entity import Queue

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.log import configure_logging
from bridge.queues import (
    QUEUE_KINDS,
    queue_name,
    task_routes,
    transport_options,
)
from bridge.store import ALIVE_SECONDS, REDBEAT_PREFIX, Store

HARD_TIME_LIMIT = 150
SOFT_TIME_LIMIT = 120
MAX_COUNTDOWN = 60


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    if settings.redis_url is None:
        sys.stderr.write(
            "error: REDIS_URL is required for Celery workers and beat "
            "('bridge run' starts an embedded Redis and sets it for them)\n"
        )
        raise SystemExit(2)
    return settings


settings = _settings()
CONNECTION = settings.bridge_connection_id


def queue(kind: str) -> str:
    return queue_name(CONNECTION, kind)


POLL_TICK = min(settings.servicem8_poll_seconds, settings.coredination_poll_seconds)

app = Celery("bridge")
_redis_url = settings.redis_url.get_secret_value() if settings.redis_url else ""
app.conf.update(
    broker_url=_redis_url,
    broker_connection_retry_on_startup=True,
    broker_transport_options=transport_options(CONNECTION),
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    task_soft_time_limit=SOFT_TIME_LIMIT,
    task_time_limit=HARD_TIME_LIMIT,
    worker_hijack_root_logger=False,
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_queues=[Queue(queue(kind)) for kind in QUEUE_KINDS],
    task_default_queue=queue("sync"),
    task_routes=task_routes(CONNECTION),
    beat_scheduler="redbeat.RedBeatScheduler",
    redbeat_redis_url=_redis_url,
    redbeat_key_prefix=f"b:{CONNECTION}:{REDBEAT_PREFIX}",
    redbeat_lock_timeout=max(30, int(3 * min(settings.servicem8_poll_seconds, 60))),
    beat_max_loop_interval=min(5.0, POLL_TICK / 2),
    beat_schedule={
        # One cycle task ingests both systems (each at its own interval) before syncing.
        "poll-cycle": {
            "task": "bridge.poll.cycle",
            "schedule": POLL_TICK,
        },
        "match-staff": {"task": "bridge.staff.match", "schedule": settings.staff_match_seconds},
        "release-deferred": {"task": "bridge.deferred.release", "schedule": 2.0},
        **(
            {"reconcile": {"task": "bridge.reconcile", "schedule": settings.reconcile_seconds}}
            if settings.reconcile_seconds
            else {}
        ),
        "sweep-dirty": {
            "task": "bridge.sweep",
            "schedule": max(2.0, min(30.0, POLL_TICK)),
        },
    },
)

if settings.servicem8_budget == "celery-rate-limit":
    # What a Celery user reaches for first: the nominal ServiceM8 rate as each worker's own limit
    # on the tasks that write to ServiceM8. Per worker, so N workers send N times the rate.
    _rate = f"{settings.servicem8_rate_per_minute / settings.servicem8_rate_window_seconds:.4f}/s"
    app.conf.task_annotations = {
        name: {"rate_limit": _rate}
        for name in ("bridge.sync.job", "bridge.webhook.servicem8_allocation")
    }


@setup_logging.connect
def _logging(**_: object) -> None:
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: object = None, **_: object) -> None:
    import structlog

    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect
def _unbind_task(**_: object) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()


_alive_store: Store | None = None


@heartbeat_sent.connect
def _alive(sender: object = None, **_: object) -> None:
    """Every worker heartbeat (about every 2 s) is written to Redis for ``/healthz``. Runs in the
    worker's main process; a failed write only makes the worker look dead for a while."""
    global _alive_store
    name = getattr(getattr(sender, "eventer", None), "hostname", None)
    with contextlib.suppress(redis.RedisError):
        if _alive_store is None:
            _alive_store = Store(redis.Redis.from_url(_redis_url), CONNECTION)
        _alive_store.heartbeat(
            name or f"{socket.gethostname()}:{os.getpid()}", time.time(), ALIVE_SECONDS
        )
