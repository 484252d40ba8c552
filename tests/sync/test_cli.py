"""``sm8cd sync --once`` and ``sm8cd staff ...`` against both simulators and real Redis."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bridge.cli import app
from bridge.simulators.scenario import seed_business
from bridge.store import Stores


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
    assert "sm8cd run" in result.output


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


def test_backfill_queues_one_bulk_sync_per_job_with_changes(cli_env, sm8_sim, cd_sim, redis_client):
    seed_business(sm8_sim, cd_sim, staff=3, jobs=5, allocations=9)
    result = run("backfill", "--since", "2020-01-01")
    assert result.exit_code == 0, result.output
    assert "5 job(s) with changes, 5 sync(s) queued as bulk work" in result.output
    store = Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"])
    bulk = f"celery:bridge.{cli_env['BRIDGE_CONNECTION_ID']}.bulk"
    assert store.activity.queue_length(bulk) == 5
    assert cd_sim.jobs == {}  # workers write, not the command
    again = run("backfill")  # the syncs are still queued: nothing is queued twice
    assert "0 sync(s) queued" in again.output
    assert store.activity.queue_length(bulk) == 5


def test_webhooks_subscribe_list_unsubscribe(cli_env, sm8_sim, cd_sim, receiver, monkeypatch):
    token = "whk-cli-0c7d2e9b41"
    monkeypatch.setenv("WEBHOOK_TOKEN", token)
    monkeypatch.setenv("WEBHOOK_PUBLIC_URL", receiver.url.rsplit("/", 1)[0])
    result = run("webhooks", "subscribe")
    assert result.exit_code == 0, result.output
    # ServiceM8 refuses job allocations (the simulator's default reading): reported, not fatal.
    output = " ".join(result.output.split())
    assert "servicem8 jobactivity servicem8 job servicem8 joballocation poll-only" in output
    assert "does not support subscription" in output
    assert len(sm8_sim.subscriptions) == 2 and len(cd_sim.webhooks) == 1
    assert run("webhooks", "subscribe").exit_code == 0  # again: nothing doubled
    assert len(sm8_sim.subscriptions) == 2 and len(cd_sim.webhooks) == 1
    status = json.loads(run("status", "--json").output)["subscriptions"]
    assert status["servicem8.job"]["state"] == "active"
    assert status["servicem8.joballocation"]["state"].startswith("poll-only: ServiceM8 refused")
    listed = run("webhooks", "list", "--json")
    rows = json.loads(listed.output)
    assert sorted((r["system"], r["what"]) for r in rows) == [
        ("coredination", "job"),
        ("servicem8", "job"),
        ("servicem8", "jobactivity"),
    ]
    assert token not in listed.output and "<WEBHOOK_TOKEN>" in listed.output
    gone = run("webhooks", "unsubscribe")
    assert gone.exit_code == 0 and token not in gone.output
    assert sm8_sim.subscriptions == [] and cd_sim.webhooks == {}


def test_webhooks_subscribe_without_a_public_url_says_what_is_missing(cli_env):
    result = run("webhooks", "subscribe")
    assert result.exit_code == 2
    assert "WEBHOOK_PUBLIC_URL and WEBHOOK_TOKEN" in result.output


def test_reconcile_dry_run_reports_then_reconcile_repairs(cli_env, sm8_sim, cd_sim, redis_client):
    from bridge.simulators.checker import check
    from mappings.ids import connection_namespace
    from tests.sync.test_reconcile import _drift_three_ways, _miss_everything_from_now

    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3)
    assert run("sync", "--once").exit_code == 0
    ns = connection_namespace(cli_env["BRIDGE_CONNECTION_ID"])
    _miss_everything_from_now(Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"]))
    _drift_three_ways(ns, sm8_sim, cd_sim, biz)
    dry = run("reconcile", "--dry-run", "--json")
    assert dry.exit_code == 1, dry.output
    assert len(json.loads(dry.output)["drift"]) == 3
    assert not check(sm8_sim, cd_sim, ns).converged
    fixed = run("reconcile")
    assert fixed.exit_code == 0, fixed.output
    assert "3 drifted pair(s), repaired 3 job(s)" in fixed.output
    assert run("reconcile", "--dry-run").exit_code == 0
    assert check(sm8_sim, cd_sim, ns).converged


def test_simulate_refuses_an_unknown_or_bad_dialect_switch_before_it_starts():
    bad = run("simulate", "--servicem8-dialect", "no_such_switch=1")
    assert bad.exit_code == 2 and "unknown dialect switch 'no_such_switch'" in bad.output
    wrong = run("simulate", "--coredination-dialect", "stamps=sometimes")
    assert wrong.exit_code == 2 and "stamps must be one of" in wrong.output
    shape = run("simulate", "--coredination-dialect", "stamps")
    assert shape.exit_code == 2 and "expected NAME=VALUE" in shape.output


def test_simulate_reads_dialect_switches_and_named_sets():
    from bridge.cli.serve import _dialect_switches
    from bridge.simulators import HOSTILE_COREDINATION

    assert _dialect_switches(
        "servicem8",
        ["allocation_webhooks=true", "day_reset=account", "lost_delete_answer_rate=0.3"],
    ) == {"allocation_webhooks": True, "day_reset": "account", "lost_delete_answer_rate": 0.3}
    hostile = _dialect_switches("coredination", ["hostile", "missing_status=404"])
    assert hostile["stamps"] == HOSTILE_COREDINATION.stamps and hostile["missing_status"] == 404
