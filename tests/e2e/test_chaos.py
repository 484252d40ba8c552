"""The chaos run at a small size, on every change: operations on both sides under API faults,
worker SIGKILLs, a beat restart, a Redis restart and webhook chaos, then one reconcile. Nothing
may be lost, duplicated, diverged or leaked (``python -m bench.chaos --ops 2000`` is the full
size)."""

from __future__ import annotations

import pytest

from bench.chaos import Chaos

pytestmark = pytest.mark.e2e


def test_chaos_run_converges_with_nothing_lost_duplicated_diverged_or_leaked(tmp_path):
    report = Chaos(120, tmp_path, seed=11).run()
    print(f"\nchaos: {sum(report.operations.values())} operations {dict(report.operations)}; "
          f"{sum(report.faults.values())} faults {dict(report.faults)}; lost {report.lost}, "
          f"duplicated {report.duplicated}, diverged {report.diverged}, dead letters "
          f"{report.dead_letters}; converged in {report.converge_seconds:.1f} s; drift left for"
          f" the final reconcile {report.reconciled}; held {report.held}, deleted in"
          f" Coredination {report.deleted_in_cd}")  # fmt: skip
    assert report.faults["worker SIGKILL"] >= 2
    assert report.faults["redis restart"] == 1 and report.faults["beat killed"] == 1
    assert sum(report.operations.values()) >= 80  # the rest found nothing to act on
    assert (report.lost, report.duplicated, report.diverged) == (0, 0, 0), report.problems
    assert report.resurrected == 0, report.problems
    assert report.secrets_found == []
    assert report.unreported == []  # what the rules hold is each in bridge status
    assert report.reconciled == 0  # the normal paths converged: the reconcile found nothing
