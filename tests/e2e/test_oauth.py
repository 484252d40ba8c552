"""ServiceM8 OAuth end to end (docs/servicem8-oauth.md): a person adds the add-on through the web
receiver's activation page, the grant waits as an authorised connection that syncs nothing until
an operator pairs it, then it syncs; its access token expires every few seconds and four worker
processes refresh it exactly once per expiry; the add-on's removal pauses the connection with the
reason. A forged or reused callback stores nothing, and no token reaches any output. And an
activation while the environment's own connection syncs another account on the same ServiceM8 host
leaves that connection syncing."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bench.harness import Stack, book_and_wait, cd_resources, eventually, expected_resources
from bridge.connections import ConnectionRegistry, SecretBox, new_key
from bridge.connections.activation import ID_PREFIX, REVOKED_REASON
from bridge.connections.models import Connection
from bridge.redis.server import free_port
from bridge.simulators.base import SimReply, SimRequest, SimServer
from bridge.simulators.coredination import CoredinationSimulator
from bridge.simulators.oauth import OAuthSimulator
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Simulator
from bridge.store import Stores
from bridge.store.keys import FleetKeys
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days

pytestmark = pytest.mark.e2e

CLIENT_ID, CLIENT_SECRET = "addon-e2e-5521", "oauth-e2e-secret-7f3a91c2"
CD_KEY = "cdk-oauth-4b9e2d7a1c"
EXPIRES_IN, MARGIN = 5, 2.0  # a token lasts 5 s and is refreshed with 2 s left: every ~3 s


@pytest.fixture
def oauth() -> Iterator[OAuthSimulator]:
    sim = OAuthSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, expires_in=EXPIRES_IN)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def account(oauth: OAuthSimulator) -> Iterator[tuple[ServiceM8Simulator, CoredinationSimulator]]:
    """The customer's ServiceM8 account (it takes the OAuth server's tokens, no API key) and
    the Coredination group it is to be paired with."""
    sm8 = ServiceM8Simulator(bearer_account=oauth.account_of, seed=41).start()
    cd = CoredinationSimulator(api_keys=(CD_KEY,), seed=41).start()
    oauth.approve_as(sm8.vendor_uuid)
    yield sm8, cd
    sm8.stop()
    cd.stop()


@pytest.fixture
def stack(tmp_path, redis_url, oauth, account) -> Iterator[Stack]:
    sm8, cd = account
    port = free_port()
    oauth.redirect_uri = f"http://127.0.0.1:{port}/oauth/servicem8/callback"
    stack = Stack(tmp_path, redis_url, sm8, cd, **_oauth_env(oauth))
    # The environment's own connection points at this same simulator with keys it refuses:
    # paused, so that only the grant's connection talks to it.
    _registry(stack).add(Connection(id=stack.connection, keys="environment", status="paused",
                                    reason="not this test's account"))  # fmt: skip
    stack.web_base = stack.web(port)  # type: ignore[attr-defined]
    yield stack
    _teardown(stack)


def _oauth_env(oauth: OAuthSimulator) -> dict[str, str]:
    """The add-on's registration with the simulator's OAuth server, and a key for the grants."""
    return {
        "BRIDGE_SECRET_KEYS": new_key(),
        "SERVICEM8_OAUTH_CLIENT_ID": CLIENT_ID,
        "SERVICEM8_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        "SERVICEM8_OAUTH_REDIRECT_URI": oauth.redirect_uri,
        "SERVICEM8_OAUTH_AUTHORIZE_URL": oauth.authorize_url,
        "SERVICEM8_OAUTH_TOKEN_URL": oauth.token_url,
        "SERVICEM8_OAUTH_REFRESH_MARGIN_SECONDS": str(MARGIN),
    }


def _teardown(stack: Stack) -> None:
    """The processes stopped, then every registry connection's keys and the registry's."""
    stack.stop()
    keys = FleetKeys.for_deployment(stack.connection)
    for connection in stack.client.hkeys(keys.connections):
        Stores.connect(stack.client, connection.decode()).wipe()
    for key in stack.client.scan_iter(f"{keys.prefix}*"):
        stack.client.delete(key)
    stack.wipe()


def _registry(stack: Stack) -> ConnectionRegistry:
    return ConnectionRegistry(stack.client, SecretBox([stack.env["BRIDGE_SECRET_KEYS"]]),
                              keys=FleetKeys.for_deployment(stack.connection))  # fmt: skip


def _approve(base: str, label: str = "north-office") -> str:
    """The person's browser: the activation page, ServiceM8's authorize page, and back. The
    callback URL the bridge is sent to."""
    start = requests.get(f"{base}/oauth/servicem8/activate", params={"label": label},
                         allow_redirects=False, timeout=5)  # fmt: skip
    assert start.status_code == 302
    authorize = requests.get(start.headers["location"], allow_redirects=False, timeout=5)
    assert authorize.status_code == 302
    callback: str = authorize.headers["location"]
    assert callback.startswith(f"{base}/oauth/servicem8/callback?")
    return callback


def test_activation_pairing_sync_refresh_and_revocation(stack, oauth, account):
    sm8, cd = account
    registry = _registry(stack)
    base = stack.web_base

    # Forged: a state the bridge never issued stores nothing and spends no code.
    forged = requests.get(f"{base}/oauth/servicem8/callback",
                          params={"state": "x" * 43, "code": "made-up"}, timeout=5)  # fmt: skip
    assert forged.status_code == 400
    assert [c for c in registry.list() if c.keys == "stored"] == []

    # Activation: the account comes in as an authorised connection holding its grant.
    callback = _approve(base)
    done = requests.get(callback, timeout=10)
    assert done.status_code == 200, done.text
    connection_id = ID_PREFIX + sm8.vendor_uuid.lower()
    assert connection_id in done.text
    # The environment's own connection joined the registry beside it, keys never stored.
    assert [c.status for c in registry.list() if c.keys == "environment"] == ["paused"]
    (connection,) = [c for c in registry.list() if c.keys == "stored"]
    assert (connection.id, connection.status, connection.label) == (
        connection_id, "authorised", "north-office")  # fmt: skip
    assert registry.secrets(connection_id).servicem8_grant is not None
    # Reused: the same callback again is refused, and the code is not exchanged twice.
    again = requests.get(callback, timeout=5)
    assert again.status_code == 400 and "used already" in again.text
    assert oauth.issued[sm8.vendor_uuid] == 1 and len(registry.list()) == 2

    # Four worker processes and a beat: nothing syncs before an operator pairs the grant.
    biz = seed_business(sm8, cd, staff=3, jobs=5, allocations=8)
    calls_before = sm8.count()
    stack.worker("w1", concurrency=2)
    stack.worker("w2", concurrency=2)
    stack.beat()
    time.sleep(3)
    assert sm8.count() == calls_before and cd.count() == 0

    # Paired: it syncs.
    registry.pair(connection_id, cd.api_url(), CD_KEY)
    wanted = expected_resources(biz, connection_namespace(connection_id))
    eventually(lambda: cd_resources(cd) == wanted, timeout=60)

    # The token lives 5 s: over ~12 s of polling by four processes, one refresh per expiry.
    # A second refresh of one token would spend a refresh token already spent (rotation) and
    # read as a revocation, so the connection staying active says the same again.
    refreshes_before = oauth.refreshes[sm8.vendor_uuid]
    time.sleep(12)
    times = [t for a, t in oauth.refreshed_at if a == sm8.vendor_uuid]
    assert oauth.refreshes[sm8.vendor_uuid] - refreshes_before >= 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= EXPIRES_IN - MARGIN - 1.0, gaps  # never twice for one expiry
    assert registry.get(connection_id).status == "active"
    # And it still syncs with the refreshed tokens.
    row = next(iter(sm8.records["joballocation"].values()))
    sm8.update("joballocation", row["uuid"], {"active": 0})
    cd_job = cd_job_uuid(connection_namespace(connection_id), row["job_uuid"])
    user = biz.user_for(row["staff_uuid"])
    assert user is not None

    def taken_off() -> bool:
        job = cd.jobs[cd.by_uuid[cd_job]]
        return all(r["userId"] != user["id"] for r in job["resources"])

    eventually(taken_off, timeout=30)

    # The add-on is removed: the next call's 401 makes a worker renew the token, the refresh
    # answers invalid_grant, and the connection is paused saying why.
    oauth.revoke(sm8.vendor_uuid)
    eventually(lambda: registry.get(connection_id).status == "paused", timeout=30)
    reason = registry.get(connection_id).reason or ""
    assert reason.startswith(REVOKED_REASON) and "invalid_grant" in reason
    time.sleep(6)  # every process's view of the registry (at most 5 s old) has the pause
    calls = sm8.count()
    time.sleep(3)
    assert sm8.count() == calls  # paused: nothing more is sent

    # No token, code or secret in any process's output.
    logs = stack.logs()
    leaks = [t for t in [*oauth.tokens, CLIENT_SECRET, CD_KEY] if t in logs]
    assert leaks == []
    for code in parse_qs(urlsplit(callback).query)["code"]:
        assert code not in logs


class ServiceM8Host(SimServer):
    """ServiceM8's one API host: every account is reached at the same base URL (the one an
    activation stores, the environment's ``SERVICEM8_BASE_URL``) and the credential says which.
    A simulator holds one account, so each request goes whole to the account that accepts its
    API key or access token, and is answered with that account's records, limits and counts;
    one that no account accepts goes to the first, which refuses it."""

    name = "servicem8-host"

    def __init__(self, *accounts: ServiceM8Simulator) -> None:
        super().__init__()
        self.accounts = accounts

    def dispatch(
        self, request: SimRequest, conn: BaseHTTPRequestHandler | None = None
    ) -> SimReply | None:
        held = next((a for a in self.accounts if a.authenticate(request)), self.accounts[0])
        return held.dispatch(request, conn)

    def api_url(self) -> str:
        return f"{self.root_url}/api_1.0"


def test_adding_a_connection_by_an_activation_leaves_the_environments_connection_syncing(
    tmp_path, redis_url, oauth, account, sm8_sim, cd_sim
):
    """The environment's connection syncs its own account (its API key) when a person activates
    the add-on for a second account on the same ServiceM8 host (a grant), and an operator pairs
    it: a booking made after the addition still reaches the environment's Coredination within
    its usual poll time, its connection stays active and commands still know it, and the new one
    syncs its own account into its own Coredination."""
    from tests.conftest import CD_KEY as ENV_CD_KEY
    from tests.conftest import SM8_KEY

    granted_sm8, granted_cd = account
    host = ServiceM8Host(sm8_sim, granted_sm8).start()
    port = free_port()
    oauth.redirect_uri = f"http://127.0.0.1:{port}/oauth/servicem8/callback"
    stack = Stack(tmp_path, redis_url, host, cd_sim, sm8_key=SM8_KEY, cd_key=ENV_CD_KEY,
                  **_oauth_env(oauth))  # fmt: skip
    registry = _registry(stack)
    try:
        # The environment's connection, alone, syncing and in step.
        biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
        stack.worker(concurrency=2)
        stack.beat()
        ns = connection_namespace(stack.connection)
        eventually(lambda: cd_resources(cd_sim) == expected_resources(biz, ns), timeout=60)

        # A person adds the add-on for the second account, through the web receiver.
        granted_biz = seed_business(granted_sm8, granted_cd, staff=2, jobs=2, allocations=2)
        base = stack.web(port)
        done = requests.get(_approve(base), timeout=10)
        assert done.status_code == 200, done.text
        added = ID_PREFIX + granted_sm8.vendor_uuid.lower()
        assert added in done.text
        connection = registry.get(added)
        assert (connection.status, connection.servicem8_base_url) == ("authorised", host.api_url())
        assert registry.get(stack.connection).status == "active"
        registry.pair(added, granted_cd.api_url(), CD_KEY)  # an operator pairs it: it syncs

        took = book_and_wait(sm8_sim, cd_sim, biz, ns, days.stamp(13, 9), days.stamp(13, 11))
        print(f"\nthe environment's change reached Coredination in {took:.1f} s")

        # The new connection syncs its own account, and no job crosses between the two.
        granted_ns = connection_namespace(added)
        eventually(lambda: cd_resources(granted_cd) == expected_resources(granted_biz, granted_ns),
                   timeout=60)  # fmt: skip
        assert set(cd_resources(cd_sim)) == set(expected_resources(biz, ns))

        # The environment's connection is still active, and a command still knows it.
        assert registry.get(stack.connection).status == "active"
        assert registry.get(added).status == "active"
        shown = subprocess.run(
            [sys.executable, "-m", "bridge", "-c", stack.connection, "status", "--json"],
            env=stack.env, cwd=tmp_path, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stdout + shown.stderr
        status = json.loads(shown.stdout)
        assert (status["connection"], status["links"], status["paused"]) == (
            stack.connection, len(biz.jobs), {})  # fmt: skip
        assert status["accounts"]["servicem8"] == sm8_sim.vendor_uuid  # its own, not the grant's
    finally:
        _teardown(stack)
        host.stop()
