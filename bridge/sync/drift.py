"""Drift: both systems read whole (not from the cursors), every pair whose sides disagree listed,
and with ``repair`` recorded and marked dirty so the normal job sync decides each pair. The safety
net behind the polls and webhooks (``sm8cd reconcile``, and beat's daily run). What is out of
scope (docs/scope.md) is no drift: the sync would leave it as it is."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bridge.log import get_logger
from bridge.store import StaffMap
from bridge.sync.context import CD_DELETED, SyncContext
from bridge.sync.ingest import active, facts_of, parker
from bridge.sync.pull import pull_job
from mappings import transitions
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid
from mappings.plan import booked_since, job_deleted
from mappings.presence import (
    Presence,
    cd_presence,
    current_presence,
    pair_in_step,
    sm8_presence,
)
from mappings.scope import Horizon
from mappings.state import JobRecord, PairSnapshot

log = get_logger(__name__)


@dataclass(frozen=True)
class Drift:
    sm8_job_uuid: str
    sm8_staff_uuid: str
    cd_user_id: int
    servicem8: str  # presence on each side, as read
    coredination: str
    reason: str


def _drift(
    job: str,
    facts: list[AllocationFacts],
    resources: dict[int, str],
    linked: bool,
    staff_map: StaffMap,
    now_ms: int,
    deleted: bool = False,
    snapshots: Mapping[str, PairSnapshot] | None = None,
    horizon: Horizon | None = None,
    record: JobRecord | None = None,
) -> list[Drift]:
    """The pairs of one job whose sides disagree. On a job deleted in ServiceM8 nobody is
    booked, whatever its bookings say. A pair held by the return-visit rule, as both sides still
    are, is no drift (docs/coredination-api.md#resources). Under ``horizon`` a pair is judged on
    its bookings in scope, and a pair with none (or on a job with none) is no drift: its
    ServiceM8 side is silent (docs/scope.md#pairs)."""
    horizon = horizon or Horizon.everything()
    details = record.details if record is not None else None
    by_staff: dict[str, list[AllocationFacts]] = {}
    for fact in facts:
        if fact.staff_uuid:
            by_staff.setdefault(fact.staff_uuid, []).append(fact)
    people = set(by_staff) | {staff_map.u2s[u] for u in resources if u in staff_map.u2s}
    out = []
    for staff in sorted(people):
        user = staff_map.s2u.get(staff)
        cd = cd_presence(resources.get(user)) if user is not None else None
        if user is None or cd is None:  # unmapped (pending) or a state we do not know
            continue
        if staff in horizon.scope.staff_left_out:
            continue
        everything = [] if deleted else by_staff.get(staff, [])
        bookings = everything if deleted else horizon.current(everything, now_ms, details)
        live = [a for a in everything if a.live(now_ms)]
        held = (snapshots or {}).get(staff)
        if not deleted and current_presence(everything, now_ms, horizon, details) is None:
            # Silent: history is left as it is; only a change in Coredination since the pair
            # was last agreed syncs (docs/scope.md#pairs).
            if cd != (held.cd if held is not None else Presence.ABSENT):
                reason = "changed in Coredination (the person's bookings are out of scope)"
                out.append(Drift(job, staff, user, "out of scope", cd.value, reason))
            continue
        sm8 = sm8_presence(bookings, now_ms)
        if held is not None and held.held and (held.sm8, held.cd) == (sm8, cd):
            continue
        if bookings != live and pair_in_step(live, cd, now_ms):
            continue  # in step as before a booking left scope (the presence kept)
        if not pair_in_step(bookings, cd, now_ms):
            reason = "job not linked yet" if not linked else "the two sides disagree"
            out.append(Drift(job, staff, user, sm8.value, cd.value, reason))
    return out


def reconcile(ctx: SyncContext, *, repair: bool) -> tuple[list[Drift], set[str]]:
    """Read both systems whole (not from the cursors) and list every pair whose two sides
    disagree, linked or not yet linked. With ``repair``, record what was read and mark those
    jobs dirty: the normal sync then decides each pair (snapshot, later change wins).

    Costs one ServiceM8 call per 1,000 active bookings of each kind (a page as observed) and one
    Coredination call per page of jobs. A booking the bridge holds as live that the active
    lists lack was deleted.
    """
    staff_map = ctx.stores.staff.staff_map()
    park = parker(ctx)
    started, now_ms = ctx.clock(), ctx.now_ms()
    horizon = ctx.horizon(now_ms)
    excluded = set(ctx.stores.scope.excluded())
    fresh: dict[str, list[AllocationFacts]] = {}
    for obj, listing in (("joballocation", ctx.sm8.iter_allocations),
                         ("jobactivity", ctx.sm8.iter_activities)):  # fmt: skip
        for booking in listing(active(obj), park):
            fact = facts_of(ctx, booking, staff_map)
            fresh.setdefault(fact.job_uuid, []).append(fact)
    cd_jobs = {
        job.uuid.lower(): job for job in ctx.cd.iter_changed_jobs(0, on_invalid=park) if job.uuid
    }
    # Jobs a dispatcher deleted in Coredination wait for the office (the deletion rule,
    # docs/coredination-api.md#jobs-deleted-by-a-dispatcher): parked, not drift.
    suffix = f"|{CD_DELETED}"
    deleted_there = {
        k.removesuffix(suffix): int(float(v.get("since", 0)) * 1000)
        for k, v in ctx.stores.parked.pending().items()
        if k.endswith(suffix)
    }
    drifts: list[Drift] = []
    dirty: set[str] = set()
    for job in sorted(set(fresh) | set(ctx.stores.jobs.known())):
        record = ctx.stores.jobs.load(job)
        if horizon.left_out(record.details, excluded=job in excluded) is not None:
            continue  # left alone as a whole: no drift
        listed = {f.uuid for f in fresh.get(job, [])}
        gone = [replace(a, active=False, edited_ms=int(started * 1000))
                for a in record.allocations.values()
                if a.active and a.uuid not in listed]  # fmt: skip
        facts = fresh.get(job, []) + gone
        cd_job = cd_jobs.get(cd_job_uuid(ctx.ns, job))
        if cd_job is None and job in deleted_there:
            # Judged on the record as the listing would leave it, as the sync judges it (a
            # booking the list lacks was removed: a change, dated by this read).
            seen = copy.deepcopy(record)
            transitions.ingest_allocations(seen, facts, read_started=started)
            if not booked_since(seen, deleted_there[job]):
                continue
        resources = {r.user_id: r.state for r in cd_job.resources} if cd_job else {}
        deleted = job_deleted(record)
        found = _drift(job, facts, resources, cd_job is not None, staff_map, now_ms, deleted,
                       record.pairs, horizon, record)  # fmt: skip
        if not found:
            continue
        drifts += found
        if repair:
            dirty |= ctx.stores.jobs.ingest_allocations(facts, read_started=started)
            if record.cd is not None and record.cd.resources != resources:
                dirty |= pull_job(ctx, job)
            ctx.stores.jobs.mark_dirty([job])
            dirty.add(job)
    log.info("reconcile.done", drifts=len(drifts), repair=repair, jobs=len(dirty))
    return drifts, dirty
