"""What each stored probe reading means for going live (docs/probe.md), as ``sm8cd doctor``
lines: ok where the bridge works either way, warn where it works with less, fail where it must
not go live. Reads what ``sm8cd probe`` stored; asks no API."""

from __future__ import annotations

from typing import Any

from bridge.ops.readiness import Level, Line

Said = tuple[Level, str, str]  # how it stands, what the reading means, what to do
ANY = "*"  # any reading of the question
PROBE = "run 'sm8cd probe' (read-only, about fifteen calls), then 'sm8cd probe --writes'"
NO_DATE = "do not go live before this is settled with ServiceM8"

# (system, name) → reading → what it means; the questions are docs/probe.md's tables. A reading
# of None is the probe's "could not settle it", except for api_key_subscriptions, which a probe
# with writes leaves None when ServiceM8 refused every object.
MEANINGS: dict[tuple[str, str], dict[Any, Said]] = {
    ("servicem8", "record_uuid_header"): {
        "echo": ("ok", "ServiceM8 keeps the ids the bridge gives bookings: each is made once", ""),
        "server": ("fail", "ServiceM8 replaces the ids the bridge gives: every booking the bridge "
                   "creates fails (UuidNotKept)", NO_DATE),
        None: ("warn", "not settled: whether ServiceM8 keeps the ids the bridge gives bookings",
               "run 'sm8cd probe --writes'"),
    },
    ("servicem8", "allocation_webhooks"): {
        True: ("ok", "job allocations can be subscribed: polled less while webhooks come", ""),
        False: ("ok", "job allocations are poll-only, as expected: the poll plan spends the "
                "budget on them", ""),
    },
    ("servicem8", "edit_date_filter_joballocation"): {
        True: ("ok", "job allocations are polled for changes only", ""),
        False: ("fail", "job allocations cannot be polled for changes only", "ask ServiceM8"),
        "ignored": ("warn", "job allocations' change filter is accepted and ignored: each poll "
                    "reads them all, within the poll plan", "ask ServiceM8"),
    },
    ("servicem8", "edit_date_filter_jobactivity"): {
        True: ("ok", "job activities are polled for changes only", ""),
        False: ("fail", "job activities cannot be polled for changes only", "ask ServiceM8"),
        "ignored": ("warn", "job activities' change filter is accepted and ignored: each poll "
                    "reads them all, within the poll plan", "ask ServiceM8"),
    },
    ("servicem8", "empty_clears"): {
        True: ("ok", "an empty value clears a field: completed bookings can be reopened", ""),
        False: ("warn", "completed bookings cannot be reopened from Coredination",
                "reopen such a booking in ServiceM8 by hand when it happens"),
    },
    ("servicem8", "api_key_subscriptions"): {
        True: ("ok", "this app may subscribe webhooks", ""),
        None: ("warn", "ServiceM8 refused this app's webhooks: every change waits for its poll",
               "ask ServiceM8 to allow webhooks for the add-on"),
    },
    ("servicem8", "refusal_as_success"): {ANY: ("ok", "read as a refusal however it comes", "")},
    ("servicem8", "null_clears"): {ANY: ("ok", "the bridge clears dates with an empty value", "")},
    ("servicem8", "delete_restores"): {
        ANY: ("ok", "the bridge reads a record before each DELETE: none is sent twice", ""),
    },
    ("servicem8", "urgent_windows"): {ANY: ("ok", "windows starting where they end: all day", "")},
    ("coredination", "users_endpoint"): {
        True: ("ok", "Coredination lists its users: staff are matched by e-mail", ""),
        False: ("warn", "Coredination has no users list: staff cannot be matched by e-mail",
                "link each staff member: 'sm8cd staff link STAFF_UUID USER_ID'"),
    },
    ("coredination", "unassign"): {
        True: ("ok", "unassign exists", ""),
        False: ("ok", "no unassign: the bridge sends unschedule instead, at once", ""),
    },
    ("coredination", "stamps"): {
        "none": ("ok", "jobs carry no change stamp: the cursor moves by the list's time", ""),
        ANY: ("ok", "jobs carry their change stamp: polls read changes only", ""),
    },
    ("coredination", "resource_shape"): {ANY: ("ok", "people on a job are read either way", "")},
    ("coredination", "missing_status"): {ANY: ("ok", "a missing operation is read as missing", "")},
}  # fmt: skip


def reading_lines(found: dict[str, Any] | None, now: float) -> list[Line]:
    """One line for the probe as a whole, then one per stored reading that means something
    for going live; an unsettled reading that matters says how to settle it."""
    if found is None:
        return [Line("warn", "probe", "never run here: the bridge assumes the harder reading "
                     "of every open question", PROBE)]  # fmt: skip
    days = max(0.0, now - float(found.get("probed_at") or now)) / 86400
    when = f"run {days:.0f} day(s) ago" if days >= 1 else "run today"
    lines = [
        Line("ok", "probe", f"{when}, with writes")
        if found.get("writes")
        else Line("warn", "probe", f"{when}, read-only: the questions that need writes are "
                  "unsettled", "run 'sm8cd probe --writes' (records of its own, removed again)")
    ]  # fmt: skip
    for finding in found.get("findings") or []:
        key = (str(finding.get("system")), str(finding.get("name")))
        table, reading = MEANINGS.get(key), finding.get("reading")
        if table is None:
            continue  # a question no probe settles (day_reset, schedule_finished)
        # Unsettled (None) says something only where the table says what; else it is left
        # to the probe's own line (read-only, or a question it could not reach).
        said = table.get(reading, table.get(ANY) if reading is not None else None)
        if said is not None:
            level, meaning, todo = said
            detail = meaning if reading is None else f"{reading!r}: {meaning}"
            lines.append(Line(level, f"probe {key[1]}", detail, todo))
    for record in found.get("left_behind") or []:
        lines.append(Line("warn", "probe left behind", str(record),
                          "remove it by hand (it is marked as a probe record)"))  # fmt: skip
    return lines
