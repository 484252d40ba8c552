"""``sm8cd run`` and ``sm8cd demo`` as a user starts them: separate processes, no REDIS_URL (so
the embedded Redis), the simulators on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.harness import free_port
from bridge.cli.demo import healthy
from bridge.simulators.scenario import seed_business
from mappings.ids import cd_job_uuid, connection_namespace
from tests import days
from tests.conftest import CD_KEY, SM8_KEY
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.e2e
TOKEN = "whk-run-5e8a1c0f93"


def _clean_env(**extra: str) -> dict[str, str]:
    ours = ("SERVICEM8_", "COREDINATION_", "REDIS_", "WEBHOOK_", "BRIDGE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(extra)
    return env


def _stopped(proc: subprocess.Popen[bytes], log: Any, path: Path) -> tuple[int, str]:
    """Stop `sm8cd run` as Ctrl-C would: its exit code and what it printed."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    log.close()
    return code, path.read_text(errors="replace")


def test_bridge_run_on_embedded_redis_syncs_a_webhooked_booking_and_stops_cleanly(
    tmp_path: Path, sm8_sim, cd_sim
):
    port = free_port()
    env = _clean_env(
        SERVICEM8_API_KEY=SM8_KEY, SERVICEM8_BASE_URL=sm8_sim.api_url(),
        COREDINATION_API_KEY=CD_KEY, COREDINATION_BASE_URL=cd_sim.api_url(),
        WEBHOOK_TOKEN=TOKEN, WEBHOOK_PUBLIC_URL=f"http://127.0.0.1:{port}",
        BRIDGE_STATE_DIR=str(tmp_path / "state"),
        # Polls far apart: after the first one, only the webhook can carry the new booking (a
        # fixed one: ServiceM8 sends no webhooks for allocations).
        SERVICEM8_POLL_SECONDS="3600", COREDINATION_POLL_SECONDS="3600", STAFF_MATCH_SECONDS="1",
        LOG_FORMAT="json", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    biz = seed_business(sm8_sim, cd_sim, staff=3, jobs=4, allocations=4)
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--port", str(port)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        eventually(lambda: healthy(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        ns = connection_namespace("default")
        eventually(lambda: len(cd_sim.jobs) == 4, timeout=30)  # the first poll
        subscribed = subprocess.run(
            [sys.executable, "-m", "bridge", "webhooks", "subscribe"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert subscribed.returncode == 0, subscribed.stderr
        assert TOKEN not in subscribed.stdout + subscribed.stderr
        job = biz.jobs[1]
        taken = {a["staff_uuid"] for a in biz.allocations if a["job_uuid"] == job}
        member = next(s for s in biz.staff if s["uuid"] not in taken)
        user = biz.user_for(member["uuid"])["id"]
        sm8_sim.create("jobactivity", {"job_uuid": job, "staff_uuid": member["uuid"],
                                       "activity_was_scheduled": 1,
                                       "start_date": days.stamp(3, 9),
                                       "end_date": days.stamp(3, 11)})  # fmt: skip

        def scheduled() -> bool:
            cd_job = cd_sim.jobs[cd_sim.by_uuid[cd_job_uuid(ns, job)]]
            return any(r["userId"] == user and r["state"] == "SCHEDULED"
                       for r in cd_job["resources"])  # fmt: skip

        eventually(scheduled, timeout=20)
        assert sm8_sim.deliverer.stats["queued"] >= 1  # it came by webhook
    finally:
        code, output = _stopped(proc, log, tmp_path / "run.log")
    assert code == 0, output[-3000:]
    assert "bridge: stopped" in output
    redis_dir = tmp_path / "state" / "redis"  # embedded, append-only
    assert (redis_dir / "appendonly.aof").exists() or (redis_dir / "appendonlydir").exists()
    assert TOKEN not in output
    for name in ("worker", "beat", "web"):
        assert f'"part": "{name}"' in output and '"event": "run.stopping"' in output
    # Quiet at INFO: no Celery line per task or per beat send, no banners (LOG_LEVEL=DEBUG
    # brings them back).
    for housekeeping in ("] received", "] succeeded in", "Sending due task", "[queues]",
                         "Configuration ->"):  # fmt: skip
        assert housekeeping not in output, housekeeping
    assert len(output.splitlines()) < 60, output[-3000:]


def test_demo_runs_to_completion_and_its_summary_matches_the_simulators(tmp_path: Path):
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--summary-json", str(tmp_path / "summary.json")],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - started
    print(f"\ndemo: exit {result.returncode} in {took:.1f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Both systems agree." in result.stdout
    why = " ".join(result.stdout.split("5. Why")[-1].split())  # the moved visit's trail
    assert "in Coredination: Coredination's side is taken." in why, result.stdout[-3000:]
    assert "Unschedule" not in why and "(ok)." in why
    summary = json.loads((tmp_path / "summary.json").read_text())
    allocations = summary["simulators"]["servicem8_joballocations"]
    activities = summary["simulators"]["servicem8_jobactivities"]
    jobs = summary["simulators"]["coredination_jobs"]
    live = [a for a in allocations if str(a["active"]) == "1"]
    fixed = [a for a in activities if str(a["active"]) == "1"
             and str(a["activity_was_scheduled"]) == "1"]  # fmt: skip
    present = [r for j in jobs for r in j["resources"]
               if r["state"] not in ("UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE")]  # fmt: skip
    assert summary["servicem8_live_allocations"] == len(live)
    assert summary["servicem8_live_fixed_bookings"] == len(fixed) == 2  # the board's, the pull's
    assert summary["coredination_resources"] == len(present)
    assert summary["coredination_jobs"] == sum(1 for j in jobs if j["resources"] and any(
        r["state"] not in ("UNASSIGNED", "DECLINED", "CANCELED", "INACTIVE") for r in j["resources"]
    ))  # fmt: skip
    # Every live booking has exactly one present resource, and the other way round.
    assert len(live) + len(fixed) == len(present)
    assert sum(summary["pairs_in_step"].values()) == len(live) + len(fixed)
    assert summary["pairs_in_step"]["finished"] == sum(
        1 for r in present if r["state"] == "FINISHED"
    )
    finished = [a for a in live if not str(a["completion_timestamp"]).startswith("0000")]
    assert len(finished) == summary["pairs_in_step"]["finished"]
    assert Counter(str(a["staff_uuid"]) for a in live)  # allocations spread over staff
    assert summary["problems"] == [] and summary["answered_429"] == 0
    # A year of finished work: previewed as left out, and nothing of it in Coredination.
    assert summary["servicem8_history_jobs"] == 5 and summary["servicem8_history_bookings"] == 10
    assert "preview of the first sync (nothing written)" in result.stdout
    assert "left out as finished work: 5 job(s)" in result.stdout
    for line in ("SCHEDULED on the job", "allocation deleted", "user unscheduled",
                 "completion time set", "the job set to 13:00-15:00 exactly",
                 "fixed booking"):  # fmt: skip
        assert line in result.stdout


def test_commands_beside_bridge_run_use_its_embedded_redis_and_never_start_a_second(
    tmp_path: Path, sm8_sim, cd_sim
):
    """The README's default: no REDIS_URL. `sm8cd run` owns the state folder's Redis; `staff
    match`, `staff list`, `status` and `sync --once` in other processes read and change that same
    data, and only one redis-server ever serves the folder."""
    from tests.adapters.test_embedded_redis import servers_of

    port = free_port()
    state = tmp_path / "state"
    env = _clean_env(
        SERVICEM8_API_KEY=SM8_KEY, SERVICEM8_BASE_URL=sm8_sim.api_url(),
        COREDINATION_API_KEY=CD_KEY, COREDINATION_BASE_URL=cd_sim.api_url(),
        WEBHOOK_TOKEN=TOKEN, BRIDGE_STATE_DIR=str(state),
        # The bridge's own polls and staff match far apart: what changes comes from the commands.
        SERVICEM8_POLL_SECONDS="3600", COREDINATION_POLL_SECONDS="3600",
        STAFF_MATCH_SECONDS="3600", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    seed_business(sm8_sim, cd_sim, staff=3, jobs=2, allocations=2)
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--port", str(port)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "bridge", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert len(servers_of(state / "redis")) == 1, f"after {args}"
        return done

    try:
        eventually(lambda: healthy(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        run_file = json.loads((state / "redis" / "redis.run").read_text())
        import redis as redis_py

        shared = redis_py.Redis.from_url(run_file["url"])
        before = shared.dbsize()
        command("staff", "match")
        listed = command("staff", "list", "--json")
        assert listed.stdout.count('"how": "e-mail"') == 3, listed.stdout
        command("status")
        command("sync", "--once")
        eventually(lambda: len(cd_sim.jobs) == 2, timeout=30)
        assert shared.dbsize() > before  # the commands wrote into the running bridge's Redis
        shared.close()
    finally:
        code, output = _stopped(proc, log, tmp_path / "run.log")
    assert code == 0, output[-3000:]
    assert f"Redis embedded at {run_file['url']}" in output
    assert servers_of(state / "redis") == []  # `run` stopped it on its way out
