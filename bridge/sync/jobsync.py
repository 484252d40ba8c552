"""The job sync: bring one job's pairs in step, under the job's lease. Safe to run twice.

Planned first, then applied (``mappings.plan``): the Coredination job's fields, then every pair's
writes in order. Scope decides first (docs/scope.md): a job excluded by hand or of a status or
category the connection does not sync is left alone; a job with no booking in scope gets no
Coredination job, and a linked one only takes Coredination's changes back.

If a write fails or the budget runs dry half-way, what was done is kept (the written allocations
with their write markers, the view as far as it went, the snapshots of the pairs that finished),
so the retry neither repeats a write nor mistakes the bridge's own write for a change.
"""

from __future__ import annotations

from collections import Counter

from bridge.coredination.translate import view_of
from bridge.errors import NotFound, Rejected, Unavailable
from bridge.log import get_logger
from bridge.servicem8.creates import UuidTaken
from bridge.servicem8.translate import job_facts
from bridge.store.codec import id_bytes
from bridge.sync.context import CD_DELETED, Lease, Report, SyncContext
from bridge.sync.ingest import record_holder
from bridge.sync.preflight import WAITING_JOB_LIST, job_list_first, read_after_crash
from bridge.sync.pull import job_deleted_in_coredination
from bridge.sync.scope import CURSOR_SCOPE
from mappings.facts import AllocationFacts
from mappings.plan import (
    PairPlan,
    booked_since,
    changed_since,
    deleted_since,
    hold,
    in_scope,
    job_deleted,
    later_expiry,
    needs_link,
    plan_job_fields,
    plan_pairs,
)
from mappings.planners import Sm8Write, after_write
from mappings.presence import in_step
from mappings.readback import ReadBack, ResourceOp, read_back, take_read
from mappings.scope import EXCLUDED, HISTORY, Horizon
from mappings.state import CdView, JobRecord, PairSnapshot
from mappings.transitions import SyncWrite

log = get_logger(__name__)

JOB_STATE = "job-state"  # the pending entry of a job whose state override was refused


def sync_job(ctx: SyncContext, sm8_job: str) -> Report:
    """Bring one job's pairs in step, under the job's lock. Safe to run twice."""
    jobs = ctx.stores.jobs
    if id_bytes(sm8_job) is None:  # e.g. a mark left by a build that took any id
        log.warning("sync.bad_job_id", sm8_job_uuid=sm8_job[:60])
        jobs.clear_dirty(sm8_job, jobs.dirty_generation(sm8_job))
        return Report(Counter({"skipped.bad_job_id": 1}))
    excluded, settled = ctx.stores.scope.state(sm8_job, CURSOR_SCOPE)
    if settled is not None and settled != ctx.options.scope.fingerprint():
        # The connection's scope settings changed and this process has not read them yet (it
        # does within seconds): the job stays marked and syncs at the next cycle, under them.
        return Report(Counter({"skipped.scope_changing": 1}))
    with ctx.locked(sm8_job) as lease:
        generation = jobs.dirty_generation(sm8_job)
        try:
            report = _sync_locked(ctx, sm8_job, lease, excluded)
        except NotFound as exc:
            view = jobs.load(sm8_job).cd
            if exc.api != "coredination" or view is None or not _cd_job_gone(ctx, view):
                raise  # a missing user answers 404 too: that is no deleted job
            # The Coredination job was deleted there (a dispatcher). The sync runs again without
            # it: a ServiceM8 change since the deletion creates it afresh, else it stays parked.
            job_deleted_in_coredination(ctx, sm8_job, view)
            report = _sync_locked(ctx, sm8_job, lease, excluded)
        if WAITING_JOB_LIST not in report.counts:
            jobs.clear_dirty(sm8_job, generation, ctx.clock())
    ctx.stores.activity.count(report.counts)
    return report


def _cd_job_gone(ctx: SyncContext, view: CdView) -> bool:
    """Whether the linked Coredination job is gone (read to be sure: an operation's 404 may be
    about its user)."""
    try:
        ctx.cd.get_job(view.uuid)
    except NotFound:
        return True
    return False


def _may_link(ctx: SyncContext, record: JobRecord, report: Report) -> bool:
    """Whether a job with no Coredination job may get one: unless a dispatcher deleted it there
    and no booking on it has changed in ServiceM8 since (``CD_DELETED``)."""
    parked = ctx.stores.parked
    entry = parked.pending_entry(record.uuid, CD_DELETED)
    if entry is None:
        return True
    since_ms = int(float(entry.get("since", 0)) * 1000)
    if booked_since(record, since_ms):
        parked.clear_pending(record.uuid, CD_DELETED)
        report.add("coredination.job_recreated")
        log.info("sync.coredination_job_recreated", sm8_job_uuid=record.uuid,
                 **_why_recreated(record, since_ms))  # fmt: skip
        return True
    report.add("skipped.deleted_in_coredination")
    return False


def _why_recreated(record: JobRecord, since_ms: int) -> dict[str, object]:
    """For the log: the deletion's bound and the bookings whose change counted after it."""
    counted = [f"{a.uuid}@{a.edited_ms}(own {a.own_ms})"
               for a in record.allocations.values() if changed_since(a, since_ms)]  # fmt: skip
    return {"since_ms": since_ms, "changed": counted}


def _out_of_scope(report: Report, reason: str) -> Report:
    report.add(f"skipped.out_of_scope.{reason}")
    return report


def _sync_locked(ctx: SyncContext, sm8_job: str, lease: Lease, excluded: bool) -> Report:
    report = Report()
    jobs, parked = ctx.stores.jobs, ctx.stores.parked
    if excluded:  # left alone by hand, both ways
        return _out_of_scope(report, EXCLUDED)
    record, flight = jobs.load_for_sync(sm8_job)
    now_ms = ctx.now_ms()
    horizon = ctx.horizon(now_ms)
    live = any(a.live(now_ms) for a in record.allocations.values())
    unread = record.details is None and record.cd is None
    if unread and live and not in_scope(record, horizon, now_ms):
        # Not one booking in scope even if the job were open: history costs no job read.
        return _out_of_scope(report, HISTORY)
    if record.details is None and job_list_first(ctx):
        # Kept dirty: the poll's read of the job list, a page of 1,000 jobs a call, brings its
        # details, and the poll queues the sync again (a first sync of 5,000 jobs would
        # otherwise read them one call each, at the account's 180 a minute).
        report.add(WAITING_JOB_LIST)
        return report
    if record.details is None:
        try:
            details = job_facts(ctx.sm8.get_job(sm8_job))
        except NotFound:
            for staff in {a.staff_uuid for a in record.allocations.values() if a.staff_uuid}:
                parked.set_pending(sm8_job, staff, "job not found in ServiceM8")
            report.add("skipped.job_missing")
            return report
        jobs.save_details(details)
        record.details = details
    if flight is not None:
        read_after_crash(ctx, record, flight, report)
    expiry = later_expiry(record, now_ms, horizon, ctx.tz)
    if expiry is not None:  # the reminder fires once: set it again for the next one
        jobs.remind_expiry(record.uuid, expiry)
    if job_deleted(record) and record.cd is not None:
        # Everyone off the job first, then the state override: a resource change after it would
        # derive the job's state again (docs/coredination-api.md#states). A deletion is a
        # change, not a job leaving scope.
        _sync_pairs(ctx, record, lease, now_ms, horizon, report)
        _upsert_fields(ctx, record, lease, now_ms, horizon, report)
        return report
    left_out = horizon.left_out(record.details)
    if left_out is not None:  # its status or category: left alone, nothing undone
        return _out_of_scope(report, left_out)
    if not needs_link(record, horizon, now_ms):
        if job_deleted(record) or not live:
            report.add("skipped.nothing_to_link")
            return report
        return _out_of_scope(report, HISTORY)
    if record.cd is None and not _may_link(ctx, record, report):
        return report
    current = in_scope(record, horizon, now_ms)
    if not current:
        # Linked, with every booking now history: its fields stay as they are and only what
        # Coredination changes flows back (the pairs are silent on the ServiceM8 side).
        report.add(f"skipped.out_of_scope.{HISTORY}")
    elif not _upsert_fields(ctx, record, lease, now_ms, horizon, report):
        return report
    written = _sync_pairs(ctx, record, lease, now_ms, horizon, report)
    if written and lease.owned() and (current or in_scope(_with(record, written), horizon, now_ms)):
        # The bridge's own ServiceM8 writes may move the job's time (an office booking undated
        # or dated by a pull): its fields follow in the same sync, not at some later change;
        # and so do the bridge's own fixed bookings, which follow the job's time (once: what
        # they write moves no job time, as they follow it).
        record.allocations.update({fact.uuid: fact for fact in written})
        before = _job_time(record.cd)
        if not _upsert_fields(ctx, record, lease, now_ms, horizon, report):
            return report
        if lease.owned() and _job_time(record.cd) != before:
            _sync_pairs(ctx, record, lease, now_ms, horizon, report)
    return report


def _with(record: JobRecord, written: list[AllocationFacts]) -> JobRecord:
    """The record as the bridge's own writes leave its bookings (not stored)."""
    return JobRecord(record.uuid, record.details,
                     {**record.allocations, **{a.uuid: a for a in written}})  # fmt: skip


def _job_time(view: CdView | None) -> tuple[int | None, int | None, bool] | None:
    return None if view is None else (view.start_ms, view.end_ms, view.all_day)


def _upsert_fields(
    ctx: SyncContext, record: JobRecord, lease: Lease, now_ms: int, horizon: Horizon,
    report: Report,
) -> bool:  # fmt: skip
    """Write the Coredination job's fields unless it already holds them (the fingerprint). A
    state override Coredination refuses (the canceled state of a deleted job) is left out, and
    the job is parked with the reason, where ``sm8cd status`` shows it. False: the job turned
    out deleted in Coredination and stays so (nothing more to sync)."""
    upsert = plan_job_fields(record, ctx.ns, ctx.tz, now_ms, horizon)
    if upsert is None:
        return True
    lease.renew()
    if upsert.creates:  # a later sync that finds it in flight knows what body landed
        lease.note_write(upsert.digest)
    parked = ctx.stores.parked
    try:
        job = ctx.cd.upsert_job(upsert.uuid, upsert.body)
        parked.clear_pending(record.uuid, JOB_STATE)
    except Rejected as exc:
        if "state" not in upsert.body:
            raise
        body = {k: v for k, v in upsert.body.items() if k != "state"}
        job = ctx.cd.upsert_job(upsert.uuid, body)
        why = (f"deleted in ServiceM8, but Coredination refused the state {upsert.body['state']}"
               f" (HTTP {exc.status}): the job keeps no people")  # fmt: skip
        parked.set_pending(record.uuid, JOB_STATE, why)
        report.add("skipped.state_refused")
    view = view_of(job, upsert.uuid)
    if upsert.creates:
        parked.clear_pending(record.uuid, CD_DELETED)  # linked again, whichever way
    elif record.cd is not None and None not in (record.cd.id, view.id) and view.id != record.cd.id:
        # The update created the job afresh (``PUT`` creates a job that is missing): a dispatcher
        # deleted it and nothing had noticed. With no ServiceM8 booking change since, the
        # deletion stands (the deletion rule): the job just made is deleted again and parked.
        # Otherwise it stays, and the old snapshots go, or the empty job would read as everyone
        # taken off in Coredination and their bookings would be deleted: the pairs are decided
        # as new, which books the people the ServiceM8 bookings name.
        since_ms = deleted_since(record.cd)
        log.warning("sync.coredination_job_recreated_by_update", sm8_job_uuid=record.uuid,
                    **_why_recreated(record, since_ms))  # fmt: skip
        if not booked_since(record, since_ms):
            ctx.cd.delete_job(view.uuid)
            job_deleted_in_coredination(ctx, record.uuid, record.cd)
            record.cd, record.pairs = None, {}
            report.add("skipped.deleted_in_coredination")
            return False
        ctx.stores.jobs.forget_cd(record.uuid)
        record.pairs = {}
        parked.clear_pending(record.uuid, CD_DELETED)
        report.add("coredination.job_recreated")
    report.add("coredination.job_created" if upsert.creates else "coredination.job_updated")
    record.cd, record.fields_fp = view, upsert.digest
    ctx.stores.jobs.save_sync(SyncWrite(record.uuid, view=record.cd, fields_fp=upsert.digest))
    return True


def _sync_pairs(
    ctx: SyncContext, record: JobRecord, lease: Lease, now_ms: int, horizon: Horizon,
    report: Report,
) -> list[AllocationFacts]:  # fmt: skip
    """Every pair's plan, applied in order; returns the allocations the bridge wrote."""
    assert record.cd is not None
    staff_map = ctx.stores.staff.staff_map()
    plan = plan_pairs(record, staff_map.s2u, staff_map.u2s, ns=ctx.ns, tz=ctx.tz, now_ms=now_ms,
                      tie=ctx.options.tie, horizon=horizon,
                      booking=ctx.pull_booking())  # fmt: skip
    parked = ctx.stores.parked
    for user in plan.unmapped_users:
        parked.set_pending(
            record.uuid, f"u:{user}", "Coredination user has no ServiceM8 staff member"
        )
        report.add("pending.unmapped_user")
    view = record.cd
    snapshots: dict[str, PairSnapshot] = {}
    written: list[AllocationFacts] = []
    again = False
    try:
        for pair in plan.pairs:
            again = _apply_pair(ctx, record, view, pair, lease, now_ms, report, written)
            if pair.snapshot is not None:
                snapshots[pair.staff] = pair.snapshot
            if again:
                # A read-back showed Coredination moved on since this plan was made: the pairs
                # left are decided at the next sync, on the view just read, not on the old one.
                break
    finally:
        # Keep what was done even when a write failed half-way. If our lease ran out meanwhile,
        # another worker may have stored a newer view (a pull): keep only our write markers, and
        # leave the view and snapshots to its sync.
        owned = lease.owned()
        ctx.stores.jobs.save_sync(SyncWrite(
            record.uuid, written=written, at=ctx.clock(),
            view=view if owned else None, pairs=snapshots if owned else {}, dirty=again,
        ))  # fmt: skip
        if owned:
            record.pairs.update(snapshots)  # a second pass of this sync plans from them
        else:
            log.warning("sync.lease_lost", sm8_job_uuid=record.uuid)
    # Pairs the plan left out of step (a write that cannot bring them there), not those in step
    # by the rules' finer reading (a fixed booking next to a person finished in Coredination).
    left = sum(1 for p in plan.pairs if p.direction != "in_step" and p.snapshot is not None
               and not in_step(p.snapshot.sm8, p.snapshot.cd))  # fmt: skip
    if left:
        report.add("skipped.not_in_step", left)
    return written


def _apply_pair(
    ctx: SyncContext,
    record: JobRecord,
    view: CdView,
    pair: PairPlan,
    lease: Lease,
    now_ms: int,
    report: Report,
    written: list[AllocationFacts],
) -> bool:
    """Apply one pair's writes in order; True when a read-back met a change made meanwhile
    and the job must be synced again."""
    facts = {a.uuid: a for a in record.allocations.values() if a.staff_uuid == pair.staff}
    again = False
    for done, write in enumerate(pair.writes):
        if done == pair.park_after:
            _park(ctx, record, view, pair, report)
        lease.renew()
        if isinstance(write, ResourceOp):
            outcome, others = _resource_op(ctx, view, pair, write, now_ms, report)
            if outcome == "ignored":
                _park(ctx, record, view, pair, report)  # held: the reason replaces the plan's
            if outcome != "took":
                return outcome == "moved" or others
            again |= others
        else:
            _apply_sm8(ctx, write, report)
            facts[write.uuid] = after_write(facts.get(write.uuid), write, record.uuid, pair.staff)
            written.append(facts[write.uuid])
    if len(pair.writes) <= pair.park_after:
        _park(ctx, record, view, pair, report)
    if pair.direction in ("push", "pull"):
        log.info(f"sync.{pair.direction}ed", sm8_job_uuid=record.uuid, cd_user_id=pair.user,
                 target=pair.target.value if pair.target else None, reason=pair.reason)  # fmt: skip
    return again


def _resource_op(
    ctx: SyncContext, view: CdView, pair: PairPlan, write: ResourceOp, now_ms: int, report: Report
) -> tuple[ReadBack, bool]:
    """Send one resource operation. Where it may not take (``schedule`` or ``assign`` on a
    resource at work) or its answer was lost, the job is read back (one GET) before anything is
    recorded: the view becomes what was read, and the pair is decided again with it. An op
    Coredination ignored holds the pair (``mappings.plan.hold``); one that met a change made
    meanwhile leaves the pair's snapshot as it was and marks the job to sync again.

    Also returns whether the read showed other users changed since the plan was made: their
    pairs were planned on the older view, and the view now stored holds the newer one (so no
    poll would see the difference again): the job is synced again to decide them."""
    lost: Unavailable | None = None
    try:
        ctx.cd.resource_op(write.op, view.uuid, write.user, send_message=ctx.options.send_message)
    except Unavailable as exc:  # sent, maybe done: the answer is what was lost
        lost = exc
    outcome: ReadBack = "took"
    others = False
    read = lost is not None or write.uncertain
    if read:
        planned = {u: st for u, st in view.resources.items() if u != write.user}
        try:
            seen = view_of(ctx.cd.get_job(view.uuid), view.uuid)
        except Unavailable:
            if lost is not None:
                raise lost from None
            raise
        take_read(view, seen)
        others = planned != {u: st for u, st in seen.resources.items() if u != write.user}
        outcome = read_back(write, seen.resources.get(write.user))
        report.add(f"coredination.read_back.{outcome}")
        if lost is not None and outcome != "took":
            raise lost  # not done: the retry plans again from the view just read
    if outcome == "took":
        if not read:  # once read back, the view already holds what Coredination says
            if write.state_after is None:
                view.resources.pop(write.user, None)
            else:
                view.resources[write.user] = write.state_after
        view.changed_ms[write.user] = max(view.changed_ms.get(write.user, 0), now_ms)
        report.add(f"coredination.{write.op}d" if write.op.endswith("e")
                   else f"coredination.{write.op}ed")  # fmt: skip
    elif outcome == "ignored":
        hold(pair, view.resources.get(write.user))
        log.info("sync.held", cd_user_id=write.user, op=write.op,
                 state=view.resources.get(write.user))  # fmt: skip
    else:
        pair.snapshot = None  # the last agreed one stays: the next sync decides afresh
    return outcome, others


def _park(
    ctx: SyncContext, record: JobRecord, view: CdView, pair: PairPlan, report: Report
) -> None:
    """Park the pair, or clear its parking, as planned (after its double-booking writes)."""
    parked = ctx.stores.parked
    if pair.park is not None:
        if pair.park.reason is None:
            parked.clear_pending(record.uuid, pair.park.who)
        else:
            parked.set_pending(record.uuid, pair.park.who, pair.park.reason)
    if pair.skipped:
        report.add(pair.skipped)
    if pair.skipped == "skipped.unknown_resource_state":
        log.warning("sync.unknown_resource_state", sm8_job_uuid=record.uuid,
                    cd_user_id=pair.user, state=view.resources.get(pair.user or 0))  # fmt: skip


def _apply_sm8(ctx: SyncContext, write: Sm8Write, report: Report) -> None:
    """One booking write: a job activity when the booking is fixed (counted as
    ``servicem8.fixed_*``), else a job allocation."""
    sm8 = ctx.sm8
    if write.kind == "create":
        create = sm8.create_activity if write.fixed else sm8.create_allocation
        try:
            create(write.fields, uuid=write.uuid)
        except UuidTaken as exc:  # the office gave our booking of that uuid to someone else
            obj = "jobactivity" if write.fixed else "joballocation"
            raise record_holder(ctx, obj, write.uuid, exc) from None
        done = "created"
    elif write.kind == "update":
        update = sm8.update_activity if write.fixed else sm8.update_allocation
        update(write.uuid, write.fields)
        done = "updated"
    else:
        (sm8.delete_activity if write.fixed else sm8.delete_allocation)(write.uuid)
        done = "deleted"
    report.add(f"servicem8.fixed_{done}" if write.fixed else f"servicem8.{done}")
