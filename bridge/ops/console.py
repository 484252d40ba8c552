"""What the operator console's pages show (``bridge/web/console``), from Redis alone: no API
call, and a fixed number of Redis commands per page whatever the account's (or fleet's) size.

- ``fleet``: a page of the registry's connections (``fleet_status`` over ``PAGE`` of them).
- ``connection``: one connection's overview (``bridge.store.overview``): pending staff with the
  users they could be linked to, parked pairs and jobs with reasons, dead letters, excluded jobs,
  subscriptions, its ServiceM8 budget use.
- the job page is ``bridge.ops.explain.tell``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.config import Settings
from bridge.connections.registry import ConnectionRegistry
from bridge.ops.fleet_status import FleetStatus, fleet_status
from bridge.ops.subscriptions import SUBSCRIBED
from bridge.store import Stores
from bridge.store.budget import SlotWindow, short_window
from bridge.store.overview import Overview, OverviewStore, Some
from bridge.sync.context import SYSTEMS, polled

PAGE = 50  # connections per fleet page


def zone(settings: Settings, stores: Stores) -> tzinfo:
    """The account's zone, as configured or as the bridge last read it; UTC before either."""
    name = settings.servicem8_timezone or stores.activity.known_timezone()
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def fleet(registry: ConnectionRegistry, page: int, now: float | None = None) -> FleetStatus:
    """Page ``page`` (from 0) of the fleet, ``PAGE`` connections at most."""
    return fleet_status(registry, now, rows=slice(page * PAGE, (page + 1) * PAGE))


@dataclass
class PendingPerson:
    """A ServiceM8 staff member the map cannot place yet, with the pairs it holds parked."""

    staff: str
    name: str
    email: str | None
    pairs: int
    reason: str


@dataclass
class ConnectionView:
    id: str
    overview: Overview
    tz: tzinfo
    pending_people: list[PendingPerson] = field(default_factory=list)
    users: list[tuple[int, str]] = field(default_factory=list)  # unlinked users: id, label
    budget: list[dict[str, Any]] = field(default_factory=list)
    polls: dict[str, float | None] = field(default_factory=dict)  # system → seconds ago
    subscriptions: dict[str, str | None] = field(default_factory=dict)

    def when(self, at: Any) -> str:
        """A stored time (seconds since the epoch) in the account's zone."""
        try:
            stamp = datetime.fromtimestamp(float(at), self.tz)
        except (TypeError, ValueError):
            return "-"
        return stamp.strftime("%Y-%m-%d %H:%M:%S")

    def name(self, staff: str) -> str:
        info = self.overview.staff.get(staff) or {}
        return str(info.get("name") or info.get("email") or staff[:8])


def connection(stores: Stores, settings: Settings, now: float | None = None) -> ConnectionView:
    now = time.time() if now is None else now
    seen = OverviewStore(stores.redis, stores.keys).read()
    view = ConnectionView(stores.keys.connection, seen, zone(settings, stores))
    people: dict[str, list[str]] = {}
    for pair, held in seen.pending.rows.items():
        _, _, who = pair.partition("|")
        if not who.startswith("u:") and who not in seen.staff_to_user:
            people.setdefault(who, []).append(str((held or {}).get("reason") or ""))
    for who, reasons in sorted(people.items(), key=lambda kv: view.name(kv[0])):
        info = seen.staff.get(who) or {}
        view.pending_people.append(PendingPerson(who, view.name(who), info.get("email"),
                                                 len(reasons), reasons[0]))  # fmt: skip
    linked = set(seen.staff_to_user.values())
    view.users = sorted(
        ((int(uid), str(info.get("name") or info.get("email") or uid))
         for uid, info in seen.users.items() if uid.isdigit() and int(uid) not in linked),
        key=lambda u: u[1].lower(),
    )  # fmt: skip
    view.budget = _budget(stores, settings, seen, now)
    view.polls = {
        system: round(now - float(at), 1) if at else None
        for system in SYSTEMS
        for at in [seen.cursors.get(polled(system))]
    }
    view.subscriptions = {name: seen.cursors.get(f"subscription:{name}") for name in SUBSCRIBED}
    return view


def _budget(stores: Stores, settings: Settings, seen: Overview, now: float) -> list[dict[str, Any]]:
    """ServiceM8 calls in its minute and day windows, of the account the budget belongs to."""
    account = seen.accounts.get("servicem8") or seen.accounts.get("servicem8~stand-in")
    if account is None:
        return []
    margin = settings.budget_margin_seconds
    minute = settings.servicem8_rate_window_seconds
    rows = []
    for key, name, limit, seconds in (
        (short_window(minute), f"the last {minute:g} s", settings.servicem8_rate_per_minute,
         minute),
        ("day", "the last 24 h", settings.servicem8_rate_per_day, 86_400),
    ):  # fmt: skip
        window = SlotWindow(key, limit, limit, seconds + margin)
        used, _ = stores.budget.slots_used("servicem8", account, window, now)
        rows.append({"window": name, "used": used, "limit": limit})
    return rows


__all__ = ["PAGE", "ConnectionView", "PendingPerson", "Some", "connection", "fleet", "zone"]
