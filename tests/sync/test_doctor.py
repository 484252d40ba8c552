"""``sm8cd doctor`` against both simulators, the bridge's own receiver (served here) and a Redis
of the test's own: all ok on a deployment ready to go live; then the receiver down, a staff
member without a Coredination user and Redis without persistence, each its own line with what
to do, and the exit code."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from bridge.cli import app as cli
from bridge.config import load_settings
from bridge.redis import conn as redis_conn
from bridge.redis.server import EmbeddedRedis, free_port
from bridge.simulators.scenario import seed_business
from bridge.web.app import create_app
from tests.conftest import CD_KEY, SM8_KEY

TOKEN = "whk-doctor-8c2e5a1f07"


class Web:
    """The bridge's receiver (``bridge.web.app``) under uvicorn in a thread, on loopback."""

    def __init__(self, port: int) -> None:
        settings = load_settings(_env_file=None)
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=15)


@pytest.fixture
def deployment(tmp_path: Path, sm8_sim: Any, cd_sim: Any, monkeypatch) -> Iterator[dict[str, Any]]:
    """A connection of its own on a Redis of its own (append-only on, as the embedded one runs),
    its receiver listening where WEBHOOK_PUBLIC_URL says."""
    redis = EmbeddedRedis(tmp_path / "redis").start()
    port = free_port()
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis.url,
        "BRIDGE_CONNECTION_ID": f"doc{uuid.uuid4().hex[:8]}",
        "SERVICEM8_API_KEY": SM8_KEY,
        "SERVICEM8_BASE_URL": sm8_sim.api_url(),
        "COREDINATION_API_KEY": CD_KEY,
        "COREDINATION_BASE_URL": cd_sim.api_url(),
        "WEBHOOK_TOKEN": TOKEN,
        "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "WARNING",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    web = Web(port)
    try:
        yield {"redis": redis, "web": web}
    finally:
        web.stop()
        redis.stop()


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _ready(sm8_sim: Any, cd_sim: Any, **seed: Any) -> Any:
    """What going live takes beforehand: subscribed webhooks and a probe with writes."""
    biz = seed_business(sm8_sim, cd_sim, start=datetime.now() + timedelta(days=2), **seed)
    subscribed = run("webhooks", "subscribe")
    assert subscribed.exit_code == 0, subscribed.output
    probed = run("probe", "--writes")
    assert probed.exit_code == 0, probed.output
    return biz


def _lines(result: Any) -> dict[str, list[dict[str, str]]]:
    data = json.loads(result.stdout)
    by_level: dict[str, list[dict[str, str]]] = {"ok": [], "warn": [], "fail": []}
    for line in data["lines"]:
        by_level[line["level"]].append(line)
    return by_level


def test_doctor_against_the_simulators_is_all_ok(deployment, sm8_sim, cd_sim):
    _ready(sm8_sim, cd_sim, staff=3, jobs=2, allocations=3)
    result = run("doctor")
    assert result.exit_code == 0, result.output
    marks = {line.split(" ", 1)[0] for line in result.output.splitlines()}
    assert not {"warn", "fail"} & marks, result.output
    assert "ready to go live" in result.output and TOKEN not in result.output
    lines = _lines(run("doctor", "--json"))
    shown = {line["what"] for line in lines["ok"]}
    assert {
        "settings",
        "Redis",
        "ServiceM8",
        "Coredination",
        "Redis persistence",
        "probe",
        "probe record_uuid_header",
        "webhook receiver",
        "ServiceM8 webhooks jobactivity",
        "Coredination webhook",
        "staff",
        "scope",
        "next sync",
    } <= shown
    assert lines["warn"] == [] and lines["fail"] == []
    # The preview's counts: the two jobs and their people, nothing written by doctor.
    next_sync = next(line["detail"] for line in lines["ok"] if line["what"] == "next sync")
    assert "Coredination jobs: 2 to create" in next_sync, next_sync
    assert not cd_sim.jobs


def test_doctor_names_a_receiver_down_an_unmatched_person_and_redis_without_persistence(
    deployment, sm8_sim, cd_sim
):
    biz = _ready(sm8_sim, cd_sim, staff=3, jobs=2, allocations=3, unmapped_staff=1)
    orphan = biz.staff[-1]
    local, _, domain = orphan["email"].lower().partition("@")
    near = cd_sim.add_user(f"{local[:-1]}@{domain}", "Near", "Miss")  # a typo's distance away
    deployment["web"].stop()
    client = redis_conn.client(deployment["redis"].url)
    client.config_set("appendonly", "no")
    client.close()

    result = run("doctor")
    assert result.exit_code == 1, result.output
    out = result.output
    assert "fail Redis persistence: none" in out
    assert "fail webhook receiver: no answer at http://127.0.0.1:" in out
    assert "warn unmatched staff: " in out and orphan["email"] in out
    assert f"nearest: {near['email']}" in out
    assert f"sm8cd staff link {orphan['uuid'].lower()} {near['id']}" in out
    assert out.count("to do:") >= 3 and TOKEN not in out
    assert "not ready to go live" in out

    lines = _lines(run("doctor", "--json"))
    failed = {line["what"] for line in lines["fail"]}
    assert failed == {"Redis persistence", "webhook receiver"}
    assert {line["what"] for line in lines["warn"]} == {"staff", "unmatched staff"}
    assert all(line["todo"] for line in lines["warn"] + lines["fail"])


def test_warnings_alone_exit_zero_and_say_so(deployment, sm8_sim, cd_sim, monkeypatch):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    monkeypatch.delenv("WEBHOOK_PUBLIC_URL")  # no webhooks, no probe yet: warnings only
    result = run("doctor")
    assert result.exit_code == 0, result.output
    assert "warn webhook receiver: WEBHOOK_PUBLIC_URL or WEBHOOK_TOKEN not set" in result.output
    assert "warn probe: never run here" in result.output
    assert "ready to go live, with 2 warning(s): read them first" in result.output


def test_a_bad_setting_is_one_line_and_exit_code_two(deployment, monkeypatch):
    monkeypatch.setenv("SERVICEM8_POLL_SECONDS", "often")
    result = run("doctor")
    assert result.exit_code == 2
    assert "SERVICEM8_POLL_SECONDS" in result.output and "Traceback" not in result.output


def test_a_coredination_without_a_users_list_is_a_warning_not_a_failure(
    deployment, sm8_sim, cd_sim
):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    cd_sim.set_dialect(users_endpoint=False)
    checked = run("check")
    assert checked.exit_code == 0, checked.output
    assert "warn Coredination: key accepted, but there is no users list" in checked.output
    told = run("doctor").output
    assert "warn staff: Coredination's users cannot be listed" in told
