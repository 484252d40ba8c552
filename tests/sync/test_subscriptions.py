"""The bridge's webhook subscriptions against the ServiceM8 simulator: each object on its own,
deactivation after failed deliveries seen by the health check and undone by it, deletion by uuid
(docs/servicem8-api.md#webhooks)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from bridge.cli import app as cli
from bridge.cli.base import command_runtime
from bridge.ops.subscriptions import check_subscriptions, subscribe_webhooks, unsubscribe_webhooks
from bridge.simulators.scenario import seed_business

TOKEN = "whk-health-5be1c0d2a9"


@pytest.fixture
def env(cli_env, receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("WEBHOOK_PUBLIC_URL", receiver.base)
    return cli_env["BRIDGE_CONNECTION_ID"]


def status() -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output)["subscriptions"])


def wait_for(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def job_edits(sm8_sim, n: int) -> None:
    """``n`` office edits of one job, each a delivery to the job subscription."""
    job = sm8_sim.snapshot()["job"][0]["uuid"]
    for i in range(n):
        with sm8_sim.lock:
            sm8_sim.update("job", job, {"job_description": f"edit {i} {uuid.uuid4().hex[:6]}"})


def test_a_deactivated_subscription_is_shown_and_posted_again_by_the_health_check(
    env, sm8_sim, cd_sim, receiver
):
    seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=0)
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        assert check_subscriptions(rt)["servicem8.job"]["active"] is True
    job_sub = next(s for s in sm8_sim.subscriptions if s["object"] == "job")
    assert job_sub["unique_id"] == f"bridge-{env}-job"
    assert status()["servicem8.job"]["state"] == "active"

    receiver.down()  # deliveries fail until ServiceM8 turns the subscription off
    job_edits(sm8_sim, sm8_sim.dialect.deactivate_after_failures)
    wait_for(lambda: job_sub["active"] == 0)
    with command_runtime() as rt:  # a beat tick while the receiver is still down
        seen = check_subscriptions(rt)["servicem8.job"]
    assert seen["active"] is False and seen["last_failure_reason"] == "HTTP 503"
    shown = status()["servicem8.job"]
    assert "re-post refused" in shown["state"]  # the challenge failed: still down
    assert shown["active"] is False and shown["last_failure_reason"] == "HTTP 503"
    assert shown["state"].startswith("inactive: HTTP 503")
    assert shown["last_failure_at"]

    receiver.up()
    with command_runtime() as rt:  # the next beat tick
        again = check_subscriptions(rt)["servicem8.job"]
        assert rt.stores.activity.stats()["webhook.servicem8.reactivated"] == 1
    assert again["active"] is True
    assert [s["active"] for s in sm8_sim.subscriptions if s["object"] == "job"] == [1]
    assert status()["servicem8.job"]["state"] == "active"
    before = len(receiver.posts)
    job_edits(sm8_sim, 1)
    wait_for(lambda: len(receiver.posts) > before)  # delivering again


def test_an_active_subscription_costs_one_call_per_check_and_is_left_alone(env, sm8_sim, receiver):
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        sm8_sim.reset_counts()
        check_subscriptions(rt)
    assert sm8_sim.count() == sm8_sim.count("GET", "webhook.list") == 1  # the list alone
    assert len(sm8_sim.subscriptions) == 2  # job activities and jobs; allocations poll-only
    shown = status()
    assert shown["servicem8.joballocation"]["active"] is None  # refused: nothing to watch
    assert shown["servicem8.joballocation"]["state"].startswith("poll-only")


def test_a_subscription_deleted_behind_the_bridges_back_is_posted_again(env, sm8_sim, receiver):
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        sm8_sim.subscriptions[:] = [s for s in sm8_sim.subscriptions if s["object"] != "job"]
        health = check_subscriptions(rt)["servicem8.job"]
    assert health["active"] is True and health["reactivated_at"]
    assert sorted(s["object"] for s in sm8_sim.subscriptions) == ["job", "jobactivity"]


def test_unsubscribe_deletes_each_subscription_by_its_uuid(env, sm8_sim, cd_sim, receiver):
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        done = unsubscribe_webhooks(rt)
    assert sorted(done) == ["coredination job", "servicem8 job", "servicem8 jobactivity"]
    assert sm8_sim.subscriptions == [] and cd_sim.webhooks == {}
    assert sm8_sim.count("DELETE", "webhook.delete") == 2  # one per uuid
    assert status()["servicem8.job"]["state"] is None


def test_without_a_public_url_the_health_check_does_nothing(env, sm8_sim, monkeypatch):
    monkeypatch.delenv("WEBHOOK_PUBLIC_URL")
    with command_runtime() as rt:
        assert check_subscriptions(rt) == {}
    assert sm8_sim.count() == 0


def test_subscribe_with_the_receiver_down_fails_with_the_reason_and_the_check_tries_again(
    env, sm8_sim, receiver
):
    """A challenge nobody answered is not ServiceM8 refusing the object: exit 1, the reason on
    the object's line, and the health check posts it again once the receiver is up (it used to
    stay poll-only for good)."""
    receiver.down()
    result = CliRunner().invoke(cli, ["webhooks", "subscribe"])
    assert result.exit_code == 1, result.output
    assert "servicem8 job failed: " in result.output and "challenge" in result.output
    assert "servicem8 joballocation poll-only: ServiceM8 refused" in result.output
    assert "subscription(s) failed" in result.output
    assert TOKEN not in result.output
    assert status()["servicem8.job"]["state"].startswith("failed: ")

    receiver.up()
    with command_runtime() as rt:  # the next health check
        assert check_subscriptions(rt)["servicem8.job"]["active"] is True
    assert status()["servicem8.job"]["state"] == "active"
    assert CliRunner().invoke(cli, ["webhooks", "subscribe"]).exit_code == 0


def test_an_empty_webhook_token_is_no_token(env, sm8_sim, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", "")  # what compose passes when it is unset
    result = CliRunner().invoke(cli, ["webhooks", "subscribe"])
    assert result.exit_code == 2
    assert "WEBHOOK_PUBLIC_URL and WEBHOOK_TOKEN are needed" in result.output
    assert sm8_sim.count() == 0


def test_a_subscription_listed_with_other_fields_than_the_rules_read_is_posted_again(
    env, sm8_sim, receiver, monkeypatch
):
    from bridge.servicem8 import webhooks

    with command_runtime() as rt:
        subscribe_webhooks(rt)
        job_sub = next(s for s in sm8_sim.subscriptions if s["object"] == "job")
        uuid_before = job_sub["uuid"]
        # A release reads one more job field than the subscription was posted with.
        wanted = [*webhooks.SUBSCRIBED_FIELDS["job"], "status"]
        monkeypatch.setitem(webhooks.SUBSCRIBED_FIELDS, "job", wanted)
        sm8_sim.reset_counts()
        health = check_subscriptions(rt)
        assert rt.stores.activity.stats()["webhook.servicem8.fields_updated"] == 1
    assert (
        health["servicem8.job"]["active"] is True and health["servicem8.job"]["fields_updated_at"]
    )
    assert "fields_updated_at" not in health["servicem8.jobactivity"]  # as the rules read: left
    assert sm8_sim.count("POST", "webhook.subscribe") == 1
    job_sub = next(s for s in sm8_sim.subscriptions if s["object"] == "job")
    assert job_sub["uuid"] == uuid_before and job_sub["fields"].split(",") == wanted
    with command_runtime() as rt:  # the next check finds them equal: the list alone
        sm8_sim.reset_counts()
        check_subscriptions(rt)
    assert sm8_sim.count() == 1


def test_a_subscription_listed_without_fields_is_not_compared(env, sm8_sim, receiver):
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        for sub in sm8_sim.subscriptions:
            sub.pop("fields")
        sm8_sim.reset_counts()
        check_subscriptions(rt)
    assert sm8_sim.count() == 1
