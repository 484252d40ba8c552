"""One task base class that turns the error tree into what happens next (classify once, act
elsewhere):

- ``BudgetExhausted`` → retry when the budget has a token again (no attempt counted);
- ``RetryableError`` (429, 5xx, timeouts, resets) → retry on the spec's backoff until an hour has
  passed since the first failure, then dead-letter;
- ``PermanentError`` (auth, not found, rejected) → dead-letter at once;
- a job lock not acquired in time → retry shortly.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Task
from redis.exceptions import LockError

from bridge.errors import (
    ApiError,
    BudgetExhausted,
    ConnectionPaused,
    GrantRevoked,
    PermanentError,
    RetryableError,
    Unconfirmed,
)
from bridge.http.budget import Priority, priority
from bridge.http.retry import RetryPolicy
from bridge.log import get_logger
from bridge.process.runtime import Runtime
from bridge.queues import FLEET_TICK, SYNC_JOB, Enqueuer, Lane, lane_of, message_of
from tasks.app import MAX_COUNTDOWN

log = get_logger(__name__)

DUE_HEADER = "bridge_due"  # a message header: when the fleet tick's item was due (epoch s)
# Arguments that say whose or when a task was asked, not what it does: two failures of the same
# work differing only in these are one cause, one dead letter (an asked staff match carries
# the time it was asked).
NOT_THE_CAUSE = frozenset({"connection", "asked_at"})


def dump_ids(args: list[Any], kwargs: dict[str, Any]) -> str:
    """A task's arguments as one stable string (they are ids: no secret, no payload)."""
    return json.dumps([args, kwargs], sort_keys=True, default=str)


def _job_of(task: str, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """The ServiceM8 job a job sync is for."""
    if task != SYNC_JOB:
        return None
    job = kwargs.get("sm8_job_uuid", args[0] if args else None)
    return str(job) if job else None


class BridgeTask(Task):  # type: ignore[misc]
    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    # Retry without a count: Celery's default (3) would re-raise the error on the fourth budget
    # wait or retry, unhandled and not dead-lettered. What ends retries is the policy's hour.
    # (``retry(max_retries=None)`` means "the task's default", not "for ever".)
    max_retries = None
    policy = RetryPolicy()

    clock = staticmethod(time.time)

    @property
    def runtime(self) -> Runtime:
        """The runtime of the connection this task is for (``_connection``), built by the app
        (``tasks.app.BridgeApp.bridge_runtime``)."""
        if self.request_stack.top is None:  # outside a task (tests, a shell)
            own: Runtime = self.app.bridge_runtime()
            return own
        request = self.request
        runtime: Runtime | None = getattr(request, "bridge_runtime", None)
        if runtime is None:  # once per task: one runtime from its start to its end
            runtime = self.app.bridge_runtime(self._connection())
            request.bridge_runtime = runtime
        return runtime

    def enqueuer(self) -> Enqueuer:
        """Sends tasks for this task's connection, on the deployment's lanes, within its fair
        share while it has others to share them with (``bridge.connections.admission``)."""
        rt = self.runtime
        fleet = self.app.fleet()
        admit = fleet.admission.offer if fleet.view.shared() else None
        return Enqueuer(self.app, rt.lanes, rt.connection, admit)

    def _message(self) -> dict[str, Any]:
        """This task's message as Redis keeps it while it waits (deferred, or for a slot)."""
        request = self.request
        headers = {DUE_HEADER: due} if (due := getattr(request, DUE_HEADER, None)) else None
        return message_of(self.name, request.args or [], request.kwargs or {}, request.id,
                          (request.delivery_info or {}).get("routing_key"), headers)  # fmt: skip

    def enqueue_syncs(self, jobs: Iterable[str], lane: Lane = "sync") -> int:
        """Queue one sync per job unless one is already queued. Given the dirty marks (job →
        generation), a job whose sync failed for good at that same generation is left parked
        until a change or a replay (docs/operations.md#dead-letters)."""
        work = self.runtime.stores.work
        if isinstance(jobs, dict) and jobs:
            parked = work.failed_jobs()
            jobs = [j for j, g in jobs.items() if j not in parked or parked[j]["generation"] != g]
        return self.enqueuer().syncs(jobs, work.claim_enqueue, lane)

    def _connection(self) -> str:
        """The connection this task is for: its ``connection`` argument (a message of a release
        before every task named one is the environment's)."""
        named = (self.request.kwargs or {}).get("connection")
        return str(named or self.app.bridge_settings().bridge_connection_id)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.name == FLEET_TICK:
            # The deployment's own task, no connection's: it never waits for a connection's slot
            # (the polls it queues would all start late, and its next ticks bunch behind it).
            return self._run(args, kwargs)
        if self.request.id is not None and self.app.fleet().view.shared():
            return self._within_share(self._connection(), args, kwargs)
        return self._run(args, kwargs)

    def _within_share(self, connection: str, args: Any, kwargs: Any) -> Any:
        """While the deployment has several connections, a task runs in one of its
        connection's slots (``Admission``): without a free one it waits again in Redis; when
        it ends, its slot admits the next."""
        admission = self.app.fleet().admission
        message = self._message()
        if not admission.start(connection, lane_of(message["queue"]), message):
            log.debug("task.waiting_for_a_slot", connection=connection)
            return None
        try:
            return self._run(args, kwargs)
        finally:
            try:
                admitted = admission.finish(connection, self.request.id)
                for waiting in admitted:
                    Enqueuer(self.app, self.app.bridge_settings().bridge_connection_id
                             ).send_message(waiting)  # fmt: skip
            except redis.RedisError as exc:  # the tick admits them within a second
                log.warning("task.admission_unavailable", error=type(exc).__name__)

    def _run(self, args: Any, kwargs: Any) -> Any:
        token = priority.set(self._priority())
        due = getattr(self.request, DUE_HEADER, None)
        if due is not None and not self.request.retries:  # claimed by the fleet tick
            self.app.fleet().note_lateness(self.name, self.clock() - float(due))
        try:
            return self.run(*args, **kwargs)
        except ConnectionPaused as exc:
            # Its work waits with it: the dirty marks and the polls bring it back on resume.
            log.info("task.connection_not_active", reason=str(exc))
            return None
        except BudgetExhausted as exc:
            return self._wait_for_budget(exc)
        except LockError as exc:
            raise self.retry(countdown=1.0, exc=exc) from None
        except redis.RedisError as exc:
            # Redis restarting or failing over: try again shortly. Should the retry itself fail,
            # nothing is lost: the dirty mark, the sweep and the polls bring the work back.
            log.warning("task.redis_unavailable", error=type(exc).__name__)
            raise self.retry(countdown=2.0, exc=exc) from None
        except RetryableError as exc:
            work = self.runtime.stores.work
            now = self.clock()
            first, attempt = work.record_failure(self.request.id, now)
            delay = self.policy.next_delay(attempt, first, now)
            if delay is not None and isinstance(exc, Unconfirmed):
                delay = max(delay, exc.settle)  # a write on its way may land meanwhile
            if delay is None:
                self._dead_letter(exc, first, now, "gave up after an hour of retries", attempt + 1)
                return None
            log.warning(
                "task.retrying",
                attempt=attempt + 1,
                delay=round(delay, 2),
                **exc.describe(),
            )
            if delay <= MAX_COUNTDOWN:
                raise self.retry(countdown=delay, exc=exc) from None
            self._defer(delay, exc.reason)
            return None
        except GrantRevoked as exc:
            # The account removed the add-on: the keeper has paused the connection, and its
            # work waits with it (the dirty marks and the polls bring it back on resume).
            log.warning("task.grant_revoked", **exc.describe())
            return None
        except PermanentError as exc:
            now = self.clock()
            self._dead_letter(exc, now, now, "permanent error", 1)
            return None
        finally:
            priority.reset(token)

    def _priority(self) -> Priority:
        routing = str((self.request.delivery_info or {}).get("routing_key") or "")
        if routing.endswith(".interactive") or self.name.startswith("bridge.webhook."):
            return "interactive"
        # Polls (and the staff match, the reconcile) take bulk's place in the budget: they may
        # not fill the last share of a window, so they slow down before a write would wait
        # (docs/operations.md#poll-plan).
        if routing.endswith((".bulk", ".poll")) or self.name.startswith("bridge.bulk."):
            return "bulk"
        return "normal"

    def _wait_for_budget(self, exc: BudgetExhausted) -> None:
        """No token: wait without blocking. A short wait is a countdown (spread a little so the
        waiters do not all wake at once); a long one (a paused API, the day's budget) goes to
        the deferred set, which the beat's release task re-enqueues when due."""
        # A small spread (at most a quarter second) so waiters do not all wake in the same
        # millisecond; more would leave freed tokens unused.
        wait = exc.retry_in + random.uniform(0, min(0.25, exc.retry_in / 10))
        # Its connection's other tasks wait in Redis meanwhile, not in the lanes.
        self.app.fleet().admission.hold(self._connection(), exc.retry_in)
        if wait <= MAX_COUNTDOWN:
            raise self.retry(countdown=wait, exc=exc) from None
        self._defer(wait, exc.reason)
        return None

    def _defer(self, wait: float, reason: str) -> None:
        """Come back in ``wait`` seconds by the deferred set, under the same task id (so a retry
        keeps counting its failures), not as an ETA message a worker would hold meanwhile."""
        message = self._message()
        message.pop("headers", None)  # its due time was its first start's
        index = self.app.fleet().view.keys.deferred  # the fleet tick releases it when due
        self.runtime.stores.work.defer(self.clock() + wait, message, index)
        log.info("task.deferred", seconds=round(wait, 1), reason=reason)

    def _dead_letter(
        self, exc: ApiError, first: float, now: float, why: str, attempts: int
    ) -> None:
        """One dead letter per cause: the same task failing the same way again updates its entry.
        A job sync that failed for good parks the job until a change or a replay, so the sweeps
        do not send the same refused write again and again."""
        rt = self.runtime
        work = rt.stores.work
        args, kwargs = list(self.request.args or []), dict(self.request.kwargs or {})
        entry = {
            "task": self.name,
            "args": args,
            "kwargs": kwargs,
            **exc.describe(),
            "why": why,
            "attempts": attempts,
            "first_failure": first,
            "last_failure": now,
        }
        what = {k: v for k, v in kwargs.items() if k not in NOT_THE_CAUSE}
        cause = "|".join(str(p) for p in (self.name, dump_ids(args, what), type(exc).__name__,
                                          exc.status, exc.operation))  # fmt: skip
        entry_id = work.dead_letter(entry, cause=cause)
        work.forget_failure(self.request.id)
        job = _job_of(self.name, args, kwargs)
        if job is not None and isinstance(exc, PermanentError):
            work.park_failed_job(job, rt.stores.jobs.dirty_generation(job), exc.reason, entry_id,
                                 now)  # fmt: skip
        log.error("task.dead_lettered", dlq_id=entry_id, **exc.describe())
