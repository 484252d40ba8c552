"""One kind of tenant: every connection, the environment's included, takes the same path through
tasks, scheduling, admission and the receiver. Code may tell the environment's connection apart
only where it joins the registry (or is shown before it has), or where its keys come from: this
test fails on any other comparison of a connection with the deployment's own."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Comparing with the deployment's own connection, spelt any of the ways the code names it.
OWN_BRANCH = re.compile(
    r"(==|!=)\s*own\b|\bown\s*(==|!=)|bridge_connection_id\s*(==|!=)|(==|!=)\s*[\w.]*"
    r"bridge_connection_id|task_connection|fleet\.empty|_own_missing"
)
# Where a comparison is the data, not a second path (file: why).
ALLOWED = {
    "tasks/app.py": "the environment's connection joins the registry at its first task",
    "bridge/connections/registry.py": "joining: before it has, and before another is added",
    "bridge/cli/connections.py": "shown before it has joined the registry",
    "bridge/connections/models.py": "its webhook token stays WEBHOOK_TOKEN (existing callbacks)",
    "bridge/connections/uniqueness.py": "its accounts are known from the environment's keys",
}


def test_no_code_branches_on_the_deployments_own_connection():
    found = []
    for package in ("bridge", "tasks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name.startswith("bridge/simulators/") or name in ALLOWED:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if OWN_BRANCH.search(line.split("#")[0]):
                    found.append(f"{name}:{n}: {line.strip()}")
    assert found == []


def test_the_allowed_places_still_exist():
    for name in ALLOWED:
        assert (ROOT / name).exists(), f"{name} is gone: drop it from ALLOWED"
