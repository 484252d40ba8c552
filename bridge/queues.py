"""Task names, queue names, task routes, broker options and the one way to send a task: shared by
the Celery app (``tasks``) and by anything in ``bridge`` that sends tasks (``sm8cd backfill``,
``sm8cd dlq replay``, the webhook receiver), so the bridge never imports ``tasks``.

Queues are per deployment, checked in priority order: interactive (webhooks, and the fleet tick
that schedules everything else) before sync before poll before bulk (backfill). A deployment's
lanes are named by its ``BRIDGE_CONNECTION_ID`` and shared by every connection of its registry:
a task for another connection than that one carries the connection's id as its ``connection``
argument (docs/connections.md#shared-lanes).
One queue set per connection would not scale: kombu's ``BRPOP`` names every queue of a worker
(times its priority lists) at each call (sidekiq/sidekiq#4855, redis/redis#7071).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

from celery import Celery

from bridge.redis.conn import broker_settings

# --- task names (the tasks are defined in ``tasks.jobs``; every other place spells them so) -------
SYNC_JOB: Final = "bridge.sync.job"
POLL_CYCLE: Final = "bridge.poll.cycle"
MATCH_STAFF: Final = "bridge.staff.match"
RECONCILE: Final = "bridge.reconcile"
SWEEP: Final = "bridge.sweep"
WEBHOOK_SERVICEM8_ALLOCATION: Final = "bridge.webhook.servicem8_allocation"
WEBHOOK_SERVICEM8_ACTIVITY: Final = "bridge.webhook.servicem8_activity"
WEBHOOK_SERVICEM8_JOB: Final = "bridge.webhook.servicem8_job"
WEBHOOK_COREDINATION_JOB: Final = "bridge.webhook.coredination_job"
READ_HINTS: Final = "bridge.webhook.servicem8_hints"  # one object's gathered hints, read together
RELEASE_DEFERRED: Final = "bridge.deferred.release"
CHECK_SUBSCRIPTIONS: Final = "bridge.poll.webhook_subscriptions"
FLEET_TICK: Final = "bridge.fleet.tick"  # the registry connections' periodic work, claimed when due
TASK_NAMES: Final = (
    SYNC_JOB,
    POLL_CYCLE,
    MATCH_STAFF,
    RECONCILE,
    SWEEP,
    WEBHOOK_SERVICEM8_ALLOCATION,
    WEBHOOK_SERVICEM8_ACTIVITY,
    WEBHOOK_SERVICEM8_JOB,
    WEBHOOK_COREDINATION_JOB,
    RELEASE_DEFERRED,
    CHECK_SUBSCRIPTIONS,
    READ_HINTS,
    FLEET_TICK,
)

# --- queues --------------------------------------------------------------------------------------
Lane = Literal["interactive", "sync", "poll", "bulk"]
QUEUE_KINDS: tuple[Lane, ...] = ("interactive", "sync", "poll", "bulk")
VISIBILITY_TIMEOUT = 300

ROUTES: dict[str, Lane] = {
    "bridge.webhook.": "interactive",
    "bridge.sync.": "sync",
    "bridge.poll.": "poll",
    "bridge.staff.": "poll",
    SWEEP: "poll",
    RECONCILE: "poll",
    "bridge.deferred.": "poll",
    # The scheduler never waits behind the polls it queued: a second's tick ahead of them.
    "bridge.fleet.": "interactive",
    "bridge.bulk.": "bulk",
}


def queue_name(connection: str, kind: str) -> str:
    return f"bridge.{connection}.{kind}"


def queue_for(connection: str, task_name: str) -> str:
    for prefix, kind in ROUTES.items():
        if task_name.startswith(prefix):
            return queue_name(connection, kind)
    return queue_name(connection, "sync")


def task_routes(connection: str) -> dict[str, dict[str, str]]:
    return {
        (prefix + "*" if prefix.endswith(".") else prefix): {"queue": queue_name(connection, kind)}
        for prefix, kind in ROUTES.items()
    }


def waiting(redis: Any, lanes: str, kinds: Iterable[Lane]) -> int:
    """Messages waiting in the deployment's queues of these kinds (the broker's lists)."""
    prefix = transport_options(lanes)["global_keyprefix"]
    return sum(int(redis.llen(f"{prefix}{queue_name(lanes, kind)}")) for kind in kinds)


def transport_options(connection: str) -> dict[str, Any]:
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "queue_order_strategy": "priority",
        "global_keyprefix": f"b:{connection}:celery:",
    }


def sender(redis_url: str, connection: str) -> Celery:
    """A Celery app that only sends tasks to this connection's queues (no task code loaded). It
    does not become the process's current app: a worker's own app stays that. ``redis_url`` may
    name a Sentinel group (bridge/redis/conn.py): the master's name travels in it."""
    app = Celery("bridge-sender", set_as_current=False)
    app.conf.update(
        **broker_settings(redis_url, transport_options(connection)),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_routes=task_routes(connection),
    )
    return app


Admit = Callable[[str, str, Mapping[str, Any]], bool]


def message_of(
    task: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    task_id: str | None,
    queue: str | None,
    headers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task message as Redis keeps it while it waits (deferred, or for an admission slot)."""
    message = {"task": task, "args": list(args), "kwargs": dict(kwargs), "id": task_id,
               "queue": queue}  # fmt: skip
    if headers:
        message["headers"] = dict(headers)
    return message


def lane_of(queue: str | None) -> str:
    """The lane of a queue's full name (``bridge.{d}.sync`` → ``sync``)."""
    return (queue or "").rsplit(".", 1)[-1]


class Enqueuer:
    """Sends tasks to one connection's queues: the one way a task is queued, by the tasks (over
    the worker's own app), the CLI and the web receiver (over a ``sender``).

    Tasks take ids, never payloads: ``args`` are ids and short strings, JSON-encoded.
    """

    def __init__(
        self,
        app: Celery,
        lanes: str,
        connection: str | None = None,
        admit: Admit | None = None,
    ) -> None:
        """``lanes``: the deployment whose queues the tasks go to; ``connection``: the
        connection they are for (their ``connection`` argument; every sender names it, and
        only a message recorded with its arguments already goes without); ``admit``: whether a
        message may go to its lane now or waits its turn, while the connection has a fair share
        to keep (``bridge.connections.admission.Admission.offer``)."""
        self.app = app
        self.lanes = lanes
        self.for_connection = connection
        self.admit = admit

    @classmethod
    def for_broker(
        cls, redis_url: str, lanes: str, connection: str | None = None, admit: Admit | None = None
    ) -> Enqueuer:
        return cls(sender(redis_url, lanes), lanes, connection, admit)

    def send(
        self,
        task_name: str,
        args: Sequence[Any] = (),
        lane: Lane | None = None,
        *,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue one task: on ``lane``'s queue if given, else on ``queue`` (a queue's full name,
        as a deferred message recorded it), else where ``ROUTES`` sends ``task_name``.
        ``countdown``: run it no sooner than this many seconds from now (short waits only: the
        message is held by the worker that takes it). ``headers``: message headers of our own
        (``bridge_due``: when the fleet tick's item was due), read back as request fields."""
        if lane is not None:
            queue = queue_name(self.lanes, lane)
        queue = queue or queue_for(self.lanes, task_name)
        kwargs = dict(kwargs or {})
        if self.for_connection is not None:
            kwargs.setdefault("connection", self.for_connection)
            if self.admit is not None:
                task_id = task_id or str(uuid.uuid4())
                message = message_of(task_name, args, kwargs, task_id, queue, headers)
                if not self.admit(self.for_connection, lane_of(queue), message):
                    return  # it waits in Redis for one of the connection's slots
        self.app.send_task(
            task_name,
            args=list(args),
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            countdown=countdown,
            headers=dict(headers) if headers else None,
        )

    def send_message(self, message: Mapping[str, Any]) -> None:
        """Send a message recorded by ``message_of`` (admitted already: no admission)."""
        Enqueuer(self.app, self.lanes).send(
            message["task"],
            message.get("args") or [],
            kwargs=message.get("kwargs") or {},
            task_id=message.get("id"),
            queue=message.get("queue"),
            headers=message.get("headers") or None,
        )

    def syncs(self, jobs: Iterable[str], claim: Callable[[str], bool], lane: Lane = "sync") -> int:
        """Queue one sync per job unless one is already queued: ``claim`` (the store's
        ``claim_enqueue``) says whether this call is the one to queue it. Returns how many."""
        queued = 0
        for job in jobs:
            if claim(job):
                self.send(SYNC_JOB, [job], lane)
                queued += 1
        return queued
