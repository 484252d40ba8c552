"""The two-way sync as a state machine (after vdirsyncer's tests/unit/sync/test_sync.py).

A small world (three jobs, three staff mapped by e-mail to three users) over in-memory fakes of
both APIs and the real stores on fakeredis. People act at random: the office books, unbooks,
dates and undates someone in ServiceM8 (flexible bookings), books, moves and removes fixed-time
bookings on the board, and deletes and restores jobs; booked people open bookings on the phone;
the dispatcher schedules, assigns and unschedules someone on a job the bridge has linked, and
workers accept, start, decline or finish. The bridge syncs in
between. After every sync nothing is booked twice by the bridge; in a quiet sync (a cycle with no
human action since the last one) the polls mark no job, nothing is written, both sides agree pair
by pair, and syncing every job once more writes nothing either.

Time passes by days too, bookings are made in the past as well as ahead, the office closes and
reopens jobs, and the operator moves the horizon (``SCOPE_HORIZON_DAYS``): the bridge syncs only
what is in scope (docs/scope.md). After every sync history has created no Coredination job, put
nobody on one and taken nobody off, and no booking out of scope was deleted; in a quiet sync
every pair with a booking in scope agrees.

The judge has its own presence table and its own statement of scope below: it imports none of the
rules it judges (presence, scope, decision, planners) nor any sync helper, only the derived job
id (``mappings.ids``) to find the Coredination job, so a wrong rule cannot pass judgement on
itself.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

import fakeredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from bridge.store import Stores
from bridge.sync import Engine, SyncContext
from mappings.ids import cd_job_uuid
from mappings.trail import decode, sentences
from tests.conftest import CD_KEY, SM8_KEY
from tests.fakes import EMPTY, Clock, FakeCoredination, FakeServiceM8

SECRETS = (SM8_KEY, CD_KEY, "Authorization", "Bearer")

TZ = ZoneInfo("Australia/Sydney")
START = datetime(2026, 11, 23, 8, 0, tzinfo=TZ)
PEOPLE = [
    ("Ann", "Lee", "Ann.Lee@Example.com", "ann.lee@example.com"),
    ("Bo", "Chen", "bo@example.com", "BO@EXAMPLE.COM"),
    ("Cy", "Diaz", "cy.diaz@example.com", "cy.diaz@example.com"),
]
STEP = 1.337  # seconds a human action takes: edit stamps and event times differ, ms included

# --- the judge's own reading of both sides --------------------------------------------------------
ABSENT, ASSIGNED, SCHEDULED, FINISHED = "absent", "assigned", "scheduled", "finished"
CD_STATES = {
    None: ABSENT, "UNASSIGNED": ABSENT, "DECLINED": ABSENT, "CANCELED": ABSENT, "INACTIVE": ABSENT,
    "ASSIGNED": ASSIGNED,
    "SCHEDULED": SCHEDULED, "ACCEPTED": SCHEDULED, "IN_TRANSIT": SCHEDULED,
    "ON_STATION": SCHEDULED, "STARTED": SCHEDULED, "PAUSED": SCHEDULED,
    "FINISHED": FINISHED,
}  # fmt: skip


def live(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["active"] == 1]  # nobody sets an expiry in this world


def open_(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in live(rows) if r["completion_timestamp"] == EMPTY]


def fixed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live fixed bookings: scheduled activities, not time worked nor automated."""
    flags = ("activity_was_recorded", "activity_was_automated")
    return [r for r in live(rows) if str(r["activity_was_scheduled"]) == "1"
            and all(str(r[f]) != "1" for f in flags)]  # fmt: skip


def servicem8_presence(allocations: list[dict[str, Any]], activities: list[dict[str, Any]]) -> str:
    if not (live(allocations) or fixed(activities)):
        return ABSENT
    if fixed(activities):
        return SCHEDULED
    if not open_(allocations):
        return FINISHED
    return SCHEDULED if any(r["allocation_date"] != EMPTY for r in open_(allocations)) else ASSIGNED


# --- the judge's own statement of scope (docs/scope.md) -------------------------------------------
SYNCED_STATUSES = ("Quote", "Work Order")  # the default SCOPE_JOB_STATUSES
CLOSED = ("Completed", "Unsuccessful")


def when(stamp: str) -> datetime | None:
    return (
        None
        if stamp in (EMPTY, "")
        else datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ)
    )


def in_scope(row: dict[str, Any], horizon: datetime, job_open: bool) -> bool:
    """A booking (live or not) that is current or upcoming: a fixed one ending after the
    horizon, a flexible one dated on or after it, an undated one not completed on an open job."""
    if "start_date" in row:
        end = when(row["end_date"]) or when(row["start_date"])
        return end is not None and end > horizon
    dated = when(row["allocation_date"])
    if dated is not None:
        return dated >= horizon
    return row["completion_timestamp"] == EMPTY and job_open


def agree(servicem8: str, coredination: str, finishable: bool = False) -> bool:
    # Coredination has no way to finish a resource: finished work matches anyone still present;
    # and ServiceM8 has no way to finish a fixed booking: it matches a finished resource.
    if servicem8 == FINISHED:
        return coredination != ABSENT
    if coredination == FINISHED and finishable:
        return True
    return servicem8 == coredination


# --- the machine ----------------------------------------------------------------------------------
JOB = st.integers(0, 2)
PERSON = st.integers(0, 2)
PICK = st.integers(0, 3)  # which of a pair's live bookings a person touches
DATED = st.sampled_from(["all day", "window", "10:30", "last week"])
WHEN = st.just("undated") | DATED
SLOT = st.sampled_from(["09:00-11:00", "13:00-15:00", "next day 08:00-09:00",
                        "last week 09:00-11:00"])  # fmt: skip


class SyncMachine(RuleBasedStateMachine):
    # What schedule and assign do to a resource already at work (accepted, started, finished) is
    # not documented. Here they take effect; ``KeptAtWork`` below plays the other reading.
    AT_WORK: Literal["kept", "applied"] = "applied"

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(START.timestamp())
        self.sm8 = FakeServiceM8(self.clock, TZ)
        self.cd = FakeCoredination(self.clock, self.AT_WORK)
        self.redis = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        self.stores = Stores.connect(self.redis, "statemachine")
        self.ns = self.stores.jobs.ns
        self.engine = Engine(SyncContext(self.stores, self.sm8, self.cd, self.ns, clock=self.clock))
        self.window = self.sm8.add("allocationwindow", name="Early", start_time="420",
                                   end_time="540")  # fmt: skip
        self.jobs = [
            self.sm8.add("job", status="Work Order", job_description=f"Fix tap {n}\nKitchen",
                         job_address=f"{n} George St, Sydney NSW", lat="", lng="")
            for n in (1, 2, 3)
        ]  # fmt: skip
        self.staff = [self.sm8.add("staff", first=first, last=last, email=email)
                      for first, last, email, _ in PEOPLE]  # fmt: skip
        self.users = [self.cd.add_user(email, first, last) for first, last, _, email in PEOPLE]
        self.engine.match_staff()
        assert self.stores.staff.staff_map().s2u == dict(zip(self.staff, self.users, strict=True))
        self.synced = False  # a sync ran and no one has acted since
        self.horizon_days = 1  # SCOPE_HORIZON_DAYS, as the operator last set it
        self.ever_in_scope: set[str] = set()  # jobs the judge found in scope at some sync

    def teardown(self) -> None:
        self.redis.close()

    # --- helpers ---------------------------------------------------------------------------------
    def act(self) -> None:
        self.clock.advance(STEP)
        self.synced = False

    def cd_job(self, job: str) -> str:
        return cd_job_uuid(self.ns, job)

    def linked(self) -> list[str]:
        return [j for j in self.jobs if self.cd.job(self.cd_job(j)) is not None]

    def on_jobs(self) -> list[tuple[str, int]]:
        return [(j, u) for j in self.jobs for u in self.users
                if u in self.cd.resources(self.cd_job(j))]  # fmt: skip

    def tomorrow(self) -> datetime:
        """Bookings are made from the clock's today: ahead (tomorrow on) or a week ago."""
        today = datetime.fromtimestamp(self.clock(), TZ).date()
        return datetime.combine(today + timedelta(days=1), time(0), tzinfo=TZ)

    def date(self, when: str) -> tuple[datetime | None, str]:
        day = self.tomorrow()
        return {
            "undated": (None, ""),
            "all day": (day, ""),
            "window": (day, self.window),
            "10:30": (day + timedelta(days=1, hours=10, minutes=30), ""),
            "last week": (day - timedelta(days=8), self.window),
        }[when]

    def slot(self, slot: str) -> tuple[datetime, datetime]:
        day = self.tomorrow()
        if slot.startswith("next day "):
            day, slot = day + timedelta(days=1), slot.removeprefix("next day ")
        if slot.startswith("last week "):
            day, slot = day - timedelta(days=8), slot.removeprefix("last week ")
        start, end = (datetime.strptime(t, "%H:%M").time() for t in slot.split("-"))
        return (datetime.combine(day.date(), start, tzinfo=TZ),
                datetime.combine(day.date(), end, tzinfo=TZ))  # fmt: skip

    def picked(self, job: int, person: int, pick: int, kind: str = "allocation") -> str | None:
        if kind == "allocation":
            rows = live(self.sm8.allocations(self.jobs[job], self.staff[person]))
        else:
            rows = fixed(self.sm8.activities(self.jobs[job], self.staff[person]))
        return rows[pick % len(rows)]["uuid"] if rows else None

    def deleted(self, job: str) -> bool:
        return self.sm8.records["job"][job]["active"] != 1

    # --- the judge's scope ---------------------------------------------------------------------
    def horizon(self) -> datetime:
        """The start of the local day ``horizon_days`` before today, in the account's zone."""
        today = datetime.fromtimestamp(self.clock(), TZ).date()
        return datetime.combine(today - timedelta(days=self.horizon_days), time(0), tzinfo=TZ)

    def job_open(self, job: str) -> bool:
        record = self.sm8.records["job"][job]
        return record["active"] == 1 and record.get("status") not in CLOSED

    def left_out(self, job: str) -> bool:
        return self.sm8.records["job"][job].get("status") not in SYNCED_STATUSES

    def bookings(self, job: str, staff: str) -> list[dict[str, Any]]:
        """Every booking row of the pair, live or not: allocations and fixed activities."""
        flags = ("activity_was_recorded", "activity_was_automated")
        activities = [r for r in self.sm8.activities(job, staff)
                      if str(r["activity_was_scheduled"]) == "1"
                      and all(str(r[f]) != "1" for f in flags)]  # fmt: skip
        return self.sm8.allocations(job, staff) + activities

    def speaks(self, job: str, staff: str) -> bool:
        """Some booking of the pair, live or gone, is in scope (else its side is silent)."""
        horizon, opened = self.horizon(), self.job_open(job)
        return any(in_scope(r, horizon, opened) for r in self.bookings(job, staff))

    def current(self, job: str, staff: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The pair's live allocations and fixed bookings in scope."""
        horizon, opened = self.horizon(), self.job_open(job)
        allocations = [r for r in live(self.sm8.allocations(job, staff))
                       if in_scope(r, horizon, opened)]  # fmt: skip
        activities = [r for r in fixed(self.sm8.activities(job, staff))
                      if in_scope(r, horizon, opened)]  # fmt: skip
        return allocations, activities

    def job_in_scope(self, job: str) -> bool:
        return (
            not self.deleted(job)
            and not self.left_out(job)
            and any(a or f for a, f in (self.current(job, s) for s in self.staff))
        )

    def judge(self, job: str, staff: str, *, whole: bool = False) -> tuple[str, bool]:
        """The person's presence on the job in ServiceM8 from their bookings in scope (every
        live one with ``whole``), and whether it is in step with a person finished in
        Coredination (every such booking finished or fixed)."""
        if self.deleted(job):  # nobody booked; work finished before it was deleted stays
            return ABSENT, True
        if whole:
            allocations = live(self.sm8.allocations(job, staff))
            activities = fixed(self.sm8.activities(job, staff))
        else:
            allocations, activities = self.current(job, staff)
        finishable = bool(allocations or activities) and not open_(allocations)
        return servicem8_presence(allocations, activities), finishable

    def describe(self, job: str, staff: str, user: int) -> str:
        rows = [{k: r[k] for k in ("uuid", "active", "allocation_date", "completion_timestamp")}
                | {"by_bridge": r["uuid"] in self.sm8.by_bridge}
                for r in self.sm8.allocations(job, staff)]  # fmt: skip
        rows += [{k: r[k] for k in ("uuid", "active", "start_date", "end_date")}
                 | {"by_bridge": r["uuid"] in self.sm8.by_bridge}
                 for r in self.sm8.activities(job, staff)]  # fmt: skip
        deleted = " (job deleted)" if self.deleted(job) else ""
        return f"job {job}{deleted} staff {staff}: {rows}; Coredination user {user}: " + str(
            self.cd.resources(self.cd_job(job)).get(user)
        )

    # --- the office, in ServiceM8 ----------------------------------------------------------------
    @rule(job=JOB, person=PERSON, when=WHEN)
    def office_books(self, job: int, person: int, when: str) -> None:
        self.act()
        self.sm8.book(self.jobs[job], self.staff[person], *self.date(when))

    @rule(job=JOB, person=PERSON, pick=PICK)
    def office_unbooks(self, job: int, person: int, pick: int) -> None:
        if (uuid := self.picked(job, person, pick)) is not None:
            self.act()
            self.sm8.unbook(uuid)

    @rule(job=JOB, person=PERSON, pick=PICK, when=DATED)
    def office_dates(self, job: int, person: int, pick: int, when: str) -> None:
        if (uuid := self.picked(job, person, pick)) is not None:
            self.act()
            self.sm8.move(uuid, *self.date(when))

    @rule(job=JOB, person=PERSON, pick=PICK)
    def office_undates(self, job: int, person: int, pick: int) -> None:
        if (uuid := self.picked(job, person, pick)) is not None:
            self.act()
            self.sm8.move(uuid, None)

    @rule(job=JOB, person=PERSON, slot=SLOT)
    def office_books_fixed(self, job: int, person: int, slot: str) -> None:
        """A booking dragged onto the person's row of the dispatch board."""
        self.act()
        self.sm8.book_fixed(self.jobs[job], self.staff[person], *self.slot(slot))

    @rule(job=JOB, person=PERSON, pick=PICK, slot=SLOT)
    def office_moves_fixed(self, job: int, person: int, pick: int, slot: str) -> None:
        if (uuid := self.picked(job, person, pick, "activity")) is not None:
            self.act()
            self.sm8.move_fixed(uuid, *self.slot(slot))

    @rule(job=JOB, person=PERSON, pick=PICK)
    def office_unbooks_fixed(self, job: int, person: int, pick: int) -> None:
        if (uuid := self.picked(job, person, pick, "activity")) is not None:
            self.act()
            self.sm8._put("jobactivity", uuid, {"active": 0})

    @rule(job=JOB, person=PERSON, pick=PICK)
    def phone_opens(self, job: int, person: int, pick: int) -> None:
        """Opening a booking edits it (edit_date) and changes nothing the sync reads: it is no
        human action for the quiet-sync check, which must then see no write."""
        if (uuid := self.picked(job, person, pick, "activity")) is not None:
            self.clock.advance(STEP)
            self.sm8.open_booking(uuid)

    @rule(job=JOB, status=st.sampled_from(["Work Order", "Quote", "Completed"]))
    def office_sets_status(self, job: int, status: str) -> None:
        """Closing a job takes it out of scope (it is left as it is); reopening brings it back."""
        if self.sm8.records["job"][self.jobs[job]].get("status") != status:
            self.act()
            self.sm8._put("job", self.jobs[job], {"status": status})

    @rule(job=JOB, active=st.sampled_from([0, 1]))
    def office_deletes_or_restores_job(self, job: int, active: int) -> None:
        if self.sm8.records["job"][self.jobs[job]]["active"] != active:
            self.act()
            self.sm8._put("job", self.jobs[job], {"active": active})

    # --- the dispatcher and the workers, in Coredination ----------------------------------------
    @precondition(lambda self: self.linked())
    @rule(job=JOB, person=PERSON, op=st.sampled_from(["schedule", "assign", "unschedule"]))
    def dispatcher(self, job: int, person: int, op: str) -> None:
        if self.jobs[job] in self.linked():
            self.act()
            getattr(self.cd, f"dispatcher_{op}")(self.cd_job(self.jobs[job]), self.users[person])

    @precondition(lambda self: self.on_jobs())
    @rule(pick=st.integers(0, 8), state=st.sampled_from(["ACCEPTED", "STARTED", "DECLINED",
                                                         "FINISHED"]))  # fmt: skip
    def worker_acts(self, pick: int, state: str) -> None:
        """The ``pick``-th (job, user) resource in Coredination, by job then user."""
        on_jobs = self.on_jobs()
        job, user = on_jobs[pick % len(on_jobs)]
        self.clock.advance(STEP)
        if self.cd.worker_acts(self.cd_job(job), user, state):
            self.synced = False

    # --- time and the bridge ---------------------------------------------------------------------
    @rule(minutes=st.sampled_from([2, 20]))
    def time_passes(self, minutes: int) -> None:
        day = datetime.fromtimestamp(self.clock(), TZ).date()
        self.clock.advance(minutes * 60)
        if datetime.fromtimestamp(self.clock(), TZ).date() != day:
            self.synced = False  # a new day: bookings may have left scope since the last sync

    @rule(days=st.sampled_from([1, 2, 3]))
    def days_pass(self, days: int) -> None:
        """Bookings age: yesterday's stay in scope (the default horizon), older ones leave it."""
        self.clock.advance(days * 86_400)
        self.synced = False

    @rule(days=st.sampled_from([0, 1, 3]))
    def operator_sets_horizon(self, days: int) -> None:
        """SCOPE_HORIZON_DAYS changed: every job syncs once at the next cycle."""
        if days != self.horizon_days:
            self.horizon_days = days
            options = self.engine.ctx.options
            options.scope = replace(options.scope, horizon_days=days)
            self.synced = False

    @rule(cycles=st.integers(1, 2))
    def sync(self, cycles: int) -> None:
        for _ in range(cycles):
            self.clock.advance(1.0)
            before = self.world()
            started_ms, sent = int(self.clock() * 1000), self.sm8.writes() + self.cd.writes()
            self.engine.run_cycle(match_staff=False)
            self.check_scope_kept(before)
            self.check_trail(started_ms, self.sm8.writes() + self.cd.writes() - sent)
        self.synced = True
        self.check_no_duplicate()

    @precondition(lambda self: self.synced)
    @rule()
    def quiet_sync(self) -> None:
        """Right after a sync, with no one acting, a cycle marks nothing and writes nothing: no
        echo."""
        before = self.sm8.writes(), self.cd.writes(), self.sm8.calls.copy(), self.cd.calls.copy()
        self.clock.advance(1.0)
        # Re-reading what the last sync wrote is no change: the polls mark no job to sync.
        marked = self.engine.poll_servicem8() | self.engine.poll_coredination()
        assert marked == set(), f"a quiet poll marked jobs to sync: {sorted(marked)}"
        report = self.engine.run_cycle(match_staff=False)
        sm8_calls, cd_calls = self.sm8.calls - before[2], self.cd.calls - before[3]
        assert (self.sm8.writes(), self.cd.writes()) == before[:2], (
            f"echo write in a quiet cycle: ServiceM8 {dict(sm8_calls)}, Coredination "
            f"{dict(cd_calls)}, report {dict(report.counts)}"
        )
        self.check_no_duplicate()
        self.check_in_step()
        # And a sync is safe to run twice: every job synced again, with nothing new, writes
        # nothing (no field re-sent, no pair decided again).
        writes = self.sm8.writes(), self.cd.writes()
        self.engine.ctx.stores.jobs.mark_dirty(self.jobs)
        self.engine.run_cycle(match_staff=False)
        assert (self.sm8.writes(), self.cd.writes()) == writes, "a repeated sync wrote again"

    # --- the invariants --------------------------------------------------------------------------
    def world(self) -> dict[str, Any]:
        """What the judge reads before a cycle: each pair's Coredination presence, whether it
        speaks (a booking in scope), and the booking rows in scope; jobs in scope."""
        pairs: dict[tuple[str, str], tuple[str, bool]] = {}
        for job in self.jobs:
            resources = self.cd.resources(self.cd_job(job))
            for staff, user in zip(self.staff, self.users, strict=True):
                pairs[(job, staff)] = (CD_STATES[resources.get(user)], self.speaks(job, staff))
        horizon = self.horizon()
        admitted = {r["uuid"] for job in self.jobs for staff in self.staff
                    for r in self.bookings(job, staff)
                    if in_scope(r, horizon, self.job_open(job))}  # fmt: skip
        active = {r["uuid"] for obj in ("joballocation", "jobactivity")
                  for r in self.sm8.records[obj].values() if r["active"] == 1}  # fmt: skip
        scoped = {job for job in self.jobs if self.job_in_scope(job)}
        self.ever_in_scope |= scoped
        return {"pairs": pairs, "admitted": admitted, "active": active, "scoped": scoped}

    def check_scope_kept(self, before: dict[str, Any]) -> None:
        """What the bridge did in one cycle (no one else acted): history created no
        Coredination job, put nobody on a job, took nobody off, and lost no booking."""
        for job in self.jobs:
            if self.cd.job(self.cd_job(job)) is not None:
                assert job in self.ever_in_scope, f"a job never in scope was linked: {job}"
            for staff, user in zip(self.staff, self.users, strict=True):
                was, spoke = before["pairs"][(job, staff)]
                now = CD_STATES[self.cd.resources(self.cd_job(job)).get(user)]
                if was == ABSENT and now != ABSENT:
                    allocations, activities = self.current(job, staff)
                    assert allocations or activities, (
                        f"put on a job by history: {self.describe(job, staff, user)}"
                    )
                if was != ABSENT and now == ABSENT and not self.deleted(job):
                    assert spoke, f"taken off by history: {self.describe(job, staff, user)}"
        active = {r["uuid"] for obj in ("joballocation", "jobactivity")
                  for r in self.sm8.records[obj].values() if r["active"] == 1}  # fmt: skip
        lost = before["active"] - active
        assert lost <= before["admitted"], f"bookings out of scope deleted: {sorted(lost)}"

    def check_trail(self, since_ms: int, sent: int) -> None:
        """Every write a cycle sent is in its job's trail, with its answer; an entry holds no
        secret (nor anything a release cannot read back)."""
        told = 0
        for job in self.jobs:
            for raw in self.stores.trail.entries(job):
                assert not any(secret.encode() in raw for secret in SECRETS)
                entry = decode(raw)
                assert entry is not None, raw
                if entry.at_ms >= since_ms:
                    told += len(entry.job) + sum(len(p.writes) for p in entry.pairs)
        assert told == sent, f"{sent} writes sent, {told} in the trail"

    def check_no_duplicate(self) -> None:
        for job in self.jobs:
            for staff, user in zip(self.staff, self.users, strict=True):
                allocations, activities = self.current(job, staff)
                rows = open_(allocations) + activities  # history next to a new one is none
                ours = [r for r in rows if r["uuid"] in self.sm8.by_bridge]
                assert not (ours and len(rows) > 1), (
                    f"duplicate booking: {self.describe(job, staff, user)}"
                )

    def check_in_step(self) -> None:
        pending = self.stores.parked.pending()
        for job in self.jobs:
            resources = self.cd.resources(self.cd_job(job))
            if self.job_in_scope(job):
                assert self.cd.job(self.cd_job(job)) is not None, f"job in scope not linked: {job}"
            if self.left_out(job) and not self.deleted(job):
                continue  # its status is not synced: left as it is
            for staff, user in zip(self.staff, self.users, strict=True):
                if (
                    not self.deleted(job)
                    and self.bookings(job, staff)
                    and not self.speaks(job, staff)
                ):
                    continue  # silent: history is left as it is (no booking at all: absent)
                servicem8, finishable = self.judge(job, staff)
                coredination = CD_STATES[resources.get(user)]
                if agree(servicem8, coredination, finishable):
                    continue
                # A presence only bookings leaving scope moved is kept (no one unscheduled):
                # in step with every live booking, as before they left.
                if agree(*self.judge(job, staff, whole=True)[:1], coredination):
                    continue
                # The return-visit rule: Coredination kept a resource at work out of the
                # bridge's last op on it (the fake says so, not the bridge), and the bridge
                # holds the pair as it is, with the reason in ``sm8cd status``.
                ignored = self.cd.ignored.get((self.cd_job(job), user))
                reason = pending.get(f"{job}|{staff}", {}).get("reason", "")
                assert ignored is not None and "Coredination keeps the user" in reason, (
                    f"not in step: ServiceM8 {servicem8}, Coredination {coredination}: "
                    + self.describe(job, staff, user)
                )


SyncMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("STATE_MACHINE_EXAMPLES", "200")),
    stateful_step_count=int(os.environ.get("STATE_MACHINE_STEPS", "50")),
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow],
)
TestTwoWaySync = SyncMachine.TestCase


class KeptAtWork(SyncMachine):
    """Coredination ignoring schedule or assign on a resource at work (the simulator's reading)."""

    AT_WORK = "kept"


# Half the examples: the same machine with one reading changed (and CI's time is short).
KeptAtWork.TestCase.settings = settings(
    SyncMachine.TestCase.settings,
    max_examples=max(1, SyncMachine.TestCase.settings.max_examples // 2),
)
TestTwoWaySyncKeptAtWork = KeptAtWork.TestCase


def test_an_assign_coredination_ignores_is_read_back_and_held():
    """Found by the machine above with ``KeptAtWork``: the office undates a booking whose worker
    has accepted; the bridge sends ``assign`` and Coredination keeps the resource ACCEPTED.
    Before the read-back the bridge recorded ASSIGNED, and the next cycle pulled the acceptance
    back over the office's change; now it reads the job back, sees ACCEPTED, and holds the pair
    as both sides are: the office's undated booking stays, and nothing is sent again."""
    machine = KeptAtWork()
    try:
        machine.office_books(job=0, person=0, when="all day")
        machine.sync(cycles=1)
        machine.worker_acts(pick=0, state="ACCEPTED")
        machine.office_undates(job=0, person=0, pick=0)
        machine.sync(cycles=1)
        machine.quiet_sync()
        job, staff, user = machine.jobs[0], machine.staff[0], machine.users[0]
        assert machine.judge(job, staff)[0] == ASSIGNED  # the office's change stands
        assert machine.cd.resources(machine.cd_job(job))[user] == "ACCEPTED"
        reason = machine.stores.parked.pending()[f"{job}|{staff}"]["reason"]
        assert "keeps the user ACCEPTED" in reason
        # and its trail tells it (sm8cd explain)
        told = [line for raw in machine.stores.trail.entries(job)
                for line in sentences(decode(raw), TZ)]  # fmt: skip
        assert any("(ignored: the person is at work)." in line for line in told)
        assert any("Held: Coredination keeps the user ACCEPTED" in line for line in told)
    finally:
        machine.teardown()


def test_a_return_visit_coredination_keeps_finished_is_held_and_reported():
    """The return-visit rule (docs/coredination-api.md#resources): the worker finished; the
    office books them again. ``schedule`` changes nothing in Coredination (this reading); the
    bridge reads the job back, keeps the office's booking and the finished resource, and
    reports the pair. Once a
    dispatcher takes the user off the job the hold ends and the rules apply again."""
    machine = KeptAtWork()
    try:
        machine.office_books(job=0, person=0, when="all day")
        machine.sync(cycles=1)
        machine.worker_acts(pick=0, state="FINISHED")
        machine.sync(cycles=1)
        job, staff, user = machine.jobs[0], machine.staff[0], machine.users[0]
        assert machine.judge(job, staff)[0] == FINISHED
        machine.office_books(job=0, person=0, when="10:30")
        machine.sync(cycles=1)
        machine.quiet_sync()
        assert machine.judge(job, staff)[0] == SCHEDULED
        assert machine.cd.resources(machine.cd_job(job))[user] == "FINISHED"
        reason = machine.stores.parked.pending()[f"{job}|{staff}"]["reason"]
        assert reason.startswith("return visit")
        assert machine.engine.ctx.stores.jobs.load(job).pairs[staff].held
        machine.dispatcher(job=0, person=0, op="unschedule")
        machine.sync(cycles=1)
        machine.quiet_sync()
        assert f"{job}|{staff}" not in machine.stores.parked.pending()
        assert not machine.engine.ctx.stores.jobs.load(job).pairs[staff].held
    finally:
        machine.teardown()


def test_a_job_deleted_in_servicem8_keeps_the_bridges_own_booking_that_is_history():
    """Found by the machine above: a dispatcher's change on a pair whose bookings are history
    brings the bridge's own fixed booking in; days pass, so it is history too; then the office
    deletes the job beside an office booking of the same person. On a deleted job every booking
    counts for the decision, and the double booking rule took the bridge's copy for one to drop:
    it deleted a booking out of scope. The rule now reads bookings in scope only."""
    machine = SyncMachine()
    steps = [
        ("days_pass", {"days": 7}),
        ("office_books_fixed", {"job": 1, "person": 0, "slot": "13:00-15:00"}),
        ("days_pass", {"days": 2}), ("sync", {"cycles": 1}),
        ("worker_acts", {"pick": 3, "state": "DECLINED"}),
        ("days_pass", {"days": 3}), ("phone_opens", {"job": 1, "person": 1, "pick": 0}),
        ("sync", {"cycles": 2}), ("sync", {"cycles": 1}),
        ("worker_acts", {"pick": 1, "state": "STARTED"}),
        ("days_pass", {"days": 1}), ("sync", {"cycles": 2}), ("sync", {"cycles": 2}),
        ("office_deletes_or_restores_job", {"active": 0, "job": 1}), ("days_pass", {"days": 5}),
        ("sync", {"cycles": 2}),
    ]  # fmt: skip
    try:
        for rule_name, kwargs in steps:
            getattr(machine, rule_name)(**kwargs)  # sync checks that nothing in history goes
    finally:
        machine.teardown()
