"""The job sync's trail as it is written (``mappings.trail`` holds the record and its story):
each write with its answer, and the entry of a sync that ended in an error."""

from __future__ import annotations

from types import TracebackType

from bridge.errors import ApiError
from bridge.store.trail import Kept
from bridge.sync.context import Report, SyncContext
from mappings.readback import ReadBack
from mappings.trail import Write, encode

READ_BACK: dict[ReadBack, str] = {
    "took": "ok",
    "ignored": "ignored: the person is at work",
    "moved": "read back: Coredination had moved on, decided again",
}


class Sent:
    """One write on its way (``with Sent(...) as sent:``): on leaving, the write is in the
    trail with ``sent.answer`` (``ok`` unless set), or with the error that stopped it."""

    def __init__(self, report: Report, staff: str | None, what: str, target: str) -> None:
        self.report, self.staff, self.what, self.target = report, staff, what, target
        self.answer = "ok"

    def __enter__(self) -> Sent:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        said = self.answer if exc is None else answer(exc)
        self.report.trail.wrote(self.staff, Write(self.what, self.target, said))


def answer(exc: BaseException) -> str:
    """A failed write's answer: the API's words (redacted by the client), or only the kind."""
    if isinstance(exc, ApiError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


def trail_entry(
    ctx: SyncContext, report: Report, trigger: str, exc: BaseException | None = None
) -> Kept | None:
    """The sync's trail entry to keep (None: nothing decided, or no trail kept), with the error
    that ended it, if one did."""
    keep = ctx.options.trail_entries
    error = None if exc is None else answer(exc)
    entry = report.trail.entry(ctx.now_ms(), trigger, report.counts, error)
    if not keep or not entry.decided:
        return None
    return Kept(encode(entry), report.trail.number, keep)
