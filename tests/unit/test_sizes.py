"""Sizes that fit in a head: no class in ``bridge/``, ``mappings/`` or ``tasks/`` over 300 lines,
no module over 450 (the simulators excepted: each is one faithful stand-in for a whole API)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bridge", "mappings", "tasks")
EXCEPTED = ("bridge/simulators/",)
MAX_CLASS = 300
MAX_MODULE = 450


def sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, classes = {}, {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = str(path.relative_to(ROOT))
            if name.startswith(EXCEPTED):
                continue
            text = path.read_text()
            modules[name] = len(text.splitlines())
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    classes[f"{name}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, classes


def test_the_walk_sees_the_code():
    modules, classes = sizes()
    assert "bridge/store/jobs.py" in modules and "bridge/store/jobs.py:JobStore" in classes
    assert len(modules) > 40


def test_no_module_over_450_lines_and_no_class_over_300():
    modules, classes = sizes()
    assert {m: n for m, n in modules.items() if n > MAX_MODULE} == {}
    assert {c: n for c, n in classes.items() if n > MAX_CLASS} == {}
