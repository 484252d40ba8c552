"""One account pair, one connection (bridge/connections/uniqueness.py,
docs/connections.md#one-account-pair-one-connection), on real Redis and the simulators: what
``sm8cd connections add``, ``pair`` and ``set-secrets`` refuse, what the workers pause, and what an
OAuth activation of an account served by an API key makes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from pydantic import SecretStr
from typer.testing import CliRunner

from bridge.cli import app
from bridge.connections import ConnectionRegistry, ConnectionSecrets, make_connection
from bridge.connections.activation import ID_PREFIX, Activation
from bridge.connections.uniqueness import (
    AccountPair,
    check_pairing,
    duplicate_of,
    duplicate_reason,
    refuse_duplicate,
    refuse_duplicates,
)
from bridge.errors import ConfigError, ConnectionPaused
from bridge.http.accounts import AccountIds, key_digest
from bridge.servicem8.oauth import OAuthConfig
from bridge.store import ActivityStore, Keys, Stores
from tests.conftest import CD_KEY as SIM_CD
from tests.conftest import OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_REDIRECT
from tests.conftest import SM8_KEY as SIM_SM8
from tests.connections.conftest import CD_KEY, SM8_KEY

SECOND_SM8 = "smk-test-second-6e0b2a"  # another key of the simulator's one account
OTHER_CD = "cdk-test-other-71c4d9"  # a key of another Coredination group
UNKNOWN_SM8 = "smk-test-unknown-0a9d3e"  # a key ServiceM8 refuses


def _cli(*args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    for secret in (SIM_SM8, SIM_CD, SECOND_SM8, OTHER_CD, UNKNOWN_SM8):
        assert secret not in result.output
    return result


@pytest.fixture
def cli_env(fleet_env, monkeypatch, sm8_sim, cd_sim) -> dict[str, str]:
    """``fleet_env`` with both simulators as the default APIs and a deployment id of its own
    (whose ``b:{id}:account`` hash the environment's connection's workers would keep)."""
    sm8_sim.api_keys.add(SECOND_SM8)
    cd_sim.api_keys.add(OTHER_CD)
    deployment = f"dep{uuid.uuid4().hex[:8]}"
    env = {"BRIDGE_CONNECTION_ID": deployment, "SERVICEM8_BASE_URL": sm8_sim.api_url(),
           "COREDINATION_BASE_URL": cd_sim.api_url()}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {**fleet_env, **env}


def _add(name: str, sm8: str, cd: str, code: int = 0, *more: str) -> Any:
    return _cli("connections", "add", name, "--servicem8-api-key", sm8,
                "--coredination-api-key", cd, *more, code=code)  # fmt: skip


def _ids(registry: ConnectionRegistry) -> list[str]:
    return [c.id for c in registry.list()]


def test_adding_a_connection_learns_its_account_and_a_duplicate_is_refused_storing_nothing(
    cli_env, registry, sm8_sim, redis_client, fleet_keys
):
    shown = json.loads(_add("acme", SIM_SM8, SIM_CD, 0, "--json").stdout)
    assert shown["servicem8_account"] == sm8_sim.vendor_uuid.lower()  # one vendor.json
    assert shown["coredination_group"] == key_digest(cli_env["COREDINATION_BASE_URL"], SIM_CD)
    assert sm8_sim.counts_snapshot()["by_endpoint"] == {"GET vendor.list": 1}

    # Another ServiceM8 key of the same account, the same Coredination key: the same pair.
    refused = _add("beta", SECOND_SM8, SIM_CD, 2).output.replace("\n", " ")
    said = "connection 'beta' not added: connection 'acme' already serves ServiceM8 account"
    assert said in refused and "duplicate every job in Coredination" in refused
    assert _ids(registry) == sorted(["acme", cli_env["BRIDGE_CONNECTION_ID"]])
    assert not redis_client.hexists(fleet_keys.secrets, "beta")

    # The same account with another Coredination group is another pair.
    gamma = json.loads(_add("gamma", SECOND_SM8, OTHER_CD, 0, "--json").stdout)
    assert gamma["servicem8_account"] == shown["servicem8_account"]
    assert gamma["coredination_group"] != shown["coredination_group"]


def test_a_key_servicem8_refuses_is_its_own_line_and_nothing_is_stored(cli_env, registry):
    refused = _add("acme", UNKNOWN_SM8, SIM_CD, 2).output.replace("\n", " ")
    assert "connection 'acme' not added: ServiceM8 refused its API key (401)" in refused
    away = _add("acme", SIM_SM8, SIM_CD, 1, "--servicem8-base-url", "http://127.0.0.1:9/api_1.0")
    assert "could not be asked which account its key is for" in away.output.replace("\n", " ")
    assert "acme" not in _ids(registry)
    # Given by hand, the account is taken as said: no call.
    account = str(uuid.uuid4())
    added = json.loads(_add("acme", UNKNOWN_SM8, SIM_CD, 0, "--servicem8-account", account,
                            "--json").stdout)  # fmt: skip
    assert added["servicem8_account"] == account


def test_the_environments_connection_counts_once_its_workers_know_its_account(
    cli_env, registry, sm8_sim, redis_client, monkeypatch
):
    own = cli_env["BRIDGE_CONNECTION_ID"]
    monkeypatch.setenv("COREDINATION_API_KEY", SIM_CD)  # the environment's group is SIM_CD's
    try:
        # Its workers never ran: its account is not known, so it is no duplicate of anything.
        _add("acme", SIM_SM8, SIM_CD)
        assert registry.get(own).keys == "environment"  # it joined the registry first
        # Now they have learnt it: it serves the pair, and it was there before 'acme'.
        account = sm8_sim.vendor_uuid.lower()
        ActivityStore(redis_client, Keys(own)).set_account("servicem8", account)
        refused = _add("beta", SECOND_SM8, SIM_CD, 2).output.replace("\n", " ")
        assert f"connection 'beta' not added: connection '{own}' already serves" in refused
        assert "beta" not in _ids(registry)
    finally:
        Stores.connect(redis_client, own).wipe()


def test_pairing_is_refused_with_a_group_another_connection_serves_on_that_account(
    cli_env, registry, sm8_sim, monkeypatch
):
    _add("acme", SIM_SM8, SIM_CD)
    account = sm8_sim.vendor_uuid.lower()
    _cli("connections", "add", "oauth-1", "--status", "authorised", "--servicem8-account", account)
    registry.update_grant("oauth-1", "access-5c1e", "refresh-9d2a", 1_800_000_000)
    monkeypatch.setenv("PAIR_CD", SIM_CD)
    refused = _cli("connections", "pair", "oauth-1", "--coredination-api-key-env", "PAIR_CD",
                   code=2).output.replace("\n", " ")  # fmt: skip
    assert "connection 'oauth-1' not paired: connection 'acme' already serves" in refused
    assert registry.get("oauth-1").status == "authorised"
    assert registry.secrets("oauth-1").coredination_api_key is None

    monkeypatch.setenv("PAIR_CD", OTHER_CD)
    paired = json.loads(_cli("connections", "pair", "oauth-1", "--coredination-api-key-env",
                             "PAIR_CD", "--json").stdout)  # fmt: skip
    assert paired["status"] == "active"
    assert paired["coredination_group"] == key_digest(cli_env["COREDINATION_BASE_URL"], OTHER_CD)


def test_new_keys_that_would_make_a_duplicate_are_refused(cli_env, registry):
    _add("acme", SIM_SM8, SIM_CD)
    _add("beta", SECOND_SM8, OTHER_CD)
    before = registry.get("beta")
    refused = _cli("connections", "set-secrets", "beta", "--coredination-api-key", SIM_CD,
                   code=2).output.replace("\n", " ")  # fmt: skip
    assert "connection 'beta' not changed: connection 'acme' already serves" in refused
    assert registry.get("beta") == before
    assert registry.secrets("beta").coredination_api_key == SecretStr(OTHER_CD)


# --- the workers' side -----------------------------------------------------------------------
@pytest.fixture
def ticking(redis_client, box, fleet_keys) -> Iterator[tuple[ConnectionRegistry, list[float]]]:
    """A registry whose clock the test sets, so the order connections were added in is chosen;
    the stores of the connections it names are wiped afterwards."""
    now = [1_000.0]
    registry = ConnectionRegistry(redis_client, box, keys=fleet_keys, clock=lambda: now[0])
    yield registry, now
    for connection in registry.list():
        Stores.connect(redis_client, connection.id).wipe()


def _forced(registry: ConnectionRegistry, name: str, account: str | None = None) -> str:
    """A connection put into the registry as an earlier release or a script would: no check."""
    connection_id = f"{name}-{uuid.uuid4().hex[:6]}"
    registry.add(
        make_connection(id=connection_id, servicem8_account=account),
        ConnectionSecrets(servicem8_api_key=SM8_KEY, coredination_api_key=CD_KEY),
    )
    return connection_id


def test_a_duplicate_forced_into_the_registry_is_paused_and_the_earlier_one_left_active(ticking):
    registry, now = ticking
    account = str(uuid.uuid4())
    earlier = _forced(registry, "zeta", account)
    now[0] += 60
    later = _forced(registry, "alpha", account)  # after, though first by id
    pair = AccountPair(account, registry.get(later).coredination_group)
    assert pair.coredination == key_digest(registry.get(later).coredination_base_url, CD_KEY)
    assert duplicate_of(registry, later, pair) == earlier

    # The earlier one's check pauses the later one and goes on.
    refuse_duplicate(registry, earlier, pair)
    assert registry.get(earlier).status == "active"
    assert (registry.get(later).status, registry.get(later).reason) == (
        "paused", f"serves the same ServiceM8 account and Coredination group as connection "
        f"{earlier}")  # fmt: skip

    # The later one's own check refuses it, and its pause stays as it is.
    registry.resume(later)
    with pytest.raises(ConnectionPaused) as refused:
        refuse_duplicate(registry, later, pair)
    assert str(refused.value) == f"connection {later!r} is paused: {duplicate_reason(earlier)}"
    assert registry.get(later).status == "paused"
    assert registry.get(earlier).status == "active"


def test_a_side_not_known_yet_makes_no_duplicate(ticking):
    registry, now = ticking
    earlier = _forced(registry, "north")  # its account not learnt by anyone
    now[0] += 60
    later = _forced(registry, "south", str(uuid.uuid4()))
    group = registry.get(later).coredination_group
    refuse_duplicate(registry, later, AccountPair(registry.get(later).servicem8_account, group))
    refuse_duplicate(registry, later, AccountPair(None, group))
    assert {registry.get(c).status for c in (earlier, later)} == {"active"}


def test_a_runtime_is_checked_again_when_its_servicem8_account_is_learnt(ticking, redis_client):
    registry, now = ticking
    account = str(uuid.uuid4())
    earlier = _forced(registry, "north")
    ActivityStore(redis_client, Keys(earlier)).set_account("servicem8", account)  # learnt
    now[0] += 60
    later = _forced(registry, "south")
    entry = registry.get(later)
    group = entry.coredination_group
    assert group is not None
    stand_ins = {"servicem8": "key-0000000000000000", "coredination": group}
    accounts = AccountIds(ActivityStore(redis_client, Keys(later)), stand_ins)

    # As the worker calls it, with its view of the registry; nothing known of its account yet.
    refuse_duplicates(registry, entry, accounts, registry.list())
    assert registry.get(later).status == "active"
    with pytest.raises(ConnectionPaused):
        accounts.learn("servicem8", account.upper())  # its first ServiceM8 call
    assert registry.get(later).reason == duplicate_reason(earlier)
    assert registry.get(earlier).status == "active"


# --- an OAuth activation of an account an API-key connection serves -------------------------
@pytest.fixture
def activation(registry, oauth, account_sim) -> Iterator[Activation]:
    config = OAuthConfig(OAUTH_CLIENT_ID, SecretStr(OAUTH_CLIENT_SECRET), OAUTH_REDIRECT,
                         authorize_url=oauth.authorize_url, token_url=oauth.token_url)  # fmt: skip
    yield Activation(registry, config, servicem8_base_url=account_sim.api_url())
    for key in registry.r.scan_iter(f"{registry.keys.prefix}oauth:*"):
        registry.r.delete(key)


def _activate(activation: Activation) -> Any:
    answer = requests.get(activation.url(), allow_redirects=False, timeout=5)
    query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    return activation.complete(query["state"], query["code"])


def test_an_activation_leaves_an_api_key_connection_its_key_and_its_pairing_is_checked(
    activation, registry, account_sim
):
    account = account_sim.vendor_uuid.lower()
    cd_url = "https://cd.example/api/1"
    registry.add(
        make_connection(id="acme", servicem8_account=account, coredination_base_url=cd_url),
        ConnectionSecrets(servicem8_api_key="sim-servicem8-key", coredination_api_key=CD_KEY),
    )
    done = _activate(activation)
    assert done.new and done.connection.id == ID_PREFIX + account
    assert done.connection.status == "authorised"
    held = registry.secrets("acme")
    assert held.servicem8_api_key is not None and held.servicem8_grant is None  # kept its key

    with pytest.raises(ConfigError, match="not paired: connection 'acme' already serves"):
        check_pairing(registry, done.connection.id, cd_url, CD_KEY)
    check_pairing(registry, done.connection.id, cd_url, OTHER_CD)  # another group: allowed
    # A second activation renews the grant of the activation's own connection.
    again = _activate(activation)
    assert not again.new and again.connection.id == done.connection.id
    assert _ids(registry) == sorted(["acme", done.connection.id])
