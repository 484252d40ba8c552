"""``sm8cd probe``: find out, on the accounts the bridge is configured for, how the APIs answer
where the documents leave it open (docs/probe.md), and store the readings for the bridge.

Read-only by default: a few list calls. With ``writes``, it also works on records of its own and
removes them again: a scratch ServiceM8 job (created with a supplied uuid, refused a bad value,
its date cleared with ``null`` and with ``""``, deleted twice, and left deleted), subscriptions of
its own (a callback URL of its own, so the bridge's subscriptions are never replaced), and a
scratch Coredination job (one user scheduled on it without a message, unassigned, the job
deleted). It never writes to a record it did not make.

Each finding names the dialect switch it settles (the same names the simulators use, so a test
can set a switch and check the probe names it), or is a fact an operator should know.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.probe._common import SWITCHES, Finding, Report
from bridge.probe.coredination import CoredinationProbe
from bridge.probe.servicem8 import ServiceM8Probe
from bridge.process.runtime import Runtime

__all__ = ["SWITCHES", "Finding", "Report", "probe"]


def probe(rt: Runtime, *, writes: bool = False, clock: Callable[[], float] = time.time) -> Report:
    """Ask both APIs every open question it can (``writes``: those that need records of its own
    too), store the readings (read back by ``bridge.process.runtime`` and ``sm8cd status``), and
    return the report."""
    report = Report(writes=writes, probed_at=clock())
    ServiceM8Probe(rt, report).run(writes)
    CoredinationProbe(rt, report).run(writes)
    rt.stores.activity.set_probe(report.as_dict())
    return report
