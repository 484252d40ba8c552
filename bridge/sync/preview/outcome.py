"""What a preview found, grouped as an operator reads it (docs/preview.md): pairs to link as
they are, Coredination jobs to create, update or delete, people to put on or take off them,
ServiceM8 bookings to create, update or delete, staff with no Coredination user, jobs left out
and why, and the calls the sync will make with the time they take at the account's budget.

Pure: built from the writes the preview recorded and the scratch state it left, no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from bridge.sync.preview.ports import PlannedWrite
from bridge.sync.staff import Unmatched

OUT_OF_SCOPE = "skipped.out_of_scope."
RESOURCE_OPS = ("schedule", "assign", "unschedule", "unassign")
# A ServiceM8 delete is sent only to a booking read as active just before
# (docs/servicem8-api.md#delete): two calls.
CALLS_PER_WRITE = {"joballocation.delete": 2, "jobactivity.delete": 2}


class Window(Protocol):
    """A budget window (``bridge.http.budget.Window``): ``limit`` calls in any ``span`` s."""

    @property
    def limit(self) -> int: ...

    @property
    def span(self) -> float: ...


@dataclass(frozen=True)
class Link:
    """A pair already in step on both sides: linked by the sync without a write."""

    job: str
    staff: str
    user: int | None


@dataclass(frozen=True)
class Calls:
    """One API's calls in the sync, and how long they take at its budget."""

    reads: int
    writes: int
    seconds: float

    @property
    def total(self) -> int:
        return self.reads + self.writes


@dataclass
class Preview:
    """The outcome of a preview. ``writes``: every write the sync would send, in order, each
    with its job; ``jobs``: each synced job's report; ``names``: staff uuid or user id → name
    and e-mail, for the reader."""

    writes: list[PlannedWrite]
    jobs: dict[str, Counter[str]]
    counts: Counter[str]
    links: list[Link]
    unmatched: list[Unmatched]
    users_listed: bool
    calls: dict[str, Calls]
    job_numbers: dict[str, str] = field(default_factory=dict)
    names: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- the groups ----------------------------------------------------------------------------
    def of(self, api: str, *operations: str) -> list[PlannedWrite]:
        """The writes of ``api`` whose operation ends with one of ``operations``
        (``create`` for ``joballocation.create`` and ``jobactivity.create``)."""
        return [
            w for w in self.writes if w.api == api and w.operation.rsplit(".", 1)[1] in operations
        ]

    def cd_jobs(self, kind: str) -> list[PlannedWrite]:
        """Coredination jobs to ``create``, ``update`` or ``delete``: each job once."""
        if kind == "delete":
            return self.of("coredination", "delete")
        puts = [w for w in self.of("coredination", "put") if w.creates == (kind == "create")]
        first: dict[str, PlannedWrite] = {}
        for write in puts:
            first.setdefault(write.target, write)
        created = {w.target for w in self.of("coredination", "put") if w.creates}
        return [w for w in first.values() if kind == "create" or w.target not in created]

    def left_out(self) -> dict[str, list[str]]:
        """Jobs the sync leaves alone, by reason (scope's: history, status, category, excluded,
        staff); a job with more than one is under each."""
        out: dict[str, list[str]] = {}
        for job, counts in sorted(self.jobs.items()):
            for name in counts:
                if name.startswith(OUT_OF_SCOPE):
                    out.setdefault(name[len(OUT_OF_SCOPE) :], []).append(job)
        return out

    def failed(self) -> dict[str, str]:
        return {
            job: ", ".join(k.split(".", 1)[1] for k in counts if k.startswith("failed."))
            for job, counts in sorted(self.jobs.items())
            if any(k.startswith("failed.") for k in counts)
        }

    def other_skips(self) -> dict[str, int]:
        """Pairs and jobs left for another reason (a person not mapped, a job deleted in
        Coredination…), by the sync's counter."""
        return {
            k: n
            for k, n in sorted(self.counts.items())
            if k.startswith(("skipped.", "pending.", "held.")) and not k.startswith(OUT_OF_SCOPE)
        }

    def summary(self) -> str:
        """One line of counts: what ``sm8cd doctor`` and the demo say of the next sync."""
        people = len(self.of("coredination", "schedule", "assign"))
        off = len(self.of("coredination", "unschedule", "unassign"))
        left = self.left_out()
        why = ", ".join(f"{reason} {len(jobs)}" for reason, jobs in sorted(left.items()))
        calls = sum(c.total for c in self.calls.values())
        seconds = max((c.seconds for c in self.calls.values()), default=0.0)
        return (
            f"{len(self.links)} pair(s) to link as they are; Coredination jobs: "
            f"{len(self.cd_jobs('create'))} to create, {len(self.cd_jobs('update'))} to update; "
            f"people: {people} to put on, {off} to take off; ServiceM8 bookings: "
            f"{len(self.of('servicem8', 'create', 'update', 'delete'))} to write; "
            f"jobs left out: {sum(len(v) for v in left.values())}"
            + (f" ({why})" if why else "")
            + f"; {calls} call(s), about {seconds:.0f} s at the budget"
        )

    # --- as data -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def write(w: PlannedWrite) -> dict[str, Any]:
            row = asdict(w)
            row["job_number"] = self.job_numbers.get(w.job or "")
            if w.user is not None:
                row["user_name"] = self.names.get(f"u:{w.user}", {}).get("name")
            staff = w.fields.get("staff_uuid")
            if staff:
                row["staff_name"] = self.names.get(str(staff), {}).get("name")
            return row

        return {
            "link": [asdict(link) for link in self.links],
            "coredination": {
                kind: [write(w) for w in self.cd_jobs(kind)]
                for kind in ("create", "update", "delete")
            },
            "people": {op: [write(w) for w in self.of("coredination", op)] for op in RESOURCE_OPS},
            "servicem8": {
                kind: [write(w) for w in self.of("servicem8", kind)]
                for kind in ("create", "update", "delete")
            },
            "unmatched_staff": [_unmatched(u) for u in self.unmatched],
            "users_listed": self.users_listed,
            "left_out": self.left_out(),
            "other_skips": self.other_skips(),
            "failed": self.failed(),
            "calls": {api: {**asdict(c), "total": c.total} for api, c in self.calls.items()},
            "writes": [write(w) for w in self.writes],
            "counts": dict(sorted(self.counts.items())),
        }


def _unmatched(gone: Unmatched) -> dict[str, Any]:
    near = gone.nearest
    return {
        "staff": gone.member.id,
        "name": gone.member.name,
        "email": gone.member.email,
        "why": gone.why,
        "nearest": None
        if near is None
        else {"user": int(near.id), "email": near.email, "name": near.name},
    }


def budget_seconds(calls: int, windows: Iterable[Window]) -> float:
    """How long ``calls`` take at a budget of moving windows, from an unused one: each window
    lets its limit through at once and as many again each span later (docs/how-it-works.md's
    budget; no latency counted)."""
    return max(
        (max(0, math.ceil(calls / w.limit) - 1) * w.span for w in windows if w.limit), default=0.0
    )


def estimate(
    sent: Mapping[tuple[str, str], int],
    writes: Sequence[PlannedWrite],
    own_reads: int,
    answered: int,
    windows: Mapping[str, Sequence[Window]],
) -> dict[str, Calls]:
    """The sync's calls per API: the reads the preview sent (less those it made only to answer
    a write), the reads its record answered (read-backs), and the writes; each API's time at
    its budget."""
    out: dict[str, Calls] = {}
    for api in ("servicem8", "coredination"):
        reads = sum(n for (a, _op), n in sent.items() if a == api)
        mine = [w for w in writes if w.api == api]
        extra = sum(CALLS_PER_WRITE.get(w.operation, 1) - 1 for w in mine)
        if api == "coredination":
            reads += answered - own_reads
        total = reads + extra + len(mine)
        out[api] = Calls(reads + extra, len(mine), budget_seconds(total, windows.get(api, ())))
    return out


def in_step_links(
    jobs: Iterable[str],
    before: Mapping[str, Iterable[str]],
    after: Mapping[str, Mapping[str, int | None]],
    written: Mapping[str, set[str]],
) -> list[Link]:
    """Pairs the sync links as they are: a snapshot it would keep that was not kept before,
    for a person it writes nothing for. ``before``: each job's pairs (staff) kept now;
    ``after``: the pairs the preview kept, staff → user; ``written``: the staff written for."""
    links = []
    for job in jobs:
        had = set(before.get(job, ()))
        for staff, user in sorted(after.get(job, {}).items()):
            if staff not in had and staff not in written.get(job, set()):
                links.append(Link(job, staff, user))
    return links
