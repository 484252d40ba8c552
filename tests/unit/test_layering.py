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


# --- the wings of bridge/ (docs: the architecture's layout) ---------------------------------------
# What each wing may import of the others. The root holds only what every wing uses; a wing
# imports only wings below it, so the arrows never point back up. ``root`` is config, errors, log
# and queues (config reads the reserved connection ids from the store's key schema, and queues
# builds its sender from the Redis wiring).
ROOT_MODULES = {"__init__", "__main__", "config", "errors", "log", "queues"}
WINGS: dict[str, set[str]] = {
    "root": {"store", "redis"},
    "store": {"root"},
    "redis": {"root"},
    "simulators": {"root"},
    "http": {"root", "store"},
    "servicem8": {"root", "http", "store"},
    "coredination": {"root", "http", "store"},
    "sync": {"root", "http", "store", "servicem8", "coredination"},
    "connections": {"root", "http", "store", "redis", "servicem8", "sync"},
    "process": {"root", "http", "store", "redis", "servicem8", "coredination", "sync"},
    "ops": {"root", "store", "servicem8", "coredination", "sync", "connections", "process"},
    "probe": {"root", "servicem8", "coredination", "ops", "process"},
    "web": {"root", "store", "redis", "servicem8", "coredination", "sync", "connections"}
    | {"process", "ops"},
    "cli": {"root", "http", "store", "redis", "servicem8", "coredination", "sync", "connections"}
    | {"process", "ops", "probe", "web", "simulators"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _wing(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bridge" or len(parts) == 1:
        return None
    return parts[1] if (ROOT / "bridge" / parts[1]).is_dir() else "root"


def _imports(path: Path) -> set[str]:
    """Every bridge module ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_root_of_bridge_holds_only_what_every_wing_uses():
    loose = {p.stem for p in (ROOT / "bridge").glob("*.py")} - ROOT_MODULES
    assert loose == set(), "move these into the wing they belong to"
    wings = {p.name for p in (ROOT / "bridge").iterdir() if (p / "__init__.py").exists()}
    assert wings == set(WINGS) - {"root"}, "a new wing needs its rule here"


@pytest.mark.parametrize("wing", sorted(WINGS))
def test_each_wing_imports_only_the_wings_below_it(wing):
    paths = (
        # __main__ only starts the command: it is the cli's door, not a shared module.
        [ROOT / "bridge" / f"{m}.py" for m in ROOT_MODULES - {"__main__"}]
        if wing == "root"
        else list((ROOT / "bridge" / wing).rglob("*.py"))
    )
    offenders = {}
    for path in paths:
        wrong = {
            name
            for name in _imports(path)
            if (target := _wing(name)) not in (None, wing) and target not in WINGS[wing]
        }
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offenders == {}


def test_no_import_cycle_between_modules():
    modules = {
        _module(p): p for package in ("bridge", "tasks") for p in (ROOT / package).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            if here == goal:
                return True
            if here not in seen:
                seen.add(here)
                todo.extend(graph.get(here, ()))
        return False

    cycles = sorted(
        (a, b) for a, targets in graph.items() for b in targets if a < b and reaches(b, a)
    )
    assert cycles == []
