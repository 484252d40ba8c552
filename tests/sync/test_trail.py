"""The job's trail and ``sm8cd explain``: each sync that decided anything leaves one entry, told
in plain sentences that name the rule and each write, for every kind of flow (push, pull, both
sides changed with both times, echo, pending staff, out of scope, refused; held at work: the
state machine's test of it)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from typer.testing import CliRunner

from bridge.cli import app as cli
from bridge.simulators.scenario import seed_business, seed_history
from mappings.ids import cd_job_uuid
from mappings.trail import Entry, decode, sentences
from tests.conftest import CD_KEY, SM8_KEY

SYD = ZoneInfo("Australia/Sydney")


def _story(store: Any, job: str) -> list[Entry]:
    entries = [decode(raw) for raw in store.trail.entries(job)]
    assert None not in entries
    return [e for e in entries if e is not None]


def _told(store: Any, job: str) -> str:
    return "\n".join(line for e in _story(store, job) for line in sentences(e, SYD))


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_push_names_the_rule_and_each_write_with_its_answer(engine, store, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    job, row = biz.jobs[0], biz.allocations[0]
    user = biz.user_for(row["staff_uuid"])["id"]
    [entry] = _story(store, job)
    assert entry.trigger == "command"
    assert [w.what for w in entry.job] == ["create job"]
    [pair] = entry.pairs
    assert (pair.staff, pair.user, pair.rule) == (row["staff_uuid"], user, "push")
    assert pair.bookings[0].uuid == row["uuid"] and pair.bookings[0].by_person
    op = "schedule" if row.get("allocation_date") else "assign"
    assert [(w.what, w.target, w.answer) for w in pair.writes] == [(op, f"user {user}", "ok")]
    told = _told(store, job)
    assert "New in ServiceM8: ServiceM8's side is taken." in told
    assert f"{op.capitalize()} user {user} (ok)." in told
    assert f"allocation {row['uuid'][:8]}" in told


def test_a_pull_and_then_an_echo_say_which_side_changed(engine, store, sm8_sim, cd_sim):
    engine.ctx.options.pull_booking = "flexible"
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    job, row = biz.jobs[0], biz.allocations[0]
    cd_job, user = cd_job_uuid(engine.ctx.ns, job), biz.user_for(row["staff_uuid"])["id"]
    cd_sim.resource_op(cd_job, "unschedule", str(user))
    engine.run_cycle(match_staff=False)
    pulled = next(e for e in _story(store, job) if e.pairs and e.pairs[0].rule == "pull")
    [pair] = pulled.pairs
    assert pair.cd is not None and pair.cd[1] == "absent"
    assert pair.writes and all(w.answer == "ok" for w in pair.writes)
    assert "Changed in Coredination: Coredination's side is taken." in _told(store, job)
    # Synced again with nothing new: in step with the snapshot, nothing written (an echo).
    store.jobs.mark_dirty([job])
    engine.run_cycle(match_staff=False)
    echo = _story(store, job)[-1]
    assert echo.at_ms >= pulled.at_ms and [p.rule for p in echo.pairs] == ["in_step"]
    assert not echo.pairs[0].writes and not echo.job
    assert sentences(echo, SYD)[-1].endswith(
        "In step as at the last sync (an echo, or nothing changed): nothing to write."
    )


def test_both_sides_changed_tells_both_times_and_the_winner(engine, store, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    engine.run_cycle()
    row = biz.allocations[0]
    job, user = row["job_uuid"], biz.user_for(row["staff_uuid"])["id"]
    sm8_sim.delete("joballocation", row["uuid"])  # the office first
    cd_sim.clock_offset += 5
    cd_sim.resource_op(cd_job_uuid(engine.ctx.ns, job), "assign", str(user))  # the later
    engine.run_cycle(match_staff=False)
    decided = next(e for e in reversed(_story(store, job)) if e.pairs and e.pairs[0].rule == "pull")
    [pair] = decided.pairs
    assert pair.sm8 is not None and pair.cd is not None
    assert pair.sm8[1] is not None and pair.cd[2] is not None and pair.cd[2] > pair.sm8[1]
    story = sentences(decided, SYD)[-1]
    assert "Changed on both sides (ServiceM8 " in story
    assert "the later change wins: Coredination." in story


def test_a_person_without_a_coredination_user_is_pending(engine, store, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=3, allocations=3, unmapped_staff=1)
    engine.run_cycle()
    orphan = biz.staff[-1]["uuid"]
    job = next(a["job_uuid"] for a in biz.allocations if a["staff_uuid"] == orphan)
    pair = next(p for p in _story(store, job)[-1].pairs if p.staff == orphan)
    assert (pair.rule, pair.user) == ("pending", None)
    assert "Pending: staff member has no Coredination user." in _told(store, job)


def test_history_keeps_no_trail_and_explain_tells_why_it_is_left_out(
    cli_env, sm8_sim, cd_sim, redis_client
):
    from bridge.store import Stores

    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    old = seed_history(sm8_sim, biz, jobs=6)
    runner = CliRunner()
    assert runner.invoke(cli, ["sync", "--once"]).exit_code == 0
    stores = Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"])
    assert all(not stores.trail.entries(job) for job in old)  # a large account's history: free
    told = {job: _flat(runner.invoke(cli, ["explain", job]).output) for job in old}
    assert any("Left out: every booking is history" in t for t in told.values()), told
    assert any("Left out: its job status is not synced." in t for t in told.values()), told


def test_a_refused_job_keeps_the_apis_message_in_its_trail(engine, store, sm8_sim, cd_sim):
    biz = seed_business(sm8_sim, cd_sim, staff=1, jobs=1, allocations=1)
    job = biz.jobs[0]
    cd_sim.faults.refusals[cd_job_uuid(engine.ctx.ns, job)] = (403, "No permission here")
    engine.run_cycle()
    [entry] = _story(store, job)
    assert entry.error is not None and "No permission here" in entry.error
    assert [(w.what, w.answer.split(":")[0]) for w in entry.job] == [("create job", "Forbidden")]
    assert "Stopped: Forbidden" in _told(store, job)


def test_explain_tells_the_story_and_where_each_pair_stands(cli_env, sm8_sim, cd_sim, redis_client):
    from bridge.store import Stores

    biz = seed_business(sm8_sim, cd_sim, staff=2, jobs=1, allocations=1)
    runner = CliRunner()
    assert runner.invoke(cli, ["sync", "--once"]).exit_code == 0
    job, row = biz.jobs[0], biz.allocations[0]
    number = sm8_sim.records["job"][job]["generated_job_id"]
    cd_job = cd_job_uuid(Stores.connect(redis_client, cli_env["BRIDGE_CONNECTION_ID"]).jobs.ns, job)
    name = next(s for s in biz.staff if s["uuid"] == row["staff_uuid"])
    for ref in (job, str(number), cd_job):
        result = runner.invoke(cli, ["explain", ref])
        assert result.exit_code == 0, result.output
        assert f"ServiceM8 job {number} ({job}), Coredination job {cd_job}" in _flat(result.output)
        assert "New in ServiceM8: ServiceM8's side is taken." in result.output
        assert "Now:" in result.output and "Coredination scheduled" in result.output
    assert f"{name['first']}" in runner.invoke(cli, ["explain", job]).output
    shown = runner.invoke(cli, ["explain", job, "--json"])
    assert shown.exit_code == 0 and '"rule": "push"' in shown.output
    assert SM8_KEY not in shown.output and CD_KEY not in shown.output
    unknown = runner.invoke(cli, ["explain", "999999"])
    assert unknown.exit_code == 2 and "no job known by '999999'" in unknown.output
