"""The staff ⇄ user map: matched by e-mail, overridable by hand, never guessed."""

from __future__ import annotations

from bridge.coredination.client import UsersListMissing
from bridge.log import get_logger
from bridge.sync.context import Report, SyncContext

log = get_logger(__name__)

USERS_LIST_MISSING = "staff.users_list_missing"


def match_staff(ctx: SyncContext) -> Report:
    """Read both directories and link staff to users by e-mail (case-insensitive).

    Manual links and unlinks are left alone; an e-mail shared by two users is ambiguous and is
    never guessed. When the map changes, parked pairs are retried. Where Coredination has no
    users list (docs/coredination-api.md#users) only the staff directory is refreshed and the
    map is left as it is, for the operator to complete by hand.
    """
    report = Report()
    store = ctx.stores.staff
    staff = ctx.sm8.list_staff()
    store.save_directory("staff", {
        s.uuid.lower(): {"email": s.email, "name": s.display_name, "active": s.active}
        for s in staff
    })  # fmt: skip
    try:
        users = ctx.cd.list_users()
    except UsersListMissing as exc:
        return _without_users(ctx, report, exc)
    store.save_directory("users", {
        str(u.id): {"email": u.email, "name": u.display_name, "active": u.active} for u in users
    })  # fmt: skip
    by_email: dict[str, list[int]] = {}
    for user in users:
        if user.active and user.email:
            by_email.setdefault(user.email.strip().lower(), []).append(user.id)
    current = store.staff_map()
    changed = False
    for member in staff:
        uuid = member.uuid.lower()
        if uuid in current.manual:
            continue
        email = (member.email or "").strip().lower()
        candidates = by_email.get(email, []) if member.active else []
        wanted = candidates[0] if len(candidates) == 1 else None
        if len(candidates) > 1:
            report.add("staff.ambiguous")
            log.warning("staff.ambiguous_email", sm8_staff_uuid=uuid, cd_user_ids=candidates)
        have = current.s2u.get(uuid)
        if wanted is not None and have != wanted and wanted not in current.u2s:
            store.link(uuid, wanted, manual=False)
            report.add("staff.linked")
            changed = True
        elif wanted is None and have is not None:
            store.unlink(uuid, manual=False)
            report.add("staff.unlinked")
            changed = True
    if changed:
        requeue_pending(ctx)
    report.add("staff.mapped", store.mapped_count())
    return report


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


def requeue_pending(ctx: SyncContext) -> set[str]:
    """Mark every job with a parked pair dirty again (after the staff map changed)."""
    jobs = ctx.stores.parked.pending_jobs()
    if jobs:
        ctx.stores.jobs.mark_dirty(jobs)
    return jobs


def link_staff(ctx: SyncContext, staff_uuid: str, user_id: int) -> None:
    ctx.stores.staff.link(staff_uuid.lower(), user_id, manual=True)
    requeue_pending(ctx)


def unlink_staff(ctx: SyncContext, staff_uuid: str) -> None:
    ctx.stores.staff.unlink(staff_uuid.lower(), manual=True)
