"""ServiceM8 OAuth (bridge.servicem8.oauth) against the OAuth simulator and the ServiceM8
simulator over loopback, with the local Redis for states and refresh locks."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import requests
from pydantic import SecretStr

from bridge.errors import ApiError, AuthError, GrantRevoked, Rejected, Unavailable
from bridge.http import Transport
from bridge.log import configure_logging, get_logger
from bridge.servicem8 import ServiceM8Client
from bridge.servicem8.classify import classify_servicem8
from bridge.servicem8.oauth import (
    SCOPES,
    Grant,
    InvalidState,
    MemoryGrantStore,
    OAuthConfig,
    Pending,
    StateStore,
    activation_url,
    complete_activation,
    exchange_code,
    refresh,
)
from bridge.servicem8.tokens import REFRESH_LOCK_KEY, BearerAuth, TokenKeeper
from bridge.simulators import ServiceM8Simulator
from bridge.simulators.oauth import OAuthSimulator
from bridge.store.keys import Keys
from tests.conftest import OAUTH_CLIENT_ID as CLIENT_ID
from tests.conftest import OAUTH_CLIENT_SECRET as CLIENT_SECRET
from tests.conftest import OAUTH_REDIRECT as REDIRECT

T0 = 1_900_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(oauth: OAuthSimulator) -> OAuthConfig:
    return OAuthConfig(
        client_id=CLIENT_ID,
        client_secret=SecretStr(CLIENT_SECRET),
        redirect_uri=REDIRECT,
        authorize_url=oauth.authorize_url,
        token_url=oauth.token_url,
    )


@pytest.fixture
def states(redis_client: Any) -> Iterator[StateStore]:
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    yield StateStore(redis_client, prefix=prefix)
    for key in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(key)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _authorize(session: requests.Session, url: str) -> dict[str, str]:
    """The person approves: follow the authorize page to the redirect it answers with."""
    answer = session.get(url, allow_redirects=False)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _activate(
    session: requests.Session, config: OAuthConfig, states: StateStore, clock: Clock
) -> tuple[Pending, Grant]:
    callback = _authorize(session, activation_url(config, states, label="north-office"))
    return complete_activation(
        session, config, states, callback["state"], callback["code"], clock=clock
    )


def _keeper(client: Any, grants: MemoryGrantStore, config: OAuthConfig, clock: Clock,
            revoked: list[tuple[str, str]] | None = None, **kw: Any) -> TokenKeeper:  # fmt: skip
    def on_revoked(connection_id: str, reason: str) -> None:
        assert revoked is not None, "no revocation expected"
        revoked.append((connection_id, reason))

    return TokenKeeper(client, grants, config, on_revoked=on_revoked, clock=clock, **kw)


def _connection() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


def _vendor_via(sim: ServiceM8Simulator, keeper: TokenKeeper, connection_id: str) -> str:
    transport = Transport(
        api="servicem8",
        base_url=sim.api_url(),
        credentials=BearerAuth(keeper, connection_id),
        classify=classify_servicem8,
        quick_retries=0,
    )
    return ServiceM8Client(transport, "Australia/Sydney").vendor().uuid


# --- activation and state ------------------------------------------------------------------------
def test_the_activation_url_names_the_fixed_redirect_scopes_and_a_fresh_state(
    config, states, redis_client
):
    first, second = activation_url(config, states), activation_url(config, states, label="x")
    query = {k: v[0] for k, v in parse_qs(urlsplit(first).query).items()}
    assert first.startswith(config.authorize_url + "?")
    assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT and query["scope"] == SCOPES
    assert len(query["state"]) >= 43
    assert query["state"] != parse_qs(urlsplit(second).query)["state"][0]
    assert 0 < redis_client.ttl(states.key(query["state"])) <= 600
    assert CLIENT_SECRET not in first + second


def test_a_callback_exchanges_its_code_for_a_grant_once(
    session, config, states, clock, oauth, account_sim
):
    callback = _authorize(session, activation_url(config, states, label="north-office"))
    pending, grant = complete_activation(
        session, config, states, callback["state"], callback["code"], clock=clock
    )
    assert pending.label == "north-office"
    assert grant.expires_at == int(T0) + 3600 and grant.scope == SCOPES
    assert oauth.account_of(grant.access_token.get_secret_value()) == account_sim.vendor_uuid
    with pytest.raises(Rejected, match="invalid_grant"):
        exchange_code(session, config, callback["code"], clock=clock)
    assert oauth.issued[account_sim.vendor_uuid] == 1


def test_a_forged_state_is_refused_before_any_code_is_spent(session, config, states, oauth):
    oauth.approve_as("e5f0a6b2-4c1d-4f3e-9a8b-7c6d5e4f3a21")
    url = activation_url(config, StateStore(states.r, prefix=states.prefix + "elsewhere:"))
    callback = _authorize(session, url)  # a state this store never issued
    for forged in (callback["state"], "../*", ""):
        with pytest.raises(InvalidState):
            complete_activation(session, config, states, forged, callback["code"])
    assert sum(oauth.issued.values()) == 0


def test_a_state_used_once_is_refused_the_second_time(session, config, states):
    state = _authorize(session, activation_url(config, states))["state"]
    assert states.consume(state).label is None
    with pytest.raises(InvalidState, match="unknown, used or expired"):
        states.consume(state)


def test_an_expired_state_is_refused(session, config, states, redis_client):
    state = _authorize(session, activation_url(config, states))["state"]
    redis_client.pexpireat(states.key(state), 1)  # its 600 s are over
    with pytest.raises(InvalidState):
        states.consume(state)


# --- refresh -------------------------------------------------------------------------------------
def test_a_refresh_rotates_the_refresh_token_and_stores_the_new_one(
    session, config, states, clock, oauth, account_sim, redis_client
):
    _, grant = _activate(session, config, states, clock)
    grants, cid = MemoryGrantStore(), _connection()
    grants.save(cid, grant)
    keeper = _keeper(redis_client, grants, config, clock)
    assert keeper.access_token(cid) == grant.access_token.get_secret_value()  # fresh: as stored

    clock.now += 3600 - 299  # inside the 300 s margin
    token = keeper.access_token(cid)
    stored = grants.load(cid)
    assert stored is not None and token == stored.access_token.get_secret_value()
    assert token != grant.access_token.get_secret_value()
    assert (
        stored.refresh_token != grant.refresh_token and stored.expires_at == int(clock.now) + 3600
    )
    assert oauth.refreshes[account_sim.vendor_uuid] == 1
    with pytest.raises(GrantRevoked):  # the old refresh token is spent
        refresh(session, config, grant.refresh_token)
    assert _vendor_via(account_sim, keeper, cid) == account_sim.vendor_uuid
    assert oauth.refreshes[account_sim.vendor_uuid] == 1
    assert not redis_client.exists(Keys(cid).key(REFRESH_LOCK_KEY))


def test_four_workers_meeting_an_expired_token_refresh_it_exactly_once(
    session, config, states, clock, oauth, account_sim, redis_url
):
    _, grant = _activate(session, config, states, clock)
    grants, cid = MemoryGrantStore(), _connection()
    grants.save(cid, grant)
    clock.now += 4000
    oauth.set_faults(latency=0.2)  # the refresh holds the lock while the others arrive
    start, got, errors = threading.Barrier(4), [], []

    def worker() -> None:
        client = redis.Redis.from_url(redis_url)
        with requests.Session() as own:
            keeper = _keeper(client, grants, config, clock, session=own)
            start.wait()
            try:
                got.append(keeper.access_token(cid))
            except Exception as exc:  # reported below
                errors.append(exc)
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert oauth.refreshes[account_sim.vendor_uuid] == 1
    assert len(got) == 4 and len(set(got)) == 1 and grants.saves == 2
    assert got[0] != grant.access_token.get_secret_value()


def test_a_worker_that_cannot_get_the_lock_uses_a_still_valid_token_or_defers(
    config, clock, redis_client
):
    grants, cid = MemoryGrantStore(), _connection()
    grants.save(cid, Grant(SecretStr("acc-old-1"), SecretStr("ref-old-1"), int(T0) + 100))
    held = redis_client.lock(Keys(cid).key(REFRESH_LOCK_KEY), timeout=5)
    assert held.acquire()
    try:
        keeper = _keeper(redis_client, grants, config, clock, lock_wait=0.1, lock_sleep=0.02)
        assert keeper.access_token(cid) == "acc-old-1"  # within the margin, not yet expired
        clock.now += 101
        with pytest.raises(Unavailable, match="refresh lock"):
            keeper.access_token(cid)
    finally:
        held.release()


def test_a_revoked_grant_raises_grant_revoked_and_tells_the_registry_why(
    session, config, states, clock, oauth, account_sim, redis_client
):
    _, grant = _activate(session, config, states, clock)
    grants, cid, revoked = MemoryGrantStore(), _connection(), []
    grants.save(cid, grant)
    keeper = _keeper(redis_client, grants, config, clock, revoked)
    assert _vendor_via(account_sim, keeper, cid) == account_sim.vendor_uuid

    oauth.revoke(account_sim.vendor_uuid)  # the add-on is removed
    # The access token stops working at once: the 401 makes the keeper renew it, and the
    # refresh tells the account has gone, without waiting for the token's hour to end.
    with pytest.raises(GrantRevoked) as caught_revoked:
        _vendor_via(account_sim, keeper, cid)
    assert caught_revoked.value.status == 400
    assert revoked == [(cid, caught_revoked.value.reason)]
    assert "invalid_grant" in revoked[0][1] and "add-on removed" in revoked[0][1]
    assert grants.load(cid) == grant  # nothing overwritten
    assert not redis_client.exists(Keys(cid).key(REFRESH_LOCK_KEY))


def test_an_access_token_refused_before_its_time_is_renewed_and_the_call_tried_again(
    session, config, states, clock, oauth, account_sim, redis_client
):
    _, grant = _activate(session, config, states, clock)
    grants, cid = MemoryGrantStore(), _connection()
    grants.save(cid, grant)
    keeper = _keeper(redis_client, grants, config, clock)
    assert _vendor_via(account_sim, keeper, cid) == account_sim.vendor_uuid
    saves_before = grants.saves

    with oauth.lock:
        oauth.access.clear()  # the server forgets its access tokens early
    with pytest.raises(Unavailable, match="credentials renewed"):  # no quick retry here
        _vendor_via(account_sim, keeper, cid)
    assert oauth.refreshes[account_sim.vendor_uuid] == 1
    assert grants.saves == saves_before + 1  # the rotated grant stored
    assert _vendor_via(account_sim, keeper, cid) == account_sim.vendor_uuid  # the new token

    # Refused again at once: renewing does not cure it, so the 401 stands (the auth pause's).
    with oauth.lock:
        oauth.access.clear()
    with pytest.raises(AuthError) as caught:
        _vendor_via(account_sim, keeper, cid)
    assert caught.value.status == 401 and oauth.refreshes[account_sim.vendor_uuid] == 1
    clock.now += 61  # a minute on, a refusal is worth one more renewal
    with pytest.raises(Unavailable, match="credentials renewed"):
        _vendor_via(account_sim, keeper, cid)
    assert oauth.refreshes[account_sim.vendor_uuid] == 2


def test_a_fresh_token_is_handed_out_without_reading_the_store_again(config, clock, redis_client):
    class Counting(MemoryGrantStore):
        loads = 0

        def load(self, connection_id: str) -> Grant | None:
            Counting.loads += 1
            return super().load(connection_id)

    grants, cid = Counting(), _connection()
    grants.save(cid, Grant(SecretStr("acc-1"), SecretStr("ref-1"), int(T0) + 3600))
    keeper = _keeper(redis_client, grants, config, clock)
    assert [keeper.access_token(cid) for _ in range(50)] == ["acc-1"] * 50
    assert Counting.loads == 1
    clock.now += 3600 - 200  # within the margin: read again (another worker may have renewed)
    grants.save(cid, Grant(SecretStr("acc-2"), SecretStr("ref-2"), int(T0) + 7200))
    assert keeper.access_token(cid) == "acc-2" and Counting.loads == 2


def test_token_endpoint_failures_land_on_the_error_tree(session, config, oauth):
    oauth.set_faults(error_rate=1.0)
    with pytest.raises(Unavailable):
        refresh(session, config, SecretStr("ref-anything-1"))
    oauth.set_faults(error_rate=0.0)
    wrong = OAuthConfig(CLIENT_ID, SecretStr("not-the-secret"), REDIRECT,
                        token_url=oauth.token_url)  # fmt: skip
    with pytest.raises(AuthError) as caught:
        refresh(session, wrong, SecretStr("ref-anything-1"))
    assert not isinstance(caught.value, GrantRevoked) and caught.value.status == 401
    gone = OAuthConfig(CLIENT_ID, SecretStr(CLIENT_SECRET), REDIRECT,
                       token_url="http://127.0.0.1:9/oauth/access_token")  # fmt: skip
    with pytest.raises(Unavailable):
        exchange_code(session, gone, "code-anything")


# --- secrets -------------------------------------------------------------------------------------
def test_no_secret_or_token_reaches_logs_or_error_messages(
    session, config, states, clock, oauth, account_sim, redis_client
):
    stream = io.StringIO()
    configure_logging("DEBUG", "json", secrets=(), stream=stream)  # the redactor knows nothing
    callback = _authorize(session, activation_url(config, states))
    _, grant = complete_activation(
        session, config, states, callback["state"], callback["code"], clock=clock
    )
    grants, cid, revoked = MemoryGrantStore(), _connection(), []
    grants.save(cid, grant)
    keeper = _keeper(redis_client, grants, config, clock, revoked)
    clock.now += 3600
    keeper.access_token(cid)
    rotated = grants.load(cid)
    assert rotated is not None
    failures: list[ApiError] = []
    for attempt in (
        lambda: exchange_code(session, config, callback["code"]),  # spent code
        lambda: refresh(session, config, grant.refresh_token),  # spent refresh token
        lambda: refresh(session, OAuthConfig(CLIENT_ID, SecretStr("wrong-secret-77"), REDIRECT,
                                             token_url=oauth.token_url), rotated.refresh_token),
    ):  # fmt: skip
        with pytest.raises((Rejected, AuthError)) as caught:
            attempt()
        failures.append(caught.value)
    oauth.revoke(account_sim.vendor_uuid)
    clock.now += 3600
    with pytest.raises(GrantRevoked) as caught_revoked:
        keeper.access_token(cid)
    failures.append(caught_revoked.value)
    get_logger("test").error("t.failed", errors=failures, grant=repr(rotated))

    out = stream.getvalue()
    assert "servicem8.token_refreshed" in out and "servicem8.grant_revoked" in out
    told = out + repr(revoked) + repr(grant) + repr(rotated)
    told += "".join(str(e) + repr(e) + repr(e.describe()) for e in failures)
    for secret in (
        CLIENT_SECRET,
        callback["code"],
        callback["state"],
        grant.access_token.get_secret_value(),
        grant.refresh_token.get_secret_value(),
        rotated.access_token.get_secret_value(),
        rotated.refresh_token.get_secret_value(),
    ):
        assert secret not in told


def test_the_registration_comes_from_the_settings_whole_or_not_at_all():
    from bridge.config import Settings
    from bridge.errors import ConfigError

    base = {"servicem8_api_key": "k-1234", "coredination_api_key": "c-1234", "_env_file": None}
    assert OAuthConfig.from_settings(Settings(**base)) is None  # API keys only
    with pytest.raises(
        ConfigError, match="SERVICEM8_OAUTH_CLIENT_SECRET, SERVICEM8_OAUTH_REDIRECT"
    ):
        OAuthConfig.from_settings(Settings(**base, servicem8_oauth_client_id=CLIENT_ID))
    whole = Settings(**base, servicem8_oauth_client_id=CLIENT_ID,
                     servicem8_oauth_client_secret=CLIENT_SECRET,
                     servicem8_oauth_redirect_uri=REDIRECT)  # fmt: skip
    config = OAuthConfig.from_settings(whole)
    assert config is not None and config.redirect_uri == REDIRECT
    assert config.client_secret.get_secret_value() == CLIENT_SECRET
    assert config.token_url.startswith("https://") and config.scopes == SCOPES
