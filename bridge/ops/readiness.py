"""What ``sm8cd doctor`` checks beyond ``sm8cd check``, one ``Line`` each (ok, warn or fail, with
what to do): Redis keeping its data, the webhook receiver at its public URL, the subscriptions,
the staff map. Each check reads; none writes to either API or to the bridge's state.

The probe's readings are judged beside the probe (``bridge.probe.readings``); the command puts
the lines together (``bridge.cli.doctor``)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import requests

from bridge.config import Settings
from bridge.coredination.models import CdUser
from bridge.errors import ApiError
from bridge.ops.subscriptions import (
    POLL_ONLY,
    callback_urls,
    coredination_subscribed,
    masked,
    row_active,
    servicem8_subscriptions,
)
from bridge.process.runtime import Runtime
from bridge.servicem8.webhooks import SUBSCRIBED_FIELDS
from bridge.store.durability import Durability, durability
from bridge.sync.staff import staff_outcome, staff_people, user_people

Level = Literal["ok", "warn", "fail"]
UNMATCHED_SHOWN = 20  # unmatched staff named one per line; the rest are counted

REDIS_TODO = ("turn the append-only file on (appendonly yes in redis.conf, or CONFIG SET "
              "appendonly yes and CONFIG REWRITE), or run a replica (Sentinel); a managed Redis: "
              "choose its persistence or replication option")  # fmt: skip


@dataclass(frozen=True)
class Line:
    """One checked part: how it stands, what was seen, and (unless ok) what to do."""

    level: Level
    what: str
    detail: str
    todo: str = ""


def redis_durability(found: Durability) -> Line:
    """Whether the links, cursors and queued work survive a restart of Redis. Lost, every
    pair is decided afresh and every poll reads everything again (docs/operations.md)."""
    what = "Redis persistence"
    replicas = found.replicas or 0
    if found.aof:
        return Line("ok", what, "append-only file on")
    if found.role == "slave":
        return Line("ok", what, "this is a replica: its primary and it hold the data")
    if replicas:
        return Line("ok", what, f"append-only off, but {replicas} replica(s) hold a copy")
    if found.aof is None and found.replicas is None:
        refused = ", ".join(found.refused) or "INFO"
        return Line("warn", what, f"cannot tell: the server refused {refused}, as managed "
                    "services often do", f"make sure it keeps its data across a restart: "
                    f"{REDIS_TODO}")  # fmt: skip
    if found.snapshots:
        return Line("warn", what, "snapshots only (append-only off, no replica): a restart "
                    "loses what changed since the last snapshot", REDIS_TODO)  # fmt: skip
    if found.snapshots is None:
        return Line("warn", what, "append-only off and no replica; snapshots cannot be checked "
                    "(CONFIG refused)", REDIS_TODO)  # fmt: skip
    return Line("fail", what, "none: no append-only file, no snapshots, no replica; a restart "
                "of Redis loses every link, cursor and queued sync", REDIS_TODO)  # fmt: skip


def redis_lines(rt: Runtime) -> list[Line]:
    return [redis_durability(durability(rt.redis))]


def webhooks_configured(settings: Settings) -> bool:
    token = settings.webhook_token
    return bool(settings.webhook_public_url and token is not None and token.get_secret_value())


Post = Callable[..., Any]


def receiver_line(settings: Settings, post: Post = requests.post) -> Line:
    """ServiceM8's own check of a callback URL: ``mode=subscribe`` and a challenge posted to it,
    answered 200 with the challenge alone (docs/servicem8-api.md#webhooks)."""
    what = "webhook receiver"
    if not webhooks_configured(settings):
        return Line("warn", what, "WEBHOOK_PUBLIC_URL or WEBHOOK_TOKEN not set: no webhooks, "
                    "every change waits for its poll", "set both, run web where that URL "
                    "reaches it, then 'sm8cd webhooks subscribe'")  # fmt: skip
    url = callback_urls(settings)["servicem8"]
    shown = masked(url)
    challenge = secrets.token_hex(8)
    reach = ("start web ('sm8cd run', or compose's web) and make WEBHOOK_PUBLIC_URL reach it "
             "from the internet: ServiceM8 checks that URL with this same challenge")  # fmt: skip
    timeout = (settings.http_connect_timeout, settings.http_read_timeout)
    try:
        answer = post(url, data={"mode": "subscribe", "challenge": challenge}, timeout=timeout)
    except requests.RequestException as exc:
        return Line("fail", what, f"no answer at {shown} ({type(exc).__name__})", reach)
    if answer.status_code == 200 and answer.text.strip() == challenge:
        return Line("ok", what, f"answers ServiceM8's challenge at {shown}")
    if answer.status_code == 401:
        return Line("fail", what, f"{shown} answered 401: the receiver there knows another "
                    "WEBHOOK_TOKEN", "give web the same WEBHOOK_TOKEN as this command (and the "
                    "connection's, for -c)")  # fmt: skip
    return Line("fail", what, f"{shown} answered {answer.status_code} without the challenge: "
                "it is not the bridge's receiver, or not this version's", reach)  # fmt: skip


def subscription_lines(rt: Runtime) -> list[Line]:
    """Each object's subscription as ServiceM8 (and Coredination) list it now."""
    if not webhooks_configured(rt.settings):
        return []  # the receiver's line says so
    subscribe = "run 'sm8cd webhooks subscribe' once the receiver answers"
    lines = []
    try:
        rows = servicem8_subscriptions(rt)
    except ApiError as exc:
        return [Line("fail", "ServiceM8 webhooks", f"cannot be listed: {exc}", subscribe)]
    for obj in SUBSCRIBED_FIELDS:
        what = f"ServiceM8 webhooks {obj}"
        row, state = rows.get(obj), rt.stores.activity.subscription(f"servicem8.{obj}") or ""
        if row is not None and row_active(row):
            lines.append(Line("ok", what, "subscribed, active"))
        elif row is not None:
            why = str(row.get("last_failure_reason") or "no reason given")
            todo = "make the receiver answer, then run 'sm8cd webhooks subscribe'"
            lines.append(Line("fail", what, f"ServiceM8 turned it off ({why}): its changes wait "
                              "for the poll", todo))  # fmt: skip
        elif state.startswith(POLL_ONLY):
            lines.append(Line("ok", what, f"{state}; polled instead, as planned"))
        else:
            lines.append(Line("warn", what, "not subscribed: its changes wait for the poll",
                              subscribe))  # fmt: skip
    try:
        hooked = coredination_subscribed(rt)
    except ApiError as exc:
        return [*lines, Line("warn", "Coredination webhook", f"cannot be listed: {exc}",
                             subscribe)]  # fmt: skip
    if hooked:
        lines.append(Line("ok", "Coredination webhook", "subscribed"))
    else:
        lines.append(Line("warn", "Coredination webhook", "not subscribed: its changes wait for "
                          "the poll", subscribe))  # fmt: skip
    return lines


def staff_lines(rt: Runtime, users: list[CdUser] | None) -> list[Line]:
    """Who has a Coredination user and who has none, from both lists as they are now (what the
    next match would make of them) and the links made by hand. ``users``: as ``check`` read
    them; None when it could not."""
    what = "staff"
    try:
        staff = staff_people(rt.sm8.list_staff())
    except ApiError as exc:
        return [Line("warn", what, f"cannot be listed: {exc}", "see the ServiceM8 line above")]
    if users is None:
        todo = "link each one: 'sm8cd staff link STAFF_UUID USER_ID'"
        return [Line("warn", what, "Coredination's users cannot be listed: staff are matched "
                     "only by hand", todo)]  # fmt: skip
    outcome = staff_outcome(staff, user_people(users), rt.stores.staff.staff_map())
    active = outcome.by_email + outcome.by_hand + outcome.unlinked_by_hand + len(outcome.unmatched)
    told = (f"{outcome.by_email + outcome.by_hand} of {active} active staff have a Coredination "
            f"user ({outcome.by_email} by e-mail, {outcome.by_hand} by hand"
            + (f"; {outcome.unlinked_by_hand} unlinked by hand" if outcome.unlinked_by_hand
               else "") + ")")  # fmt: skip
    if not outcome.unmatched:
        return [Line("ok", what, told)]
    lines = [Line("warn", what, f"{told}; {len(outcome.unmatched)} unmatched: their bookings "
                  "wait as pending", "for each line below")]  # fmt: skip
    for gone in outcome.unmatched[:UNMATCHED_SHOWN]:
        member, near = gone.member, gone.nearest
        seen = f"{member.name or '?'} <{member.email or 'no e-mail'}>: {gone.why}"
        link = f"'sm8cd staff link {member.id} {near.id if near else 'USER_ID'}'"
        if near is not None:
            seen += f"; nearest: {near.email} (user {near.id}, {near.name})"
            todo = f"correct the e-mail on one side, or link by hand: {link}"
        else:
            todo = f"add a Coredination user with this e-mail, or link by hand: {link}"
        lines.append(Line("warn", "unmatched staff", seen, todo))
    if len(outcome.unmatched) > UNMATCHED_SHOWN:
        more = len(outcome.unmatched) - UNMATCHED_SHOWN
        lines.append(Line("warn", "unmatched staff", f"and {more} more",
                          "'sm8cd staff list' shows every one"))  # fmt: skip
    return lines
