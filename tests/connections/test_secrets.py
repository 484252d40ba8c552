"""Secrets at rest: only Fernet tokens in Redis, a wrong key is a clear error that quotes nothing
secret, and keys rotate with MultiFernet."""

from __future__ import annotations

import pytest

from bridge.config import Settings
from bridge.connections import (
    ConnectionRegistry,
    ConnectionSecrets,
    SecretBox,
    make_connection,
    new_key,
)
from bridge.errors import ConfigError
from tests.connections.conftest import ACCESS, CD_KEY, ENV_CD_KEY, ENV_SM8_KEY, REFRESH, SM8_KEY


def raw_bytes(redis_client, fleet_keys) -> bytes:
    found = b""
    for key in (fleet_keys.connections, fleet_keys.secrets):
        for field, value in redis_client.hgetall(key).items():
            found += field + b"\n" + value + b"\n"
    return found


def test_redis_holds_no_key_in_plain_text(registry, redis_client, fleet_keys, keys_of_acme):
    registry.add(make_connection(id="acme"), keys_of_acme)
    registry.add(
        make_connection(id="oauth", status="authorised"),
        ConnectionSecrets(
            servicem8_grant={"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": 5}
        ),
    )
    stored = raw_bytes(redis_client, fleet_keys)
    for secret in (SM8_KEY, CD_KEY, ACCESS, REFRESH, "api_key", "refresh_token"):
        assert secret.encode() not in stored
    token = redis_client.hget(fleet_keys.secrets, "acme")
    assert token.startswith(b"gAAAAA")  # a Fernet token (version byte 0x80, base64)


def test_the_box_round_trips_and_each_token_differs(box):
    first, second = box.encrypt(b"plain text"), box.encrypt(b"plain text")
    assert first != second
    assert box.decrypt(first) == box.decrypt(second.encode()) == b"plain text"


def test_a_wrong_key_is_a_clear_error_that_quotes_nothing_secret(
    registry, redis_client, fleet_keys, key, keys_of_acme
):
    registry.add(make_connection(id="acme"), keys_of_acme)
    other_key = new_key()
    stranger = ConnectionRegistry(redis_client, SecretBox([other_key]), keys=fleet_keys)
    with pytest.raises(ConfigError) as caught:
        stranger.secrets("acme")
    message = str(caught.value)
    assert "connection 'acme'" in message and "BRIDGE_SECRET_KEYS" in message
    token = redis_client.hget(fleet_keys.secrets, "acme").decode()
    for secret in (key, other_key, token, SM8_KEY, CD_KEY):
        assert secret not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_altered_token_does_not_decrypt(box):
    token = box.encrypt(b"secret")
    with pytest.raises(ConfigError, match="altered"):
        box.decrypt(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"))


def test_without_keys_storing_a_secret_is_refused_saying_how_to_make_a_key(
    redis_client, fleet_keys, keys_of_acme
):
    keyless = ConnectionRegistry(redis_client, SecretBox([]), keys=fleet_keys)
    with pytest.raises(ConfigError, match="sm8cd secrets new-key"):
        keyless.add(make_connection(id="acme"), keys_of_acme)
    assert keyless.list() == []
    keyless.add(make_connection(id="later", status="authorised"))  # nothing secret to store


def test_a_malformed_key_setting_names_its_position_not_its_value():
    with pytest.raises(ConfigError, match="key 2 of 2 is not a Fernet key") as caught:
        SecretBox([new_key(), "not-a-fernet-key-at-all"])
    assert "not-a-fernet-key-at-all" not in str(caught.value)


def test_the_setting_is_comma_separated_and_redacted_from_logs():
    first, second = new_key(), new_key()
    settings = Settings(
        servicem8_api_key=ENV_SM8_KEY,
        coredination_api_key=ENV_CD_KEY,
        bridge_secret_keys=f" {first} , {second} ,",
        _env_file=None,
    )
    box = SecretBox.from_settings(settings)
    assert box.key_count == 2
    token = box.encrypt(b"x")
    assert SecretBox([first]).decrypt(token) == b"x"  # the first key encrypts
    with pytest.raises(ConfigError):
        SecretBox([second]).decrypt(token)
    assert box.decrypt(SecretBox([second]).encrypt(b"y")) == b"y"  # every key decrypts
    assert {first, second} <= set(settings.secret_values())
    assert first not in repr(settings)


def test_rotation_reencrypts_everything_under_the_new_key(redis_client, fleet_keys, keys_of_acme):
    old, new = new_key(), new_key()
    before = ConnectionRegistry(redis_client, SecretBox([old]), keys=fleet_keys)
    for name in ("acme", "beta", "gamma"):
        before.add(make_connection(id=name), keys_of_acme)
    before.update_grant("beta", ACCESS, REFRESH, 1234)

    both = ConnectionRegistry(redis_client, SecretBox([new, old]), keys=fleet_keys)
    assert both.secrets("acme").servicem8_api_key.get_secret_value() == SM8_KEY  # old still reads
    assert both.rotate() == 3
    assert both.rotate() == 3  # again: the same secrets, still under the new key

    after = ConnectionRegistry(redis_client, SecretBox([new]), keys=fleet_keys)
    for name in ("acme", "beta", "gamma"):
        assert after.secrets(name).coredination_api_key.get_secret_value() == CD_KEY
    grant = after.secrets("beta").servicem8_grant
    assert (grant.access_token.get_secret_value(), grant.expires_at) == (ACCESS, 1234)
    with pytest.raises(ConfigError):
        before.secrets("acme")  # the old key alone no longer reads them


def test_a_grant_replaces_an_api_key_and_an_api_key_replaces_a_grant(registry, keys_of_acme):
    registry.add(make_connection(id="acme"), keys_of_acme)
    registry.update_grant("acme", ACCESS, REFRESH, 99)
    secrets = registry.secrets("acme")
    assert secrets.servicem8_api_key is None and secrets.servicem8_grant.expires_at == 99
    assert secrets.coredination_api_key.get_secret_value() == CD_KEY
    registry.set_secrets("acme", servicem8_api_key="sm8-new-key-123")
    secrets = registry.secrets("acme")
    assert secrets.servicem8_grant is None
    assert secrets.servicem8_api_key.get_secret_value() == "sm8-new-key-123"
    assert secrets.describe() == {"servicem8": "api key set", "coredination": "api key set"}


def test_an_api_key_and_a_grant_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        ConnectionSecrets(
            servicem8_api_key=SM8_KEY,
            servicem8_grant={"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": 1},
        )


def test_decrypted_keys_are_redacted_from_logs_and_reprs(registry, keys_of_acme):
    import io

    from bridge.log import configure_logging, get_logger

    registry.add(make_connection(id="acme"), keys_of_acme)
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    secrets = registry.secrets("acme")
    get_logger("test").warning("t.event", note=f"keys {SM8_KEY} {CD_KEY}", secrets=secrets)
    text = stream.getvalue() + repr(secrets) + str(secrets.model_dump())
    assert SM8_KEY not in text and CD_KEY not in text
