"""The tasks. Each takes ids, calls one use case, and queues the syncs it made necessary."""

from __future__ import annotations

import time
from collections.abc import Iterable

from bridge.errors import BudgetExhausted
from bridge.log import get_logger
from tasks.app import app, queue, settings
from tasks.base import BridgeTask, runtime

log = get_logger(__name__)


def enqueue_syncs(jobs: Iterable[str], kind: str = "sync") -> int:
    """Queue one sync per job unless one is already queued."""
    store = runtime().store
    queued = 0
    for job in jobs:
        if store.claim_enqueue(job):
            sync_job.apply_async(args=[job], queue=queue(kind))
            queued += 1
    return queued


@app.task(base=BridgeTask, name="bridge.sync.job")
def sync_job(sm8_job_uuid: str) -> None:
    rt = runtime()
    rt.store.release_enqueue(sm8_job_uuid)
    rt.engine.sync_job(sm8_job_uuid)


@app.task(base=BridgeTask, name="bridge.poll.cycle")
def poll_cycle() -> None:
    """Poll each system whose interval is due, then queue a sync for every dirty job."""
    rt = runtime()
    rt.engine.poll_due(
        {
            "servicem8": settings.servicem8_poll_seconds,
            "coredination": settings.coredination_poll_seconds,
        },
        with_webhooks=settings.poll_seconds_with_webhooks,
    )
    enqueue_syncs(rt.store.dirty())


@app.task(base=BridgeTask, name="bridge.staff.match")
def match_staff() -> None:
    """Periodic, like the polls: with the budget spent it waits for its next turn instead of
    retrying, so matches sent by beat while the budget is short never pile up and spend it."""
    try:
        runtime().engine.match_staff()
    except BudgetExhausted as exc:
        log.info("staff.waiting_for_budget", retry_in=round(exc.retry_in, 1))
        return
    enqueue_syncs(runtime().store.dirty())


@app.task(base=BridgeTask, name="bridge.reconcile")
def reconcile() -> None:
    """Safety net behind the safety net: both systems read whole, drift synced."""
    _, dirty = runtime().engine.reconcile(repair=True)
    enqueue_syncs(dirty)


@app.task(base=BridgeTask, name="bridge.sweep")
def sweep() -> None:
    """Safety net for syncs that were queued but never ran: a message lost, or held by a worker
    killed before it started (Redis would give it back only after the visibility timeout).

    When no sync is waiting in the queues, every "queued" mark of a still-dirty job is stale, so
    those jobs are queued again; otherwise only jobs with no mark are. A sync queued twice is
    harmless: the second finds the job in step.
    """
    rt = runtime()
    dirty = rt.store.dirty()
    waiting = sum(
        rt.store.queue_length(f"celery:{queue(kind)}") for kind in ("interactive", "sync")
    )
    if waiting == 0:
        for job in dirty:
            rt.store.release_enqueue(job)
    enqueue_syncs(dirty)


@app.task(base=BridgeTask, name="bridge.webhook.servicem8_allocation")
def servicem8_allocation_changed(sm8_allocation_uuid: str) -> None:
    enqueue_syncs(runtime().engine.push_allocation(sm8_allocation_uuid), "interactive")


@app.task(base=BridgeTask, name="bridge.webhook.servicem8_job")
def servicem8_job_changed(sm8_job_uuid: str) -> None:
    enqueue_syncs(runtime().engine.push_job(sm8_job_uuid), "interactive")


@app.task(base=BridgeTask, name="bridge.webhook.coredination_job")
def coredination_job_changed(
    cd_job_ref: str, event_type: str = "", cd_user_id: str = "", state: str = ""
) -> None:
    event = (event_type, int(cd_user_id) if cd_user_id.isdigit() else None, state or None)
    enqueue_syncs(runtime().engine.pull_webhook(cd_job_ref, event), "interactive")


@app.task(base=BridgeTask, name="bridge.deferred.release")
def release_deferred() -> None:
    """Re-enqueue deferred work that is now due, under its original task id."""
    for message in runtime().store.take_due(time.time()):
        app.send_task(
            message["task"],
            args=message.get("args") or [],
            kwargs=message.get("kwargs") or {},
            task_id=message.get("id"),
            queue=message.get("queue") or queue("sync"),
        )
