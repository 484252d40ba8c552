"""Shared fixtures. Network is limited to loopback for the whole suite (pytest-socket,
``--allow-hosts`` in pyproject.toml)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from bridge.config import Settings
from bridge.coredination import CoredinationClient
from bridge.log import configure_logging, redactor
from bridge.servicem8 import ServiceM8Client
from bridge.simulators import CoredinationSimulator, ServiceM8Simulator

LOCAL_REDIS = "redis://127.0.0.1:6379/14"
SM8_KEY = "smk-test-8f2c41d7e9"
CD_KEY = "cdk-test-3a9b5e1f04"


@pytest.fixture
def sm8_sim() -> Iterator[ServiceM8Simulator]:
    sim = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=7).start()
    yield sim
    sim.stop()


@pytest.fixture
def cd_sim() -> Iterator[CoredinationSimulator]:
    sim = CoredinationSimulator(api_keys=(CD_KEY,), seed=7).start()
    yield sim
    sim.stop()


@pytest.fixture
def settings(sm8_sim: ServiceM8Simulator, cd_sim: CoredinationSimulator) -> Settings:
    return Settings(
        servicem8_api_key=SM8_KEY,
        servicem8_base_url=sm8_sim.api_url(),
        coredination_api_key=CD_KEY,
        coredination_base_url=cd_sim.api_url(),
        http_read_timeout=2.0,
        _env_file=None,
    )


@pytest.fixture
def sm8(settings: Settings) -> ServiceM8Client:
    return ServiceM8Client.from_settings(settings)


@pytest.fixture
def cd(settings: Settings) -> CoredinationClient:
    return CoredinationClient.from_settings(settings)


@pytest.fixture(autouse=True)
def _quiet_logging() -> Iterator[None]:
    configure_logging("INFO", "console")
    yield
    redactor.clear()


class Receiver:
    """A loopback callback URL: answers ServiceM8's challenge (unless ``challenge_ok`` is off),
    records every delivery, and answers each with the next of ``statuses`` queued, else
    ``status``, after ``delay`` seconds. It closes every connection, so once it is shut down a
    delivery finds nothing listening."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.statuses: deque[int] = deque()
        self.status = 200
        self.delay = 0.0
        self.challenge_ok = True
        self.event = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                form = parse_qs(body)
                status = 200
                if form.get("mode") == ["subscribe"]:
                    reply = form["challenge"][0] if receiver.challenge_ok else "no"
                else:
                    receiver.posts.append({"path": self.path, "body": body})
                    receiver.event.set()
                    status = receiver.statuses.popleft() if receiver.statuses else receiver.status
                    reply = "ok"
                    time.sleep(receiver.delay)
                data = reply.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a caller that gave up waiting: nothing to tell

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook"
        self.closed = False

    def down(self) -> None:
        """Like a receiver whose upstream is gone: 503 to deliveries, no challenge answered."""
        self.status, self.challenge_ok = 503, False

    def up(self) -> None:
        self.status, self.challenge_ok = 200, True

    def wait(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.posts

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis on 127.0.0.1:6379 when it answers (database 14), else an embedded one."""
    from bridge.redis.server import EmbeddedRedis, reachable

    if reachable(LOCAL_REDIS):
        yield LOCAL_REDIS
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def store(redis_client: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    import uuid

    from bridge.store import Stores

    s = Stores.connect(redis_client, f"t{uuid.uuid4().hex[:10]}")
    yield s
    s.wipe()


@pytest.fixture
def app(
    redis_url: str, sm8_sim: ServiceM8Simulator, cd_sim: CoredinationSimulator
) -> Iterator[Any]:
    """The Celery app of a connection of its own against both simulators (tasks run eagerly
    with ``.apply``); its stores are wiped afterwards."""
    import uuid

    from bridge.config import load_settings
    from tasks.app import create_app

    settings = load_settings(
        _env_file=None,
        redis_url=redis_url,
        bridge_connection_id=f"app{uuid.uuid4().hex[:8]}",
        servicem8_api_key=SM8_KEY,
        servicem8_base_url=sm8_sim.api_url(),
        coredination_api_key=CD_KEY,
        coredination_base_url=cd_sim.api_url(),
    )
    celery_app = create_app(settings)
    yield celery_app
    rt = celery_app.bridge_runtime()
    rt.stores.wipe()
    rt.close()


# --- ServiceM8 OAuth: the add-on's registration, its authorization server, one account ------------
OAUTH_CLIENT_ID = "addon-4471"
OAUTH_CLIENT_SECRET = "oauth-client-secret-93d1e7"
OAUTH_REDIRECT = "https://bridge.example/oauth/servicem8/callback"


@pytest.fixture
def oauth() -> Iterator[Any]:
    """The simulator's OAuth server for the add-on registered as ``OAUTH_*``."""
    from bridge.simulators.oauth import OAuthSimulator

    sim = OAuthSimulator(client_id=OAUTH_CLIENT_ID, client_secret=OAUTH_CLIENT_SECRET,
                         redirect_uri=OAUTH_REDIRECT)  # fmt: skip
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def account_sim(oauth: Any) -> Iterator[Any]:
    """One ServiceM8 account that takes the OAuth server's tokens; its person approves."""
    from bridge.simulators import ServiceM8Simulator

    sim = ServiceM8Simulator(bearer_account=oauth.account_of).start()
    oauth.approve_as(sim.vendor_uuid)
    yield sim
    sim.stop()
