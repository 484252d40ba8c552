""".env.example lists every setting the bridge reads (each field of ``bridge.config.Settings``),
nothing else but docker compose's own variables, each with an explanation and the setting's
default: an operator copies it to ``.env`` and finds every knob there, with its true default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridge.config import Settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
# `NAME=value`, or commented out as `# NAME=value`: both count as listed.
LINE = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
# Read by docker-compose.yml alone (interpolated there), never by the bridge.
COMPOSE_ONLY = {"FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD"}


def listed() -> dict[str, tuple[str, bool, str]]:
    """Each variable the file names → (its value, whether the line is active, the line above)."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    found: dict[str, tuple[str, bool, str]] = {}
    for i, line in enumerate(lines):
        match = LINE.match(line.strip())
        if match is None:
            continue
        name, value = match.groups()
        assert name not in found, f"{name} is listed twice"
        found[name] = (value.strip(), not line.startswith("#"), lines[i - 1] if i else "")
    return found


def settings() -> dict[str, FieldInfo]:
    return {name.upper(): field for name, field in Settings.model_fields.items()}


def test_the_parser_reads_active_and_commented_lines():
    assert LINE.match("REDIS_URL=redis://x").groups() == ("REDIS_URL", "redis://x")
    assert LINE.match("# POLL_MIN_SECONDS=5").groups() == ("POLL_MIN_SECONDS", "5")
    assert LINE.match("# The bridge reads `.env` in the folder it runs in") is None
    assert len(listed()) > 40


def test_every_setting_is_listed_and_nothing_else():
    names = set(listed())
    assert sorted(set(settings()) - names) == [], "settings missing from .env.example"
    assert sorted(names - set(settings()) - COMPOSE_ONLY) == [], "not settings of the bridge"


def test_the_compose_only_variables_are_read_by_compose():
    compose = (ROOT / "docker-compose.yml").read_text()
    entries = listed()
    for name in COMPOSE_ONLY:
        assert name in entries and name not in settings()
        assert f"${{{name}:-" in compose, f"{name} is not interpolated in docker-compose.yml"
        value = entries[name][0]
        if value:  # the default written here is compose's own
            assert f"${{{name}:-{value}}}" in compose, name


def test_each_variable_has_an_explanation_above_it():
    for name, (_, _, above) in listed().items():
        assert above.startswith("# ") and LINE.match(above) is None, name
        assert len(above) > 10, name


@pytest.mark.parametrize("name", sorted(name.upper() for name in Settings.model_fields))
def test_the_written_default_is_the_settings_default(name):
    """A setting with a default shows it; one without (required, or unset by default) shows
    nothing; no secret is ever written, and only a written default may stand uncommented."""
    field = settings()[name]
    value, active, _ = listed()[name]
    default = field.default
    secret = SecretStr in (getattr(field.annotation, "__args__", None) or (field.annotation,))
    if default is PydanticUndefined or default is None or secret:
        assert value == "", f"{name} has no default to show (or is a secret): leave it empty"
        # An empty active line would set it to "" (a value), not leave it unset.
        assert not active, f"{name} must stay commented until filled in"
        return
    assert value, f"{name}: write its default, {default!r}"
    assert TypeAdapter(field.annotation).validate_python(value) == default, name


def test_the_readme_says_to_start_from_it():
    readme = (ROOT / "README.md").read_text()
    configuration = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    assert "cp .env.example .env" in configuration
    for name in settings():
        assert f"`{name}`" in configuration, f"{name} is not in the README's Configuration table"
