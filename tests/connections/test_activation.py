"""The add-on's activation (bridge/connections/activation.py, bridge/web/activation.py) against the
OAuth and ServiceM8 simulators: what a callback may store, and what it must not."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bridge.connections import ConnectionRegistry
from bridge.connections.activation import (
    ID_PREFIX,
    MAX_PENDING_STATES,
    REVOKED_REASON,
    STARTS_KEY,
    STARTS_PER_MINUTE,
    Activation,
    RegistryGrants,
    TooManyActivations,
    client_key,
    pause_revoked,
)
from bridge.errors import Rejected
from bridge.servicem8.oauth import STATE_SECONDS, Grant, InvalidState, OAuthConfig
from bridge.simulators import ServiceM8Simulator
from bridge.simulators.oauth import OAuthSimulator
from bridge.web.activation import ACTIVATE_PATH, add_activation_routes
from tests.conftest import OAUTH_CLIENT_ID as CLIENT_ID
from tests.conftest import OAUTH_CLIENT_SECRET as CLIENT_SECRET
from tests.conftest import OAUTH_REDIRECT as REDIRECT
from tests.connections.conftest import CD_KEY


@pytest.fixture
def activation(
    registry: ConnectionRegistry, oauth: OAuthSimulator, account_sim: ServiceM8Simulator
) -> Iterator[Activation]:
    config = OAuthConfig(CLIENT_ID, SecretStr(CLIENT_SECRET), REDIRECT,
                         authorize_url=oauth.authorize_url, token_url=oauth.token_url)  # fmt: skip
    yield Activation(registry, config, servicem8_base_url=account_sim.api_url())
    for key in registry.r.scan_iter(f"{registry.keys.prefix}oauth:*"):
        registry.r.delete(key)


def _approved(activation: Activation, label: str | None = "north") -> dict[str, str]:
    """The person approves on the authorize page; the callback's query."""
    answer = requests.get(activation.url(label), allow_redirects=False, timeout=5)
    assert answer.status_code == 302
    return {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}


def test_an_approved_callback_stores_an_authorised_connection_with_its_grant(
    activation, registry, account_sim
):
    callback = _approved(activation)
    done = activation.complete(callback["state"], callback["code"])
    assert done.new
    connection = registry.get(ID_PREFIX + account_sim.vendor_uuid.lower())
    assert connection == done.connection
    assert (connection.status, connection.label, connection.servicem8_account) == (
        "authorised", "north", account_sim.vendor_uuid.lower())  # fmt: skip
    secrets = registry.secrets(connection.id)
    assert secrets.servicem8_grant is not None and secrets.coredination_api_key is None
    assert RegistryGrants(registry).load(connection.id) is not None


def test_a_forged_state_stores_nothing_and_spends_no_code(activation, registry, oauth):
    callback = _approved(activation)
    with pytest.raises(InvalidState):
        activation.complete("f" * 43, callback["code"])
    assert registry.list() == []
    assert oauth.codes  # the code is still unspent: nobody exchanged it


def test_a_reused_state_stores_nothing_more(activation, registry, oauth, account_sim):
    callback = _approved(activation)
    activation.complete(callback["state"], callback["code"])
    before = registry.secrets(registry.list()[0].id)
    with pytest.raises(InvalidState):
        activation.complete(callback["state"], callback["code"])
    assert len(registry.list()) == 1 and registry.secrets(registry.list()[0].id) == before
    assert oauth.issued[account_sim.vendor_uuid] == 1


def test_an_expired_state_stores_nothing(activation, registry):
    callback = _approved(activation)
    registry.r.delete(activation.states.key(callback["state"]))  # what Redis's expiry does
    with pytest.raises(InvalidState):
        activation.complete(callback["state"], callback["code"])
    assert registry.list() == []
    assert activation.states.ttl == 600  # and a state does expire, ten minutes on


def test_a_spent_code_stores_nothing(activation, registry, oauth):
    callback = _approved(activation)
    oauth.codes.clear()  # used or expired on ServiceM8's side
    with pytest.raises(Rejected):
        activation.complete(callback["state"], callback["code"])
    assert registry.list() == []


def test_a_second_activation_of_an_account_renews_its_grant_and_keeps_its_status(
    activation, registry, account_sim
):
    first = _approved(activation)
    connection = activation.complete(first["state"], first["code"]).connection
    registry.pair(connection.id, "https://cd.example/api/1", CD_KEY)
    pause_revoked(registry)(connection.id, "invalid_grant")
    assert registry.get(connection.id).reason.startswith(REVOKED_REASON)
    grant_before = registry.secrets(connection.id).servicem8_grant

    second = _approved(activation, label="someone else")
    again = activation.complete(second["state"], second["code"])
    assert not again.new and again.connection.id == connection.id
    assert len(registry.list()) == 1
    after = registry.get(connection.id)
    assert after.status == "paused" and after.label == "north"  # an operator resumes it
    assert registry.secrets(connection.id).servicem8_grant != grant_before
    assert registry.secrets(connection.id).coredination_api_key is not None  # kept


def test_the_registry_keeps_a_refreshed_grant_whole(registry, activation):
    callback = _approved(activation)
    connection = activation.complete(callback["state"], callback["code"]).connection
    grants = RegistryGrants(registry)
    grants.save(connection.id, Grant(SecretStr("acc-new-1"), SecretStr("ref-new-1"), 2_000_000_000))
    loaded = grants.load(connection.id)
    assert loaded is not None
    assert (loaded.access_token.get_secret_value(), loaded.refresh_token.get_secret_value(),
            loaded.expires_at) == ("acc-new-1", "ref-new-1", 2_000_000_000)  # fmt: skip
    assert grants.load("no-such-connection") is None


# --- the pages ------------------------------------------------------------------------------------
@pytest.fixture
def pages(activation: Activation) -> TestClient:
    from fastapi import FastAPI

    app = FastAPI()
    add_activation_routes(app, activation)
    return TestClient(app)


def test_the_activation_page_redirects_to_the_authorize_page_with_a_state(pages, oauth):
    answer = pages.get(ACTIVATE_PATH, params={"label": "north"}, follow_redirects=False)
    assert answer.status_code == 302
    target = urlsplit(answer.headers["location"])
    query = parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}{target.path}" == oauth.authorize_url
    assert query["redirect_uri"] == [REDIRECT] and query["client_id"] == [CLIENT_ID]
    assert len(query["state"][0]) >= 40


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"error": "access_denied", "state": "s" * 43}, "did not authorise"),
        ({"state": "s" * 43}, "not a ServiceM8 activation answer"),
        ({"state": "s" * 43, "code": "c0de"}, "unknown, used already or expired"),
    ],
)
def test_a_callback_that_is_not_an_approval_stores_nothing(pages, registry, query, says):
    answer = pages.get("/oauth/servicem8/callback", params=query)
    assert answer.status_code == 400 and says in answer.text
    assert registry.list() == []


def test_the_callback_page_says_which_connection_waits_for_pairing(pages, activation, registry):
    callback = _approved(activation)
    answer = pages.get("/oauth/servicem8/callback", params=callback)
    assert answer.status_code == 200
    (connection,) = registry.list()
    assert connection.id in answer.text and "pairs it" in answer.text
    assert callback["code"] not in answer.text and callback["state"] not in answer.text


# --- what anonymous loads of the activation page may make Redis hold ------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _bounded(activation: Activation, clock: Callable[[], float], **limits: int) -> Activation:
    """An activation like the fixture's (its keys cleaned up with it), with ``limits``."""
    return Activation(activation.registry, activation.config, clock=clock,
                      servicem8_base_url=activation.servicem8_base_url, **limits)  # fmt: skip


def _state_keys(activation: Activation) -> list[str]:
    return list(activation.registry.r.scan_iter(activation.states.key("*")))


def test_pending_states_are_capped_and_a_start_over_the_cap_stores_nothing(activation):
    clock = Clock()
    bounded = _bounded(activation, clock, max_pending=3, starts_per_minute=100)
    states = [parse_qs(urlsplit(bounded.url()).query)["state"][0] for _ in range(3)]
    with pytest.raises(TooManyActivations) as refused:
        bounded.url()
    assert refused.value.why == "pending" and refused.value.retry_after == STATE_SECONDS
    assert len(_state_keys(bounded)) == 3  # the refused start's state was taken back
    # A state taken back (used, forged or not) frees its place at once ...
    assert bounded.states.consume(states[0]).label is None
    bounded.url()
    with pytest.raises(TooManyActivations):
        bounded.url()
    # ... and an expired one once its ten minutes are over (Redis drops its key meanwhile).
    clock.now += STATE_SECONDS - 1
    with pytest.raises(TooManyActivations) as refused:
        bounded.url()
    assert refused.value.retry_after == 1
    clock.now += 1
    bounded.url()


def test_pending_states_expire_and_so_does_their_list(activation):
    state = parse_qs(urlsplit(activation.url()).query)["state"][0]
    r = activation.registry.r
    assert 0 < r.ttl(activation.states.key(state)) <= STATE_SECONDS
    assert 0 < r.ttl(activation.states.pending) <= STATE_SECONDS
    assert activation.states.cap == MAX_PENDING_STATES == 1_000


def test_each_client_may_start_a_few_activations_a_minute(activation):
    bounded = _bounded(activation, Clock(), starts_per_minute=2)
    r = bounded.registry.r
    for _ in range(2):
        bounded.url(client="203.0.113.7")
    with pytest.raises(TooManyActivations) as refused:
        bounded.url(client="203.0.113.7")
    assert refused.value.why == "rate" and 1 <= refused.value.retry_after <= 60
    assert len(_state_keys(bounded)) == 2  # nothing stored for the refused start
    bounded.url(client="203.0.113.8")  # another address has its own count
    bounded.url()  # a start that is no web request is not counted
    # An IPv6 client is counted by its /64: one host commonly holds the whole network.
    bounded.url(client="2001:db8:1:2::a")
    bounded.url(client="2001:db8:1:2:ffff::b")
    with pytest.raises(TooManyActivations):
        bounded.url(client="2001:db8:1:2::c")
    bounded.url(client="2001:db8:1:3::a")
    # The count expires with its minute; once it is gone the client may start again.
    key = bounded.registry.keys.prefix + STARTS_KEY.format(client=client_key("203.0.113.7"))
    assert 0 < r.ttl(key) <= 60
    r.delete(key)  # what Redis's expiry does
    bounded.url(client="203.0.113.7")
    assert STARTS_PER_MINUTE == 10


def test_the_activation_page_answers_429_over_either_bound(activation):
    from fastapi import FastAPI

    def page(bounded: Activation, client: tuple[str, int]) -> TestClient:
        app = FastAPI()
        add_activation_routes(app, bounded)
        return TestClient(app, client=client)

    visitor = page(activation, ("198.51.100.4", 40000))
    for _ in range(STARTS_PER_MINUTE):
        assert visitor.get(ACTIVATE_PATH, follow_redirects=False).status_code == 302
    answer = visitor.get(ACTIVATE_PATH, follow_redirects=False)
    assert answer.status_code == 429 and "from your address" in answer.text
    assert 1 <= int(answer.headers["retry-after"]) <= 60
    other = page(activation, ("198.51.100.5", 40000))
    assert other.get(ACTIVATE_PATH, follow_redirects=False).status_code == 302

    # The same deployment's pending states, whichever page started them: 11 now.
    bounded = _bounded(activation, time.time, max_pending=STARTS_PER_MINUTE + 2)
    full = page(bounded, ("198.51.100.6", 40000))
    assert full.get(ACTIVATE_PATH, follow_redirects=False).status_code == 302
    answer = full.get(ACTIVATE_PATH, follow_redirects=False)
    assert answer.status_code == 429 and "waiting to be finished" in answer.text
    assert "location" not in answer.headers
