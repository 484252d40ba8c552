"""``sm8cd connections …`` and ``sm8cd secrets …`` through Typer's runner, on real Redis: what
they do, their exit codes, and that no secret ever reaches their output or logs."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from bridge.cli import app
from bridge.connections import ConnectionRegistry, new_key
from bridge.log import REDACTED, redactor
from tests.connections.conftest import ACCESS, CD_KEY, ENV_CD_KEY, ENV_SM8_KEY, REFRESH, SM8_KEY

SECRETS = (SM8_KEY, CD_KEY, ENV_SM8_KEY, ENV_CD_KEY, ACCESS, REFRESH)


class Runs:
    """Runs commands and keeps every output, to look for secrets in all of them at the end."""

    def __init__(self) -> None:
        self.outputs: list[str] = []

    def __call__(self, *args: str, input: str | None = None, code: int = 0):
        result = CliRunner().invoke(app, list(args), input=input)
        self.outputs.append(result.output)
        assert result.exit_code == code, result.output
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def run(fleet_env, fleet_keys):
    runs = Runs()
    yield runs
    for secret in (*SECRETS, fleet_env["BRIDGE_SECRET_KEYS"]):
        assert not any(secret in output for output in runs.outputs), secret


def _account(name: str) -> str:
    """A ServiceM8 account of its own for connection ``name``: given by hand, so ``add`` asks no
    API which account the key is for (tests/connections/test_uniqueness.py does)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sm8-account:{name}"))


def _add(run, name: str, **kwargs):
    """``sm8cd connections add NAME`` with both keys given as options, on an account of its own."""
    return run("connections", "add", name, "--servicem8-api-key", SM8_KEY,
               "--coredination-api-key", CD_KEY, "--servicem8-account", _account(name),
               **kwargs)  # fmt: skip


def test_an_empty_registry_lists_the_environments_connection(run):
    (row,) = run.json("connections", "list")
    assert (row["id"], row["status"], row["stored"]) == ("default", "active", False)
    assert "registry is empty" in run("connections", "list").output
    shown = run.json("connections", "show", "default")
    assert shown["secrets"] == "from the environment"


def test_add_reads_keys_from_a_variable_and_stdin_and_show_says_only_that_they_are_set(
    run, monkeypatch, redis_client, fleet_keys
):
    monkeypatch.setenv("ACME_SM8", SM8_KEY)
    added = run(
        "connections",
        "add",
        "acme",
        "--servicem8-account",
        _account("acme"),
        "--servicem8-api-key-env",
        "ACME_SM8",
        "--coredination-api-key",
        "-",
        "--set",
        "CONFLICT_TIE_WINNER=coredination",
        "--set",
        "servicem8_pull_booking=fixed",
        input=CD_KEY + "\n",
    )
    assert "api key set" in added.output
    shown = run.json("connections", "show", "acme")
    assert shown["status"] == "active"
    assert shown["overrides"] == {
        "conflict_tie_winner": "coredination",
        "servicem8_pull_booking": "fixed",
    }
    assert shown["secrets"] == {"servicem8": "api key set", "coredination": "api key set"}
    # Whatever a command read or decrypted, its log lines would carry blanked.
    assert redactor.text(f"{SM8_KEY} {CD_KEY} {ENV_SM8_KEY}") == f"{REDACTED} {REDACTED} {REDACTED}"
    # The environment's own connection joined the registry with the first addition.
    assert [r["id"] for r in run.json("connections", "list")] == ["acme", "default"]
    stored = redis_client.hget(fleet_keys.secrets, "acme")
    assert SM8_KEY.encode() not in stored and CD_KEY.encode() not in stored

    again = run(
        "connections",
        "add",
        "acme",
        "--servicem8-api-key",
        "x1234",
        "--coredination-api-key",
        "y5678",
        code=2,
    )
    assert "ids never change" in again.output


def test_a_bad_setting_or_id_is_one_line_and_exit_two(run):
    bad = run(
        "connections",
        "add",
        "acme",
        "--servicem8-api-key",
        SM8_KEY,
        "--coredination-api-key",
        CD_KEY,
        "--set",
        "SERVICEM8_POLL_SECONDS=-5",
        code=2,
    )
    assert "SERVICEM8_POLL_SECONDS Input should be greater than 0" in bad.output
    assert "no connection 'ghost'" in run("connections", "show", "ghost", code=2).output


def test_pause_resume_and_pair_follow_the_state_rules(
    run, redis_client, box, fleet_keys, monkeypatch
):
    registry = ConnectionRegistry(redis_client, box, keys=fleet_keys)
    run("connections", "add", "oauth-1", "--status", "authorised")
    registry.update_grant("oauth-1", ACCESS, REFRESH, 1_800_000_000)
    assert "only 'sm8cd connections pair'" in run("connections", "resume", "oauth-1", code=2).output
    monkeypatch.setenv("OAUTH1_CD", CD_KEY)
    paired = run.json("connections", "pair", "oauth-1", "--coredination-api-key-env", "OAUTH1_CD")
    assert paired["status"] == "active"
    shown = run.json("connections", "show", "oauth-1")
    assert shown["secrets"]["servicem8"].startswith("oauth grant")

    paused = run.json("connections", "pause", "oauth-1", "--reason", "customer asked [ticket 4]")
    assert (paused["status"], paused["reason"]) == ("paused", "customer asked [ticket 4]")
    assert "customer asked [ticket 4]" in run("connections", "show", "oauth-1").output
    assert run.json("connections", "resume", "oauth-1")["status"] == "active"


def test_remove_asks_first_unless_told_yes(run):
    _add(run, "acme")
    run("connections", "remove", "acme", input="n\n", code=1)
    # The environment's own connection joined the registry with the first addition.
    assert [r["id"] for r in run.json("connections", "list")] == ["acme", "default"]
    assert "removed acme" in run("connections", "remove", "acme", "--yes").output
    (left,) = run.json("connections", "list")
    assert (left["id"], left["keys"], left["stored"]) == ("default", "environment", True)


def test_without_secret_keys_adding_keys_is_refused_with_how_to_make_one(run, monkeypatch):
    monkeypatch.delenv("BRIDGE_SECRET_KEYS")
    refused = _add(run, "acme", code=2)
    assert "BRIDGE_SECRET_KEYS is not set" in refused.output
    assert "sm8cd secrets new-key" in refused.output


def test_new_key_prints_a_fernet_key(run):
    printed = run("secrets", "new-key").stdout.strip()
    assert Fernet(printed.encode()).decrypt(Fernet(printed.encode()).encrypt(b"x")) == b"x"


def test_rotate_counts_and_moves_every_secret_to_the_first_key(run, monkeypatch, fleet_env):
    old = fleet_env["BRIDGE_SECRET_KEYS"]
    for name in ("acme", "beta"):
        _add(run, name)
    new = new_key()
    monkeypatch.setenv("BRIDGE_SECRET_KEYS", f"{new},{old}")
    assert run.json("secrets", "rotate") == {"rotated": 2}
    assert "re-encrypted 2" in run("secrets", "rotate").output
    monkeypatch.setenv("BRIDGE_SECRET_KEYS", new)
    assert run.json("connections", "show", "beta")["secrets"]["coredination"] == "api key set"
    monkeypatch.setenv("BRIDGE_SECRET_KEYS", old)
    shown = run.json("connections", "show", "beta")
    assert shown["secrets"] == "stored encrypted; BRIDGE_SECRET_KEYS is unset or lacks their key"
    assert not any(new in output for output in run.outputs)


def test_commands_take_a_registry_connection_by_c(run, fleet_env, monkeypatch, redis_client,
                                                  sm8_sim, cd_sim):  # fmt: skip
    """``sm8cd -c ID …`` runs a command on that connection's own keys, store and settings, and
    what it queues takes the connection's fair share of the lanes."""
    import uuid

    from bridge.connections import ConnectionSecrets, SecretBox
    from bridge.connections.models import Connection
    from bridge.simulators.scenario import seed_business
    from bridge.store import Stores
    from bridge.store.keys import FleetKeys
    from tests.conftest import CD_KEY as SIM_CD_KEY
    from tests.conftest import SM8_KEY as SIM_SM8_KEY

    deployment = f"dep{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BRIDGE_CONNECTION_ID", deployment)
    keys = FleetKeys.for_deployment(deployment)
    registry = ConnectionRegistry(redis_client, SecretBox([fleet_env["BRIDGE_SECRET_KEYS"]]),
                                  keys=keys)  # fmt: skip
    registry.add(Connection(id="acme", servicem8_base_url=sm8_sim.api_url(),
                            coredination_base_url=cd_sim.api_url()),
                 ConnectionSecrets(servicem8_api_key=SIM_SM8_KEY,
                                   coredination_api_key=SIM_CD_KEY))  # fmt: skip
    try:
        biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=4, allocations=6)
        lane = f"b:{deployment}:celery:bridge.{deployment}.bulk"
        # Beside another active connection it keeps to its share; the rest wait in Redis (a
        # connection alone has every worker).
        registry.add(
            Connection(id="other"),
            ConnectionSecrets(servicem8_api_key="x", coredination_api_key="y"),
        )
        run("-c", "acme", "backfill")
        assert redis_client.llen(lane) == 2  # CONNECTION_MAX_TASKS
        assert redis_client.llen("b:acme:admission:waiting:bulk") == len(biz.jobs) - 2
        # One cycle on the connection's own keys (these simulators refuse the environment's).
        run("-c", "acme", "sync", "--once")
        assert len(cd_sim.jobs) == len(biz.jobs)
        assert "links" in run("-c", "acme", "status").output
        assert "no connection 'ghost'" in run("-c", "ghost", "status", code=2).output
    finally:
        Stores.connect(redis_client, "acme").wipe()
        Stores.connect(redis_client, "other").wipe()
        redis_client.delete(keys.connections, keys.secrets, keys.waiting)
        for key in redis_client.scan_iter(f"b:{deployment}:*"):
            redis_client.delete(key)


def test_all_runs_a_command_for_every_registry_connection(fleet_env, monkeypatch, redis_client):
    """``sm8cd --all CMD``: ``sm8cd -c ID CMD`` for each connection, the worst exit code."""
    import subprocess
    import sys
    import uuid

    from bridge.connections import ConnectionSecrets, SecretBox
    from bridge.connections.models import Connection
    from bridge.store import Stores
    from bridge.store.keys import FleetKeys

    deployment = f"dep{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BRIDGE_CONNECTION_ID", deployment)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    keys = FleetKeys.for_deployment(deployment)
    registry = ConnectionRegistry(redis_client, SecretBox([fleet_env["BRIDGE_SECRET_KEYS"]]),
                                  keys=keys)  # fmt: skip
    secrets = ConnectionSecrets(servicem8_api_key=SM8_KEY, coredination_api_key=CD_KEY)
    for name in ("north", "south"):
        registry.add(Connection(id=f"{deployment}-{name}"), secrets)

    def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip

    try:
        done = bridge("--all", "status", "--json")
        assert done.returncode == 0, done.stderr
        assert f"== {deployment}-north" in done.stderr and f"== {deployment}-south" in done.stderr
        assert done.stdout.count(f'"connection": "{deployment}-') == 2
        assert bridge("--all", "connections", "list").returncode == 2
        assert bridge("--all", "-c", "x", "status").returncode == 2
    finally:
        for name in ("north", "south"):
            Stores.connect(redis_client, f"{deployment}-{name}").wipe()
        redis_client.delete(keys.connections, keys.secrets)


def test_check_honours_c_and_says_what_failed_line_by_line(
    run, sm8_sim, cd_sim, monkeypatch, redis_client, fleet_env
):
    """`-c ID check` checks that connection, with its own keys: an unknown id, and keys the APIs
    refuse, fail; the same accounts with good keys pass."""
    import uuid

    from bridge.connections import ConnectionSecrets, SecretBox
    from bridge.connections.models import Connection
    from bridge.store import Stores
    from bridge.store.keys import FleetKeys
    from tests.conftest import CD_KEY as GOOD_CD
    from tests.conftest import SM8_KEY as GOOD_SM8

    deployment = f"dep{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BRIDGE_CONNECTION_ID", deployment)
    keys = FleetKeys.for_deployment(deployment)
    registry = ConnectionRegistry(redis_client, SecretBox([fleet_env["BRIDGE_SECRET_KEYS"]]),
                                  keys=keys)  # fmt: skip
    urls = {"servicem8_base_url": sm8_sim.api_url(), "coredination_base_url": cd_sim.api_url()}
    registry.add(
        Connection(id=f"{deployment}-acme", **urls),
        ConnectionSecrets(servicem8_api_key=SM8_KEY, coredination_api_key=CD_KEY),
    )
    registry.add(
        Connection(id=f"{deployment}-good", **urls),
        ConnectionSecrets(servicem8_api_key=GOOD_SM8, coredination_api_key=GOOD_CD),
    )
    try:
        assert "nope" in run("-c", "nope", "check", code=2).output
        bogus = run("-c", f"{deployment}-acme", "check", code=1).output
        assert "fail ServiceM8" in bogus and "fail Coredination" in bogus
        assert "ok   Redis" in bogus
        good = run("-c", f"{deployment}-good", "check").output
        assert "ok   ServiceM8: account" in good and "ok   Coredination" in good
    finally:
        for name in ("acme", "good"):
            Stores.connect(redis_client, f"{deployment}-{name}").wipe()
        redis_client.delete(keys.connections, keys.secrets)


def test_check_fails_on_secret_keys_that_cannot_read_the_stored_secrets(run, monkeypatch):
    _add(run, "acme")
    monkeypatch.setenv("BRIDGE_SECRET_KEYS", new_key())  # well formed, but not the one used
    told = run("check", code=1).output
    assert "fail stored secrets: cannot be read with these keys: acme" in told
    monkeypatch.setenv("BRIDGE_SECRET_KEYS", "not-a-fernet-key")
    assert "fail BRIDGE_SECRET_KEYS" in run("check", code=1).output


def test_a_misspelt_setting_is_warned_about_with_the_nearest_name(run, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKN", "x")
    told = run("connections", "list").output
    assert "WEBHOOK_TOKN is not a setting of the bridge; did you mean WEBHOOK_TOKEN?" in told


def test_removing_an_oauth_connection_says_to_remove_the_add_on_in_servicem8(
    run, redis_client, box, fleet_keys
):
    registry = ConnectionRegistry(redis_client, box, keys=fleet_keys)
    run("connections", "add", "oauth-2", "--status", "authorised")
    registry.update_grant("oauth-2", ACCESS, REFRESH, 1_800_000_000)
    said = run("connections", "remove", "oauth-2", "--yes").output
    assert "removed oauth-2" in said
    assert "remove the add-on in ServiceM8" in " ".join(said.split())
    assert "no revoke endpoint" in " ".join(said.split())
    _add(run, "acme")  # an API key's connection: nothing to say about add-ons
    assert "add-on" not in run("connections", "remove", "acme", "--yes").output


def test_a_grant_no_longer_valid_says_why_in_both_readings():
    from bridge.connections.activation import REVOKED_REASON

    assert REVOKED_REASON == (
        "grant no longer valid (add-on removed in ServiceM8, or authorised again elsewhere)"
    )
