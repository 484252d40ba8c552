"""Every scenario ``python -m bench`` runs, in order: the base ones (``bench.scenarios``), the
freshness pair after the trickle (``bench.freshness``), the large account after the backfill
(``bench.large``), the trail's cost after the engine (``bench.trail``)."""

from __future__ import annotations

from collections.abc import Callable

from bench.freshness import SCENARIOS as WITH_FRESHNESS
from bench.large import large
from bench.scenarios import Bench
from bench.trail import trail

SCENARIOS: dict[str, Callable[[Bench], None]] = {}
for _name, _run in WITH_FRESHNESS.items():
    SCENARIOS[_name] = _run
    if _name == "backfill":
        SCENARIOS["large"] = large
    if _name == "engine":
        SCENARIOS["trail"] = trail
