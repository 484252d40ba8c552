"""The convergence checker: reads both simulators' state directly (not through the bridge) and
lists every way they disagree under the mapping rules. Used by the demo's summary and the tests.

Staff are matched to users by e-mail, case-insensitively, as the bridge does; pairs whose staff
member has no user are *pending*, counted apart and never called a disagreement. Bookings are of
both kinds (job allocations, and job activities that are fixed bookings); on a job deleted in
ServiceM8 nobody is booked.

Only what is in scope is judged (docs/scope.md), by the checker's own statement of it, not the
bridge's code: a booking is in scope when it is a fixed one ending after the horizon (the start
of the local day ``horizon_days`` before today in the account's zone), a flexible one dated on or
after it, or an undated one not completed on a job that is open (active, neither Completed nor
Unsuccessful). A job whose status is not synced (``statuses``) or that is ``excluded`` is not
judged. A pair is judged on its live bookings in scope when any of its bookings, live or gone, is
in scope; a pair whose bookings are all history is left as it is (counted, not judged); a pair
with no booking at all is judged as absent in ServiceM8.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID

from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.servicem8 import ServiceM8Simulator
from mappings.facts import AllocationFacts
from mappings.ids import cd_job_uuid, derived_uuids
from mappings.presence import Presence, cd_presence, pair_in_step, sm8_presence
from mappings.stamps import StampError, parse_sm8_stamp, to_epoch_ms


@dataclass
class Convergence:
    sm8_jobs: int = 0  # ServiceM8 jobs with a live booking of mapped staff
    cd_jobs: int = 0  # their Coredination jobs found
    pairs: int = 0  # (job, staff member) pairs present on either side
    by_presence: dict[str, int] = field(default_factory=dict)  # in-step pairs by presence
    pending: int = 0
    unreadable: int = 0  # allocations whose stamps cannot be read (the bridge parks them too)
    out_of_scope: int = 0  # pairs left alone: their bookings are history, or their job is
    missing_in_cd: list[str] = field(default_factory=list)
    missing_in_sm8: list[str] = field(default_factory=list)
    disagree: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    # Pairs not in step because Coredination kept a resource at work out of the last schedule
    # or assign on it (the simulator says so): the bridge holds them, and must report them
    # (the return-visit rule, docs/coredination-api.md#resources). No disagreement.
    held: list[tuple[str, str]] = field(default_factory=list)  # (ServiceM8 job, staff)
    # Jobs whose Coredination job a dispatcher deleted, with no ServiceM8 change to a booking on
    # them since: they stay deleted there (the deletion rule), and the bridge must report them.
    deleted_in_cd: list[str] = field(default_factory=list)  # ServiceM8 jobs
    # Jobs created again in Coredination after a dispatcher deleted them with no ServiceM8
    # change to the job or its bookings in between: the deletion rule broken.
    recreated_early: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [*self.missing_in_cd, *self.missing_in_sm8, *self.disagree, *self.duplicates,
                *self.recreated_early]  # fmt: skip

    @property
    def converged(self) -> bool:
        return not self.problems


def _facts(row: dict[str, Any], tz: tzinfo, obj: str = "joballocation") -> AllocationFacts:
    def ms(name: str) -> int | None:
        return to_epoch_ms(parse_sm8_stamp(row.get(name), tz))

    if obj == "jobactivity":
        booking = str(row.get("activity_was_scheduled")) == "1" and not any(
            str(row.get(f)) == "1" for f in ("activity_was_recorded", "activity_was_automated")
        )
        return AllocationFacts(
            uuid=row["uuid"],
            job_uuid=str(row["job_uuid"]).lower(),
            staff_uuid=str(row.get("staff_uuid") or "").lower() or None,
            active=str(row.get("active", 1)) == "1" and booking,
            date_ms=ms("start_date"),
            window=None,
            completed_ms=None,
            expires_ms=None,
            edited_ms=None,
            fixed=True,
            end_ms=ms("end_date"),
        )
    return AllocationFacts(
        uuid=row["uuid"],
        job_uuid=str(row["job_uuid"]).lower(),
        staff_uuid=str(row.get("staff_uuid") or "").lower() or None,
        active=str(row.get("active", 1)) == "1",
        date_ms=ms("allocation_date"),
        window=None,
        completed_ms=ms("completion_timestamp"),
        expires_ms=ms("expiry_timestamp"),
        edited_ms=None,
    )


# --- the checker's own statement of scope ---------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """What the bridge is configured to sync: its defaults unless a test says otherwise."""

    horizon_days: int = 1
    statuses: Collection[str] | None = ("Quote", "Work Order")  # None: every status
    excluded: Collection[str] = ()  # ServiceM8 jobs left out by hand


def _horizon_ms(now_ms: int, tz: tzinfo, days: int) -> int:
    today = datetime.fromtimestamp(now_ms / 1000, tz).date()
    return int(datetime.combine(today - timedelta(days=days), datetime.min.time(),
                                tzinfo=tz).timestamp() * 1000)  # fmt: skip


def _admitted(booking: AllocationFacts, horizon_ms: int, job_open: bool) -> bool:
    if booking.fixed:
        end = booking.end_ms if booking.end_ms is not None else booking.date_ms
        return end is not None and end > horizon_ms
    if booking.date_ms is not None:
        return booking.date_ms >= horizon_ms
    return booking.completed_ms is None and job_open


# Fields whose change alone is no change (a booking opened on the phone).
OPENED_ONLY = frozenset({"has_been_opened", "has_been_opened_timestamp", "read_timestamp"})


def _waits_for_the_office(
    bookings: list[AllocationFacts],
    sm8: ServiceM8Simulator,
    cd: CoredinationSimulator,
    cd_uuid: str,
) -> bool:
    """A dispatcher deleted the job in Coredination and no person has changed a booking on it
    in ServiceM8 after the deletion: the deletion stands, and the bridge must report it.

    A change between the job's last resource event and the deletion may go either way: no API
    gives a deletion's time, so the bridge bounds it by the last change it saw. A change it had
    already synced before the deletion (one that wrote nothing to Coredination, such as a new
    date) rightly leaves the deletion standing; one it had not yet synced creates the job again.
    Only a change after the deletion must create it again (``recreated_early`` checks the other
    bound). A booking made and removed again before any client read it active is no change the
    bridge could know of: it counts only if it is active or was once read so."""
    deleted = cd.deleted_jobs.get(cd_uuid)
    if deleted is None:
        return False
    return not any(
        (changed := sm8.changed_ms.get(a.uuid)) is not None
        and changed > deleted
        and not _reads_as_at(sm8, a.uuid, deleted)
        for a in bookings
        if a.active or a.uuid in sm8.served_active
    )


def _reads_as_at(sm8: ServiceM8Simulator, uuid: str, at_ms: int) -> bool:
    """The booking reads now as it read at ``at_ms`` in every field the rules read: a person
    changed it and changed it back (a reassignment undone). A client that did not read it in
    between sees only ``edit_date`` moved, as after a booking opened on the phone, and no API
    tells the two apart."""
    history = sm8.versions.get(uuid, [])
    then = [version for version in history if version[0] <= at_ms]
    if not then:
        return False
    _, obj, before = then[-1]
    _, obj_now, now = history[-1]
    return obj == obj_now and _facts(before, sm8.tz, obj).same_state(_facts(now, sm8.tz, obj))


def _seen_at(sm8: ServiceM8Simulator, uuid: str, changed_ms: int) -> int:
    """The change time a client reads for a person's change at ``changed_ms``: the stamp of
    the record's last person's edit when a client was next answered with it. A booking opened on
    the phone before any read moves that stamp, and a client then sees the change at the later
    time."""
    read = next((t for t in sm8.served_ms.get(uuid, []) if t >= changed_ms), None)
    if read is None:
        return changed_ms
    edits = [at for at, which, _, _, person, _ in sm8.journal
             if which == uuid and person and changed_ms <= at <= read]  # fmt: skip
    return max(edits, default=changed_ms)


def _after(changed_ms: int | None, cd: CoredinationSimulator, cd_uuid: str) -> bool:
    """A person's change counts as after the deletion as the bridge judges it: its ServiceM8
    stamp (whole seconds) plus one second later than the last the bridge could know of the job.
    That is its last resource event, unless the bridge was last answered with the job before
    that event (a dispatcher's, whose webhook was lost, just before the deletion): then the
    bridge knew the job only as it was then, and a change after that time is one it may not
    have synced yet."""
    if changed_ms is None:
        return False
    known = cd.last_resource_event.get(cd_uuid, 0)
    served = cd.served_before_deletion.get(cd_uuid)
    if served is not None:
        known = min(known, served)
    return changed_ms // 1000 * 1000 + 1000 > known


def check(
    sm8: ServiceM8Simulator,
    cd: CoredinationSimulator,
    ns: UUID,
    now_ms: int | None = None,
    scope: Scope | None = None,
) -> Convergence:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    scope = scope or Scope()
    result = Convergence()
    with sm8.lock, cd.lock:
        horizon = _horizon_ms(now_ms, sm8.tz, scope.horizon_days)
        statuses = None if scope.statuses is None else {s.lower() for s in scope.statuses}
        jobs = sm8.records["job"]

        def left_out(job: str) -> bool:
            status = str(jobs.get(job, {}).get("status") or "").strip().lower()
            return job in scope.excluded or (statuses is not None and bool(status)
                                              and status not in statuses)  # fmt: skip

        def job_open(job: str) -> bool:
            row = jobs.get(job, {})
            status = str(row.get("status") or "").strip().lower()
            return str(row.get("active", 1)) == "1" and status not in ("completed", "unsuccessful")

        users = {str(u["email"]).lower(): u["id"] for u in cd.users.values()}
        staff_user = {
            uuid: users.get(str(s.get("email") or "").lower())
            for uuid, s in sm8.records["staff"].items()
        }
        pairs: dict[tuple[str, str], list[AllocationFacts]] = defaultdict(list)
        deleted = {u for u, j in sm8.records["job"].items() if str(j.get("active", 1)) != "1"}
        for obj in ("joballocation", "jobactivity"):
            for row in sm8.records[obj].values():
                try:
                    facts = _facts(row, sm8.tz, obj)
                except StampError:
                    result.unreadable += 1
                    continue
                if facts.staff_uuid and facts.job_uuid not in deleted:
                    pairs[(facts.job_uuid, facts.staff_uuid)].append(facts)
        cd_jobs = {j["uuid"]: j for j in cd.jobs.values()}
        user_staff = {u: s for s, u in staff_user.items() if u is not None}
        sm8_job_for = {cd_job_uuid(ns, j): j for j in sm8.records["job"]}
        for job_uuid, row in cd_jobs.items():  # resources with no allocation behind them
            sm8_job = sm8_job_for.get(job_uuid)
            if sm8_job is None:
                continue
            for resource in row["resources"]:
                staff = user_staff.get(resource["userId"])
                if staff is not None:
                    pairs.setdefault((sm8_job, staff), [])
        linked_jobs: set[str] = set()
        job_bookings: dict[str, list[AllocationFacts]] = defaultdict(list)
        for (job, _), rows in pairs.items():
            job_bookings[job] += rows
        for (job, staff), everything in sorted(pairs.items()):
            user = staff_user.get(staff)
            opened = job_open(job)
            admitted = [a for a in everything if _admitted(a, horizon, opened)]
            if (left_out(job) and job not in deleted) or (everything and not admitted):
                result.out_of_scope += 1  # left as it is: the bridge syncs none of it
                continue
            allocations = admitted
            s_presence = sm8_presence(allocations, now_ms)
            if user is None:
                result.pending += s_presence != Presence.ABSENT
                continue
            cd_job = cd_jobs.get(cd_job_uuid(ns, job))
            resource = next(
                (r for r in (cd_job or {}).get("resources", []) if r["userId"] == user), None
            )
            c_presence = cd_presence(resource["state"] if resource else None) or Presence.ABSENT
            if s_presence == Presence.ABSENT and c_presence == Presence.ABSENT:
                continue
            if job in deleted and c_presence == Presence.FINISHED:
                continue  # work finished before the job was deleted is history
            result.pairs += 1
            if s_presence != Presence.ABSENT:
                linked_jobs.add(job)
            name = f"job {job[:8]} staff {staff[:8]}"
            # A duplicate: two open (live, not completed) bookings of one person on one job, one
            # of them the bridge's. A finished visit next to a new booking is history, not that.
            open_ = [a for a in allocations if a.live(now_ms) and a.completed_ms is None]
            cd_uuid = cd_job_uuid(ns, job)
            derived = derived_uuids(ns, cd_uuid, user)
            if len(open_) > 1 and any(a.uuid in derived for a in open_):
                result.duplicates.append(f"{name}: {len(open_)} live bookings")
            whole = [a for a in everything if a.live(now_ms)]
            if pair_in_step(allocations, c_presence, now_ms) or (
                whole != allocations and pair_in_step(whole, c_presence, now_ms)
            ):  # in step, or as before bookings left scope (the presence is kept)
                key = s_presence.value
                result.by_presence[key] = result.by_presence.get(key, 0) + 1
            elif cd_job is not None and (cd_uuid, user) in cd.kept_at_work:
                result.held.append((job, staff))
            elif cd_job is None and _waits_for_the_office(job_bookings[job], sm8, cd, cd_uuid):
                if job not in result.deleted_in_cd:
                    result.deleted_in_cd.append(job)
            elif c_presence == Presence.ABSENT:
                result.missing_in_cd.append(f"{name}: {s_presence} in ServiceM8, none in CD")
            elif s_presence == Presence.ABSENT:
                result.missing_in_sm8.append(f"{name}: {c_presence} in CD, none in ServiceM8")
            else:
                result.disagree.append(f"{name}: {s_presence} in ServiceM8, {c_presence} in CD")
        for cd_uuid, (deleted_at, created) in cd.recreated.items():
            sm8_job = sm8_job_for.get(cd_uuid)
            if sm8_job is None:
                continue
            # Every person's change to the job's bookings (the journal), not only each record's
            # last: a booking moved once to make the bridge create the job again and once more
            # later has its last change after the creation.
            changes = [_seen_at(sm8, uuid, at) for at, uuid, job, _, person, fields in sm8.journal
                       if job == sm8_job and person and set(fields) - OPENED_ONLY]  # fmt: skip
            if (own := sm8.changed_ms.get(sm8_job)) is not None:
                changes.append(own)
            if not any(_after(c, cd, cd_uuid) and c <= created for c in changes):
                result.recreated_early.append(
                    f"job {sm8_job[:8]}: created again in Coredination with no ServiceM8 change "
                    f"since a dispatcher deleted it (deleted at {deleted_at}, created again at "
                    f"{created}, "
                    f"last resource event {cd.last_resource_event.get(cd_uuid)}, "
                    f"people's changes {sorted(changes)})"
                )
        result.sm8_jobs = len(linked_jobs)
        result.cd_jobs = sum(1 for job in linked_jobs if cd_job_uuid(ns, job) in cd_jobs)
    return result
