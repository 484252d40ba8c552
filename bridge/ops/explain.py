"""Why a job is as it is, for ``sm8cd explain`` and the console's job page: the trail's entries
(``mappings.trail``), the pairs now, anything parked, and for a job without a trail why not
(unknown, out of scope, waiting). Reads Redis only: a fixed number of commands for one job
(the staff directory for names, the job's record and trail, its pairs' parked entries)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import tzinfo
from typing import Any

from bridge.store import Stores
from bridge.store.codec import id_bytes
from bridge.sync.context import CD_DELETED
from mappings.plan import in_scope
from mappings.scope import HISTORY, Scope
from mappings.state import JobRecord
from mappings.trail import LEFT_OUT, VERDICTS, Entry, decode, sentences


class UnknownJob(LookupError):
    """Nothing the bridge knows goes by that reference."""


@dataclass
class Story:
    job: str
    heading: str
    record: JobRecord
    tz: tzinfo
    names: dict[str, str]
    excluded: bool = False
    note: str | None = None  # why there is no trail, when there is none
    entries: list[Entry] = field(default_factory=list)
    unreadable: int = 0
    parked: dict[str, dict[str, Any]] = field(default_factory=dict)  # who → {reason, since}

    def told(self) -> list[list[str]]:
        """Each entry's sentences, oldest first."""
        return [sentences(entry, self.tz, self.names) for entry in self.entries]

    def now(self) -> list[str]:
        """Each pair as it stands, then each parked pair with its reason."""
        lines = []
        for who, snap in sorted(self.record.pairs.items()):
            held = " (held)" if snap.held else ""
            lines.append(f"{self.names.get(who, who[:8])}: ServiceM8 {snap.sm8.value}, "
                         f"Coredination {snap.cd.value}{held}")  # fmt: skip
        for who, held_by in sorted(self.parked.items()):
            lines.append(f"parked {self.names.get(who, who[:10])}: {held_by.get('reason')}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job, "excluded": self.excluded, "unreadable": self.unreadable,
            "entries": [asdict(e) for e in self.entries],
            "pairs": {s: {"servicem8": p.sm8.value, "coredination": p.cd.value, "held": p.held}
                      for s, p in self.record.pairs.items()},
            "parked": self.parked,
        }  # fmt: skip


def tell(
    stores: Stores,
    ref: str,
    *,
    scope: Scope,
    tz: tzinfo,
    staff: str | None = None,
    since: float = 0.0,
    now: float | None = None,
) -> Story:
    """The story of the job ``ref`` names (``resolve``); ``staff``: only that person's pairs;
    ``since``: only entries from that time (seconds since the epoch)."""
    job = resolve(stores, ref)
    record = stores.jobs.load(job)
    raw = stores.trail.entries(job)
    names = staff_names(stores)
    readable = [e for e in map(decode, raw) if e is not None]
    entries = [e for e in readable if e.at_ms >= since * 1000]
    if staff is not None:
        entries = [_only(e, staff, names) for e in entries]
    story = Story(job, heading(job, record), record, tz, names, entries=entries,
                  unreadable=len(raw) - len(readable))  # fmt: skip
    story.excluded = stores.scope.is_excluded(job)
    story.parked = _parked(stores, job, record)
    if not raw:
        now_ms = int((time.time() if now is None else now) * 1000)
        story.note = untouched(record, scope_verdict(record, scope, tz, now_ms))
    return story


def resolve(stores: Stores, text: str) -> str:
    """The ServiceM8 job uuid ``text`` names: the uuid itself, a Coredination job's uuid or id
    (by the reverse links), or a ServiceM8 job number (among jobs with a trail)."""
    ref = text.strip().lower()
    jobs = stores.jobs
    if id_bytes(ref) is not None:
        if jobs.has(ref) or stores.trail.entries(ref):
            return ref
        linked = jobs.job_for_cd(ref)
        return linked or ref  # a uuid the bridge never saw: the story says so
    if ref.isdigit():
        found = stores.trail.job_for_number(ref) or jobs.job_for_cd(ref)
        if found:
            return found
    raise UnknownJob(
        f"no job known by {text[:60]!r}: give a ServiceM8 job uuid, a Coredination "
        "job uuid or id, or the number of a ServiceM8 job the bridge has synced"
    )


def staff_names(stores: Stores) -> dict[str, str]:
    staff = stores.staff.directory("staff")
    return {k: str(v.get("name") or v.get("email") or k[:8]) for k, v in staff.items()}


def heading(sm8_job: str, record: JobRecord) -> str:
    number = record.details.number if record.details else None
    head = f"ServiceM8 job {number or '?'} ({sm8_job})"
    if record.cd is None:
        return head + ", no Coredination job"
    cd_id = f" (id {record.cd.id})" if record.cd.id is not None else ""
    return f"{head}, Coredination job {record.cd.uuid}{cd_id}"


def scope_verdict(record: JobRecord, scope: Scope, tz: tzinfo, now_ms: int) -> str | None:
    """Why the job is out of scope as a whole now, as the sync decides it (None: it is not)."""
    horizon = scope.at(now_ms, tz)
    reason = horizon.left_out(record.details)
    if reason is None and record.allocations and not in_scope(record, horizon, now_ms):
        reason = HISTORY
    return None if reason is None else VERDICTS.get(f"{LEFT_OUT}{reason}", reason)


def untouched(record: JobRecord, verdict: str | None) -> str:
    if record.empty:
        return "Unknown: the bridge has not seen this job (not polled yet, or not in ServiceM8)."
    if verdict is not None:
        return f"{verdict} No sync decides anything about it while it is."
    if record.cd is None:
        return "No sync has decided anything about it yet: it waits for its first sync."
    return "No trail kept for it (none since this release, or older than its keep time)."


def _parked(stores: Stores, job: str, record: JobRecord) -> dict[str, dict[str, Any]]:
    """The job's parked pairs, of the people it names (its bookings, its pairs, its
    Coredination resources) and the job itself deleted in Coredination: one command however many
    pairs the account has parked."""
    who = {CD_DELETED, *record.pairs}  # the job's own park too: deleted in Coredination
    who |= {a.staff_uuid for a in record.allocations.values() if a.staff_uuid}
    if record.cd is not None:
        who |= {f"u:{user}" for user in record.cd.resources}
    return stores.parked.pending_of(job, sorted(who))


def _only(entry: Entry, staff: str, names: dict[str, str]) -> Entry:
    want = staff.strip().lower()
    named = {s for s, name in names.items() if name.lower() == want}
    pairs = tuple(p for p in entry.pairs if p.staff.startswith(want) or p.staff in named)
    return Entry(entry.at_ms, entry.trigger, entry.verdicts, entry.job, pairs, entry.error)
