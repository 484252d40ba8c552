"""A Redis Sentinel group on loopback, for the failover tests and the chaos run's failover: one
primary, one replica and three
sentinels, each its own process (never daemonized) on a free 127.0.0.1 port, with its config,
data and log in a temporary folder. Sentinels judge a primary down after one second, so a failover
completes in a few seconds.

``SentinelCluster`` is a context manager; every process it started is ended on the way out, even
when starting failed half-way. The data nodes and the sentinels have passwords of their own, as in
production, so the tests also prove that each client carries the right one.

The binaries come from Debian's ``redis-sentinel`` package (``make tools`` installs it):
``redis-sentinel`` runs the sentinels, else ``redis-server --sentinel``. Without either,
``MissingBinaries`` is raised: the tests then skip, except in CI (``CI=true``) where they fail, as
the promtool tests do.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from bridge.redis.server import free_port

MASTER = "bridge-test"  # not the default "mymaster": a client that ignores the name fails
PASSWORD = "data-pw-5e1c9a"  # noqa: S105 - a fake, for the loopback group only
SENTINEL_PASSWORD = "sentinel-pw-77b2d0"  # noqa: S105 - a fake
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000
T = TypeVar("T")


@dataclass(frozen=True)
class Program:
    """How to start one part: the binary, the name it is started under, flags after the config.
    ``redis-server`` and ``redis-sentinel`` are one program that picks its part from that name
    (``argv[0]``) or ``--sentinel``, so either binary can run both parts."""

    executable: str
    name: str
    flags: tuple[str, ...] = ()

    def argv(self, conf: Path) -> list[str]:
        return [self.name, str(conf), *self.flags]


class MissingBinaries(RuntimeError):
    """Neither ``redis-server`` nor ``redis-sentinel`` is installed."""


def binaries() -> tuple[Program, Program]:
    """A data node's program and a sentinel's; ``MissingBinaries`` when neither binary is
    installed."""
    server, sentinel = shutil.which("redis-server"), shutil.which("redis-sentinel")
    if server is None and sentinel is None:
        raise MissingBinaries(
            "redis-server/redis-sentinel are not installed: `make tools` installs Debian's "
            "redis-sentinel package"
        )
    node = Program(server or str(sentinel), "redis-server")
    if sentinel is not None:
        return node, Program(sentinel, "redis-sentinel")
    return node, Program(str(server), "redis-server", ("--sentinel",))


def wait_for(what: str, check: Callable[[], T | None], timeout: float, where: Path) -> T:
    """``check()``'s first truthy result within ``timeout`` seconds (Redis errors count as not
    yet); otherwise an error naming ``what`` and the folder holding the logs."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (redis.RedisError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Sentinel group: {what} not within {timeout:.0f}s (last: {last!r}; logs in "
                f"{where})"
            )
        time.sleep(0.05)


class SentinelCluster:
    """A primary, its replica and three sentinels watching them as ``MASTER``."""

    def __init__(self, root: Path | None = None, *, master: str = MASTER) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="sentinel-"))
        self.master = master
        self.password = PASSWORD
        self.sentinel_password = SENTINEL_PASSWORD
        self.node_ports: list[int] = []
        self.sentinel_ports: list[int] = []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}  # by port
        self._clients: dict[int, redis.Redis] = {}

    # --- the bridge's view ------------------------------------------------------------------
    def url(self, db: int = 0, *, with_options: bool = True) -> str:
        """The bridge's ``REDIS_URL`` for this group; ``with_options=False`` leaves out the
        master's name and the sentinels' password (``REDIS_SENTINEL_*`` then say them)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        url = f"sentinel://:{self.password}@{hosts}/{db}"
        if with_options:
            url += f"?master={self.master}&sentinel_password={self.sentinel_password}"
        return url

    def master_addr(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that answers reports it."""
        found = self._reported_master()
        if found is None:
            raise AssertionError(
                f"Sentinel group: no sentinel names a master (logs in {self.root})"
            )
        return found

    def _reported_master(self) -> tuple[str, int] | None:
        for port in self.sentinel_ports:
            try:
                reply: Any = self.sentinel(port).sentinel_get_master_addr_by_name(self.master)
                host, found = reply
                return str(host), int(found)
            except (redis.RedisError, TypeError):  # not up yet; None: it knows no such master
                continue
        return None

    def node(self, port: int) -> redis.Redis:
        """A direct client to one data node, whatever its role."""
        return self._client(port, self.password)

    def sentinel(self, port: int) -> redis.Redis:
        return self._client(port, self.sentinel_password)

    # --- life -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> SentinelCluster:
        server, sentinel = binaries()
        try:
            primary, replica = free_port(), free_port()
            self.node_ports = [primary, replica]
            self._spawn(server, primary, self._node_conf(primary, None))
            self._spawn(server, replica, self._node_conf(replica, primary))
            # Sentinels learn of replicas from the primary's INFO, read at once and then every
            # 10 s: started after the replica has synced, they know it from the first.
            wait_for(
                "the replica to sync", lambda: self._linked(replica, primary), timeout, self.root
            )
            for _ in range(3):
                port = free_port()
                self.sentinel_ports.append(port)
                self._spawn(sentinel, port, self._sentinel_conf(port, primary))
            self._settled(replicas=1, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.processes.clear()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- failovers --------------------------------------------------------------------------
    def failover(self, timeout: float = 30.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER``: the replica is promoted and the old primary becomes its replica.
        Returns once every sentinel names the new primary, it takes writes, and the old one
        replicates from it.

        The sentinels demote the old primary only some 10 s after the switch (when they see it
        still reporting itself master), and until then it takes the writes of every client
        still connected to it, writes lost when it resyncs. Hence the wait for the demotion:
        a test that writes after ``failover()`` sees where clients go once the group is whole
        again."""
        old = self.master_addr()

        def asked() -> bool:
            # NOGOODSLAVE while the sentinels have yet to see the replica healthy: ask again.
            sentinel = self.sentinel(self.sentinel_ports[0])
            return bool(sentinel.execute_command("SENTINEL", "FAILOVER", self.master))  # type: ignore[no-untyped-call]

        wait_for("a failover to start", asked, timeout, self.root)
        new = self._switched_from(old, timeout)
        self._settled(replicas=1, timeout=timeout)
        return new

    def kill_primary(self, timeout: float = 30.0) -> tuple[str, int]:
        """SIGKILL the primary, as a crash would; returns once the sentinels have agreed it is
        down, promoted the replica, and the new primary takes writes."""
        old = self.master_addr()
        proc = self.processes[old[1]]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        return self._switched_from(old, timeout)

    # --- waiting ----------------------------------------------------------------------------
    def _switched_from(self, old: tuple[str, int], timeout: float) -> tuple[str, int]:
        def agreed() -> tuple[str, int] | None:
            replies: list[Any] = [
                self.sentinel(p).sentinel_get_master_addr_by_name(self.master)
                for p in self.sentinel_ports
            ]
            seen = {tuple(reply) for reply in replies}
            if len(seen) != 1:
                return None
            host, port = next(iter(seen))
            addr = (str(host), int(port))
            if addr == old:
                return None
            primary = self.node(addr[1])
            role: Any = primary.execute_command("ROLE")  # type: ignore[no-untyped-call]
            if role[0] not in (b"master", "master"):
                return None
            primary.set("sentinel-harness:probe", "1")  # READONLY until it is promoted
            return addr

        return wait_for(f"a new master after {old[0]}:{old[1]}", agreed, timeout, self.root)

    def _settled(self, replicas: int, timeout: float) -> None:
        """Every sentinel knows the other two and ``replicas`` healthy replicas of one master
        that takes writes, and each replica's link to it is up."""

        def settled() -> bool:
            addr = self._reported_master()
            if addr is None:
                return False
            self.node(addr[1]).set("sentinel-harness:probe", "1")
            for port in self.sentinel_ports:
                state: Any = self.sentinel(port).sentinel_master(self.master)
                if (state["ip"], int(state["port"])) != addr:
                    return False
                if int(state["num-other-sentinels"]) != len(self.sentinel_ports) - 1:
                    return False
                known = self.sentinel(port).sentinel_slaves(self.master)
                if len([r for r in known if not r["is_sdown"]]) < replicas:
                    return False
            alive = [p for p in self.node_ports if self.processes[p].poll() is None]
            return all(self._linked(port, addr[1]) for port in alive if port != addr[1])

        wait_for("the sentinels to settle", settled, timeout, self.root)

    def _linked(self, replica: int, primary: int) -> bool:
        info = self.node(replica).info("replication")
        return info.get("master_link_status") == "up" and int(info["master_port"]) == primary

    # --- processes and configs --------------------------------------------------------------
    def _spawn(self, program: Program, port: int, conf: str) -> None:
        folder = self.root / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        conf_path = folder / "redis.conf"  # a sentinel rewrites its own: one folder each
        conf_path.write_text(conf)
        self.processes[port] = subprocess.Popen(  # noqa: S603 - our own redis binaries
            program.argv(conf_path),
            executable=program.executable,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _common(self, port: int) -> list[str]:
        folder = self.root / str(port)
        return [
            "bind 127.0.0.1",
            f"port {port}",
            "daemonize no",
            "protected-mode yes",
            f'dir "{folder}"',
            f'logfile "{folder / "redis.log"}"',
        ]

    def _node_conf(self, port: int, replica_of: int | None) -> str:
        lines = [
            *self._common(port),
            'save ""',
            "appendonly no",
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not after 5 s
            f"requirepass {self.password}",
            f"masterauth {self.password}",
        ]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        return "\n".join(lines) + "\n"

    def _sentinel_conf(self, port: int, primary: int) -> str:
        name = self.master
        lines = [
            *self._common(port),
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {name} 127.0.0.1 {primary} 2",
            f"sentinel auth-pass {name} {self.password}",
            f"sentinel down-after-milliseconds {name} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {name} 1",
        ]
        return "\n".join(lines) + "\n"

    def _client(self, port: int, password: str) -> redis.Redis:
        """One client per process, no retries: the waits above poll on their own."""
        if port not in self._clients:
            self._clients[port] = redis.Redis(
                "127.0.0.1",
                port,
                password=password,
                socket_timeout=2,
                socket_connect_timeout=2,
                decode_responses=True,
                retry=Retry(NoBackoff(), 0),
            )
        return self._clients[port]
