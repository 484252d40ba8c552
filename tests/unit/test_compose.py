"""docker-compose.yml: valid against the Compose specification's JSON schema, and holding the
operational promises the README makes about it."""

from __future__ import annotations

import json
import tomllib
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
COMMAND = "sm8cd"  # the bridge's command (python -m bridge works as well)


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
        if command[:1] != [COMMAND]:
            continue
        sub = cli.commands[command[1]]  # type: ignore[attr-defined]
        known = {opt for param in sub.params for opt in param.opts}
        used = {arg.split("=")[0] for arg in command[2:] if arg.startswith("--")}
        assert used <= known, f"{name}: unknown options {used - known}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'CMD ["{COMMAND}", "run"' in dockerfile


def test_the_command_is_not_named_like_a_system_tool():
    """iproute2 ships `bridge` on most Linux hosts: outside the venv it would run instead."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {COMMAND: "bridge.cli:main"}
    assert COMMAND != "bridge"


# --- the monitoring profile -----------------------------------------------------------------------
def _mounts(service: dict) -> dict[str, str]:
    """Container path → host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        mounts[target] = source
    return mounts


def test_prometheus_and_grafana_are_in_the_monitoring_profile_only(compose):
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    for volume in ("prometheus-data", "grafana-data"):
        assert volume in compose["volumes"]


def test_prometheus_loads_the_scrape_config_and_the_alert_rules_beside_it(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((ROOT / config_path).read_text())
    for rules in config["rule_files"]:
        # relative to the config file, both in the container and for promtool here
        container = str(Path("/etc/prometheus") / rules)
        assert (ROOT / mounts[container]).resolve() == (ROOT / config_path).parent / rules
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {"bridge": ["web:8000"], "flower": ["flower:5555"]}
    assert compose["services"]["web"]["command"][-2:] == ["--port", "8000"]
    assert compose["services"]["flower"]["command"][-1] == "--port=5555"


def test_grafana_provisions_the_dashboard_with_anonymous_access_off(compose):
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert "env_file" not in grafana, "Grafana must not receive the bridge's API keys"
    mounts = _mounts(grafana)
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "bridge.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboard = ROOT / mounts[f"{folder}/bridge.json"]
    assert json.loads(dashboard.read_text())["uid"] == "sm8-cd-bridge"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert [s["url"] for s in sources["datasources"]] == ["http://prometheus:9090"]


@pytest.mark.parametrize(("password", "starts"), [("s3cret-admin", True), ("", False)])
def test_grafana_refuses_to_start_without_an_admin_password(compose, password, starts):
    """Compose resolves ``${VAR:?}`` for every service, even those of a profile not started, so
    the password is required by the container's own start command: run it as Compose would (``$$``
    is a literal ``$``), with Grafana's start script replaced by an echo."""
    import subprocess

    entrypoint = [
        arg.replace("$$", "$").replace("exec /run.sh", "exec echo grafana-started")
        for arg in compose["services"]["grafana"]["entrypoint"]
    ]
    env = {"PATH": "/usr/bin:/bin", "GF_SECURITY_ADMIN_PASSWORD": password}
    done = subprocess.run(entrypoint, env=env, capture_output=True, text=True, check=False)
    assert (done.returncode == 0) is starts
    assert ("grafana-started" in done.stdout) is starts
    if not starts:
        assert "GRAFANA_ADMIN_PASSWORD" in done.stderr
