"""Whole cycles: the polls that are due (beat's poll cycle), and one complete cycle both ways
without Celery (``bridge sync --once``)."""

from __future__ import annotations

from bridge.errors import ApiError, BudgetExhausted
from bridge.log import get_logger
from bridge.sync.context import SYSTEMS, Report, SyncContext, polled
from bridge.sync.ingest import poll_servicem8
from bridge.sync.jobsync import sync_job
from bridge.sync.pull import poll_coredination
from bridge.sync.staff import match_staff

log = get_logger(__name__)

POLLS = {"servicem8": poll_servicem8, "coredination": poll_coredination}


def poll_due(ctx: SyncContext, intervals: dict[str, float], with_webhooks: float = 0.0) -> set[str]:
    """Ingest each system whose poll interval has elapsed, ServiceM8 then Coredination, before
    any sync runs: a pair changed on both sides between two polls is then decided with both
    changes in view, so the later one wins.

    While a system's webhooks arrive (one within the last ``with_webhooks`` seconds), its interval
    stretches to ``with_webhooks``: the poll is then only the safety net for a lost webhook, and
    ServiceM8's budget is better spent on changes."""
    now = ctx.clock()
    activity = ctx.stores.activity
    dirty = ctx.stores.jobs.due_expiries(ctx.now_ms())
    for system in SYSTEMS:
        interval = intervals.get(system, 0)
        hooked = activity.cursor(f"webhook:{system}")
        if hooked is not None and now - float(hooked) < with_webhooks:
            interval = max(interval, with_webhooks)
        last = activity.cursor(polled(system))
        if last is not None and now - float(last) < interval * 0.9:
            continue
        with ctx.stores.work.poll_lock(system) as held:
            if not held:
                continue
            try:
                dirty |= POLLS[system](ctx)
            except BudgetExhausted as exc:
                # This system waits for its budget; the other is still polled now. The poll
                # stays due, so the next tick tries again.
                log.info("poll.waiting_for_budget", system=system, retry_in=round(exc.retry_in, 1))
                continue
            activity.set_cursor(polled(system), repr(now))
    return dirty


def run_cycle(ctx: SyncContext, *, staff: bool = True) -> Report:
    """One complete cycle both ways: staff map, both polls, then every dirty job."""
    report = Report()
    if staff:
        report.merge(match_staff(ctx))
    poll_servicem8(ctx)
    poll_coredination(ctx)
    ctx.stores.jobs.due_expiries(ctx.now_ms())
    for sm8_job in sorted(ctx.stores.jobs.dirty()):
        try:
            report.merge(sync_job(ctx, sm8_job))
        except ApiError as exc:
            # The job stays dirty, so the next cycle (or a retry) tries it again.
            report.add(f"failed.{type(exc).__name__}")
            log.warning("sync.job_failed", sm8_job_uuid=sm8_job, **exc.describe())
    return report
