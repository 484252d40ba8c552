"""The staff ⇄ user map: matched by e-mail, overridable by hand, never guessed.

When it is matched (docs/how-it-works.md#staff-matching):

- a whole match (both lists read) at start, every ``STAFF_MATCH_SECONDS``, and by
  ``sm8cd staff match``; the first job sync of a connection waits for the first one
  (``ensure_matched``), so no Coredination job is created with its people left off;
- Coredination's users list with every Coredination poll (``poll_users``), matched against the
  staff directory the last whole match read: a user added there is matched within one poll;
- a whole match asked by a job sync that met a person not mapped yet (``ask_match``), at most
  once a minute per person across every process: a staff member added in ServiceM8 and booked
  is matched as soon as a poll or webhook shows the booking, and the job is synced again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from bridge.coredination.client import UsersListMissing
from bridge.coredination.models import CdUser
from bridge.errors import ApiError, BudgetExhausted, PermanentError
from bridge.log import get_logger
from bridge.servicem8.models import Staff
from bridge.store import StaffMap, Stores
from bridge.sync.context import Report, SyncContext
from mappings.presence import Presence, cd_presence
from mappings.state import JobRecord

log = get_logger(__name__)

USERS_LIST_MISSING = "staff.users_list_missing"
ASK_AGAIN_SECONDS = 60.0  # a person's match is asked at most this often
MATCH_LOCK_SECONDS = 120.0  # a match holds the lock no longer, should its worker be killed
# A job sync waits this long for another process's first match, then retries (LockError).
FIRST_MATCH_WAIT_SECONDS = 5.0
FIRST_MATCH_RETRY_SECONDS = 5.0  # while the first match fails, one sync tries it this often
NEAREST_SCORE = 0.75  # how alike two e-mails must be to be named as the nearest


@dataclass(frozen=True)
class Person:
    """A staff member (``id``: the staff uuid, lower case) or a user (``id``: the user id)."""

    id: str
    name: str | None
    email: str | None
    active: bool

    @property
    def key(self) -> str:
        return (self.email or "").strip().lower()


def staff_people(staff: Iterable[Staff]) -> list[Person]:
    return [Person(s.uuid.lower(), s.display_name, s.email, s.active) for s in staff]


def user_people(users: Iterable[CdUser]) -> list[Person]:
    return [Person(str(u.id), u.display_name, u.email, u.active) for u in users]


def directory_people(entries: Mapping[str, Mapping[str, Any]]) -> list[Person]:
    """People as a directory (``StaffStore.directory``) keeps them."""
    return [Person(k, e.get("name"), e.get("email"), bool(e.get("active", True)))
            for k, e in entries.items()]  # fmt: skip


def candidates(users: Iterable[Person]) -> dict[str, list[int]]:
    """Active users by e-mail (lower case): an e-mail two users share is ambiguous."""
    by_email: dict[str, list[int]] = {}
    for user in users:
        if user.active and user.key:
            by_email.setdefault(user.key, []).append(int(user.id))
    return by_email


def nearest_email(email: str | None, others: Iterable[str]) -> str | None:
    """The e-mail of ``others`` most like ``email``, if one is alike enough to be worth naming
    (a typo, another domain): the local parts weigh most, since one business shares a domain."""
    local, _, domain = (email or "").strip().lower().partition("@")
    if not local:
        return None
    best, score = None, NEAREST_SCORE
    for other in others:
        o_local, _, o_domain = other.strip().lower().partition("@")
        alike = (0.7 * SequenceMatcher(None, local, o_local).ratio()
                 + 0.3 * SequenceMatcher(None, domain, o_domain).ratio())  # fmt: skip
        if alike >= score and other.strip().lower() != (email or "").strip().lower():
            best, score = other, alike
    return best


@dataclass(frozen=True)
class Unmatched:
    """An active staff member a match leaves without a user: why, and the nearest e-mail of a
    user still free, when one is alike enough to be a likely typo."""

    member: Person
    why: str
    nearest: Person | None = None


@dataclass(frozen=True)
class StaffOutcome:
    by_email: int  # active staff with a user by e-mail (linked, or to be at the next match)
    by_hand: int  # active staff linked by hand
    unlinked_by_hand: int  # active staff unlinked by hand: left so on purpose
    unmatched: list[Unmatched]


def staff_outcome(staff: list[Person], users: list[Person], current: StaffMap) -> StaffOutcome:
    """What the map holds, or a match would make of it, for every active staff member; pure,
    so a check can say it before anything is linked (``sm8cd doctor``)."""
    by_email = candidates(users)
    free = {p.id: p for p in users if p.active and p.key and int(p.id) not in current.u2s}
    e_mail = hand = unlinked = 0
    unmatched: list[Unmatched] = []
    for member in (m for m in staff if m.active):
        if member.id in current.manual:
            hand += member.id in current.s2u
            unlinked += member.id not in current.s2u
            continue
        found = by_email.get(member.key, [])
        taken = [u for u in found if current.u2s.get(u, member.id) != member.id]
        if member.id in current.s2u or (len(found) == 1 and not taken):
            e_mail += 1
            continue
        if not member.key:
            why = "has no e-mail in ServiceM8"
        elif len(found) > 1:
            why = f"{len(found)} Coredination users share this e-mail (never guessed)"
        elif taken:
            why = f"its Coredination user ({found[0]}) is linked to another staff member"
        else:
            why = "no active Coredination user has this e-mail"
        near = nearest_email(member.email, [p.email or "" for p in free.values()])
        match = next((p for p in free.values() if near and p.key == near.strip().lower()), None)
        unmatched.append(Unmatched(member, why, match))
    return StaffOutcome(e_mail, hand, unlinked, unmatched)


def match_staff(ctx: SyncContext, asked_at: float | None = None) -> Report:
    """Read both directories and link staff to users by e-mail (case-insensitive), one match
    at a time across every process. ``asked_at``: a match asked then (``ask_match``); left out
    when a whole match has begun since, which saw everything the ask was about.

    Manual links and unlinks are left alone; an e-mail shared by two users is ambiguous and is
    never guessed. When the map changes, parked pairs are retried. Where Coredination has no
    users list (docs/coredination-api.md#users) only the staff directory is refreshed and the
    map is left as it is, for the operator to complete by hand.
    """
    store = ctx.stores.staff
    with store.match_lock(MATCH_LOCK_SECONDS, blocking_timeout=MATCH_LOCK_SECONDS / 4):
        last = store.last_match().get("at")
        if asked_at is not None and last is not None and float(last) >= asked_at:
            return Report()
        return _match(ctx)


def ensure_matched(ctx: SyncContext) -> None:
    """Before a job sync: the connection's staff have been matched once. If not, match them
    now (or wait for the process matching them), so the sync finds its people mapped and the
    first Coredination jobs are created with them on. A match that failed for a reason that
    will not pass (a refused staff list) lets the syncs go on: their pairs wait as pending,
    shown in ``sm8cd status``, and the periodic match reports the failure. One that may pass
    (an API unavailable, the budget spent) is raised: the sync is tried again, after it. While
    it keeps failing, one sync tries it every ``FIRST_MATCH_RETRY_SECONDS`` and the others wait
    without a call, so a backlog of syncs does not spend the budget on the staff list."""
    store = ctx.stores.staff
    if store.matched_once():
        return
    with store.match_lock(MATCH_LOCK_SECONDS, blocking_timeout=FIRST_MATCH_WAIT_SECONDS):
        if store.matched_once():  # another process matched them while this one waited
            return
        if not store.first_try(FIRST_MATCH_RETRY_SECONDS):
            # A wait, not a failure: like a spent budget, it counts no attempt, and a long one
            # goes to the deferred set rather than to an ETA message a worker holds.
            raise BudgetExhausted(
                "the connection's first staff match has not succeeded yet: job syncs wait for it",
                retry_in=store.first_try_wait(), api="servicem8", operation="staff.list",
            )  # fmt: skip
        try:
            _match(ctx)
        except BudgetExhausted as exc:
            store.hold_first_try(exc.retry_in)  # the others wait as long as this one must
            raise
        except PermanentError as exc:
            store.record_match(ctx.clock(), users="refused")
            action = "the syncs go on, their pairs pending; see 'sm8cd staff list'"
            log.warning("staff.first_match_refused", action=action, **exc.describe())


def _match(ctx: SyncContext) -> Report:
    report = Report()
    store = ctx.stores.staff
    started = ctx.clock()
    staff = staff_people(ctx.sm8.list_staff())
    store.save_directory("staff", {p.id: {"email": p.email, "name": p.name, "active": p.active}
                                   for p in staff})  # fmt: skip
    try:
        users = user_people(ctx.cd.list_users())
    except UsersListMissing as exc:
        store.record_match(started, users="missing")
        return _without_users(ctx, report, exc)
    _save_users(ctx, users)
    _apply(ctx, staff, users, report)
    store.record_match(started, users="listed")
    # Nobody this match left unmatched asks for another within the minute.
    mapped = store.staff_map()
    store.asked([p.id for p in staff if p.active and p.id not in mapped.s2u]
                + [f"u:{p.id}" for p in users if p.active and int(p.id) not in mapped.u2s],
                ASK_AGAIN_SECONDS)  # fmt: skip
    report.add("staff.mapped", store.mapped_count())
    return report


def _save_users(ctx: SyncContext, users: list[Person]) -> None:
    ctx.stores.staff.save_directory("users", {
        p.id: {"email": p.email, "name": p.name, "active": p.active} for p in users
    })  # fmt: skip


def _apply(ctx: SyncContext, staff: list[Person], users: list[Person], report: Report) -> bool:
    """Link each staff member (not linked or unlinked by hand) to the one active user with
    their e-mail, and undo an automatic link whose e-mail no longer leads there. Parked pairs
    are retried when the map changed; returns whether it did."""
    store = ctx.stores.staff
    by_email = candidates(users)
    current = store.staff_map()
    changed = False
    for member in staff:
        if member.id in current.manual:
            continue
        found = by_email.get(member.key, []) if member.active else []
        wanted = found[0] if len(found) == 1 else None
        if len(found) > 1:
            report.add("staff.ambiguous")
            log.warning("staff.ambiguous_email", sm8_staff_uuid=member.id, cd_user_ids=found)
        have = current.s2u.get(member.id)
        if wanted is not None and have != wanted and wanted not in current.u2s:
            store.link(member.id, wanted, manual=False)
            log.info("staff.linked", sm8_staff_uuid=member.id, cd_user_id=wanted)
            report.add("staff.linked")
            changed = True
        elif wanted is None and have is not None:
            store.unlink(member.id, manual=False)
            log.info("staff.unlinked", sm8_staff_uuid=member.id, cd_user_id=have)
            report.add("staff.unlinked")
            changed = True
    if changed:
        requeue_pending(ctx)
    return changed


def _without_users(ctx: SyncContext, report: Report, exc: UsersListMissing) -> Report:
    """No users list: nothing can be matched, so no automatic link is made or undone (not
    seeing the users is no sign that they changed). Said once per run, as a counter in the
    report and in the status counters and as a warning; returned, not raised, so that the
    periodic task neither retries nor dead-letters what only the operator can settle."""
    report.add(USERS_LIST_MISSING)
    ctx.stores.activity.count({USERS_LIST_MISSING: 1})
    log.warning(
        USERS_LIST_MISSING,
        status=exc.status,
        reason="Coredination has no users list: staff are not matched by e-mail",
        action="link each staff member by hand: bridge staff link <sm8_staff_uuid> <cd_user_id>",
    )
    report.add("staff.mapped", ctx.stores.staff.mapped_count())
    return report


def poll_users(ctx: SyncContext) -> set[str]:
    """Coredination's users list, read with a Coredination poll while a pair waits for a person
    to be mapped (``ParkedStore.pending``), and matched against the staff directory of the last
    whole match: a user added in Coredination for somebody already booked is matched within one
    poll, at one Coredination call and no ServiceM8 call. While nobody waits, a new user has
    nobody's bookings to bring, and the periodic match finds them: an idle connection's poll
    costs no extra call. Skipped before the first whole match and where there is no users list.
    Returns the jobs made dirty (parked pairs to retry).

    Best effort: a failure is logged and left to the next poll (and the periodic match)."""
    store = ctx.stores.staff
    if store.last_match().get("users") != "listed" or not ctx.stores.parked.pending_count():
        return set()
    try:
        users = user_people(ctx.cd.list_users())
    except UsersListMissing:
        return set()
    except ApiError as exc:
        log.info("staff.users_poll_failed", **exc.describe())
        return set()
    known = directory_people(store.directory("users"))
    if sorted(users, key=lambda p: p.id) == sorted(known, key=lambda p: p.id):
        return set()  # nobody added, removed or changed: nothing written
    _save_users(ctx, users)
    staff = directory_people(store.directory("staff"))
    if not _apply(ctx, staff, users, Report()):
        return set()
    return ctx.stores.parked.pending_jobs()


def unmapped_people(record: JobRecord, staff_map: StaffMap, now_ms: int) -> list[str]:
    """The people on a job the map does not know: staff with a live booking (``S``) and users
    present on its Coredination job (``u:U``)."""
    staff = {a.staff_uuid for a in record.allocations.values()
             if a.staff_uuid and a.live(now_ms) and a.staff_uuid not in staff_map.s2u}  # fmt: skip
    resources = record.cd.resources if record.cd is not None else {}
    present = {u for u, state in resources.items()
               if cd_presence(state) not in (None, Presence.ABSENT)}  # fmt: skip
    users = {f"u:{u}" for u in present if u not in staff_map.u2s}
    return sorted(staff | users)


def ask_match(ctx: SyncContext, sm8_job: str) -> float | None:
    """A job's sync left a pair parked for want of a mapped person: ask a match for each such
    person on the job unless one was asked (or made) for them within the minute, by any
    process. Returns the time of the ask when someone was asked now (the match's
    ``asked_at``), else None."""
    record = ctx.stores.jobs.load(sm8_job)
    people = unmapped_people(record, ctx.stores.staff.staff_map(), ctx.now_ms())
    asked = ctx.stores.staff.ask(people, ASK_AGAIN_SECONDS)
    if not asked:
        return None
    log.info("staff.match_asked", sm8_job_uuid=sm8_job, people=asked)
    return ctx.clock()


def requeue_pending(ctx: SyncContext) -> set[str]:
    """Mark every job with a parked pair dirty again (after the staff map changed)."""
    return _requeue(ctx.stores)


def _requeue(stores: Stores) -> set[str]:
    jobs = stores.parked.pending_jobs()
    if jobs:
        stores.jobs.mark_dirty(jobs)
    return jobs


def relink(stores: Stores, staff_uuid: str, user_id: int) -> set[str]:
    """Link a staff member to a user by hand, and sync again every job with a parked pair (the
    jobs marked). ``sm8cd staff link`` and the console's form both come here."""
    stores.staff.link(staff_uuid.lower(), user_id, manual=True)
    return _requeue(stores)


def link_staff(ctx: SyncContext, staff_uuid: str, user_id: int) -> None:
    relink(ctx.stores, staff_uuid, user_id)


def unlink_staff(ctx: SyncContext, staff_uuid: str) -> None:
    ctx.stores.staff.unlink(staff_uuid.lower(), manual=True)
