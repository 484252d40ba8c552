"""Faithful local stand-ins for ServiceM8 and Coredination (docs/README.md#simulators).

They follow docs/servicem8-api.md and docs/coredination-api.md closely (paths, verbs, field names,
formats, error bodies, filters, paging, limits, webhooks) and add what a test needs: fault knobs, an
admin surface (``/_admin/...``) to seed data and read request counts, and an injectable clock. Every
assumption where the documents are silent is marked ``ASSUMPTION`` next to the code that makes it.
"""

from bridge.simulators.coredination import (
    HOSTILE_DIALECT as HOSTILE_COREDINATION,
)
from bridge.simulators.coredination import (
    LEGACY_DIALECT,
    CoredinationDialect,
    CoredinationSimulator,
)
from bridge.simulators.servicem8 import FIRST_READING, ServiceM8Dialect, ServiceM8Simulator
from bridge.simulators.servicem8 import HOSTILE_DIALECT as HOSTILE_SERVICEM8

__all__ = [
    "FIRST_READING",
    "HOSTILE_COREDINATION",
    "HOSTILE_SERVICEM8",
    "LEGACY_DIALECT",
    "CoredinationDialect",
    "CoredinationSimulator",
    "ServiceM8Dialect",
    "ServiceM8Simulator",
]
