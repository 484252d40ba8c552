"""A change of the connection's scope settings (docs/scope.md#leaving-scope) marks every job the
bridge holds to sync once, so a wider horizon, another status or category takes effect at the
next sync rather than at each job's next change. Time alone never needs it: the horizon only
moves forward, and a booking leaving scope asks for nothing to be done."""

from __future__ import annotations

from collections.abc import Mapping

from bridge.log import get_logger
from bridge.sync.context import SyncContext

log = get_logger(__name__)

CURSOR_SCOPE = "scope"  # the scope settings the jobs were last marked under (``cursor`` hash)


def rescope(ctx: SyncContext, known: Mapping[str, str] | None = None) -> set[str]:
    """Every job the bridge holds, marked to sync, when the scope settings changed since the
    last call; nothing otherwise (and nothing the first time: there is nothing to catch up).
    ``known``: the connection's cursors, when the caller has read them already."""
    activity = ctx.stores.activity
    held = known.get(CURSOR_SCOPE) if known is not None else activity.cursor(CURSOR_SCOPE)
    now = ctx.options.scope.fingerprint()
    if held == now:
        return set()
    jobs: set[str] = set()
    if held is not None:
        jobs = set(ctx.stores.jobs.known())
        ctx.stores.jobs.mark_dirty(jobs)
        log.info("scope.changed", before=held, after=now, jobs=len(jobs))
    activity.set_cursor(CURSOR_SCOPE, now)
    return jobs
