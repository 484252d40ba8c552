"""docker-compose.yml: valid against the Compose specification's JSON schema, and holding the
operational promises the README makes about it."""

from __future__ import annotations

import json
import re
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
    flower = services["flower"]
    # Required by Flower's own start (below), not by compose: see the next test.
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    # FLOWER_UNAUTHENTICATED_API opens Flower's /api/ without credentials: never set, neither
    # here nor in the .env every bridge service (flower too) reads.
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert "FLOWER_UNAUTHENTICATED_API" not in (ROOT / ".env.example").read_text()
    assert "FLOWER_UNAUTHENTICATED_API" not in _without_comments(ROOT / "docker-compose.yml")
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])
    assert services["simulators"]["profiles"] == ["simulators"]


def test_no_variable_is_required_by_compose_itself():
    """Compose resolves ``${VAR:?}`` (and ``${VAR?}``) for every service, even those of a profile
    not started, so one would stop every compose command; each service checks its own instead."""
    code = _without_comments(ROOT / "docker-compose.yml")
    assert not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?", code)


def _without_comments(path: Path) -> str:
    """The file's text with its ``#`` comments cut (no value in it holds a ``#``)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def test_the_environment_block_never_overrides_a_setting_from_dotenv(compose):
    """``environment`` wins over ``env_file``: each of its values must be the variable itself
    with a default (``${NAME:-default}``), which a value in ``.env`` (read for interpolation) or
    the shell replaces; a literal would silently override ``.env``."""
    anchor = compose["x-bridge"]
    assert anchor["env_file"] == [{"path": ".env", "required": False}]
    environment = anchor["environment"]
    assert {"REDIS_URL", "LOG_FORMAT"} <= set(environment)
    for name, value in environment.items():
        assert isinstance(value, str) and value.startswith(f"${{{name}:-"), name
        assert value.count("${") == 1 and value.endswith("}"), name
    assert environment["REDIS_URL"] == "${REDIS_URL:-redis://redis:6379/0}"
    for name in ("web", "worker", "beat", "flower"):  # the services built on the anchor
        service = compose["services"][name]
        assert service["env_file"] == anchor["env_file"], name
        assert {k: service["environment"][k] for k in environment} == environment, name


@pytest.mark.parametrize(
    ("credentials", "starts"),
    [("admin:s3cret", True), ("admin:s3cret,prometheus:t0ken", True), ("", False),
     ("admin", False), (":", False), ("admin:", False), (":s3cret", False)],
)  # fmt: skip
def test_flower_refuses_to_start_without_credentials(compose, credentials, starts):
    """Run the flower service's entrypoint as Compose would (``$$`` is a literal ``$``), with
    Flower replaced by an echo."""
    import subprocess

    entrypoint = [arg.replace("$$", "$") for arg in compose["services"]["flower"]["entrypoint"]]
    env = {"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": credentials}
    done = subprocess.run([*entrypoint, "echo", "flower-started"], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (done.returncode == 0) is starts
    assert ("flower-started" in done.stdout) is starts
    if not starts:
        assert "FLOWER_BASIC_AUTH" in done.stderr


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
    """Container path → host path of a service's mounts (short and long syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume["source"]
            continue
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


def test_prometheus_scrapes_the_bridge_with_the_metrics_token_from_a_mounted_file(compose):
    """web's port is public, so its /metrics asks a scrape from outside loopback for
    METRICS_TOKEN (bridge/web/metrics.py): Prometheus sends it from a file compose mounts, kept in
    a git-ignored folder and never created empty by Docker (a missing file stops Prometheus)."""
    prometheus = compose["services"]["prometheus"]
    config = yaml.safe_load(
        (ROOT / _mounts(prometheus)["/etc/prometheus/prometheus.yml"]).read_text()
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    authorization = jobs["bridge"]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    token_file = authorization["credentials_file"]
    (mount,) = [
        v for v in prometheus["volumes"] if isinstance(v, dict) and v["target"] == token_file
    ]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert mount["bind"]["create_host_path"] is False
    folder = Path(mount["source"]).parts[-2]
    assert f"{folder}/" in (ROOT / ".gitignore").read_text().splitlines()
    assert mount["source"].removeprefix("./") in (ROOT / "README.md").read_text()
    # Flower leaves its /metrics open whatever its auth (Flower's documented exemption): no
    # credentials are sent, and its port is on loopback only (the test above).
    assert "authorization" not in jobs["flower"] and "basic_auth" not in jobs["flower"]


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
