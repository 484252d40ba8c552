"""The sync use cases, one module each, over one small context (``SyncContext``):

- ``ingest``: ServiceM8 polls, webhook-triggered reads and backfill (record, mark dirty);
- ``hints``: ServiceM8 webhook hints gathered per object and read together;
- ``pull``: the Coredination poll and webhook-triggered reads;
- ``jobsync``: one job's sync, planned then applied (``mappings.plan``);
- ``staff``: the staff ⇄ user map;
- ``drift``: both systems read whole, drift listed and repaired;
- ``cycle``: the polls that are due, and one whole cycle without Celery.

``Engine`` is the context with one method per use case, for the callers that hold one (tasks,
commands, tests); each method is the module function of the same name.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from bridge.sync import cycle, drift, hints, ingest, jobsync, pull, staff
from bridge.sync.context import Report, SyncContext, SyncOptions
from bridge.sync.drift import Drift
from bridge.sync.pull import CdEvent

__all__ = ["Drift", "Engine", "Report", "SyncContext", "SyncOptions"]


class Engine:
    def __init__(self, ctx: SyncContext) -> None:
        self.ctx = ctx

    # ingest and pull
    def poll_servicem8(self) -> set[str]:
        return ingest.poll_servicem8(self.ctx)

    def push_allocation(self, uuid: str) -> set[str]:
        return ingest.push_allocation(self.ctx, uuid)

    def push_activity(self, uuid: str) -> set[str]:
        return ingest.push_activity(self.ctx, uuid)

    def push_job(self, uuid: str) -> set[str]:
        return ingest.push_job(self.ctx, uuid)

    def read_hints(self, obj: str, lease_ms: int) -> tuple[set[str], int] | None:
        return hints.read_hints(self.ctx, obj, lease_ms)

    def backfill(
        self, since: datetime | None, progress: Callable[[int], None] = lambda n: None
    ) -> set[str]:
        return ingest.backfill(self.ctx, since, progress)

    def poll_coredination(self) -> set[str]:
        return pull.poll_coredination(self.ctx)

    def pull_job(self, sm8_job: str, event: CdEvent | None = None) -> set[str]:
        return pull.pull_job(self.ctx, sm8_job, event)

    def pull_webhook(self, ref: str, event: CdEvent | None = None) -> set[str]:
        return pull.pull_webhook(self.ctx, ref, event)

    # decide and write
    def sync_job(self, sm8_job: str, trigger: str = "command") -> Report:
        """One job's sync, after the connection's first staff match (``staff.ensure_matched``):
        a job is never created in Coredination with its people left off for want of a match.
        ``trigger``: what asked for it, for the job's trail."""
        staff.ensure_matched(self.ctx)
        return jobsync.sync_job(self.ctx, sm8_job, trigger)

    # staff
    def match_staff(self, asked_at: float | None = None) -> Report:
        return staff.match_staff(self.ctx, asked_at)

    def ask_match(self, sm8_job: str) -> float | None:
        return staff.ask_match(self.ctx, sm8_job)

    def link_staff(self, staff_uuid: str, user_id: int) -> None:
        staff.link_staff(self.ctx, staff_uuid, user_id)

    def unlink_staff(self, staff_uuid: str) -> None:
        staff.unlink_staff(self.ctx, staff_uuid)

    # whole reads and cycles
    def reconcile(self, *, repair: bool) -> tuple[list[Drift], set[str]]:
        return drift.reconcile(self.ctx, repair=repair)

    def poll_due(self, intervals: dict[str, float], with_webhooks: float = 0.0) -> set[str]:
        return cycle.poll_due(self.ctx, intervals, with_webhooks)

    def run_cycle(self, *, match_staff: bool = True) -> Report:
        return cycle.run_cycle(self.ctx, staff=match_staff)
