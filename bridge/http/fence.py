"""The write fence: whether this worker still owns the work is checked as each write is sent.

A sync holds its job's lease (``bridge.sync.context``) and renews it before it decides a write.
A worker starved of CPU, or one whose request waits through quick retries, may find the lease
taken by another worker by the time its write leaves. Neither API takes a precondition a lease
token could ride in (docs/how-it-works.md#leases), so the nearest check is here: while a fence is
set, every request that is not a read first renews the lease, and a lease that is no longer ours
raises before anything is sent. The task then starts again from a read, under a lease of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

_fence: ContextVar[Callable[[], None] | None] = ContextVar("write_fence", default=None)


@contextlib.contextmanager
def fenced(renew: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``renew`` runs before every write is sent; it raises when the work is
    no longer ours."""
    token = _fence.set(renew)
    try:
        yield
    finally:
        _fence.reset(token)


def check_fence() -> None:
    """Renew the current fence's lease, if any: raises when it is lost."""
    renew = _fence.get()
    if renew is not None:
        renew()
