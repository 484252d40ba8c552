"""docker-compose.yml: valid against the Compose specification's JSON schema, and holding the
operational promises the README makes about it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import typer.main
import yaml

from bridge.cli import app

ROOT = Path(__file__).resolve().parents[2]
# A copy of the schema travels with the tests (CI runs on a bare clone); where the shared reference
# copy is present it must be the same file.
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec.schema.json"
SHARED = ROOT.parent / "shared" / "reference" / "compose-spec.schema.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_validates_against_the_compose_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    if SHARED.exists():
        assert json.loads(SHARED.read_text()) == schema
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(e.message for e in errors)


def test_redis_is_append_only_and_never_evicts(compose):
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert compose["services"]["redis"]["volumes"]


def test_one_beat_and_flower_behind_basic_auth(compose):
    services = compose["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasks", "beat"]
    auth = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]
    assert auth.startswith("${FLOWER_BASIC_AUTH:?"), "Flower must not start without credentials"
    assert "FLOWER_UNAUTHENTICATED_API" not in services["flower"]["environment"]
    assert all(p.startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert services["simulators"]["profiles"] == ["simulators"]


def test_every_bridge_command_in_compose_exists_with_its_options(compose):
    cli = typer.main.get_command(app)
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[:1] != ["bridge"]:
            continue
        sub = cli.commands[command[1]]  # type: ignore[attr-defined]
        known = {opt for param in sub.params for opt in param.opts}
        used = {arg.split("=")[0] for arg in command[2:] if arg.startswith("--")}
        assert used <= known, f"{name}: unknown options {used - known}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["bridge", "run"' in dockerfile
