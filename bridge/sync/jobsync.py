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
from bridge.store.settle import Settlement, SyncLoad, load, settle
from bridge.store.trail import Kept
from bridge.sync.context import CD_DELETED, Lease, Report, SyncContext
from bridge.sync.ingest import record_holder
from bridge.sync.preflight import WAITING_JOB_LIST, job_list_first, read_after_crash
from bridge.sync.pull import cd_job_gone, job_deleted_in_coredination, may_link, why_recreated
from bridge.sync.scope import CURSOR_SCOPE
from bridge.sync.trail import READ_BACK, Sent, trail_entry
from mappings.facts import AllocationFacts
from mappings.plan import (
    PairPlan,
    booked_since,
    deleted_since,
    hold,
    in_scope,
    job_deleted,
    needs_link,
    plan_job_fields,
    plan_pairs,
)
from mappings.planners import Sm8Write, after_write
from mappings.presence import in_step
from mappings.readback import ReadBack, ResourceOp, read_back, take_read
from mappings.scope import EXCLUDED, HISTORY, Horizon, later_expiry
from mappings.state import CdView, JobRecord, PairSnapshot
from mappings.transitions import SyncWrite

log = get_logger(__name__)

JOB_STATE = "job-state"  # the pending entry of a job whose state override was refused


def sync_job(ctx: SyncContext, sm8_job: str, trigger: str = "command") -> Report:
    """Bring one job's pairs in step, under the job's lock. Safe to run twice. What it decided
    and wrote is kept as the job's trail entry (``mappings.trail``), saved with its cleared
    dirty mark; ``trigger`` says what asked for the sync (webhook, poll, backlog, command)."""
    jobs = ctx.stores.jobs
    if id_bytes(sm8_job) is None:  # e.g. a mark left by a build that took any id
        log.warning("sync.bad_job_id", sm8_job_uuid=sm8_job[:60])
        jobs.clear_dirty(sm8_job, jobs.dirty_generation(sm8_job))
        return Report(Counter({"skipped.bad_job_id": 1}))
    with ctx.locked(sm8_job) as lease:
        loaded = _load(ctx, sm8_job)
        if loaded.settled is not None and loaded.settled != ctx.options.scope.fingerprint():
            # The connection's scope settings changed and this process has not read them yet
            # (it does within seconds): the job stays marked and syncs, under them, next cycle.
            return Report(Counter({"skipped.scope_changing": 1}))
        report = Report()
        try:
            try:
                _sync_locked(ctx, loaded, lease, report)
            except NotFound as exc:
                view = loaded.record.cd
                if exc.api != "coredination" or view is None or not cd_job_gone(ctx, view):
                    raise  # a missing user answers 404 too: that is no deleted job
                # The Coredination job was deleted there (a dispatcher). What was done is kept,
                # and the sync runs again without it: a ServiceM8 change since the deletion
                # creates it afresh, else it stays parked.
                _settle(ctx, loaded, lease, report, clear=False)
                job_deleted_in_coredination(ctx, sm8_job, view)
                loaded, report = _load(ctx, sm8_job), Report(trail=report.trail)
                _sync_locked(ctx, loaded, lease, report)
        except Exception as exc:
            try:  # what was done is kept, its marks with it; the sync's error is the one raised
                _settle(ctx, loaded, lease, report, clear=False,
                        trail=trail_entry(ctx, report, trigger, exc))  # fmt: skip
            except Exception:
                log.warning("sync.settle_failed", sm8_job_uuid=sm8_job, exc_info=True)
            raise
        _settle(ctx, loaded, lease, report, clear=WAITING_JOB_LIST not in report.counts,
                trail=trail_entry(ctx, report, trigger), counted=True)  # fmt: skip
    return report


def _load(ctx: SyncContext, sm8_job: str) -> SyncLoad:
    return load(ctx.stores.jobs, ctx.stores.staff, sm8_job, CURSOR_SCOPE, CD_DELETED)


def _settle(
    ctx: SyncContext, loaded: SyncLoad, lease: Lease, report: Report, *, clear: bool,
    trail: Kept | None = None, counted: bool = False,
) -> None:  # fmt: skip
    """Leave what the sync did in the store, in one round trip (``bridge.store.settle``)."""
    settle(ctx.stores.jobs, loaded, report.settle, lock=lease.lock, clear=clear, trail=trail,
           counts=report.counts if counted else {}, now=ctx.clock())  # fmt: skip
    report.settle = Settlement(staff=report.settle.staff)


def _out_of_scope(report: Report, reason: str) -> Report:
    report.add(f"skipped.out_of_scope.{reason}")
    return report


def _sync_locked(ctx: SyncContext, loaded: SyncLoad, lease: Lease, report: Report) -> Report:
    if loaded.excluded:  # left alone by hand, both ways
        return _out_of_scope(report, EXCLUDED)
    record, flight, sm8_job = loaded.record, loaded.flight, loaded.record.uuid
    report.settle.staff = loaded.staff
    report.trail.number = record.details.number if record.details else None
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
                report.settle.park(staff, "job not found in ServiceM8")
            report.add("skipped.job_missing")
            return report
        ctx.stores.jobs.save_details(details)
        record.details, report.trail.number = details, details.number
    if flight is not None:
        read_after_crash(ctx, record, flight, report)
    expiry = later_expiry(record, now_ms, horizon, ctx.tz)
    report.settle.expiry_ms = expiry  # the reminder fires once: set again for the next one
    if job_deleted(record) and record.cd is not None:
        # Everyone off the job first, then the state override: a resource change after it would
        # derive the job's state again (docs/coredination-api.md#states). A deletion is a
        # change, not a job leaving scope.
        _sync_pairs(ctx, loaded, lease, now_ms, horizon, report)
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
    if record.cd is None and not may_link(record, loaded.cd_deleted, report):
        return report
    current = in_scope(record, horizon, now_ms)
    if not current:
        # Linked, with every booking now history: its fields stay as they are and only what
        # Coredination changes flows back (the pairs are silent on the ServiceM8 side).
        report.add(f"skipped.out_of_scope.{HISTORY}")
    elif not _upsert_fields(ctx, record, lease, now_ms, horizon, report):
        return report
    written = _sync_pairs(ctx, loaded, lease, now_ms, horizon, report)
    if written and (current or in_scope(_with(record, written), horizon, now_ms)):
        # The bridge's own ServiceM8 writes may move the job's time (an office booking undated
        # or dated by a pull): its fields follow in the same sync, not at some later change;
        # and so do the bridge's own fixed bookings, which follow the job's time (once: what
        # they write moves no job time, as they follow it). A lease lost meanwhile stops any
        # write of this pass at the fence, and its record at the settle.
        record.allocations.update({fact.uuid: fact for fact in written})
        before = _job_time(record.cd)
        if not _upsert_fields(ctx, record, lease, now_ms, horizon, report):
            return report
        if _job_time(record.cd) != before:
            _sync_pairs(ctx, loaded, lease, now_ms, horizon, report)
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
    if upsert.creates:  # a later sync that finds it in flight knows what body landed
        lease.note_write(upsert.digest)
    settle = report.settle
    what = "create job" if upsert.creates else "update job fields"
    try:
        with Sent(report, None, what, upsert.uuid):
            job = ctx.cd.upsert_job(upsert.uuid, upsert.body)
        settle.park(JOB_STATE, None)
    except Rejected as exc:
        if "state" not in upsert.body:
            raise
        body = {k: v for k, v in upsert.body.items() if k != "state"}
        with Sent(report, None, f"{what}, the state left out", upsert.uuid):
            job = ctx.cd.upsert_job(upsert.uuid, body)
        why = (f"deleted in ServiceM8, but Coredination refused the state {upsert.body['state']}"
               f" (HTTP {exc.status}): the job keeps no people")  # fmt: skip
        settle.park(JOB_STATE, why)
        report.add("skipped.state_refused")
    view = view_of(job, upsert.uuid)
    if upsert.creates:
        settle.park(CD_DELETED, None)  # linked again, whichever way
    elif record.cd is not None and None not in (record.cd.id, view.id) and view.id != record.cd.id:
        # The update created the job afresh (``PUT`` creates a job that is missing): a dispatcher
        # deleted it and nothing had noticed. With no ServiceM8 booking change since, the
        # deletion stands (the deletion rule): the job just made is deleted again and parked.
        # Otherwise it stays, and the old snapshots go, or the empty job would read as everyone
        # taken off in Coredination and their bookings would be deleted: the pairs are decided
        # as new, which books the people the ServiceM8 bookings name.
        since_ms = deleted_since(record.cd)
        log.warning("sync.coredination_job_recreated_by_update", sm8_job_uuid=record.uuid,
                    **why_recreated(record, since_ms))  # fmt: skip
        settle.forget_view()  # the old view and snapshots this sync meant to keep go too
        if not booked_since(record, since_ms):
            with Sent(report, None, "delete job created again by an update", view.uuid):
                ctx.cd.delete_job(view.uuid)
            job_deleted_in_coredination(ctx, record.uuid, record.cd)
            record.cd, record.pairs = None, {}
            report.add("skipped.deleted_in_coredination")
            return False
        ctx.stores.jobs.forget_cd(record.uuid)
        record.pairs = {}
        settle.park(CD_DELETED, None)
        report.add("coredination.job_recreated")
    report.add("coredination.job_created" if upsert.creates else "coredination.job_updated")
    record.cd, record.fields_fp = view, upsert.digest
    settle.writes.append(SyncWrite(record.uuid, view=record.cd, fields_fp=upsert.digest))
    return True


def _sync_pairs(
    ctx: SyncContext, loaded: SyncLoad, lease: Lease, now_ms: int, horizon: Horizon,
    report: Report,
) -> list[AllocationFacts]:  # fmt: skip
    """Every pair's plan, applied in order; returns the allocations the bridge wrote."""
    record = loaded.record
    assert record.cd is not None
    staff_map = report.settle.staff or ctx.stores.staff.staff_map()
    plan = plan_pairs(record, staff_map.s2u, staff_map.u2s, ns=ctx.ns, tz=ctx.tz, now_ms=now_ms,
                      tie=ctx.options.tie, horizon=horizon,
                      booking=ctx.pull_booking())  # fmt: skip
    for user in plan.unmapped_users:
        report.settle.park(f"u:{user}", "Coredination user has no ServiceM8 staff member")
        report.add("pending.unmapped_user")
    view = record.cd
    snapshots: dict[str, PairSnapshot] = {}
    written: list[AllocationFacts] = []
    again = False
    try:
        for pair in plan.pairs:
            again = _apply_pair(ctx, record, view, pair, now_ms, report, written)
            report.trail.decided(pair, record.pairs.get(pair.staff))
            if pair.snapshot is not None:
                snapshots[pair.staff] = pair.snapshot
            if again:
                # A read-back showed Coredination moved on since this plan was made: the pairs
                # left are decided at the next sync, on the view just read, not on the old one.
                break
    finally:
        # Kept even when a write failed half-way, in the sync's one write at its end; if the
        # lease ran out meanwhile, another worker may have stored a newer view (a pull): only
        # the write markers are kept then, and the view and snapshots left to its sync.
        report.settle.writes.append(SyncWrite(
            record.uuid, written=written, at=ctx.clock(), view=view, pairs=snapshots, dirty=again,
        ))  # fmt: skip
        record.pairs.update(snapshots)  # a second pass of this sync plans from them
        if written:  # the markers of ServiceM8 writes are kept at once, as the writes are done
            _settle(ctx, loaded, lease, report, clear=False)
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
        if isinstance(write, ResourceOp):
            with Sent(report, pair.staff, write.op, f"user {write.user}") as sent:
                outcome, others = _resource_op(ctx, view, pair, write, now_ms, report)
                sent.answer = READ_BACK[outcome]
            if outcome == "ignored":
                _park(ctx, record, view, pair, report)  # held: the reason replaces the plan's
            if outcome != "took":
                return outcome == "moved" or others
            again |= others
        else:
            kind = "activity" if write.fixed else "allocation"
            with Sent(report, pair.staff, f"{write.kind} {kind}", write.uuid):
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
    if pair.park is not None:
        report.settle.park(pair.park.who, pair.park.reason)
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
