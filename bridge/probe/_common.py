"""What the probes share: a finding, the report they fill, small readers of answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.log import redactor
from mappings.stamps import SM8_EMPTY_STAMP

SCRATCH_TITLE = "sm8cd probe scratch record: safe to delete"
# The dialect switches a probe can settle, by system, named as the simulators name them
# (``ServiceM8Dialect``, ``CoredinationDialect`` in bridge.simulators).
SWITCHES = {
    "servicem8": ("allocation_webhooks", "delete_restores", "record_uuid_header",
                  "refusal_as_success", "null_clears", "day_reset"),
    "coredination": ("stamps", "resource_shape", "unassign", "schedule_finished",
                     "users_endpoint", "missing_status"),
}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One question and what the probe saw. ``reading`` is the dialect value (or, for a fact,
    the value seen); None when the probe could not settle it (``why`` says what it would take)."""

    system: str
    name: str
    question: str
    saw: str
    reading: Any = None
    dialect: bool = True  # a switch of the simulators' dialect, else a fact
    why: str = ""


@dataclass
class Report:
    writes: bool
    probed_at: float
    findings: list[Finding] = field(default_factory=list)
    left_behind: list[str] = field(default_factory=list)

    def add(
        self,
        system: str,
        name: str,
        question: str,
        saw: str,
        reading: Any = None,
        *,
        dialect: bool = True,
        why: str = "",
    ) -> None:
        """Record a finding; a later one on the same question (a write that settles what a read
        could not) takes the earlier one's place."""
        self.findings = [f for f in self.findings if (f.system, f.name) != (system, name)]
        # An API may echo what it was sent (a callback URL with the webhook token) in a refusal.
        saw, why = redactor.text(saw), redactor.text(why)
        self.findings.append(Finding(system, name, question, saw, reading, dialect, why))

    def dialect(self) -> dict[str, dict[str, Any]]:
        """The settled switches, by system."""
        out: dict[str, dict[str, Any]] = {system: {} for system in SWITCHES}
        for f in self.findings:
            if f.dialect and f.reading is not None:
                out[f.system][f.name] = f.reading
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "writes": self.writes,
            "probed_at": self.probed_at,
            "dialect": self.dialect(),
            "findings": [asdict(f) for f in self.findings],
            "left_behind": self.left_behind,
        }


def said(exc: BaseException) -> str:
    return str(exc)[:160]


def active(row: Mapping[str, Any]) -> bool:
    return str(row.get("active", "1")).strip() not in ("0", "false", "")


def empty(value: Any) -> bool:
    return value in (None, "") or str(value).startswith(SM8_EMPTY_STAMP[:10])
