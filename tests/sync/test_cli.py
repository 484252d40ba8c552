"""``bridge sync --once`` and ``bridge staff ...`` against both simulators and real Redis."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from bridge.cli import app
from bridge.simulators.scenario import seed_business
from bridge.store import Store
from tests.conftest import CD_KEY, SM8_KEY


@pytest.fixture
def cli_env(redis_url, sm8_sim, cd_sim, redis_client, monkeypatch, tmp_path):
    connection = f"cli{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    env = {
        "REDIS_URL": redis_url,
        "BRIDGE_CONNECTION_ID": connection,
        "SERVICEM8_API_KEY": SM8_KEY,
        "SERVICEM8_BASE_URL": sm8_sim.api_url(),
        "COREDINATION_API_KEY": CD_KEY,
        "COREDINATION_BASE_URL": cd_sim.api_url(),
        "LOG_LEVEL": "WARNING",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    yield env
    Store(redis_client, connection).wipe()


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def test_sync_once_reports_and_exits_zero(cli_env, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=3, jobs=4, allocations=6)
    result = run("sync", "--once")
    assert result.exit_code == 0, result.output
    assert "job_created" in result.output and "4" in result.output
    assert len(cd_sim.jobs) == 4
    again = run("sync", "--once")
    assert again.exit_code == 0
    assert "job_created" not in again.output


def test_sync_without_once_explains(cli_env):
    result = run("sync")
    assert result.exit_code == 2
    assert "bridge run" in result.output


def test_sync_once_exits_one_when_a_job_fails(cli_env, sm8_sim, cd_sim):
    seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    cd_sim.set_faults(error_rate=1.0, error_status=400)
    result = run("sync", "--once")
    assert result.exit_code == 1
    assert "failed" in result.output


def test_staff_match_list_link_unlink(cli_env, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=1, allocations=1, unmapped_staff=1)
    assert run("staff", "match").exit_code == 0
    listed = json.loads(run("staff", "list", "--json").output)
    how = {row["sm8_staff_uuid"]: row["how"] for row in listed}
    assert how[biz.staff[0]["uuid"]] == "e-mail" and how[biz.staff[2]["uuid"]] == "unmapped"

    user = cd_sim.add_user("someone.else@example.com", "Some", "One")
    assert run("staff", "link", biz.staff[2]["uuid"], str(user["id"])).exit_code == 0
    assert run("staff", "unlink", biz.staff[0]["uuid"]).exit_code == 0
    assert run("staff", "match").exit_code == 0  # manual choices survive a re-match
    listed = {r["sm8_staff_uuid"]: r for r in json.loads(run("staff", "list", "--json").output)}
    assert listed[biz.staff[2]["uuid"]]["cd_user_id"] == user["id"]
    assert listed[biz.staff[2]["uuid"]]["how"] == "manual"
    assert listed[biz.staff[0]["uuid"]]["cd_user_id"] is None
