"""The ``sm8cd`` command (``python -m bridge`` runs it too; not ``bridge``, which iproute2 ships
on most Linux hosts). Every subcommand turns the error tree into one line and an exit code: 2 for
configuration, 1 for anything else the bridge raised; never a traceback for those.

One module per group of commands; each registers its commands on ``bridge.cli.base.app``, in the
order they are imported here (the order ``sm8cd --help`` lists them)."""

# isort: skip_file
from __future__ import annotations

import sys

from bridge.cli import (
    doctor,
    sync,
    preview,
    explain,
    scope,
    staff,
    dlq,
    serve,
    webhooks,
    probe,
    connections,
)
from bridge.cli.base import app

__all__ = [
    "app",
    "connections",
    "dlq",
    "doctor",
    "explain",
    "main",
    "preview",
    "probe",
    "scope",
    "serve",
    "staff",
    "sync",
    "webhooks",
]  # fmt: skip


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
