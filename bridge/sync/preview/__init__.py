"""The preview of the next sync (``sm8cd preview``): what the first, or next, cycle would write
to either system, found by running that cycle (``cycle.run_cycle``, the code the sync runs, not
a second reading of the rules) where nothing it writes lands:

- on a scratch copy of the connection's state (``stores``), thrown away afterwards, so the real
  store keeps its cursors, dirty marks, links and staff map as they were;
- on ports that read each API for real and record each write, answering it as the API would
  (``ports``), so nothing is sent to either system.

The caller builds both (``bridge.process.preview``: a scratch Redis, the runtime's transports
behind a meter and the shared budget, at bulk priority); this module runs the cycle and reads
back what it did (``outcome``). Must not import ``bridge.process``, ``bridge.redis`` or tasks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from uuid import UUID

from bridge.store import Stores
from bridge.sync.context import Report, SyncContext, SyncOptions
from bridge.sync.cycle import run_cycle
from bridge.sync.ports import CoredinationPort, ServiceM8Port
from bridge.sync.preview.outcome import (
    Calls,
    Link,
    Preview,
    Window,
    estimate,
    in_step_links,
)
from bridge.sync.preview.ports import (
    Metered,
    PlannedWrite,
    RecordingCoredination,
    RecordingServiceM8,
)
from bridge.sync.staff import directory_people, staff_outcome

__all__ = ["Calls", "Link", "Metered", "PlannedWrite", "Preview", "preview"]


def preview(
    stores: Stores,
    before: Stores,
    sm8: ServiceM8Port,
    cd: CoredinationPort,
    ns: UUID,
    options: SyncOptions,
    *,
    sent: Mapping[tuple[str, str], int] | None = None,
    windows: Mapping[str, Sequence[Window]] | None = None,
    clock: Callable[[], float] = time.time,
) -> Preview:
    """Run one whole cycle (staff match, both polls, every job to sync) on ``stores`` (a scratch
    copy of the connection's state, changed by the run) and on ports over ``sm8`` and ``cd``
    that send no write. ``before``: the same state as it was copied, never written, against
    which the pairs the cycle links are told apart. ``sent``: the calls the clients sent, by
    API and operation (``Metered``), read once the cycle is done; ``windows``: each API's budget
    windows, for the time the sync takes."""
    writes: list[PlannedWrite] = []
    recording_cd = RecordingCoredination(cd, writes, clock)
    ctx = SyncContext(stores, RecordingServiceM8(sm8, writes), recording_cd, ns, options, clock)
    jobs: dict[str, Counter[str]] = {}
    attributed = 0

    def synced(job: str, report: Report) -> None:
        nonlocal attributed
        # Every write of a cycle is a job sync's (polls and the staff match only read).
        writes[attributed:] = [replace(w, job=job) for w in writes[attributed:]]
        attributed = len(writes)
        jobs[job] = report.counts

    report = run_cycle(ctx, synced=synced)
    calls = estimate(
        sent if sent is not None else {},
        writes,
        recording_cd.own_reads,
        recording_cd.answered,
        windows or {},
    )
    staff_map = stores.staff.staff_map()
    staff_dir, users_dir = stores.staff.directory("staff"), stores.staff.directory("users")
    users_listed = stores.staff.last_match().get("users") == "listed"
    unmatched = []
    if users_listed:
        unmatched = staff_outcome(
            directory_people(staff_dir), directory_people(users_dir), staff_map
        ).unmatched
    after = {job: stores.jobs.load(job) for job in jobs}
    written: dict[str, set[str]] = {}
    for w in writes:
        record = after.get(w.job or "")
        if record is None:
            continue
        if w.user is not None:
            staff = staff_map.u2s.get(w.user)
        else:
            fact = record.allocations.get(w.target)
            staff = fact.staff_uuid if fact is not None else w.fields.get("staff_uuid")
        if staff:
            written.setdefault(record.uuid, set()).add(str(staff).lower())
    links = in_step_links(
        sorted(jobs),
        {job: before.jobs.load(job).pairs for job in jobs},
        {job: {s: staff_map.s2u.get(s) for s in record.pairs} for job, record in after.items()},
        written,
    )
    numbers = {
        job: r.details.number
        for job, r in after.items()
        if r.details is not None and r.details.number
    }
    names = {
        key: {"name": row.get("name"), "email": row.get("email")} for key, row in staff_dir.items()
    }
    names |= {
        f"u:{key}": {"name": row.get("name"), "email": row.get("email")}
        for key, row in users_dir.items()
    }
    return Preview(
        writes, jobs, report.counts, links, unmatched, users_listed, calls, numbers, names
    )
