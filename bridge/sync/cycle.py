"""Whole cycles: the polls that are due (beat's poll cycle), and one complete cycle both ways
without Celery (``sm8cd sync --once``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict
from datetime import datetime

from bridge.errors import ApiError, BudgetExhausted
from bridge.log import get_logger
from bridge.store.activity import subscription_field
from bridge.sync.context import SYSTEMS, Report, SyncContext, polled
from bridge.sync.ingest import SM8_POLLED, poll_servicem8, withheld
from bridge.sync.jobsync import sync_job
from bridge.sync.pull import poll_coredination
from bridge.sync.scope import rescope
from bridge.sync.staff import match_staff, poll_users
from mappings.pollplan import plan_polls

log = get_logger(__name__)


def _poll_coredination(ctx: SyncContext, objects: Collection[str]) -> set[str]:
    """Coredination's jobs, then its users: a user added there is matched within one poll."""
    return poll_coredination(ctx) | poll_users(ctx)


Poll = Callable[[SyncContext, Collection[str]], set[str]]
POLLS: dict[str, Poll] = {"servicem8": poll_servicem8, "coredination": _poll_coredination}
POLLED: dict[str, tuple[str, ...]] = {"servicem8": SM8_POLLED, "coredination": ("job",)}


def _hooked(known: Mapping[str, str], name: str, now: float, with_webhooks: float) -> bool:
    """Webhooks stand in for the poll of object ``name`` (``servicem8.jobactivity``) only while
    its own subscription is not known to be refused or lost and its own webhooks arrive: a
    webhook about jobs says nothing of allocations (which ServiceM8 may not send at all).
    ``known``: the connection's cursors, read once (``ActivityStore.cursors``)."""
    subscription = known.get(subscription_field(name))
    if subscription is not None and subscription != "active":
        return False
    hooked = known.get(f"webhook:{name}")
    return hooked is not None and now - float(hooked) < with_webhooks


def poll_due(ctx: SyncContext, intervals: dict[str, float], with_webhooks: float = 0.0) -> set[str]:
    """Ingest each polled object whose interval has elapsed, ServiceM8 then Coredination, before
    any sync runs: a pair changed on both sides between two polls is then decided with both
    changes in view, so the later one wins.

    While an object's own webhooks arrive (one within the last ``with_webhooks`` seconds, and its
    subscription not refused), its interval stretches to ``with_webhooks``: the poll is then only
    the safety net for a lost webhook, and ServiceM8's budget is better spent on changes."""
    now = ctx.clock()
    activity = ctx.stores.activity
    dirty = ctx.stores.jobs.due_expiries(ctx.now_ms())
    known = activity.cursors()  # one read: last polls, webhooks, subscriptions, pages
    try:
        planned = _planned_waits(ctx, now, known)
    except BudgetExhausted:
        # The account's timezone is not known yet and ServiceM8 is paused: its poll below waits
        # for the budget as before, and Coredination's is not held up.
        planned = {}
    # Objects the account refuses for good are not due until their recheck (bridge.sync.ingest).
    refused = withheld(activity.object_states(known), SM8_POLLED, now)
    dirty |= rescope(ctx, known)  # scope settings changed: every job syncs once
    for system in SYSTEMS:
        interval = intervals.get(system, 0)
        due = []
        for obj in POLLED[system]:
            if system == "servicem8" and obj in refused:
                continue
            name = f"{system}.{obj}"
            if name in planned:
                wait = planned[name]
            elif _hooked(known, name, now, with_webhooks):
                wait = max(interval, with_webhooks)
            else:
                wait = interval
            last = known.get(polled(name))
            if last is None or now - float(last) >= wait * 0.9:
                due.append(obj)
        if not due:
            continue
        with ctx.stores.work.poll_lock(system) as held:
            if held:
                dirty |= _poll(ctx, system, due, now)
    return dirty


def _poll(ctx: SyncContext, system: str, due: list[str], now: float) -> set[str]:
    """One system's due objects, under its poll lock, its cursors read once
    (``ActivityStore.holding``); the jobs made dirty."""
    activity = ctx.stores.activity
    with activity.holding():
        read_before = Counter(ctx.sm8.pages) if system == "servicem8" else Counter()
        try:
            dirty = POLLS[system](ctx, due)
        except BudgetExhausted as exc:
            # This system waits for its budget; the other is still polled now. The poll stays
            # due, so the next tick tries again.
            log.info("poll.waiting_for_budget", system=system, retry_in=round(exc.retry_in, 1))
            return set()
        stamps = {polled(f"{system}.{obj}"): repr(now) for obj in due}
        stamps[polled(system)] = repr(now)
        if system == "servicem8":  # a call per page of each object's list (1,000 records)
            pages = {obj: max(1, ctx.sm8.pages[f"{obj}.list"] - read_before[f"{obj}.list"])
                     for obj in due}  # fmt: skip
            stamps |= {pages_field(f"{system}.{obj}"): str(n) for obj, n in pages.items()}
            activity.count_polls(_account_day(ctx, now), sum(pages.values()), stamps)
        else:
            activity.set_cursors(stamps)
    return dirty


def _account_day(ctx: SyncContext, now: float) -> str:
    return datetime.fromtimestamp(now, ctx.tz).date().isoformat()


def pages_field(name: str) -> str:
    """The cursor field holding how many pages the last poll of object ``name`` read."""
    return f"poll-pages:{name}"


def _planned_waits(ctx: SyncContext, now: float, known: Mapping[str, str]) -> dict[str, float]:
    """Each ServiceM8 object's interval from the day's budget (``mappings.pollplan``), each
    poll costing the pages its last one read, recorded for ``sm8cd status``; nothing when the
    intervals are fixed."""
    budget = ctx.options.poll_budget
    if budget is None:
        return {}
    # Live webhooks: the subscription is active (as the bridge made it and, once the health check
    # has run, as ServiceM8 lists it). Its poll is then a safety net, however quiet the object.
    activity = ctx.stores.activity
    names = [f"servicem8.{obj}" for obj in POLLED["servicem8"]]
    hooked = {
        name: activity.subscription(name) == "active"
        and (activity.subscription_health(name) or {}).get("active") is not False
        for name in names
    }
    plan = plan_polls(
        datetime.fromtimestamp(now, ctx.tz),
        hooked,
        budget,
        polls_spent_today=activity.polls_on(_account_day(ctx, now)),
        calls_last_day=ctx.calls_last_day(),
        pages={name: int(known.get(pages_field(name)) or 1) for name in names},
    )
    activity.set_poll_plan({**asdict(plan), "at": now})
    return plan.intervals


def run_cycle(
    ctx: SyncContext, *, staff: bool = True, synced: Callable[[str, Report], None] | None = None
) -> Report:
    """One complete cycle both ways: staff map, both polls, then every dirty job. ``synced`` is
    told each job's own report as soon as its sync is done (the preview reads the cycle by it,
    ``bridge.sync.preview``)."""
    report = Report()
    if staff:
        report.merge(match_staff(ctx))
    rescope(ctx)
    poll_servicem8(ctx)
    poll_coredination(ctx)
    ctx.stores.jobs.due_expiries(ctx.now_ms())
    for sm8_job in sorted(ctx.stores.jobs.dirty()):
        try:
            done = sync_job(ctx, sm8_job)
        except ApiError as exc:
            # The job stays dirty, so the next cycle (or a retry) tries it again.
            done = Report(Counter({f"failed.{type(exc).__name__}": 1}))
            log.warning("sync.job_failed", sm8_job_uuid=sm8_job, **exc.describe())
        report.merge(done)
        if synced is not None:
            synced(sm8_job, done)
    return report
