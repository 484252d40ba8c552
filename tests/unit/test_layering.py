"""Imports point one way: tasks → bridge → mappings; mappings does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("mappings", {"requests", "redis", "celery", "kombu", "bridge", "tasks", "socket", "http"}),
        ("bridge", {"tasks"}),
    ],
)
def test_dependency_direction(package, forbidden):
    offenders = {f: sorted(names & forbidden) for f, names in imported_modules(package).items()}
    assert {f: n for f, n in offenders.items() if n} == {}
