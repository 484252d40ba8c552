"""One embedded Redis per state folder (bridge/redis/server.py): a second start on the same folder
attaches to the running server instead of starting another on the same append-only file; a stale
run file is never trusted; a command's own server goes when it is done, unless others use it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from bridge.redis.server import RUN_FILE, EmbeddedRedis


def servers_of(folder: Path) -> list[int]:
    """Pids of redis-server processes working in ``folder`` (Redis rewrites its command line, but
    it changes directory to its ``--dir``)."""
    wanted = str(folder.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                "redis-server" in os.readlink(entry / "exe")
                and os.readlink(entry / "cwd") == wanted
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_second_start_on_the_same_folder_attaches_to_the_running_server(tmp_path: Path):
    first = EmbeddedRedis(tmp_path).start()
    try:
        second = EmbeddedRedis(tmp_path).start()
        assert second.attached and not first.attached
        assert second.url == first.url
        assert json.loads((tmp_path / RUN_FILE).read_text())["url"] == first.url
        redis.Redis.from_url(second.url).set("seen-by", "both")
        assert redis.Redis.from_url(first.url).get("seen-by") == b"both"
        assert len(servers_of(tmp_path)) == 1
        second.release()  # not its own: left running
        assert redis.Redis.from_url(first.url).ping()
    finally:
        first.stop()
    assert servers_of(tmp_path) == []
    assert not (tmp_path / RUN_FILE).exists()


def test_a_stale_run_file_is_ignored_and_a_new_server_starts(tmp_path: Path):
    other = EmbeddedRedis(tmp_path / "elsewhere").start()  # answers, but serves another folder
    try:
        tmp_path.joinpath(RUN_FILE).write_text(json.dumps({"url": other.url, "pid": 1}))
        mine = EmbeddedRedis(tmp_path).start()
        try:
            assert not mine.attached and mine.url != other.url
            assert len(servers_of(tmp_path)) == 1
        finally:
            mine.stop()
    finally:
        other.stop()


def test_a_commands_own_server_is_released_only_when_nobody_else_uses_it(tmp_path: Path):
    mine = EmbeddedRedis(tmp_path).start()
    user = redis.Redis.from_url(mine.url)
    user.ping()  # another client (a bridge started meanwhile) is connected
    mine.release(settle=0.2)
    assert user.ping() and len(servers_of(tmp_path)) == 1
    user.close()
    mine.release()
    assert servers_of(tmp_path) == []


def test_the_lock_dies_with_the_server_so_a_killed_server_is_replaced(tmp_path: Path):
    first = EmbeddedRedis(tmp_path).start()
    assert first.process is not None
    os.kill(first.process.pid, 9)
    first.process.wait()
    again = EmbeddedRedis(tmp_path).start()
    try:
        assert not again.attached
        assert len(servers_of(tmp_path)) == 1
    finally:
        again.stop()
