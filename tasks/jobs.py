"""The tasks. Each takes ids, calls one use case, and queues the syncs it made necessary.

Shared tasks: they join every app ``tasks.app.create_app`` builds, and reach the runtime and the
queues through the app that runs them (``BridgeTask.runtime``, ``BridgeTask.enqueue_syncs``).
"""

from __future__ import annotations

import time

from celery import shared_task

from bridge.errors import BudgetExhausted
from bridge.log import get_logger
from bridge.ops import subscriptions
from bridge.queues import (
    CHECK_SUBSCRIPTIONS,
    FLEET_TICK,
    MATCH_STAFF,
    POLL_CYCLE,
    READ_HINTS,
    RECONCILE,
    RELEASE_DEFERRED,
    SWEEP,
    SYNC_JOB,
    WEBHOOK_COREDINATION_JOB,
    WEBHOOK_SERVICEM8_ACTIVITY,
    WEBHOOK_SERVICEM8_ALLOCATION,
    WEBHOOK_SERVICEM8_JOB,
    Enqueuer,
    lane_of,
    waiting,
)
from bridge.sync.hints import HINTED
from tasks.base import DUE_HEADER, BridgeTask

log = get_logger(__name__)


# A sync that counted one of these left a pair parked for want of a mapped person.
UNMAPPED = ("pending.unmapped_staff", "pending.unmapped_user")
# What asked for a job's sync, by the lane its task came on (for the job's trail)
TRIGGERS = {"interactive": "webhook", "sync": "poll", "bulk": "backlog"}


@shared_task(base=BridgeTask, bind=True, name=SYNC_JOB)
def sync_job(task: BridgeTask, sm8_job_uuid: str, connection: str | None = None) -> None:
    work = task.runtime.stores.work
    work.release_enqueue(sm8_job_uuid)
    lane = lane_of(str((task.request.delivery_info or {}).get("routing_key") or ""))
    report = task.runtime.engine.sync_job(sm8_job_uuid, TRIGGERS.get(lane, "command"))
    if work.resolve_failed_job(sm8_job_uuid, time.time()) is not None:
        log.info("sync.dead_letter_resolved", sm8_job_uuid=sm8_job_uuid)
    if any(report.counts[name] for name in UNMAPPED):
        # A person not mapped yet: match them (at most once a minute each); a link the match
        # makes marks this job dirty, and its sync runs again.
        asked = task.runtime.engine.ask_match(sm8_job_uuid)
        if asked is not None:
            task.enqueuer().send(MATCH_STAFF, lane="sync", kwargs={"asked_at": asked})


@shared_task(base=BridgeTask, bind=True, name=POLL_CYCLE)
def poll_cycle(task: BridgeTask, connection: str | None = None) -> None:
    """Poll each system whose interval is due, then queue a sync for every dirty job."""
    rt = task.runtime
    intervals = {
        "servicem8": rt.settings.servicem8_poll_seconds or 0.0,  # unset: planned per object
        "coredination": rt.settings.coredination_poll_seconds,
    }
    rt.engine.poll_due(intervals, with_webhooks=rt.settings.poll_seconds_with_webhooks)
    task.enqueue_syncs(rt.stores.jobs.dirty())


@shared_task(base=BridgeTask, bind=True, name=MATCH_STAFF)
def match_staff(
    task: BridgeTask, connection: str | None = None, asked_at: float | None = None
) -> None:
    """Periodic, like the polls: with the budget spent it waits for its next turn instead of
    retrying, so matches sent by beat while the budget is short never pile up and spend it.
    ``asked_at``: asked by a job sync that met a person not mapped (``sync_job``); such a match
    waits for its budget like the sync that asked for it, and is left out when a whole match
    has begun since."""
    engine = task.runtime.engine
    try:
        if asked_at is None:
            engine.match_staff()
        else:
            engine.match_staff(asked_at)
    except BudgetExhausted as exc:
        if asked_at is not None:
            raise  # the task base waits for the budget: nobody else will ask again this minute
        log.info("staff.waiting_for_budget", retry_in=round(exc.retry_in, 1))
        return
    task.enqueue_syncs(task.runtime.stores.jobs.dirty())


@shared_task(base=BridgeTask, bind=True, name=CHECK_SUBSCRIPTIONS)
def check_subscriptions(task: BridgeTask, connection: str | None = None) -> None:
    """Periodic: ServiceM8's subscriptions listed, deactivated ones of ours posted again. With the
    budget spent it waits for its next turn, like the staff match."""
    try:
        subscriptions.check_subscriptions(task.runtime)
    except BudgetExhausted as exc:
        log.info("webhooks.health_waiting_for_budget", retry_in=round(exc.retry_in, 1))


@shared_task(base=BridgeTask, bind=True, name=RECONCILE)
def reconcile(task: BridgeTask, connection: str | None = None) -> None:
    """Safety net behind the safety net: both systems read whole, drift synced."""
    _, dirty = task.runtime.engine.reconcile(repair=True)
    task.enqueue_syncs(dirty)


@shared_task(base=BridgeTask, bind=True, name=SWEEP)
def sweep(task: BridgeTask, connection: str | None = None) -> None:
    """Safety net for syncs that were queued but never ran: a message lost, or held by a worker
    killed before it started (Redis would give it back only after the visibility timeout).

    When no sync is waiting in the queues, every "queued" mark of a still-dirty job is stale, so
    those jobs are queued again; otherwise only jobs with no mark are. A sync queued twice is
    harmless: the second finds the job in step.
    """
    rt = task.runtime
    dirty = rt.stores.jobs.dirty()
    if waiting(rt.redis, rt.lanes, ("interactive", "sync")) == 0:
        for job in dirty:
            rt.stores.work.release_enqueue(job)
    task.enqueue_syncs(dirty)
    _requeue_hint_readers(task)


def _requeue_hint_readers(task: BridgeTask) -> None:
    """Gathered hints older than two windows lost their reader (its worker was killed before it
    ran): queue one again. A reader queued twice finds the hints gone and does nothing."""
    rt = task.runtime
    window = rt.settings.hint_coalesce_ms
    if window <= 0:
        return
    enqueue = task.enqueuer()
    for obj in HINTED:
        kind, hints = f"servicem8.{obj}", rt.stores.hints
        age = hints.oldest_ms(kind)
        if age is None or age <= 2 * window or hints.lease_held(kind):
            continue  # nothing waits long, or a reader is at work on it
        if hints.open_window(kind, window):
            enqueue.send(READ_HINTS, [obj])


@shared_task(base=BridgeTask, bind=True, name=WEBHOOK_SERVICEM8_ALLOCATION)
def servicem8_allocation_changed(
    task: BridgeTask, sm8_allocation_uuid: str, connection: str | None = None
) -> None:
    task.enqueue_syncs(task.runtime.engine.push_allocation(sm8_allocation_uuid), "interactive")


@shared_task(base=BridgeTask, bind=True, name=WEBHOOK_SERVICEM8_ACTIVITY)
def servicem8_activity_changed(
    task: BridgeTask, sm8_activity_uuid: str, connection: str | None = None
) -> None:
    task.enqueue_syncs(task.runtime.engine.push_activity(sm8_activity_uuid), "interactive")


@shared_task(base=BridgeTask, bind=True, name=WEBHOOK_SERVICEM8_JOB)
def servicem8_job_changed(
    task: BridgeTask, sm8_job_uuid: str, connection: str | None = None
) -> None:
    task.enqueue_syncs(task.runtime.engine.push_job(sm8_job_uuid), "interactive")


@shared_task(base=BridgeTask, bind=True, name=READ_HINTS)
def read_servicem8_hints(task: BridgeTask, obj: str, connection: str | None = None) -> None:
    """Read the hints gathered for one ServiceM8 object (``bridge.sync.hints``). While another
    reader holds them this one looks again a window later; hints that arrived meanwhile get a
    window and a reader of their own."""
    rt = task.runtime
    window = max(1, rt.settings.hint_coalesce_ms)
    enqueue = task.enqueuer()
    # A lease of two windows: a reader killed at work holds its object no longer than that.
    result = rt.engine.read_hints(obj, lease_ms=2 * window)
    if result is None:
        enqueue.send(READ_HINTS, [obj], countdown=window / 1000)
        return
    dirty, waiting = result
    task.enqueue_syncs(dirty, "interactive")
    if waiting and rt.stores.hints.open_window(f"servicem8.{obj}", window):
        enqueue.send(READ_HINTS, [obj], countdown=window / 1000)


@shared_task(base=BridgeTask, bind=True, name=WEBHOOK_COREDINATION_JOB)
def coredination_job_changed(
    task: BridgeTask,
    cd_job_ref: str,
    event_type: str = "",
    cd_user_id: str = "",
    state: str = "",
    connection: str | None = None,
) -> None:
    event = (event_type, int(cd_user_id) if cd_user_id.isdigit() else None, state or None)
    task.enqueue_syncs(task.runtime.engine.pull_webhook(cd_job_ref, event), "interactive")


@shared_task(base=BridgeTask, bind=True, name=RELEASE_DEFERRED)
def release_deferred(task: BridgeTask, connection: str | None = None) -> None:
    """Re-enqueue deferred work that is now due, under its original task id and on its original
    queue (routed by name if it recorded none)."""
    rt = task.runtime
    enqueue = task.enqueuer()
    index = task.app.fleet().view.keys.deferred  # what is left, indexed for the tick again
    for message in rt.stores.work.take_due(time.time(), index=index):
        enqueue.send(
            message["task"],
            message.get("args") or [],
            kwargs=message.get("kwargs") or {},
            task_id=message.get("id"),
            queue=message.get("queue"),
        )


@shared_task(base=BridgeTask, bind=True, name=FLEET_TICK)
def fleet_tick(task: BridgeTask) -> None:
    """About every second: queue the periodic work now due for the registry's connections on
    the shared lanes (``bridge.connections.schedule``). For a deployment with no other active
    connection, one read of its registry. What was claimed and could not be queued is due again
    at once."""
    lanes = task.app.bridge_settings().bridge_connection_id
    now = time.time()
    admission = task.app.fleet().admission
    for connection, message in admission.admit_waiting():  # should a slot's end have been lost
        Enqueuer(task.app, lanes, connection).send_message(message)
    due = task.app.fleet_due(now)
    admit = admission.offer if task.app.fleet().view.shared() else None
    for n, item in enumerate(due):
        try:
            Enqueuer(task.app, lanes, item.connection, admit).send(
                item.task, headers={DUE_HEADER: item.due}
            )
        except Exception:
            task.app.fleet().schedule.due_again(due[n:], now)  # claimed, not queued: due now
            raise
