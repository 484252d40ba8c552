"""The registry's round trip, its immutable ids, settings overrides and the default connection,
on real Redis."""

from __future__ import annotations

import json

import pytest

from bridge.config import Settings
from bridge.connections import (
    OVERRIDABLE,
    Connection,
    ConnectionSecrets,
    default_connection,
    make_connection,
    validate_overrides,
)
from bridge.connections.models import OAUTH_KEY_PREFIX
from bridge.errors import ConfigError, UnknownConnection
from tests.connections.conftest import ACCESS, CD_KEY, ENV_CD_KEY, ENV_SM8_KEY, REFRESH, SM8_KEY

CD_URL = "https://cd.example.test/api/1"


def env_settings(**overrides: object) -> Settings:
    return Settings(
        servicem8_api_key=ENV_SM8_KEY, coredination_api_key=ENV_CD_KEY, _env_file=None, **overrides
    )


def acme(**fields: object) -> Connection:
    return make_connection(**{"id": "acme", "coredination_base_url": CD_URL, **fields})


def test_a_connection_comes_back_as_it_was_added_and_its_keys_apart(registry, keys_of_acme):
    added = registry.add(
        acme(
            servicem8_account="6F1B0A3C-0000-4000-8000-00000000ABCD",
            overrides={"CONFLICT_TIE_WINNER": "coredination", "servicem8_poll_seconds": "30"},
        ),
        keys_of_acme,
    )
    got = registry.get("acme")
    assert got == added
    assert got.status == "active" and got.reason is None
    assert got.servicem8_account == "6f1b0a3c-0000-4000-8000-00000000abcd"
    assert got.overrides == {"conflict_tie_winner": "coredination", "servicem8_poll_seconds": 30.0}
    assert got.created == got.changed > 0
    assert not hasattr(got, "servicem8_api_key")  # the public part carries no key
    secrets = registry.secrets("acme")
    assert secrets.servicem8_api_key.get_secret_value() == SM8_KEY
    assert secrets.coredination_api_key.get_secret_value() == CD_KEY
    assert [c.id for c in registry.list()] == ["acme"]


def test_list_is_sorted_by_id(registry, keys_of_acme):
    for name in ("zeta", "alpha", "mid"):
        registry.add(acme(id=name), keys_of_acme)
    assert [c.id for c in registry.list()] == ["alpha", "mid", "zeta"]


def test_adding_an_existing_id_is_refused_and_changes_nothing(registry, keys_of_acme):
    registry.add(acme(), keys_of_acme)
    other = ConnectionSecrets(servicem8_api_key="sm8-other-1234", coredination_api_key="cd-o-9876")
    with pytest.raises(ConfigError, match="exists: ids never change"):
        registry.add(acme(coredination_base_url="https://elsewhere.example.test/api/1"), other)
    assert registry.get("acme").coredination_base_url == CD_URL
    assert registry.secrets("acme").servicem8_api_key.get_secret_value() == SM8_KEY


@pytest.mark.parametrize("bad_id", ["", "has space", "slash/y", "x" * 65, "colon:y"])
def test_an_id_outside_the_connection_id_pattern_is_refused(bad_id):
    with pytest.raises(ConfigError, match="id"):
        make_connection(id=bad_id)


@pytest.mark.parametrize("reserved", ["fleet", "acct"])
def test_an_id_whose_keys_would_be_the_fleets_or_the_accounts_is_refused(
    registry, keys_of_acme, reserved
):
    with pytest.raises(ConfigError, match="reserved"):
        registry.add(acme(id=reserved), keys_of_acme)


def test_an_unknown_id_is_a_clear_unknown_connection_error(registry):
    for call in (registry.get, registry.secrets, registry.resume, registry.remove):
        with pytest.raises(UnknownConnection, match="no connection 'ghost'") as caught:
            call("ghost")
        assert isinstance(caught.value, ConfigError) and caught.value.connection_id == "ghost"


def test_remove_forgets_the_connection_and_its_keys(
    registry, redis_client, fleet_keys, keys_of_acme
):
    registry.add(acme(), keys_of_acme)
    registry.remove("acme")
    assert registry.list() == []
    assert not redis_client.hexists(fleet_keys.secrets, "acme")
    registry.add(acme(), keys_of_acme)  # the id may be used again once removed


def test_an_active_connection_needs_both_keys_and_an_authorised_one_none(registry):
    with pytest.raises(ConfigError, match="without a Coredination API key"):
        registry.add(acme(), ConnectionSecrets(servicem8_api_key=SM8_KEY))
    with pytest.raises(ConfigError, match="ServiceM8 API key or grant"):
        registry.add(acme(status="paused", reason="r"), ConnectionSecrets(coredination_api_key="c"))
    assert registry.add(acme(status="authorised")).status == "authorised"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"conflict_tie_winner": "whoever"}, "CONFLICT_TIE_WINNER Input should be 'servicem8'"),
        ({"servicem8_pull_booking": "sometimes"}, "SERVICEM8_PULL_BOOKING Input should be"),
        ({"SERVICEM8_POLL_SECONDS": 0}, "SERVICEM8_POLL_SECONDS Input should be greater than 0"),
        ({"coredination_poll_seconds": "often"}, "COREDINATION_POLL_SECONDS Input should be"),
        ({"servicem8_timezone": "Mars/Olympus"}, "SERVICEM8_TIMEZONE 'Mars/Olympus' is not"),
        ({"redis_url": "redis://x"}, "REDIS_URL cannot be set per connection"),
    ],
)
def test_a_bad_override_is_refused_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError) as caught:
        acme(overrides=overrides)
    assert message in str(caught.value)


def test_overrides_are_the_settings_own_values_and_names():
    assert set(OVERRIDABLE) <= set(Settings.model_fields)
    checked = validate_overrides(
        {
            "SERVICEM8_TIMEZONE": "Australia/Sydney",
            "servicem8_pull_booking": "fixed",
            "servicem8_poll_seconds": None,
        }
    )
    assert checked == {
        "servicem8_timezone": "Australia/Sydney",
        "servicem8_pull_booking": "fixed",
        "servicem8_poll_seconds": None,
    }


def test_configure_sets_and_drops_overrides(registry, keys_of_acme):
    registry.add(acme(overrides={"conflict_tie_winner": "coredination"}), keys_of_acme)
    changed = registry.configure(
        "acme", {"coredination_poll_seconds": "15", "conflict_tie_winner": None}
    )
    assert changed.overrides == {"coredination_poll_seconds": 15.0}
    with pytest.raises(ConfigError, match="BUSY_HOURS cannot be set per connection"):
        registry.configure("acme", {"busy_hours": "01:00-02:00"})
    assert registry.get("acme").overrides == {"coredination_poll_seconds": 15.0}


def test_a_connection_sees_the_deployments_settings_with_its_own_on_top(registry, keys_of_acme):
    registry.add(acme(overrides={"servicem8_pull_booking": "fixed"}), keys_of_acme)
    base = env_settings(servicem8_rate_per_day=5000)
    loaded = registry.load("acme", base)
    assert loaded.settings.bridge_connection_id == "acme"
    assert loaded.settings.coredination_base_url == CD_URL
    assert loaded.settings.servicem8_pull_booking == "fixed"
    assert loaded.settings.servicem8_rate_per_day == 5000  # not the connection's to change
    assert loaded.settings.servicem8_api_key.get_secret_value() == SM8_KEY
    assert loaded.settings.coredination_api_key.get_secret_value() == CD_KEY
    assert base.bridge_connection_id == "default" and base.servicem8_pull_booking == "auto"


def test_a_connection_holding_a_grant_never_sees_the_environments_servicem8_key(registry):
    registry.add(acme(status="authorised"))
    registry.update_grant("acme", ACCESS, REFRESH, 2_000_000_000)
    base = env_settings()
    loaded = registry.load("acme", base)
    key = loaded.settings.servicem8_api_key.get_secret_value()
    assert key != base.servicem8_api_key.get_secret_value()
    assert key == f"{OAUTH_KEY_PREFIX}acme"  # no API accepts it; it names the budget stand-in


def test_an_empty_registry_resolves_to_the_environments_connection(registry):
    settings = env_settings(bridge_connection_id="solo", coredination_base_url=CD_URL)
    (only,) = registry.resolve(settings)
    assert only == default_connection(settings)
    assert (only.id, only.status, only.coredination_base_url) == ("solo", "active", CD_URL)
    loaded = registry.load("solo", settings)
    assert loaded.settings == settings.model_copy(update={"coredination_base_url": CD_URL})
    assert loaded.secrets.servicem8_api_key.get_secret_value() == ENV_SM8_KEY
    assert registry.list() == []  # never stored


def test_once_the_registry_holds_connections_the_default_one_is_gone(registry, keys_of_acme):
    registry.add(acme(), keys_of_acme)
    settings = env_settings()
    assert [c.id for c in registry.resolve(settings)] == ["acme"]
    with pytest.raises(UnknownConnection):
        registry.load("default", settings)


def test_a_record_of_another_schema_version_is_refused_clearly(
    registry, redis_client, fleet_keys, keys_of_acme
):
    registry.add(acme(), keys_of_acme)
    record = json.loads(redis_client.hget(fleet_keys.connections, "acme"))
    redis_client.hset(fleet_keys.connections, "acme", json.dumps({**record, "v": 99}))
    with pytest.raises(ConfigError, match="another version of the bridge"):
        registry.get("acme")
    redis_client.hset(fleet_keys.connections, "acme", b"\x00not json")
    with pytest.raises(ConfigError, match="damaged"):
        registry.get("acme")
