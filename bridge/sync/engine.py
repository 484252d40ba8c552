"""The sync use cases.

Reading and deciding are separate steps. *Ingest* (polls and webhook-triggered reads) only records
what each API says into the store and marks the affected jobs dirty, durably, in the same Redis
transaction. *sync_job* then takes the job's lock, compares both sides with the pair snapshots,
and writes whatever is needed. So a poll may advance its cursor as soon as it has ingested: the
dirty mark, not a queued message, is what guarantees the job is synced.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID

from redis.lock import Lock

from bridge.errors import ApiError, BudgetExhausted, InvalidRecord, NotFound
from bridge.log import get_logger
from bridge.records import CdView, JobRecord, id_bytes
from bridge.servicem8 import where
from bridge.store import StaffMap, Store
from bridge.sync.ports import CoredinationPort, ServiceM8Port
from mappings.coredination import CdJob
from mappings.ids import cd_job_uuid, sm8_allocation_uuid
from mappings.rules import (
    AllocationFacts,
    PairSnapshot,
    Presence,
    Side,
    Sm8Write,
    TieRule,
    allocation_facts,
    cd_event_known,
    cd_job_body,
    cd_presence,
    cd_state_after,
    decide,
    fingerprint,
    in_step,
    job_facts,
    pull_writes,
    push_op,
    redundant_writes,
    sm8_presence,
)
from mappings.servicem8 import AllocationWindow, JobAllocation
from mappings.stamps import format_sm8_stamp, parse_sm8_stamp, to_epoch_ms

log = get_logger(__name__)

CURSOR_SM8_ALLOCATIONS = "servicem8:joballocation"
CURSOR_SM8_JOBS = "servicem8:job"
CURSOR_CD_JOBS = "coredination:job"
CdEvent = tuple[str, int | None, str | None]  # Coredination event type, user id, resource state
BACKFILL_BATCH = 500
WINDOWS_MAX_AGE = 3600.0


@dataclass
class Report:
    """What a use case did, by ``side.outcome`` (``coredination.scheduled``, ``skipped.reason``)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def merge(self, other: Report) -> Report:
        self.counts.update(other.counts)
        return self

    def writes(self, side: str) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith(f"{side}."))


@dataclass
class EngineOptions:
    tie: TieRule = "servicem8"
    sm8_overlap: timedelta = timedelta(minutes=15)
    cd_overlap_ms: int = 60_000
    send_message: bool = False
    # The job lock is a lease, renewed before every write. It outlives one slow request (two read
    # timeouts) but not much more, so a killed holder blocks the job only briefly.
    lock_seconds: float = 65.0


class Engine:
    def __init__(
        self,
        store: Store,
        sm8: ServiceM8Port,
        cd: CoredinationPort,
        namespace: UUID,
        options: EngineOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.sm8 = sm8
        self.cd = cd
        self.ns = namespace
        self.options = options or EngineOptions()
        self.clock = clock
        self._windows: dict[str, AllocationWindow] | None = None
        self._windows_at = 0.0
        self._lease: Lock | None = None

    # --- small helpers ---------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def tz(self) -> tzinfo:
        return self.sm8.tz

    def windows(self, refresh: bool = False) -> dict[str, AllocationWindow]:
        """ServiceM8's allocation windows, shared through Redis by every process: listed once an
        hour, or when an allocation names one we do not know (at most once a minute)."""
        now = self.clock()
        if self._windows is not None and not refresh and now - self._windows_at < 60:
            return self._windows
        rows, fetched = self.store.directory("windows"), self.store.cursor("fetched:windows")
        age = now - float(fetched) if fetched else math.inf
        if age > WINDOWS_MAX_AGE or (refresh and age > 60):
            listed = self.sm8.list_allocation_windows()
            keep = {"uuid", "name", "start_time", "end_time"}
            rows = {w.uuid.lower(): w.model_dump(include=keep) for w in listed}
            self.store.save_directory("windows", rows)
            self.store.set_cursor("fetched:windows", repr(now))
        self._windows = {u: AllocationWindow.model_validate(r) for u, r in rows.items()}
        self._windows_at = now
        return self._windows

    def _facts(self, allocation: JobAllocation, staff_map: StaffMap) -> AllocationFacts:
        window_uuid = (allocation.allocation_window_uuid or "").lower()
        windows = self.windows()
        if window_uuid and window_uuid not in windows:
            windows = self.windows(refresh=True)
        facts = allocation_facts(allocation, windows.get(window_uuid))
        user = staff_map.s2u.get(facts.staff_uuid or "")
        if user is not None:
            derived = sm8_allocation_uuid(self.ns, cd_job_uuid(self.ns, facts.job_uuid), user)
            if derived == facts.uuid:
                facts = replace(facts, by_bridge=True)
        return facts

    # --- staff ⇄ user map ------------------------------------------------------------------------
    def match_staff(self) -> Report:
        """Read both directories and link staff to users by e-mail (case-insensitive).

        Manual links and unlinks are left alone; an e-mail shared by two users is ambiguous and
        is never guessed. When the map changes, parked pairs are retried.
        """
        report = Report()
        staff = self.sm8.list_staff()
        users = self.cd.list_users()
        self.store.save_directory(
            "staff",
            {
                s.uuid.lower(): {"email": s.email, "name": s.display_name, "active": s.active}
                for s in staff
            },
        )
        self.store.save_directory(
            "users",
            {
                str(u.id): {"email": u.email, "name": u.display_name, "active": u.active}
                for u in users
            },
        )
        by_email: dict[str, list[int]] = {}
        for user in users:
            if user.active and user.email:
                by_email.setdefault(user.email.strip().lower(), []).append(user.id)
        current = self.store.staff_map()
        changed = False
        for member in staff:
            uuid = member.uuid.lower()
            if uuid in current.manual:
                continue
            candidates = (
                by_email.get((member.email or "").strip().lower(), []) if member.active else []
            )
            wanted = candidates[0] if len(candidates) == 1 else None
            if len(candidates) > 1:
                report.add("staff.ambiguous")
                log.warning("staff.ambiguous_email", sm8_staff_uuid=uuid, cd_user_ids=candidates)
            have = current.s2u.get(uuid)
            if wanted is not None and have != wanted and wanted not in current.u2s:
                self.store.link_staff(uuid, wanted, manual=False)
                report.add("staff.linked")
                changed = True
            elif wanted is None and have is not None:
                self.store.unlink_staff(uuid, manual=False)
                report.add("staff.unlinked")
                changed = True
        if changed:
            self.store.requeue_pending()
        report.add("staff.mapped", len(self.store.staff_map().s2u))
        return report

    def link_staff(self, staff_uuid: str, user_id: int) -> None:
        self.store.link_staff(staff_uuid.lower(), user_id, manual=True)
        self.store.requeue_pending()

    def unlink_staff(self, staff_uuid: str) -> None:
        self.store.unlink_staff(staff_uuid.lower(), manual=True)

    # --- ingest: ServiceM8 -----------------------------------------------------------------------
    def poll_servicem8(self) -> set[str]:
        """Read allocations and jobs changed since the cursors (re-reading an overlap window);
        record them; return the jobs now dirty. The first poll reads every active record.
        A record that cannot be read is parked with its reason; the others go on."""
        staff_map = self.store.staff_map()
        parked = set(self.store.invalid())
        dirty: set[str] = set()
        started = self.clock()
        cursor, newest = self.store.cursor(CURSOR_SM8_ALLOCATIONS), None
        facts = []
        for allocation in self.sm8.iter_allocations(self._since(cursor), self.park):
            facts.append(self._facts(allocation, staff_map))
            newest = _max_stamp(newest, allocation.edit_date)
        dirty |= self.store.ingest_allocations(facts, read_started=started)
        if newest is not None:
            self.store.set_cursor(CURSOR_SM8_ALLOCATIONS, format_sm8_stamp(newest, self.tz))

        cursor, newest = self.store.cursor(CURSOR_SM8_JOBS), None
        jobs = []
        for job in self.sm8.iter_jobs(self._since(cursor), self.park):
            jobs.append(job_facts(job))
            newest = _max_stamp(newest, job.edit_date)
        dirty |= self.store.ingest_jobs(jobs, only_known=True)
        if newest is not None:
            self.store.set_cursor(CURSOR_SM8_JOBS, format_sm8_stamp(newest, self.tz))
        if parked:  # read cleanly now: no longer parked
            read = {f"servicem8.joballocation:{f.uuid}" for f in facts}
            read |= {f"servicem8.job:{j.uuid}" for j in jobs}
            self.store.clear_invalid(parked & read)
        return dirty

    def park(self, exc: InvalidRecord) -> None:
        """An unreadable record: keep it, with the reason, where ``bridge status`` shows it."""
        kind = (exc.operation or "record").split(".")[0]
        record = f"{exc.api}.{kind}:{(exc.record or '?').lower()}"
        if self.store.set_invalid(record, exc.reason, self.clock()):
            log.warning("poll.invalid_record", record=record, reason=exc.reason)

    def _since(self, cursor: str | None) -> Any:
        if cursor is None:
            return where("active", "eq", 1)
        stamp = parse_sm8_stamp(cursor, self.tz)
        assert stamp is not None
        return where("edit_date", "gt", stamp - self.options.sm8_overlap)

    def push_allocation(self, uuid: str) -> set[str]:
        """A webhook said allocation ``uuid`` changed: read it and record it."""
        started = self.clock()
        try:
            allocation = self.sm8.get_allocation(uuid)
        except NotFound:
            log.warning("push.allocation_missing", sm8_allocation_uuid=uuid)
            return set()
        facts = self._facts(allocation, self.store.staff_map())
        return self.store.ingest_allocations([facts], read_started=started)

    def push_job(self, uuid: str) -> set[str]:
        """A webhook said job ``uuid`` changed: re-read it if the bridge knows it."""
        if not self.store.has_job(uuid.lower()):
            return set()
        return self.store.ingest_jobs([job_facts(self.sm8.get_job(uuid))], only_known=True)

    # --- ingest: Coredination --------------------------------------------------------------------
    def poll_coredination(self) -> set[str]:
        """List jobs modified since the cursor in every state, timed or not; for each linked job
        whose resources differ from what we hold, re-read it (with its events) under its lock."""
        cursor = self.store.cursor(CURSOR_CD_JOBS)
        since = max(0, int(cursor) - self.options.cd_overlap_ms) if cursor else 0
        newest = int(cursor) if cursor else None
        parked = {r for r in self.store.invalid() if r.startswith("coredination.")}
        linked: list[tuple[str, CdJob]] = []
        for job in self.cd.iter_changed_jobs(since, on_invalid=self.park):
            if parked:  # read cleanly now: no longer parked
                refs = {f"coredination.job:{r}" for r in (job.uuid and job.uuid.lower(), job.id)}
                self.store.clear_invalid(parked & refs)
            modified = to_epoch_ms(job.modified)
            if modified is not None:
                newest = max(newest or 0, modified)
            sm8_job = self.store.job_for_cd(job.uuid or "") if job.uuid else None
            if sm8_job is not None:
                linked.append((sm8_job, job))
        views = self.store.cd_views(j for j, _ in linked)
        dirty: set[str] = set()
        for sm8_job, job in linked:
            view = views.get(sm8_job)
            listed = {r.user_id: r.state for r in job.resources}
            if view is None or view.resources != listed:
                dirty |= self.pull_job(sm8_job)
        if newest is not None:
            self.store.set_cursor(CURSOR_CD_JOBS, str(newest))
        return dirty

    def pull_job(self, sm8_job: str, event: CdEvent | None = None) -> set[str]:
        """Re-read the Coredination job linked to ``sm8_job`` and record its resources; unless
        ``event`` (from a webhook) tells nothing beyond what the bridge already holds."""
        with self._locked(sm8_job):
            record = self.store.load_job(sm8_job)
            if record.cd is None:
                return set()
            if event is not None and cd_event_known(*event, record.cd.resources):
                log.debug("pull.echo_skipped", sm8_job_uuid=sm8_job, event_type=event[0])
                return set()
            try:
                job = self.cd.get_job(record.cd.uuid)
            except NotFound:
                self.store.forget_cd(sm8_job)
                return {sm8_job}
            view = _view(job, record.cd.uuid)
            if view.resources == record.cd.resources:
                return set()
            self.store.save_cd(sm8_job, view, dirty=True)
            return {sm8_job}

    def pull_webhook(self, ref: str, event: CdEvent | None = None) -> set[str]:
        """A Coredination webhook named job ``ref`` (and maybe the event: type, user, state)."""
        sm8_job = self.store.job_for_cd(ref)
        return self.pull_job(sm8_job, event) if sm8_job else set()

    # --- decide and write ------------------------------------------------------------------------
    def sync_job(self, sm8_job: str) -> Report:
        """Bring one job's pairs in step, under the job's lock. Safe to run twice."""
        if id_bytes(sm8_job) is None:  # e.g. a mark left by a build that took any id
            log.warning("sync.bad_job_id", sm8_job_uuid=sm8_job[:60])
            self.store.clear_dirty(sm8_job, self.store.dirty_generation(sm8_job))
            return Report(Counter({"skipped.bad_job_id": 1}))
        with self._locked(sm8_job):
            generation = self.store.dirty_generation(sm8_job)
            report = self._sync_locked(sm8_job)
            self.store.clear_dirty(sm8_job, generation)
        self.store.count(report.counts)
        return report

    @contextlib.contextmanager
    def _locked(self, sm8_job: str) -> Iterator[None]:
        lock = self.store.job_lock(sm8_job, timeout=self.options.lock_seconds)
        with lock:
            self._lease = lock
            try:
                yield
            finally:
                self._lease = None

    def _renew(self) -> None:
        """Before each write: extend the lease, or stop if another worker took the job over."""
        if self._lease is not None:
            self._lease.reacquire()

    def _sync_locked(self, sm8_job: str) -> Report:
        report = Report()
        record = self.store.load_job(sm8_job)
        now_ms = self.now_ms()
        if record.details is None:
            try:
                details = job_facts(self.sm8.get_job(sm8_job))
            except NotFound:
                for staff in {a.staff_uuid for a in record.allocations.values() if a.staff_uuid}:
                    self.store.set_pending(sm8_job, staff, "job not found in ServiceM8")
                report.add("skipped.job_missing")
                return report
            self.store.save_details(details)
            record.details = details
        live = any(a.live(now_ms) for a in record.allocations.values())
        later = [a.expires_ms for a in record.allocations.values()
                 if a.live(now_ms) and a.expires_ms is not None]  # fmt: skip
        if later:  # the reminder fires once: set it again for the next expiry on this job
            self.store.remind_expiry(record.uuid, min(later))
        if record.cd is None and not live:
            report.add("skipped.nothing_to_link")
            return report
        self._upsert_cd_job(record, now_ms, report)
        self._sync_pairs(record, now_ms, report)
        return report

    def _upsert_cd_job(self, record: JobRecord, now_ms: int, report: Report) -> None:
        assert record.details is not None
        body = cd_job_body(record.details, record.allocations.values(), self.tz, now_ms)
        digest = fingerprint(body)
        if record.cd is not None and record.fields_fp == digest:
            return
        uuid = cd_job_uuid(self.ns, record.uuid)
        self._renew()
        job = self.cd.upsert_job(uuid, body)
        report.add("coredination.job_created" if record.cd is None else "coredination.job_updated")
        record.cd = _view(job, uuid)
        record.fields_fp = digest
        self.store.save_cd(record.uuid, record.cd, digest)

    def _sync_pairs(self, record: JobRecord, now_ms: int, report: Report) -> None:
        assert record.cd is not None
        staff_map = self.store.staff_map()
        view = record.cd
        by_staff: dict[str, list[AllocationFacts]] = {}
        for fact in record.allocations.values():
            if fact.staff_uuid:
                by_staff.setdefault(fact.staff_uuid, []).append(fact)
        people = set(by_staff) | set(record.pairs)
        for resource_user in view.resources:
            if resource_user in staff_map.u2s:
                people.add(staff_map.u2s[resource_user])
            elif cd_presence(view.resources[resource_user]) not in (None, Presence.ABSENT):
                self.store.set_pending(
                    record.uuid,
                    f"u:{resource_user}",
                    "Coredination user has no ServiceM8 staff member",
                )
                report.add("pending.unmapped_user")
        snapshots: dict[str, PairSnapshot] = {}
        written: list[AllocationFacts] = []
        try:
            for staff in sorted(people):
                snapshot = self._sync_pair(
                    record, staff, by_staff.get(staff, []), staff_map, now_ms, report, written
                )
                if snapshot is not None:
                    snapshots[staff] = snapshot
        finally:
            # Even when a write fails or the budget runs dry half-way, keep what was done, so
            # the retry neither repeats a write nor mistakes our own write for a change. If our
            # lease ran out meanwhile, another worker may have stored a newer view (a pull):
            # keep only our write markers, and leave the view and snapshots to its sync.
            owned = self._lease is None or self._lease.owned()
            self.store.save_sync(
                record.uuid,
                written=written,
                at=self.clock(),
                view=view if owned else None,
                pairs=snapshots if owned else None,
            )
            if not owned:
                log.warning("sync.lease_lost", sm8_job_uuid=record.uuid)
        for snap in snapshots.values():
            if not in_step(snap.sm8, snap.cd):
                report.add("skipped.not_in_step")

    def _sync_pair(
        self,
        record: JobRecord,
        staff: str,
        pair: list[AllocationFacts],
        staff_map: StaffMap,
        now_ms: int,
        report: Report,
        written: list[AllocationFacts],
    ) -> PairSnapshot | None:
        """Decide one (job, staff member) pair and make its write; return the new snapshot."""
        assert record.cd is not None
        view = record.cd
        for write in redundant_writes(pair, now_ms):  # a double booking: drop our own copy
            self._apply(write, report)
            pair = [_after(a, write, record.uuid, staff) if a.uuid == write.uuid else a
                    for a in pair]  # fmt: skip
            written += [a for a in pair if a.uuid == write.uuid]
        sm8 = Side(sm8_presence(pair, now_ms), max((a.edited_ms or 0 for a in pair), default=None))
        user = staff_map.s2u.get(staff)
        if user is None:
            if sm8.presence != Presence.ABSENT:
                self.store.set_pending(record.uuid, staff, "staff member has no Coredination user")
                report.add("pending.unmapped_staff")
            else:
                self.store.clear_pending(record.uuid, staff)
            return None
        self.store.clear_pending(record.uuid, staff)
        state = view.resources.get(user)
        presence = cd_presence(state)
        if presence is None:
            self.store.set_pending(
                record.uuid, staff, f"Coredination resource state {str(state)[:30]!r} is unknown"
            )
            report.add("skipped.unknown_resource_state")
            log.warning(
                "sync.unknown_resource_state",
                sm8_job_uuid=record.uuid,
                cd_user_id=user,
                state=state,
            )
            return None
        cd = Side(presence, view.changed_ms.get(user, view.modified_ms))
        decision = decide(record.pairs.get(staff), sm8, cd, self.options.tie)
        if decision.action == "in_step":
            return PairSnapshot(sm8.presence, cd.presence)
        assert decision.target is not None
        if decision.action == "push":
            dated = any(a.date_ms is not None for a in pair if a.live(now_ms))
            op = push_op(decision.target, cd.presence, dated)
            if op is not None:
                self._renew()
                self.cd.resource_op(op, view.uuid, user, send_message=self.options.send_message)
                after = cd_state_after(op)
                if after is None:
                    view.resources.pop(user, None)
                else:
                    view.resources[user] = after
                view.changed_ms[user] = now_ms
                report.add(f"coredination.{op}d" if op.endswith("e") else f"coredination.{op}ed")
            log.info(
                "sync.pushed",
                sm8_job_uuid=record.uuid,
                cd_user_id=user,
                op=op,
                reason=decision.reason,
            )
            return PairSnapshot(
                sm8.presence, cd_presence(view.resources.get(user)) or Presence.ABSENT
            )
        new_pair = self._pull(record, staff, user, decision.target, pair, now_ms, report, written)
        log.info(
            "sync.pulled",
            sm8_job_uuid=record.uuid,
            cd_user_id=user,
            target=decision.target.value,
            reason=decision.reason,
        )
        return PairSnapshot(sm8_presence(new_pair, now_ms), cd.presence)

    def _pull(
        self,
        record: JobRecord,
        staff: str,
        user: int,
        target: Presence,
        pair: list[AllocationFacts],
        now_ms: int,
        report: Report,
        written: list[AllocationFacts],
    ) -> list[AllocationFacts]:
        assert record.cd is not None
        view = record.cd
        event_ms = view.changed_ms.get(user) or view.modified_ms or now_ms
        start_ms = view.start_ms if view.start_ms is not None else event_ms
        start = datetime.fromtimestamp(start_ms / 1000, self.tz)
        if view.start_ms is None:  # an untimed job: the day the user was scheduled
            start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        derived = sm8_allocation_uuid(self.ns, view.uuid, user)
        writes = pull_writes(
            target,
            pair,
            job_uuid=record.uuid,
            staff_uuid=staff,
            derived_uuid=derived,
            start=start,
            finished_at=datetime.fromtimestamp(event_ms / 1000, self.tz),
            now_ms=now_ms,
        )
        by_uuid = {a.uuid: a for a in pair}
        for write in writes:
            self._apply(write, report)
            by_uuid[write.uuid] = _after(by_uuid.get(write.uuid), write, record.uuid, staff)
            written.append(by_uuid[write.uuid])
        return list(by_uuid.values())

    def _apply(self, write: Sm8Write, report: Report) -> None:
        self._renew()
        if write.kind == "create":
            self.sm8.create_allocation(write.fields, uuid=write.uuid)
            report.add("servicem8.created")
        elif write.kind == "update":
            self.sm8.update_allocation(write.uuid, write.fields)
            report.add("servicem8.updated")
        else:
            self.sm8.delete_allocation(write.uuid)
            report.add("servicem8.deleted")

    def poll_due(self, intervals: dict[str, float], with_webhooks: float = 0.0) -> set[str]:
        """Ingest each system whose poll interval has elapsed, ServiceM8 then Coredination, before
        any sync runs: a pair changed on both sides between two polls is then decided with both
        changes in view, so the later one wins.

        While a system's webhooks arrive (one within the last ``with_webhooks`` seconds), its
        interval stretches to ``with_webhooks``: the poll is then only the safety net for a lost
        webhook, and ServiceM8's budget is better spent on changes."""
        now = self.clock()
        dirty = self.store.due_expiries(self.now_ms())
        polls = {"servicem8": self.poll_servicem8, "coredination": self.poll_coredination}
        for system, poll in polls.items():
            interval = intervals.get(system, 0)
            hooked = self.store.cursor(f"webhook:{system}")
            if hooked is not None and now - float(hooked) < with_webhooks:
                interval = max(interval, with_webhooks)
            last = self.store.cursor(f"polled:{system}")
            if last is not None and now - float(last) < interval * 0.9:
                continue
            with self.store.poll_lock(system) as held:
                if not held:
                    continue
                try:
                    dirty |= poll()
                except BudgetExhausted as exc:
                    # This system waits for its budget; the other is still polled now. The
                    # poll stays due, so the next tick tries again.
                    log.info(
                        "poll.waiting_for_budget", system=system, retry_in=round(exc.retry_in, 1)
                    )
                    continue
                self.store.set_cursor(f"polled:{system}", repr(now))
        return dirty

    def backfill(
        self, since: datetime | None, progress: Callable[[int], None] = lambda n: None
    ) -> set[str]:
        """Read every allocation edited after ``since`` (account time; ``None``: every active
        one) and record it; return the jobs now dirty. Cursors are left alone."""
        staff_map = self.store.staff_map()
        if since is None:
            flt = where("active", "eq", 1)
        else:
            flt = where("edit_date", "gt", since.replace(tzinfo=since.tzinfo or self.tz))
        dirty: set[str] = set()
        batch: list[AllocationFacts] = []
        started = self.clock()
        for allocation in self.sm8.iter_allocations(flt, self.park):
            batch.append(self._facts(allocation, staff_map))
            if len(batch) >= BACKFILL_BATCH:
                dirty |= self.store.ingest_allocations(batch, read_started=started)
                progress(len(batch))
                batch = []
        if batch:
            dirty |= self.store.ingest_allocations(batch, read_started=started)
            progress(len(batch))
        return dirty

    # --- reconcile ------------------------------------------------------------------------------
    def reconcile(self, *, repair: bool) -> tuple[list[Drift], set[str]]:
        """Read both systems whole (not from the cursors) and list every pair whose two sides
        disagree, linked or not yet linked. With ``repair``, record what was read and mark those
        jobs dirty: the normal sync then decides each pair (snapshot, later change wins).

        Costs one ServiceM8 call per 5,000 active allocations and one Coredination call per page
        of jobs. An allocation the bridge holds as live that the active list lacks was deleted."""
        staff_map = self.store.staff_map()
        started, now_ms = self.clock(), self.now_ms()
        fresh: dict[str, list[AllocationFacts]] = {}
        for allocation in self.sm8.iter_allocations(where("active", "eq", 1), self.park):
            fact = self._facts(allocation, staff_map)
            fresh.setdefault(fact.job_uuid, []).append(fact)
        cd_jobs = {
            job.uuid.lower(): job
            for job in self.cd.iter_changed_jobs(0, on_invalid=self.park)
            if job.uuid
        }
        drifts: list[Drift] = []
        dirty: set[str] = set()
        for job in sorted(set(fresh) | set(self.store.known_jobs())):
            record = self.store.load_job(job)
            listed = {f.uuid for f in fresh.get(job, [])}
            gone = [replace(a, active=False) for a in record.allocations.values()
                    if a.active and a.uuid not in listed]  # fmt: skip
            facts = fresh.get(job, []) + gone
            cd_job = cd_jobs.get(cd_job_uuid(self.ns, job))
            resources = {r.user_id: r.state for r in cd_job.resources} if cd_job else {}
            found = _drift(job, facts, resources, cd_job is not None, staff_map, now_ms)
            if not found:
                continue
            drifts += found
            if repair:
                dirty |= self.store.ingest_allocations(facts, read_started=started)
                if record.cd is not None and record.cd.resources != resources:
                    dirty |= self.pull_job(job)
                self.store.mark_dirty([job])
                dirty.add(job)
        log.info("reconcile.done", drifts=len(drifts), repair=repair, jobs=len(dirty))
        return drifts, dirty

    # --- a whole cycle, without Celery -----------------------------------------------------------
    def run_cycle(self, *, match_staff: bool = True) -> Report:
        """One complete cycle both ways: staff map, both polls, then every dirty job."""
        report = Report()
        if match_staff:
            report.merge(self.match_staff())
        self.poll_servicem8()
        self.poll_coredination()
        self.store.due_expiries(self.now_ms())
        for sm8_job in sorted(self.store.dirty()):
            try:
                report.merge(self.sync_job(sm8_job))
            except ApiError as exc:
                # The job stays dirty, so the next cycle (or a retry) tries it again.
                report.add(f"failed.{type(exc).__name__}")
                log.warning("sync.job_failed", sm8_job_uuid=sm8_job, **exc.describe())
        return report


def _max_stamp(current: datetime | None, value: datetime | None) -> datetime | None:
    if value is None:
        return current
    return value if current is None or value > current else current


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
) -> list[Drift]:
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
        sm8 = sm8_presence(by_staff.get(staff, []), now_ms)
        if not in_step(sm8, cd):
            reason = "job not linked yet" if not linked else "the two sides disagree"
            out.append(Drift(job, staff, user, sm8.value, cd.value, reason))
    return out


def _view(job: CdJob, uuid: str) -> CdView:
    """Our view of a Coredination job: resource states and when each last changed."""
    changed: dict[int, int] = {}
    for event in job.events or []:
        when = to_epoch_ms(event.event_time)
        if event.to_user_id is not None and when is not None:
            changed[event.to_user_id] = max(changed.get(event.to_user_id, 0), when)
    return CdView(
        id=job.id,
        uuid=(job.uuid or uuid).lower(),
        resources={r.user_id: r.state for r in job.resources},
        changed_ms=changed,
        modified_ms=to_epoch_ms(job.modified),
        start_ms=to_epoch_ms(job.start_time),
    )


def _after(
    before: AllocationFacts | None, write: Sm8Write, job_uuid: str, staff: str
) -> AllocationFacts:
    """The facts of an allocation after the bridge's own write (no edit_date until read back)."""
    base = before or AllocationFacts(
        uuid=write.uuid,
        job_uuid=job_uuid,
        staff_uuid=staff,
        active=True,
        date_ms=None,
        window=None,
        completed_ms=None,
        expires_ms=None,
        edited_ms=None,
        by_bridge=True,
    )
    if write.kind == "delete":
        return replace(base, active=False, edited_ms=None)
    changes: dict[str, Any] = {"edited_ms": None, "active": True}
    if "allocation_date" in write.fields:
        changes["date_ms"] = to_epoch_ms(write.fields["allocation_date"])
        changes["window"] = None if write.fields["allocation_date"] is None else base.window
    if "completion_timestamp" in write.fields:
        changes["completed_ms"] = to_epoch_ms(write.fields["completion_timestamp"])
    return replace(base, **changes)
