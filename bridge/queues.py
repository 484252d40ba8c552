"""Queue names, task routes and broker options: shared by the Celery app (``tasks``) and by
anything in ``bridge`` that sends tasks (``bridge dlq replay``, the webhook receiver), so the
bridge never imports ``tasks``.

Queues are per connection, checked in priority order: interactive (webhooks) before sync (polls)
before poll before bulk (backfill).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

QUEUE_KINDS = ("interactive", "sync", "poll", "bulk")
VISIBILITY_TIMEOUT = 300

ROUTES = {
    "bridge.webhook.": "interactive",
    "bridge.sync.": "sync",
    "bridge.poll.": "poll",
    "bridge.staff.": "poll",
    "bridge.sweep": "poll",
    "bridge.reconcile": "poll",
    "bridge.deferred.": "poll",
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


def transport_options(connection: str) -> dict[str, Any]:
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "queue_order_strategy": "priority",
        "global_keyprefix": f"b:{connection}:celery:",
    }


def sender(redis_url: str, connection: str) -> Celery:
    """A Celery app that only sends tasks to this connection's queues (no task code loaded)."""
    app = Celery("bridge-sender")
    app.conf.update(
        broker_url=redis_url,
        broker_transport_options=transport_options(connection),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_routes=task_routes(connection),
    )
    return app
