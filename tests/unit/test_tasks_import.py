"""The Celery app is built by a factory and reads nothing at import: ``import tasks`` works with
an empty environment, and the settings are read only when a worker or beat needs them, failing
there with one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kombu.entity import Queue

from bridge.config import Settings
from bridge.queues import TASK_NAMES

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: ``load_settings`` replaced by a spy before anything imports it, and
# an audit hook that records every ``.env`` file opened (pydantic-settings opens it when it reads
# settings).
IMPORT_AND_LIST = """
import json, sys
env_files = []
sys.addaudithook(lambda event, args: env_files.append(str(args[0]))
                 if event == "open" and str(args[0]).endswith(".env") else None)
import bridge.config
calls = []
def spy(**overrides):
    calls.append(overrides)
    raise AssertionError("load_settings called")
bridge.config.load_settings = spy
import tasks
names = sorted(n for n in tasks.app.tasks if n.startswith("bridge."))
fixed = tasks.app.conf.task_acks_late, tasks.app.conf.worker_prefetch_multiplier
print(json.dumps({"tasks": names, "load_settings_calls": len(calls), "env_files": env_files,
                  "settings_read": tasks.app.bridge_config.settings_read, "fixed": fixed}))
"""


def _empty_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("dotenv", [False, True], ids=["no .env", "a .env beside"])
def test_importing_tasks_reads_no_settings_and_lists_the_bridges_tasks(tmp_path, dotenv):
    if dotenv:  # a valid .env: reading it would succeed, so only the audit hook can tell
        (tmp_path / ".env").write_text("SERVICEM8_API_KEY=a\nCOREDINATION_API_KEY=b\n")
    result = _run(["-c", IMPORT_AND_LIST], tmp_path, _empty_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["tasks"] == sorted(TASK_NAMES)
    assert seen["load_settings_calls"] == 0
    assert seen["env_files"] == []
    assert seen["settings_read"] is False
    assert seen["fixed"] == [True, 1]  # configuration that needs no settings is there


@pytest.mark.parametrize("command", ["worker", "beat"])
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            "error: configuration: SERVICEM8_API_KEY is required; COREDINATION_API_KEY is required",
        ),
        (
            {"SERVICEM8_API_KEY": "a", "COREDINATION_API_KEY": "b"},
            "error: REDIS_URL is required for Celery workers and beat "
            "('sm8cd run' starts an embedded Redis and sets it for them)",
        ),
        (
            {"SERVICEM8_API_KEY": "a", "COREDINATION_API_KEY": "b", "REDIS_URL": "redis://x",
             "LOG_LEVEL": "LOUD"},
            "error: configuration: LOG_LEVEL Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        ),
    ],
    ids=["no keys", "no REDIS_URL", "malformed"],
)  # fmt: skip
def test_a_worker_or_beat_without_good_settings_exits_2_with_one_line(
    tmp_path, command, env, message
):
    result = _run(["-m", "celery", "-A", "tasks", command], tmp_path, {**_empty_env(), **env})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [message]
    assert "Traceback" not in result.stdout + result.stderr


def _settings(**fields: object) -> Settings:
    given = {
        "servicem8_api_key": "a",
        "coredination_api_key": "b",
        "redis_url": "redis://127.0.0.1:6390/3",
        "bridge_connection_id": "c1",
        **fields,
    }
    return Settings(_env_file=None, **given)  # type: ignore[arg-type]


def test_the_factory_configures_the_app_from_the_given_settings():
    from tasks.app import create_app

    conf = create_app(_settings(servicem8_poll_seconds=20, coredination_poll_seconds=8)).conf
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost) == (True, True)
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_serializer, conf.accept_content, conf.task_ignore_result) == (
        "json", ["json"], True
    )  # fmt: skip
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (120, 150)
    assert conf.worker_hijack_root_logger is False
    assert conf.broker_url == "redis://127.0.0.1:6390/3"
    assert conf.broker_transport_options == {
        "visibility_timeout": 300,
        "queue_order_strategy": "priority",
        "global_keyprefix": "b:c1:celery:",
    }
    assert [q.name for q in conf.task_queues] == [
        "bridge.c1.interactive", "bridge.c1.sync", "bridge.c1.poll", "bridge.c1.bulk"
    ]  # fmt: skip
    assert all(isinstance(q, Queue) for q in conf.task_queues)
    assert conf.task_default_queue == "bridge.c1.sync"
    assert conf.task_routes["bridge.webhook.*"] == {"queue": "bridge.c1.interactive"}
    assert conf.task_routes["bridge.sweep"] == {"queue": "bridge.c1.poll"}
    assert conf.beat_scheduler == "redbeat.RedBeatScheduler"
    assert conf.redbeat_redis_url == "redis://127.0.0.1:6390/3"
    assert conf.redbeat_key_prefix == "b:c1:redbeat:"
    assert conf.redbeat_lock_timeout == 60  # three ServiceM8 polls, at least 30 s
    assert conf.beat_max_loop_interval == 4.0  # half the shortest poll, at most 5 s
    # One scheduler: beat sends the fleet tick alone; the tick plans every connection's work.
    assert {name: (e["task"], e["schedule"]) for name, e in conf.beat_schedule.items()} == {
        "fleet-tick": ("bridge.fleet.tick", 1.0),
    }
    from tasks.app import periodic_work

    assert periodic_work(_settings(servicem8_poll_seconds=20, coredination_poll_seconds=8)) == {
        "bridge.poll.cycle": 8,
        "bridge.staff.match": 900.0,
        "bridge.deferred.release": 60.0,  # the safety net: the tick releases it when due
        "bridge.reconcile": 86_400.0,
        "bridge.sweep": 8,
    }


def test_the_webhook_health_check_runs_when_the_bridge_has_a_public_url():
    from tasks.app import periodic_work

    check = "bridge.poll.webhook_subscriptions"
    assert check not in periodic_work(_settings())
    on = _settings(webhook_public_url="https://bridge.example.com", webhook_health_seconds=600)
    assert periodic_work(on)[check] == 600
    off = _settings(webhook_public_url="https://bridge.example.com", webhook_health_seconds=0)
    assert check not in periodic_work(off)


def test_no_reconcile_entry_when_reconcile_is_off():
    from tasks.app import periodic_work

    assert "bridge.reconcile" not in periodic_work(_settings(reconcile_seconds=0))


def test_two_apps_keep_their_own_settings():
    from tasks.app import create_app

    one, two = create_app(_settings()), create_app(_settings(bridge_connection_id="c2"))
    assert one.conf.task_default_queue == "bridge.c1.sync"
    assert two.conf.task_default_queue == "bridge.c2.sync"
    assert sorted(n for n in two.tasks if n.startswith("bridge.")) == sorted(TASK_NAMES)
