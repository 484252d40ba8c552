from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError, Unavailable
from bridge.log import configure_logging, get_logger

SECRET = "smk-very-secret-0042"


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_missing_key_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("COREDINATION_API_KEY", "x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SERVICEM8_API_KEY is required" in message
    assert "\n" not in message


def test_malformed_setting_names_the_variable_without_echoing_values(monkeypatch, tmp_path):
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("SERVICEM8_API_KEY", SECRET)
    monkeypatch.setenv("COREDINATION_API_KEY", "x")
    monkeypatch.setenv("HTTP_READ_TIMEOUT", "soon")
    monkeypatch.setenv("SERVICEM8_BASE_URL", "ftp://nope")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "HTTP_READ_TIMEOUT" in str(caught.value)
    assert "SERVICEM8_BASE_URL" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("name", ["fleet", "acct"])
def test_a_connection_id_taken_by_fleet_keys_is_refused(monkeypatch, tmp_path, name):
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("SERVICEM8_API_KEY", SECRET)
    monkeypatch.setenv("COREDINATION_API_KEY", "x")
    monkeypatch.setenv("BRIDGE_CONNECTION_ID", name)
    with pytest.raises(ConfigError, match="BRIDGE_CONNECTION_ID"):
        load_settings()


def test_dotenv_file_is_read(monkeypatch, tmp_path):
    _clean_env(monkeypatch, tmp_path)
    (tmp_path / ".env").write_text(f"SERVICEM8_API_KEY={SECRET}\nCOREDINATION_API_KEY=c-key-1\n")
    settings = load_settings()
    assert settings.servicem8_api_key.get_secret_value() == SECRET


def test_repr_shows_no_secret():
    settings = Settings(
        servicem8_api_key=SECRET,
        coredination_api_key="cdk-hidden-77",
        redis_url="redis://:pw-hidden-99@127.0.0.1:6379/0",
        servicem8_oauth_client_secret="oauth-hidden-55",
        _env_file=None,
    )
    text = repr(settings) + str(settings) + str(settings.model_dump())
    hidden = {SECRET, "cdk-hidden-77", "pw-hidden-99", "oauth-hidden-55"}
    for secret in hidden:
        assert secret not in text
    assert set(settings.secret_values()) == hidden


def test_cli_missing_key_exits_non_zero_with_one_line(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_"))
    }
    env["COREDINATION_API_KEY"] = "x"
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: configuration: SERVICEM8_API_KEY is required"]
    assert "Traceback" not in result.stdout + result.stderr


def _capture(secrets: list[str]) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", secrets=secrets, stream=stream)
    return stream


def test_redaction_blanks_secrets_and_credential_headers_everywhere():
    stream = _capture([SECRET])
    log = get_logger("test")
    log.info(
        "t.event",
        note=f"key={SECRET}",
        headers={"X-Api-Key": "other-key-1", "Authorization": "Bearer abc.def"},
        nested=[{"api-key": "k-123456"}],
    )
    logging.getLogger("celery.worker").warning("stdlib record with %s", SECRET)
    logging.getLogger("urllib3").error("sent header API-Key: cdk-leak-555 to host")
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        log.exception("t.failed")
    out = stream.getvalue()
    for leaked in (SECRET, "other-key-1", "abc.def", "k-123456", "cdk-leak-555"):
        assert leaked not in out
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["event"] == "t.event"
    assert "[REDACTED]" in records[0]["note"]
    assert records[1]["logger"] == "celery.worker"
    assert "exception" in records[-1] and "[REDACTED]" in records[-1]["exception"]


def test_secret_never_logged_when_requests_fail(sm8_sim, settings):
    from bridge.servicem8 import ServiceM8Client

    stream = _capture(settings.secret_values())
    client = ServiceM8Client.from_settings(settings)
    sm8_sim.set_faults(error_rate=1.0)
    with pytest.raises(Unavailable) as caught:
        client.get_allocation("123e4567-aa11-4415-ac38-23f94bc904db")
    sm8_sim.set_faults(error_rate=0.0, reset_rate=1.0)
    with pytest.raises(Unavailable) as caught2:
        client.vendor()
    get_logger("test").error("t.failed", error=caught.value, other=caught2.value)
    bad = ServiceM8Client.from_settings(
        settings.model_copy(update={"servicem8_base_url": "http://127.0.0.1:9"})
    )
    with pytest.raises(Unavailable):
        bad.vendor()
    out = stream.getvalue()
    assert out  # failures were logged
    key = settings.servicem8_api_key.get_secret_value()
    assert key not in out
    assert key not in repr(caught.value.describe()) + repr(caught2.value)


def test_rotating_secrets_keep_the_redactor_bounded_and_recent_ones_blanked():
    from bridge.log import SLOT_GENERATIONS, Redactor

    redactor = Redactor()
    redactor.add(["fixed-secret-value"])
    for hour in range(100):  # a connection's OAuth tokens, rotated every hour
        redactor.add([f"access-token-{hour:04d}"], slot="acme")
    assert len(redactor._secrets) == 1 + SLOT_GENERATIONS
    latest = redactor.text("sent access-token-0099 with fixed-secret-value")
    assert "access-token-0099" not in latest and "fixed-secret-value" not in latest
    assert "access-token-0000" in redactor.text("access-token-0000")  # long gone, not kept


@pytest.mark.parametrize("redis_url", ["notaurl", "redis://127.0.0.1:1/0"])
@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["status"],
        ["staff", "match"],
        ["sync", "--once"],
        ["dlq", "list"],
        ["connections", "list"],
        ["webhooks", "subscribe"],
    ],
)
def test_a_bad_redis_url_is_one_line_and_exit_2_for_every_command(tmp_path, command, redis_url):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_"))
    }
    env.update(SERVICEM8_API_KEY="a", COREDINATION_API_KEY="b", REDIS_URL=redis_url,
               WEBHOOK_TOKEN="t", WEBHOOK_PUBLIC_URL="http://127.0.0.1:9")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "bridge", *command],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: REDIS_URL"), lines
    assert "Traceback" not in result.stdout + result.stderr
