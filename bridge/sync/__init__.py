"""Use cases: push (ServiceM8 → Coredination), pull (Coredination → ServiceM8), poll, reconcile.

They talk to the two APIs and the store through the Protocols in ``ports``; ``engine`` holds the
use cases. Nothing here imports Celery: tasks call in, never the other way round.
"""

from bridge.sync.engine import Engine, Report

__all__ = ["Engine", "Report"]
