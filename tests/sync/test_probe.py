"""``sm8cd probe`` against the simulators in every dialect: it must name the reading each switch
was set to, read-only where reading can tell and with ``--writes`` otherwise, and leave no record
of its own behind (docs/probe.md)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from bridge.cli import app as cli
from bridge.cli.base import command_runtime
from bridge.probe import probe
from bridge.simulators.coredination import CoredinationDialect
from bridge.simulators.scenario import seed_business
from bridge.simulators.servicem8 import ServiceM8Dialect

TOKEN = "whk-probe-3f9a1c7e20"

# (system, switch, value) for every value of every switch a probe with writes can settle.
SETTLED_WITH_WRITES = [
    ("servicem8", "allocation_webhooks", True),
    ("servicem8", "allocation_webhooks", False),
    ("servicem8", "delete_restores", True),
    ("servicem8", "delete_restores", False),
    ("servicem8", "record_uuid_header", "echo"),
    ("servicem8", "record_uuid_header", "server"),
    ("servicem8", "refusal_as_success", True),
    ("servicem8", "refusal_as_success", False),
    ("servicem8", "null_clears", True),
    ("servicem8", "null_clears", False),
    ("coredination", "stamps", "modified"),
    ("coredination", "stamps", "lastModified"),
    ("coredination", "stamps", "none"),
    ("coredination", "resource_shape", "userId"),
    ("coredination", "resource_shape", "user"),
    ("coredination", "unassign", True),
    ("coredination", "unassign", False),
    ("coredination", "users_endpoint", True),
    ("coredination", "users_endpoint", False),
    ("coredination", "missing_status", 404),
    ("coredination", "missing_status", 405),
]
# What reading alone can tell, given an account with jobs that have people on them.
READ_ONLY = {"stamps", "resource_shape", "users_endpoint"}


@pytest.fixture
def env(cli_env, sm8_sim, cd_sim, receiver, monkeypatch):
    monkeypatch.setenv("WEBHOOK_TOKEN", TOKEN)
    monkeypatch.setenv("WEBHOOK_PUBLIC_URL", receiver.base)
    business = seed_business(sm8_sim, cd_sim, staff=2, jobs=2, allocations=2)
    with command_runtime() as rt:  # a job with a person on it, for the read-only probe
        job = str(uuid.uuid4())
        rt.cd.upsert_job(job, {"title": "Existing job"})
        rt.cd.resource_op("schedule", job, business.users[0]["id"])
    return cli_env["BRIDGE_CONNECTION_ID"]


def dialect_for(system: str, switch: str, value: Any) -> dict[str, Any]:
    """A switch set, with the others made to let the probe reach it: the missing status shows
    only where an operation is missing."""
    if switch == "missing_status":
        return {switch: value, "unassign": False}
    return {switch: value}


def world(sm8_sim, cd_sim) -> tuple[Any, ...]:
    """What a probe must leave as it found it: live ServiceM8 records, subscriptions, and
    Coredination jobs."""
    live = {
        obj: sorted(r["uuid"] for r in rows if str(r.get("active")) == "1")
        for obj, rows in sm8_sim.snapshot().items()
    }
    subscriptions = sorted((s["object"], s["callback_url"]) for s in sm8_sim.subscriptions)
    return live, subscriptions, sorted(cd_sim.jobs)


@pytest.mark.parametrize("writes", [True, False], ids=["writes", "read-only"])
@pytest.mark.parametrize(("system", "switch", "value"), SETTLED_WITH_WRITES)
def test_the_probe_names_the_dialect_that_was_set(
    env, sm8_sim, cd_sim, system, switch, value, writes
):
    sim = sm8_sim if system == "servicem8" else cd_sim
    sim.set_dialect(**dialect_for(system, switch, value))
    before = world(sm8_sim, cd_sim)
    with command_runtime() as rt:
        report = probe(rt, writes=writes)
    found = report.dialect()[system].get(switch)
    if writes or switch in READ_ONLY:
        assert found == value, report.as_dict()["findings"]
    else:
        # Reading cannot tell: nothing subscribed, no write tried, and the users list exists
        # (so no missing operation was met).
        assert found is None
    assert report.left_behind == []
    assert world(sm8_sim, cd_sim) == before


def test_the_default_dialects_are_named_in_full_and_stored_for_status(env, sm8_sim, cd_sim):
    with command_runtime() as rt:
        report = probe(rt, writes=True)
    expected_sm8 = ServiceM8Dialect()
    expected_cd = CoredinationDialect()
    found = report.dialect()
    for switch, value in found["servicem8"].items():
        assert getattr(expected_sm8, switch) == value, switch
    for switch, value in found["coredination"].items():
        assert getattr(expected_cd, switch) == value, switch
    assert set(found["servicem8"]) == {
        "allocation_webhooks",
        "delete_restores",
        "record_uuid_header",
        "refusal_as_success",
        "null_clears",
    }
    assert set(found["coredination"]) == {"stamps", "resource_shape", "unassign",
                                          "users_endpoint", "missing_status"}  # fmt: skip
    unsettled = {f.name for f in report.findings if f.dialect and f.reading is None}
    assert unsettled == {"day_reset", "schedule_finished"}  # no API can settle these
    status = json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)["dialect"]
    assert status["probed"] is True and status["writes"] is True
    assert status["coredination"]["unassign"] is False


def test_the_command_prints_a_table_and_json(env, sm8_sim, cd_sim, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # one table row per line
    table = CliRunner().invoke(cli, ["probe"])
    assert table.exit_code == 0, table.output
    assert "What the APIs answered" in table.output and "users_endpoint" in table.output
    as_json = CliRunner().invoke(cli, ["probe", "--writes", "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)  # the refusals it provoked are logged on stderr
    assert data["writes"] is True and data["left_behind"] == []
    assert TOKEN not in table.output + as_json.output


def test_without_a_probe_status_says_the_harder_reading_is_assumed(env):
    status = json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)["dialect"]
    assert status["probed"] is False and "harder reading" in status["note"]


def test_what_the_probe_proved_missing_is_not_tried_again(env, sm8_sim, cd_sim):
    cd_sim.set_dialect(unassign=False, users_endpoint=False)
    with command_runtime() as rt:  # no users list: a link made by hand gives the probe a user
        staff = sm8_sim.snapshot()["staff"][0]["uuid"]
        rt.stores.staff.link(staff, min(cd_sim.users), manual=True)
        probe(rt, writes=True)
    with command_runtime() as rt:  # a process started after the probe
        assert rt.cd.unassign_missing is True and rt.cd.users_missing is True
        cd_sim.reset_counts()
        rt.engine.match_staff()
    assert cd_sim.count("GET", "user.list") == 0  # known missing: no refused call


def test_a_refusal_that_echoes_the_webhook_token_is_reported_without_it():
    from bridge.log import redactor
    from bridge.probe import Report

    redactor.add([TOKEN])
    report = Report(writes=True, probed_at=0.0)
    report.add("servicem8", "allocation_webhooks", "q?", f"refused: bad url /webhooks/x/{TOKEN}")
    assert TOKEN not in json.dumps(report.as_dict())


def _finding(report, name):
    return next(f for f in report.findings if f.name == name)


@pytest.mark.parametrize("replaces", [False, True], ids=["coexist", "replaced"])
def test_the_scratch_subscriptions_leave_the_bridges_own_in_place_and_say_what_happened(
    env, sm8_sim, monkeypatch, replaces
):
    from bridge.ops.subscriptions import subscribe_webhooks

    if replaces:  # one subscription per object: a new one takes the old one's place
        store = sm8_sim._store_subscription

        def one_per_object(obj, fields, callback, unique_id):
            sm8_sim.subscriptions[:] = [s for s in sm8_sim.subscriptions if s["object"] != obj]
            store(obj, fields, callback, unique_id)

        monkeypatch.setattr(sm8_sim, "_store_subscription", one_per_object)
    with command_runtime() as rt:
        subscribe_webhooks(rt)
        before = sorted((s["object"], s["callback_url"]) for s in sm8_sim.subscriptions)
        report = probe(rt, writes=True)
    after = sorted((s["object"], s["callback_url"]) for s in sm8_sim.subscriptions)
    assert after == before and all(s["active"] for s in sm8_sim.subscriptions)
    assert report.left_behind == []
    found = _finding(report, "subscriptions_coexist")
    assert found.reading is (not replaces) and found.dialect is False
    assert ("replaced the bridge's job, jobactivity" in found.saw) is replaces


def test_without_subscriptions_of_its_own_the_probe_says_it_could_not_compare(env, sm8_sim):
    with command_runtime() as rt:
        report = probe(rt, writes=True)
    found = _finding(report, "subscriptions_coexist")
    assert found.reading is None and "no subscription" in found.saw
    assert sm8_sim.subscriptions == []


@pytest.mark.parametrize("ignored", ["joballocation", ""], ids=["ignored", "honoured"])
def test_an_edit_date_filter_accepted_and_ignored_is_reported_as_ignored(env, sm8_sim, ignored):
    sm8_sim.set_dialect(edit_date_filter_ignored=ignored)
    with command_runtime() as rt:
        report = probe(rt, writes=False)
    found = _finding(report, "edit_date_filter_joballocation")
    if ignored:
        assert found.reading == "ignored" and "rows for a stamp in 2999" in found.saw
    else:
        assert found.reading is True and found.saw == "answered, no rows"
    assert _finding(report, "edit_date_filter_jobactivity").reading is True
