"""The trail: what one sync of a job saw, decided and wrote, as a compact versioned record, and
its reading in plain sentences (``sm8cd explain``). Pure: no I/O.

A sync fills a ``Draft`` as it goes (each pair's plan once applied, each write with its answer);
``Draft.entry`` freezes it into an ``Entry``, which ``encode`` turns into a few hundred bytes of
JSON with short keys and ``decode`` reads back, stepping over a version it does not know (a
newer release's entry during a rolling upgrade). No free text is kept beyond the rules' own
reasons and the APIs' messages, and no secret ever reaches an entry: it holds ids, presences,
times and answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any

from mappings.plan import PairPlan
from mappings.state import PairSnapshot

VERSION = 1
KEEP = 12  # entries per job, newest first
KEEP_DAYS = 30  # a job's trail expires this long after its last entry
MESSAGE_CHARS = 200  # an API's message, at most
LEFT_OUT = "skipped.out_of_scope."


@dataclass(frozen=True)
class Write:
    """One write the sync sent: what, to which record, and its answer (``ok``, ``ignored``,
    ``moved``, or the error that stopped it)."""

    what: str
    target: str
    answer: str = "ok"


@dataclass(frozen=True)
class Booking:
    """One ServiceM8 booking the pair was decided on."""

    uuid: str
    fixed: bool
    edited_ms: int | None
    by_person: bool  # its last change is a person's, not the bridge's own write read back


@dataclass(frozen=True)
class Pair:
    """One (job, staff member) pair: what each side said, the rule, the writes."""

    staff: str
    user: int | None
    bookings: tuple[Booking, ...] = ()
    sm8: tuple[str, int | None] | None = None  # presence, when a person last changed it
    cd: tuple[str | None, str, int | None] | None = None  # state, presence, event time
    before: tuple[str, str] | None = None  # the snapshot the sync started from
    after: tuple[str, str] | None = None  # the snapshot it left
    rule: str = ""  # in_step | push | pull | held | pending | left_out | unknown | none
    reason: str = ""  # the decision's own words, or the parked reason
    writes: tuple[Write, ...] = ()


@dataclass(frozen=True)
class Entry:
    at_ms: int
    trigger: str  # webhook | poll | backlog | command
    verdicts: tuple[str, ...] = ()  # the job-level outcomes (``skipped.…``, ``pending.…``)
    job: tuple[Write, ...] = ()  # the Coredination job's own writes
    pairs: tuple[Pair, ...] = ()
    error: str | None = None  # the error that ended the sync, if one did

    @property
    def decided(self) -> bool:
        """Worth keeping: something was written, refused, or decided about a pair (an echo
        found in step included: "why did nothing happen" is a question too). A job left out of
        scope as a whole and nothing else keeps none: ``explain`` tells that from the job itself,
        and the history of a large account costs no trail."""
        scope_only = all(v.startswith(LEFT_OUT) for v in self.verdicts)
        return bool(self.job or self.error or self.pairs or not scope_only)


@dataclass
class Draft:
    """A sync's trail as it is made (``report.trail``)."""

    pairs: dict[str, Pair] = field(default_factory=dict)
    job: list[Write] = field(default_factory=list)
    number: str | None = None  # the ServiceM8 job's number, where known
    _writes: dict[str, list[Write]] = field(default_factory=dict)

    def wrote(self, staff: str | None, write: Write) -> None:
        """A write sent for ``staff``'s pair (None: the job's own)."""
        if staff is None:
            self.job.append(write)
        else:
            self._writes.setdefault(staff, []).append(write)

    def decided(self, plan: PairPlan, before: PairSnapshot | None) -> None:
        """A pair's plan, once applied (its snapshot and parking as they ended); ``before``:
        the snapshot the sync started from."""
        s, c = plan.sm8_side, plan.cd_side
        sm8 = None if s is None else (s.presence.value, s.changed_ms)
        cd = None if c is None else (plan.state, c.presence.value, c.changed_ms)
        pair = Pair(
            plan.staff, plan.user,
            bookings=tuple(Booking(a.uuid, a.fixed, a.edited_ms, a.changed_by_person)
                           for a in plan.bookings),
            sm8=sm8, cd=cd, before=_snap(before), after=_snap(plan.snapshot),
            rule=_rule(plan), reason=_reason(plan),
            writes=tuple(self._writes.get(plan.staff, ())),
        )  # fmt: skip
        prior = self.pairs.get(plan.staff)
        if prior is not None:  # decided again in the same sync (after the job's time moved)
            if pair.rule in ("in_step", "none"):  # the first decision is the story
                pair = replace(prior, after=pair.after, writes=pair.writes)
            else:
                pair = replace(pair, before=prior.before)
        self.pairs[plan.staff] = pair

    def entry(
        self, at_ms: int, trigger: str, counts: Mapping[str, int], error: str | None = None
    ) -> Entry:
        verdicts = tuple(sorted(k for k, n in counts.items() if n and _verdict(k)))
        pairs = dict(self.pairs)
        for staff, writes in self._writes.items():  # a pair cut short by an error
            if staff not in pairs:
                pairs[staff] = Pair(staff, None, rule="none", writes=tuple(writes))
        return Entry(at_ms, trigger, verdicts, tuple(self.job), tuple(pairs.values()),
                     None if error is None else error[:MESSAGE_CHARS])  # fmt: skip


def _snap(snapshot: PairSnapshot | None) -> tuple[str, str] | None:
    return None if snapshot is None else (snapshot.sm8.value, snapshot.cd.value)


def _rule(plan: PairPlan) -> str:
    if plan.skipped == "held.at_work":
        return "held"
    if plan.skipped and plan.skipped.startswith("pending."):
        return "pending"
    if plan.skipped and plan.skipped.startswith("skipped.out_of_scope"):
        return "left_out"
    if plan.skipped == "skipped.unknown_resource_state":
        return "unknown"
    return plan.direction


def _reason(plan: PairPlan) -> str:
    if plan.park is not None and plan.park.reason:
        return plan.park.reason
    return plan.reason


def _verdict(counter: str) -> bool:
    return counter.startswith(("skipped.", "pending.", "coredination.job_recreated"))


# --- the record ------------------------------------------------------------------------------
def encode(entry: Entry) -> bytes:
    record: dict[str, Any] = {"v": VERSION, "at": entry.at_ms, "by": entry.trigger}
    if entry.verdicts:
        record["o"] = list(entry.verdicts)
    if entry.job:
        record["j"] = [_write_out(w) for w in entry.job]
    if entry.pairs:
        record["p"] = [_pair_out(p) for p in entry.pairs]
    if entry.error:
        record["e"] = entry.error
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes) -> Entry | None:
    """The entry, or None for one this release cannot read (a newer version, or damaged)."""
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or record.get("v") != VERSION:
            return None
        return Entry(
            int(record["at"]), str(record["by"]), tuple(record.get("o", ())),
            tuple(_write_in(w) for w in record.get("j", ())),
            tuple(_pair_in(p) for p in record.get("p", ())), record.get("e"),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _write_out(w: Write) -> list[str]:
    return [w.what, w.target] if w.answer == "ok" else [w.what, w.target, w.answer]


def _write_in(w: Sequence[str]) -> Write:
    return Write(w[0], w[1], w[2] if len(w) > 2 else "ok")


def _pair_out(p: Pair) -> dict[str, Any]:
    out: dict[str, Any] = {"s": p.staff, "r": p.rule}
    optional = {
        "u": p.user, "m": p.reason or None, "sm": p.sm8, "cd": p.cd, "b4": p.before,
        "af": p.after, "w": [_write_out(w) for w in p.writes] or None,
        "bk": [[b.uuid, int(b.fixed), b.edited_ms, int(b.by_person)] for b in p.bookings] or None,
    }  # fmt: skip
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def _pair_in(p: Mapping[str, Any]) -> Pair:
    def pair_of(value: Any) -> tuple[str, str] | None:
        return None if value is None else (str(value[0]), str(value[1]))

    sm8, cd = p.get("sm"), p.get("cd")
    return Pair(
        str(p["s"]), p.get("u"),
        bookings=tuple(Booking(b[0], bool(b[1]), b[2], bool(b[3])) for b in p.get("bk", ())),
        sm8=None if sm8 is None else (str(sm8[0]), sm8[1]),
        cd=None if cd is None else (cd[0], str(cd[1]), cd[2]),
        before=pair_of(p.get("b4")), after=pair_of(p.get("af")),
        rule=str(p["r"]), reason=str(p.get("m", "")),
        writes=tuple(_write_in(w) for w in p.get("w", ())),
    )  # fmt: skip


# --- the story ---------------------------------------------------------------------------------
TRIGGERS = {
    "webhook": "a webhook",
    "poll": "a poll",
    "backlog": "the backlog",
    "command": "a command",
}
VERDICTS = {
    "skipped.out_of_scope.history": "Left out: every booking is history (before the horizon).",
    "skipped.out_of_scope.excluded": "Left out: the job is excluded by hand.",
    "skipped.out_of_scope.status": "Left out: its job status is not synced.",
    "skipped.out_of_scope.category": "Left out: its category is not synced.",
    "skipped.out_of_scope.staff": "Left out: a staff member left out of scope.",
    "skipped.deleted_in_coredination": "Left alone: a dispatcher deleted the job in Coredination,"
    " and no booking changed in ServiceM8 since.",
    "skipped.job_missing": "Left alone: the job is not found in ServiceM8.",
    "skipped.nothing_to_link": "Nothing to link: no live booking.",
    "pending.job_list": "Waiting: the first poll has not read the job list yet; the job syncs"
    " once it has.",
    "skipped.state_refused": "Coredination refused the job's state override.",
    "skipped.not_in_step": "Some pairs could not be brought in step by a write.",
    "coredination.job_recreated": "The Coredination job was created again: a booking changed in"
    " ServiceM8 after its deletion.",
    "pending.unmapped_user": "A Coredination user on the job has no ServiceM8 staff member.",
}


def sentences(entry: Entry, tz: tzinfo, names: Mapping[str, str] | None = None) -> list[str]:
    """One entry's story, in order: the trigger, the job's verdicts and writes, then each pair:
    what ServiceM8 said, what Coredination said, the rule that decided, each write and its
    answer. ``names``: staff uuid → a person's name, where known."""
    names = names or {}
    lines = [
        f"{_clock(entry.at_ms, tz, day=True)}, after {TRIGGERS.get(entry.trigger, entry.trigger)}:"
    ]
    lines += [
        VERDICTS.get(v, v) for v in entry.verdicts if not v.startswith("skipped.out_of_scope.staff")
    ]
    lines += [f"Job: {w.what} {w.target} ({w.answer})." for w in entry.job]
    for pair in entry.pairs:
        lines.append(_pair_story(pair, tz, names.get(pair.staff) or f"staff {pair.staff[:8]}"))
    if entry.error:
        lines.append(f"Stopped: {entry.error}")
    return lines


def _pair_story(pair: Pair, tz: tzinfo, who: str) -> str:
    parts = [f"{who}:"]
    if pair.sm8 is not None:
        booked = ", ".join(_booking(b, tz) for b in pair.bookings) or "no booking in scope"
        parts.append(f"ServiceM8 said {pair.sm8[0]} ({booked}).")
    if pair.cd is not None:
        state, presence, at = pair.cd
        when = f", event {_clock(at, tz)}" if at else ""
        parts.append(f"Coredination said {presence} (resource {state or 'none'}{when}).")
    parts.append(_rule_story(pair, tz))
    parts += [f"{_write_text(w)} ({w.answer})." for w in pair.writes]
    return " ".join(parts)


def _rule_story(pair: Pair, tz: tzinfo) -> str:
    if pair.rule == "in_step":
        if pair.before is not None and pair.after == pair.before:
            return "In step as at the last sync (an echo, or nothing changed): nothing to write."
        return "In step: nothing to write."
    if pair.rule == "held":
        return f"Held: {pair.reason}."
    if pair.rule == "pending":
        return f"Pending: {pair.reason}."
    if pair.rule == "left_out":
        return "Left out of scope."
    if pair.rule == "unknown":
        return f"Left alone: {pair.reason}."
    if pair.rule in ("push", "pull"):
        winner = "ServiceM8" if pair.rule == "push" else "Coredination"
        if "both sides" in pair.reason or "first sight" in pair.reason:
            sm8_at = pair.sm8[1] if pair.sm8 else None
            cd_at = pair.cd[2] if pair.cd else None
            if sm8_at is not None and sm8_at == cd_at:
                return (f"Changed on both sides at the same time ({_clock(sm8_at, tz)}): a tie, "
                        f"which the tie rule gives to {winner}.")  # fmt: skip
            return (f"Changed on both sides (ServiceM8 {_clock(sm8_at, tz)}, Coredination "
                    f"{_clock(cd_at, tz)}): the later change wins: {winner}.")  # fmt: skip
        return f"{pair.reason[:1].upper()}{pair.reason[1:]}: {winner}'s side is taken."
    return "Nothing decided."


def _write_text(w: Write) -> str:
    return f"{w.what[:1].upper()}{w.what[1:]} {w.target}"


def _booking(b: Booking, tz: tzinfo) -> str:
    kind = "activity" if b.fixed else "allocation"
    who = "" if b.by_person else ", the bridge's own"
    changed = f", changed {_clock(b.edited_ms, tz)}" if b.edited_ms else ""
    return f"{kind} {b.uuid[:8]}{changed}{who}"


def _clock(ms: int | None, tz: tzinfo, day: bool = False) -> str:
    if ms is None:
        return "unknown"
    stamp = datetime.fromtimestamp(ms / 1000, tz)
    return stamp.strftime("%Y-%m-%d %H:%M:%S" if day else "%H:%M:%S")
