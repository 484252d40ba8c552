"""The preview (docs/preview.md): the next sync run on a scratch copy of the connection's state
and on ports that send no write. Against both simulators and real Redis: an account of 200
bookings with two years of history, the preview, then the sync itself, their writes compared
one for one, the first time and again after changes on both sides; neither API nor the real
store is written by the preview."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import fakeredis
from typer.testing import CliRunner

from bridge.cli import app
from bridge.http import OpenGate
from bridge.servicem8 import ServiceM8Client
from bridge.servicem8.client import _wire_fields
from bridge.simulators.scenario import seed_business, seed_history
from bridge.store import Stores
from bridge.store.scratch import copy_connection
from bridge.sync.preview import Metered, Preview, preview
from mappings.ids import cd_job_uuid
from tests import days

# The ports' writes: method → (operation, how the target and user are read from the call).
SM8_WRITES = {
    "create_allocation": "joballocation.create",
    "update_allocation": "joballocation.update",
    "delete_allocation": "joballocation.delete",
    "create_activity": "jobactivity.create",
    "update_activity": "jobactivity.update",
    "delete_activity": "jobactivity.delete",
}


class Tap:
    """A port that sends every call on and notes each write as the preview records one:
    (api, operation, target, user, fields)."""

    def __init__(self, inner: Any, api: str, writes: list[tuple[Any, ...]]) -> None:
        self._inner, self._api, self._writes = inner, api, writes

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if self._api == "servicem8" and name in SM8_WRITES:
            return self._servicem8(name, attr)
        if self._api == "coredination" and name in ("upsert_job", "delete_job", "resource_op"):
            return self._coredination(name, attr)
        return attr

    def _servicem8(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if name.startswith("create"):
                target, fields = result, args[0]
            else:
                target, fields = args[0], args[1] if len(args) > 1 else {}
            wire = _wire_fields(fields, self._inner.tz)
            self._writes.append(("servicem8", SM8_WRITES[name], str(target).lower(), None, wire))
            return result

        return write

    def _coredination(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            result = call(*args, **kwargs)
            if name == "upsert_job":
                row = ("job.put", str(args[0]).lower(), None, dict(args[1]))
            elif name == "delete_job":
                row = ("job.delete", str(args[0]).lower(), None, {})
            else:
                row = (f"job.{args[0]}", str(args[1]).lower(), int(args[2]), {})
            self._writes.append(("coredination", *row))
            return result

        return write


def _planned(seen: Preview) -> list[tuple[Any, ...]]:
    return [(w.api, w.operation, w.target, w.user, w.fields) for w in seen.writes]


def _store_digest(store: Stores) -> str:
    """Every key of the connection with its value: what the preview must leave as it was."""
    client, digest = store.redis, hashlib.sha256()
    for key in sorted(client.scan_iter(match=store.keys.prefix + "*", count=1000)):
        digest.update(key + b"\0" + (client.dump(key) or b""))
    return digest.hexdigest()


def _preview(engine: Any, sm8_sim: Any, cd_sim: Any) -> Preview:
    """The preview of the engine's connection, as ``sm8cd preview`` runs it: on a copy of the
    state (here in fakeredis), reads metered; asserts it wrote nothing anywhere."""
    ctx, work, kept = engine.ctx, fakeredis.FakeRedis(), fakeredis.FakeRedis()
    before = _store_digest(ctx.stores)
    copy_connection(ctx.stores.redis, [work, kept], ctx.stores.keys)
    sm8_gate, cd_gate = ctx.sm8.transport.gate, ctx.cd.transport.gate
    assert isinstance(sm8_gate, OpenGate) and isinstance(cd_gate, OpenGate)
    meter = Metered(sm8_gate)  # one meter in front of both, as one budget is
    ctx.sm8.transport.gate = ctx.cd.transport.gate = meter
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    try:
        seen = preview(
            Stores.connect(work, ctx.stores.keys.connection),
            Stores.connect(kept, ctx.stores.keys.connection),
            ctx.sm8,
            ctx.cd,
            ctx.ns,
            ctx.options,
            sent=meter.sent,
        )
    finally:
        ctx.sm8.transport.gate, ctx.cd.transport.gate = sm8_gate, cd_gate
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0  # no write to either API
    assert sm8_sim.read_count() > 0
    assert _store_digest(ctx.stores) == before  # the real store only read
    return seen


def _sync(engine: Any, sm8_sim: Any, cd_sim: Any) -> list[tuple[Any, ...]]:
    writes: list[tuple[Any, ...]] = []
    ctx = engine.ctx
    real_sm8, real_cd = ctx.sm8, ctx.cd
    ctx.sm8, ctx.cd = Tap(real_sm8, "servicem8", writes), Tap(real_cd, "coredination", writes)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    try:
        engine.run_cycle()
    finally:
        ctx.sm8, ctx.cd = real_sm8, real_cd
    return writes


def _account(sm8_sim: Any, cd_sim: Any) -> Any:
    """200 bookings in scope (150 flexible, 50 fixed) over 40 jobs, one person without a
    Coredination user, and two years of finished work beside them."""
    biz = seed_business(
        sm8_sim, cd_sim, staff=8, jobs=40, allocations=150, fixed=50, unmapped_staff=1
    )
    return biz, seed_history(sm8_sim, biz, jobs=30)


def test_the_first_sync_writes_what_its_preview_said_one_for_one(engine, settings, sm8_sim, cd_sim):
    biz, history = _account(sm8_sim, cd_sim)
    seen = _preview(engine, sm8_sim, cd_sim)
    planned_reads = seen.calls["servicem8"].reads
    # The sync runs in a worker whose client has not read the account's timezone yet (the
    # preview learnt it into its copy, not into the real store).
    engine.ctx.sm8 = ServiceM8Client.from_settings(settings)
    done = _sync(engine, sm8_sim, cd_sim)
    assert len(done) > 150 and _planned(seen) == done  # the same writes, in the same order

    # What the operator reads: 40 jobs to create, none of the old ones, their people.
    assert len(seen.cd_jobs("create")) == len(biz.jobs)
    assert not seen.cd_jobs("update") and not seen.cd_jobs("delete")
    left_out = seen.left_out()  # the old jobs never closed by the horizon, the rest by status
    assert set(left_out["history"]) | set(left_out["status"]) == set(history)
    assert len(left_out["history"]) == 20
    assert [u.member.id for u in seen.unmatched] == [biz.staff[-1]["uuid"]]
    people = seen.of("coredination", "schedule", "assign")
    assert people and all(w.job in set(biz.jobs) for w in people)
    # The estimate of the calls is what the sync then sent.
    assert planned_reads == sm8_sim.read_count()
    assert seen.calls["coredination"].total == cd_sim.count()
    assert seen.calls["servicem8"].writes == sm8_sim.write_count() == 0


def test_the_next_sync_after_changes_on_both_sides_writes_what_its_preview_said(
    engine, sm8_sim, cd_sim
):
    biz, _history = _account(sm8_sim, cd_sim)
    engine.run_cycle()
    # The office books someone new, moves a booking and deletes one; a dispatcher schedules a
    # person in Coredination and takes another off.
    mapped = [m for m in biz.staff if biz.user_for(m["uuid"]) is not None]
    first = biz.allocations[0]
    first_cd = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(engine.ctx.ns, first["job_uuid"])]]
    on_first = {r["userId"] for r in first_cd["resources"]}
    other = next(m for m in mapped if biz.user_for(m["uuid"])["id"] not in on_first)
    sm8_sim.create(
        "joballocation",
        {
            "job_uuid": first["job_uuid"],
            "staff_uuid": other["uuid"],
            "allocation_date": days.stamp(2),
        },
    )
    sm8_sim.update("joballocation", biz.allocations[1]["uuid"], {"allocation_date": days.stamp(5)})
    sm8_sim.delete("joballocation", biz.allocations[2]["uuid"])
    cd_job = next(j for j in cd_sim.jobs.values() if j["resources"])
    on_it = {r["userId"] for r in cd_job["resources"]}
    users = [biz.user_for(m["uuid"]) for m in mapped]
    free = next(u for u in users if u["id"] not in on_it)
    cd_sim.resource_op(cd_job["uuid"], "schedule", str(free["id"]))
    taken_off = next(iter(on_it))
    cd_sim.resource_op(cd_job["uuid"], "unschedule", str(taken_off))

    seen = _preview(engine, sm8_sim, cd_sim)
    done = _sync(engine, sm8_sim, cd_sim)
    assert _planned(seen) == done
    operations = {w.operation for w in seen.writes}
    assert {"joballocation.create", "job.schedule"} <= operations  # both ways
    assert any(op.endswith(".delete") or op.startswith("job.un") for op in operations)
    # Nothing left: a preview now says nothing would be written.
    assert _preview(engine, sm8_sim, cd_sim).writes == []


def test_the_preview_command_prints_each_group_and_its_json_holds_every_row(
    cli_env, redis_client, sm8_sim, cd_sim
):
    """``sm8cd preview`` on its own scratch Redis: the groups an operator reads, every row in
    ``--json``, nothing written to either API or to the connection's keys; then ``sync --once``
    writes as many Coredination jobs as it said."""
    runner = CliRunner()
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=4, allocations=6, unmapped_staff=1)
    history = seed_history(sm8_sim, biz, jobs=3)
    sm8_sim.reset_counts()
    cd_sim.reset_counts()
    keys_before = set(redis_client.scan_iter(match=f"b:{cli_env['BRIDGE_CONNECTION_ID']}:*"))
    shown = runner.invoke(app, ["preview", "--limit", "2"])
    assert shown.exit_code == 0, shown.output
    assert "Coredination jobs to create: 4" in shown.output
    assert "… and 2 more" in shown.output
    assert "Staff with no Coredination user: 1" in shown.output
    assert "Jobs left out: 3" in shown.output
    assert "coredination:" in shown.output and "at the account's budget" in shown.output
    as_json = runner.invoke(app, ["preview", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert "http.call_failed" not in as_json.output  # a job not there yet is no warning
    doc = json.loads(as_json.stdout)
    assert len(doc["coredination"]["create"]) == 4
    assert {j for jobs in doc["left_out"].values() for j in jobs} == set(history)
    assert doc["unmatched_staff"][0]["staff"] == biz.staff[-1]["uuid"]
    assert sm8_sim.write_count() == 0 and cd_sim.write_count() == 0
    prefix = f"b:{cli_env['BRIDGE_CONNECTION_ID']}:".encode()
    keys_after = set(redis_client.scan_iter(match=prefix + b"*"))
    state = (b"jobs:", b"cdref:", b"map:", b"dir:", b"cursor", b"dirty", b"servicem8-timezone")
    assert not {k for k in keys_after - keys_before if k[len(prefix) :].startswith(state)}
    assert runner.invoke(app, ["sync", "--once"]).exit_code == 0
    assert len(cd_sim.jobs) == 4
