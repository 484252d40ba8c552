"""A small, real-looking field-service business, seeded into both simulators.

Shared by the tests, ``sm8cd demo`` and the benchmarks so they all stand on the same ground.
Staff e-mails match Coredination users (in different letter case, as real data does); jobs have
addresses and descriptions; allocations (flexible bookings) mix the variants the mapping rules
distinguish: a date with an allocation window, a date alone, and no date at all; fixed bookings (job
activities, ``fixed``) are two hours on a day, as made on the dispatch board.

Bookings are dated from tomorrow on (in the account's timezone) unless ``start`` says otherwise,
so the whole business is upcoming work, which the bridge syncs (docs/scope.md), whatever day the
tests run. ``seed_history`` adds a business's past: finished jobs the bridge must leave alone.
"""

from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.servicem8 import ServiceM8Simulator

FIRST = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Ella",
    "Finn",
    "Grace",
    "Hugo",
    "Isla",
    "Jack",
    "Kai",
    "Lena",
    "Mia",
    "Noah",
    "Olive",
    "Priya",
]
LAST = ["Nguyen", "Okafor", "Smith", "Patel", "Brown", "Kowalski", "Rossi", "Tanaka",
        "Murphy", "Silva"]  # fmt: skip
STREETS = ["George St", "Pitt St", "King St", "Oxford St", "Crown St", "Bourke St",
           "Military Rd", "Parramatta Rd", "Victoria Rd", "Pacific Hwy"]  # fmt: skip
SUBURBS = ["Sydney", "Surry Hills", "Newtown", "Glebe", "Balmain", "Manly", "Bondi",
           "Chatswood", "Parramatta", "Mosman"]  # fmt: skip
WORK = ["Replace hot water unit", "Fix leaking tap in kitchen", "Install new dishwasher",
        "Clear blocked drain", "Annual gas heater service", "Replace toilet cistern",
        "Repair burst pipe under house", "Install outdoor shower", "Inspect roof gutters",
        "Fit new bathroom vanity"]  # fmt: skip
WINDOWS = [("Early Morning", 420, 540), ("Morning", 480, 720), ("Afternoon", 720, 1020)]


def upcoming(sm8: ServiceM8Simulator, days: int = 1) -> datetime:
    """Midnight ``days`` days from today in the account's timezone, naive (as ServiceM8 stamps
    are): the first day of upcoming work."""
    today = datetime.fromtimestamp(sm8.now(), sm8.tz).date()
    return datetime.combine(today + timedelta(days=days), datetime.min.time())


def new_uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class Business:
    staff: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    windows: list[str] = field(default_factory=list)
    allocations: list[dict[str, Any]] = field(default_factory=list)
    activities: list[dict[str, Any]] = field(default_factory=list)  # fixed bookings
    day0: datetime | None = None  # the first day bookings are dated (naive, account time)

    @property
    def bookings(self) -> list[dict[str, Any]]:
        """Every seeded booking, of both kinds."""
        return self.allocations + self.activities

    def user_for(self, staff_uuid: str) -> dict[str, Any] | None:
        for member, user in zip(self.staff, self.users, strict=False):
            if member["uuid"] == staff_uuid:
                return user
        return None


def seed_business(
    sm8: ServiceM8Simulator,
    cd: CoredinationSimulator | None,
    *,
    staff: int = 5,
    jobs: int = 20,
    allocations: int = 50,
    unmapped_staff: int = 0,
    seed: int = 1,
    start: datetime | None = None,
    fixed: int = 0,
) -> Business:
    """Seed both simulators: ``allocations`` flexible and ``fixed`` fixed bookings over the jobs,
    dated over 30 days from ``start`` (default: tomorrow in the account's timezone). The last
    ``unmapped_staff`` staff get no Coredination user."""
    rng = random.Random(seed)
    business = Business()
    windows: list[dict[str, Any]] = [
        {"uuid": new_uuid(rng), "name": n, "start_time": s, "end_time": e} for n, s, e in WINDOWS
    ]
    business.windows = [w["uuid"] for w in windows]
    for i in range(staff):
        first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST) + i) % len(LAST)]
        email = f"{first}.{last}{i}@example.com".lower()
        member = {"uuid": new_uuid(rng), "first": first, "last": last, "email": email.title()}
        business.staff.append(member)
        if cd is not None and i < staff - unmapped_staff:
            business.users.append(cd.add_user(email, first, last))
    job_rows: list[dict[str, Any]] = []
    for _ in range(jobs):
        street = f"{rng.randint(1, 250)} {rng.choice(STREETS)}"
        job_rows.append({
            "uuid": new_uuid(rng),
            "status": "Work Order",
            "job_address": f"{street}, {rng.choice(SUBURBS)} NSW",
            "job_description": f"{rng.choice(WORK)}\nCustomer asks to call ahead.",
        })  # fmt: skip
    business.jobs = [row["uuid"] for row in job_rows]
    day0 = (start or upcoming(sm8)).replace(hour=0, minute=0, second=0, microsecond=0)
    business.day0 = day0.replace(tzinfo=None)
    rows = []
    for i in range(allocations):
        job = i % jobs
        member = business.staff[(job + i // jobs) % staff]
        row: dict[str, Any] = {
            "uuid": new_uuid(rng),
            "job_uuid": job_rows[job]["uuid"],
            "staff_uuid": member["uuid"],
            "active": 1,
        }
        variant = i % 5
        day = day0 + timedelta(days=(i * 7) % 30)
        if variant in (0, 1, 2):  # a date and a window
            row["allocation_date"] = day.strftime("%Y-%m-%d 00:00:00")
            row["allocation_window_uuid"] = business.windows[i % len(business.windows)]
        elif variant == 3:  # a date alone
            row["allocation_date"] = day.strftime("%Y-%m-%d 00:00:00")
        rows.append(row)  # variant 4: no date at all
    business.allocations = rows
    for i in range(fixed):
        job = i % jobs
        member = business.staff[(job + 2 + i // jobs) % staff]
        begin = day0 + timedelta(days=(i * 3) % 30, hours=8 + 2 * (i % 4))
        business.activities.append({
            "uuid": new_uuid(rng),
            "job_uuid": job_rows[job]["uuid"],
            "staff_uuid": member["uuid"],
            "active": 1,
            "activity_was_scheduled": 1,
            "start_date": begin.strftime("%Y-%m-%d %H:%M:%S"),
            "end_date": (begin + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S"),
        })  # fmt: skip
    sm8.seed(
        {
            "allocationwindow": windows,
            "staff": business.staff,
            "job": job_rows,
            "joballocation": rows,
            "jobactivity": business.activities,
        }
    )
    return business


def seed_history(
    sm8: ServiceM8Simulator, business: Business, *, jobs: int = 60, days: int = 730, seed: int = 7
) -> list[str]:
    """A business's past, seeded into ServiceM8 beside ``business``: ``jobs`` finished jobs spread
    over the last ``days`` days (the newest a fortnight ago), each with a completed flexible
    booking on its day and a fixed booking of another person that ended that day. Every third job
    is ``Completed``; the others were never closed (``Work Order``), as real accounts keep them,
    so only the horizon keeps those out of the sync. Returns the jobs' uuids, newest first."""
    rng = random.Random(seed)
    today = datetime.fromtimestamp(sm8.now(), sm8.tz).date()
    staff = [member["uuid"] for member in business.staff]
    job_rows: list[dict[str, Any]] = []
    allocations: list[dict[str, Any]] = []
    activities: list[dict[str, Any]] = []
    span = max(1, days - 14)
    for i in range(jobs):
        day = datetime.combine(today - timedelta(days=14 + span * i // max(1, jobs - 1)),
                               datetime.min.time())  # fmt: skip
        job = new_uuid(rng)
        street = f"{rng.randint(1, 250)} {rng.choice(STREETS)}"
        job_rows.append({
            "uuid": job,
            "status": "Completed" if i % 3 == 2 else "Work Order",
            "job_address": f"{street}, {rng.choice(SUBURBS)} NSW",
            "job_description": f"{rng.choice(WORK)}\nDone {day:%d %B %Y}.",
        })  # fmt: skip
        first, second = staff[i % len(staff)], staff[(i + 1) % len(staff)]
        allocations.append({
            "uuid": new_uuid(rng), "job_uuid": job, "staff_uuid": first, "active": 1,
            "allocation_date": day.strftime("%Y-%m-%d 00:00:00"),
            "completion_timestamp": (day + timedelta(hours=16)).strftime("%Y-%m-%d %H:%M:%S"),
        })  # fmt: skip
        begin = day + timedelta(hours=9)
        activities.append({
            "uuid": new_uuid(rng), "job_uuid": job, "staff_uuid": second, "active": 1,
            "activity_was_scheduled": 1,
            "start_date": begin.strftime("%Y-%m-%d %H:%M:%S"),
            "end_date": (begin + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S"),
        })  # fmt: skip
    sm8.seed({"job": job_rows, "joballocation": allocations, "jobactivity": activities})
    return [row["uuid"] for row in job_rows]
