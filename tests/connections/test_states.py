"""Status rules: active ⇄ paused by pause and resume; authorised → active only by pair. The pure
rules first, then the same through the registry."""

from __future__ import annotations

import pytest

from bridge.connections import ConnectionSecrets, make_connection, states
from bridge.errors import ConfigError
from tests.connections.conftest import ACCESS, CD_KEY, REFRESH

NOW = 1_800_000_000
CD_URL = "https://cd.example.test/api/1"


def connection(status, reason=None):
    return make_connection(id="acme", status=status, reason=reason, created=1, changed=1)


# Every (status, operation) → the status after it, or None for refused.
TABLE = [
    ("active", "pause", "paused"),
    ("active", "resume", "active"),
    ("active", "pair", None),
    ("paused", "pause", "paused"),
    ("paused", "resume", "active"),
    ("paused", "pair", None),
    ("authorised", "pause", None),
    ("authorised", "resume", None),
    ("authorised", "pair", "active"),
]


def apply(current, operation):
    if operation == "pause":
        return states.pause(current, "billing hold", NOW)
    if operation == "resume":
        return states.resume(current, NOW)
    return states.pair(current, CD_URL, NOW)


@pytest.mark.parametrize(("status", "operation", "after"), TABLE)
def test_each_status_and_operation_gives_the_tables_outcome(status, operation, after):
    current = connection(status, "earlier" if status == "paused" else None)
    if after is None:
        with pytest.raises(ConfigError, match="acme"):
            apply(current, operation)
        return
    changed = apply(current, operation)
    assert changed.status == after
    assert changed.reason == ("billing hold" if after == "paused" else None)


def test_nothing_but_pair_makes_an_authorised_connection_active():
    for operation in ("pause", "resume"):
        with pytest.raises(ConfigError, match="authorised, not paired"):
            apply(connection("authorised"), operation)


def test_a_pause_needs_a_reason():
    with pytest.raises(ConfigError, match="say why"):
        states.pause(connection("active"), "  ", NOW)


def test_pausing_then_resuming_through_the_registry(registry, keys_of_acme):
    registry.add(make_connection(id="acme"), keys_of_acme)
    paused = registry.pause("acme", "invoice unpaid")
    assert (paused.status, paused.reason) == ("paused", "invoice unpaid")
    assert registry.get("acme") == paused
    assert registry.pause("acme", "still unpaid").reason == "still unpaid"
    resumed = registry.resume("acme")
    assert (resumed.status, resumed.reason) == ("active", None)
    assert registry.get("acme").status == "active"


def test_an_authorised_grant_cannot_resume_and_pairs_into_an_active_connection(registry):
    registry.add(
        make_connection(id="oauth-7", status="authorised", servicem8_account="ABC-1"),
        ConnectionSecrets(
            servicem8_grant={"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": NOW}
        ),
    )
    with pytest.raises(ConfigError, match="only 'sm8cd connections pair'"):
        registry.resume("oauth-7")
    with pytest.raises(ConfigError, match="nothing to pause"):
        registry.pause("oauth-7", "x")
    assert registry.get("oauth-7").status == "authorised"

    paired = registry.pair("oauth-7", CD_URL, CD_KEY)
    assert (paired.status, paired.coredination_base_url) == ("active", CD_URL)
    secrets = registry.secrets("oauth-7")
    assert secrets.coredination_api_key.get_secret_value() == CD_KEY
    assert secrets.servicem8_grant.refresh_token.get_secret_value() == REFRESH  # kept
    with pytest.raises(ConfigError, match="already paired"):
        registry.pair("oauth-7", CD_URL, CD_KEY)


def test_pairing_needs_a_servicem8_credential_first(registry):
    registry.add(make_connection(id="empty", status="authorised"))
    with pytest.raises(ConfigError, match="no ServiceM8 key or grant"):
        registry.pair("empty", CD_URL, CD_KEY)
    assert registry.get("empty").status == "authorised"
    assert registry.secrets("empty").empty
