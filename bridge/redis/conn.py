"""From ``REDIS_URL`` to connections: the one place that knows the URL forms, and builds from one
URL the link store's redis-py client and the Celery settings of the broker (kombu) and of beat
(celery-redbeat). It imports redis only: Celery gets plain settings, never objects.

Two forms:

- ``redis://``, ``rediss://``, ``unix://``: one Redis server, in redis-py's own URL syntax. Passed
  through untouched, to redis-py, kombu and redbeat alike.
- ``sentinel://[[user]:password@]host1[:port],host2[:port],…[/db][?master=NAME]``: a Redis
  Sentinel group. The hosts are the sentinels (port 26379 when left out); ``user``/``password``
  are the Redis data nodes' credentials (percent-encoded), never the sentinels'; ``db`` defaults
  to 0. The master's name is ``?master=``, else ``REDIS_SENTINEL_MASTER`` (default
  ``mymaster``). Sentinels that have a password of their own (``requirepass`` in sentinel.conf)
  get ``REDIS_SENTINEL_PASSWORD`` (or ``?sentinel_password=``).

``with_settings`` writes those two settings into the URL's query (``?master=``, a URL's own
value winning), so whatever is handed only a URL (a task sender, a child process) reaches the
same group as the process that read the settings.

Secrets: no message, repr or log line made here holds a password; errors name the hosts only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from bridge.errors import ConfigError

SCHEME = "sentinel"
DEFAULT_MASTER = "mymaster"
DEFAULT_SENTINEL_PORT = 26379
FORM = "sentinel://[:password@]host1:26379,host2:26379/0[?master=NAME]"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
QUERY_KEYS = ("master", "sentinel_password")
_HOST = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?"
)
# A sentinel that does not answer must not hold up the question to the next one.
SENTINEL_SOCKET_TIMEOUT = 5.0


@dataclass(frozen=True)
class SentinelGroup:
    """A parsed ``sentinel://`` URL. ``master``/``sentinel_password`` are None when the URL does
    not say them (``with_settings`` fills them in)."""

    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    master: str | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def master_name(self) -> str:
        return self.master or DEFAULT_MASTER


def scheme_of(url: str) -> str:
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def is_sentinel(url: str) -> bool:
    return scheme_of(url) == SCHEME


def parse_sentinel(url: str) -> SentinelGroup | None:
    """The Sentinel group a ``sentinel://`` URL names; None for any other URL. A malformed one
    raises ``ConfigError`` saying what is wrong, naming only the hosts that read as hosts."""
    if not is_sentinel(url):
        return None
    rest = url.partition("://")[2]
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostlist = netloc.rpartition("@")
    if "@" in tail:
        # A '/', '?' or '#' in the password, not percent-encoded, ended the hosts early: what
        # reads as hosts (or options) may be part of the password, so none of it is named.
        raise ConfigError(
            "REDIS_URL: the Sentinel URL has an '@' after its hosts; percent-encode any '/', "
            f"'?', '#' or '@' in the password (expected {FORM})"
        )
    tail, hash_sign, _ = tail.partition("#")
    path, _, query = tail.partition("?")
    if hash_sign:
        raise _bad(hostlist, "has a #fragment")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    hosts = tuple(_host(n, part, hostlist) for n, part in enumerate(hostlist.split(","), 1))
    db_text = path.strip("/")
    if db_text and not db_text.isdigit():
        raise _bad(hostlist, "needs a database number after the hosts (/0)")
    options = _options(query, hostlist)
    master = options.get("master")
    if master is not None and not master:
        raise _bad(hostlist, "has an empty ?master=")
    return SentinelGroup(
        hosts=hosts,
        db=int(db_text or 0),
        master=master,
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password") or None,
    )


def check(url: str) -> None:
    """Raise ``ConfigError`` now for a URL no client could be built from."""
    if not is_sentinel(url) and scheme_of(url) not in PLAIN_SCHEMES:
        raise ConfigError(
            "REDIS_URL: must start with redis://, rediss://, unix:// or sentinel:// "
            f"(a Sentinel group: {FORM})"
        )
    parse_sentinel(url)


def with_settings(url: str, master: str | None, sentinel_password: str | None) -> str:
    """``url`` with the master name and the sentinels' password written into its query unless
    it says them itself; any other URL unchanged."""
    group = parse_sentinel(url)
    if group is None:
        return url
    extra = {}
    if group.master is None and master:
        extra["master"] = master
    if group.sentinel_password is None and sentinel_password:
        extra["sentinel_password"] = sentinel_password
    if not extra:
        return url
    joiner = "&" if "?" in url else "?"
    return url + joiner + urlencode(extra, quote_via=quote)


# --- the link store's client ---------------------------------------------------------------------
class SentinelMaster(redis.Redis):
    """The master of a Sentinel group, found again after every failover. ``close()`` also closes
    the connections to the sentinels, which ``master_for`` leaves open."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            if manager is not None:
                manager.close()


class FollowingConnection(SentinelManagedConnection):
    """A connection to the group's master that asks the sentinels where the master is every time
    it connects. redis-py's own reconnects a command in flight (a write whose answer died with
    the old primary, then retried) to the address it had before, bypassing the sentinels: after a
    kill, each retry went to the dead primary and the call failed when its retries ran out,
    though the group had promoted the replica seconds after the kill."""

    _addressed = False  # set while connect_to() connects to the address the sentinels gave

    def connect_to(self, address: Any) -> None:
        self._addressed = True
        try:
            super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._addressed = False

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self._sock is not None or self._addressed:
            super().connect_check_health(check_health, retry_socket_connect)
        else:
            self.connect()  # type: ignore[no-untyped-call]  # asks the sentinels first


def client(url: str, **options: Any) -> redis.Redis:
    """A redis-py client for ``url``: ``Redis.from_url`` for one server, the group's master
    (``Sentinel.master_for``) for a ``sentinel://`` URL. ``options`` go to every connection to
    Redis (not to the sentinels)."""
    check(url)
    group = parse_sentinel(url)
    if group is None:
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError:
            # redis-py's message may quote the URL; ours names the setting only.
            raise ConfigError("REDIS_URL: not a Redis URL redis-py can read") from None
    sentinel = Sentinel(list(group.hosts), sentinel_kwargs=_sentinel_kwargs(group))
    # Passed as keywords of one dict: redis-py 8 types master_for's positional parameters, and a
    # dict[str, str] spread would be checked against them.
    connection: dict[str, Any] = {
        k: v
        for k, v in {"username": group.username, "password": group.password}.items()
        if v is not None
    }
    connection.update(options)
    master: SentinelMaster = sentinel.master_for(
        group.master_name,
        redis_class=SentinelMaster,
        connection_class=FollowingConnection,
        db=group.db,
        # A Sentinel pool retries nothing by default. This one rides over a failover: a
        # connection to a master that died or was demoted fails, and each attempt asks the
        # sentinels again, sleeping 0.1, 0.2, 0.4, 0.8, 1.6 s, then 2 s: about 33 s in all per
        # connection attempt (redis-py nests the command's retry around the connect's), as
        # long as Sentinel's own default takes to judge a primary down (30 s) and promote.
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 20),
        **connection,
    )
    return master


# --- Celery: the broker and beat ------------------------------------------------------------------
def broker_settings(url: str, transport_options: dict[str, Any]) -> dict[str, Any]:
    """Celery's ``broker_url`` and ``broker_transport_options``: for one server, ``url`` and
    ``transport_options`` as given; for a group, kombu's Sentinel form (one
    ``sentinel://…/db`` per sentinel, ``;``-separated, each with the data nodes' credentials, so
    a switch to another sentinel keeps them) with ``master_name`` and the sentinels' own
    connection options added to ``transport_options``."""
    group = parse_sentinel(url)
    if group is None:
        return {"broker_url": url, "broker_transport_options": dict(transport_options)}
    auth = _userinfo(group)
    broker_url = ";".join(
        f"{SCHEME}://{auth}{_host_text(host, port)}/{group.db}" for host, port in group.hosts
    )
    options = {
        **transport_options,
        "master_name": group.master_name,
        # Plain values only: Celery's configuration is printed (``celery report``, which masks
        # "password") and read by Flower.
        "sentinel_kwargs": _sentinel_socket_options(group),
    }
    return {"broker_url": broker_url, "broker_transport_options": options}


def redbeat_settings(url: str) -> dict[str, Any]:
    """celery-redbeat's ``redbeat_redis_url`` and ``redbeat_redis_options``. For one server the
    options are empty: redbeat then builds ``Redis.from_url(url)`` as it always did (and stops
    borrowing the broker's transport options, which it never passed on). For a group redbeat
    reads the sentinels, the master's name and the database from the options
    (``redbeat.schedulers.get_redis``); its URL only has to start with ``redis-sentinel``. (The
    bridge's beat uses its own client instead: ``tasks.app.BridgeApp.redbeat_redis``.)"""
    group = parse_sentinel(url)
    if group is None:
        return {"redbeat_redis_url": url, "redbeat_redis_options": {}}
    host, port = group.hosts[0]
    options: dict[str, Any] = {
        "sentinels": list(group.hosts),
        "service_name": group.master_name,
        "db": group.db,
        "password": group.password,
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "sentinel_kwargs": _sentinel_socket_options(group),
    }
    if group.username is not None:
        options["username"] = group.username
    return {
        "redbeat_redis_url": f"redis-sentinel://{_host_text(host, port)}/{group.db}",
        "redbeat_redis_options": options,
    }


# --- helpers -------------------------------------------------------------------------------------
def _sentinel_socket_options(group: SentinelGroup) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_SOCKET_TIMEOUT,
        "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT,
    }
    if group.sentinel_password:
        options["password"] = group.sentinel_password
    return options


def _sentinel_kwargs(group: SentinelGroup) -> dict[str, Any]:
    # No retries against one sentinel: Sentinel.discover_master moves on to the next at once.
    return {**_sentinel_socket_options(group), "retry": Retry(NoBackoff(), 0)}


def _userinfo(group: SentinelGroup) -> str:
    if group.username is None and group.password is None:
        return ""
    user = quote(group.username or "", safe="")
    secret = f":{quote(group.password, safe='')}" if group.password is not None else ""
    return f"{user}{secret}@"


def _host(n: int, part: str, hostlist: str) -> tuple[str, int]:
    text = part.strip()
    match = _HOST.fullmatch(text)
    if match is None:
        raise _bad(hostlist, f"has no host[:port] as host {n}")
    host = match["ipv6"] or match["name"]
    port = int(match["port"] or DEFAULT_SENTINEL_PORT)
    if not 0 < port < 65536:
        raise _bad(hostlist, f"has a port out of range in host {n}")
    return host, port


def _host_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _options(query: str, hostlist: str) -> dict[str, str]:
    try:
        values = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(hostlist, "has a malformed ?query") from None
    unknown = sorted(set(values) - set(QUERY_KEYS))
    if unknown:
        known = ", ".join(QUERY_KEYS)
        raise _bad(hostlist, f"has unknown options {', '.join(unknown)} (known: {known})")
    if any(len(v) > 1 for v in values.values()):
        raise _bad(hostlist, "repeats an option")
    return {key: v[0] for key, v in values.items()}


def _bad(hostlist: str, what: str) -> ConfigError:
    # Only what reads as host[:port] is named: a mistyped URL may have a password where the
    # hosts should be.
    shown = ",".join(p if _HOST.fullmatch(p.strip()) else "…" for p in hostlist.split(","))
    hosts = f" (hosts: {shown})" if hostlist else " (no hosts)"
    return ConfigError(f"REDIS_URL: the Sentinel URL{hosts} {what}; expected {FORM}")
