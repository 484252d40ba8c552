"""The webhook receiver, /healthz and /metrics, driven over HTTP (FastAPI's test client) against
real Redis. Enqueues are recorded by a stand-in for the Celery sender, so each test can count them;
the real sender is exercised end to end in tests/e2e/test_run.py."""

from __future__ import annotations

import base64
import json
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bridge.connections import ConnectionRegistry, SecretBox
from bridge.web.app import create_app
from tests.sync.conftest import ALLOCATION, JOB, TOKEN, documented, post


def test_handshake_answers_the_challenge_alone_and_enqueues_nothing(web):
    r = web.post(f"/webhooks/servicem8/{TOKEN}", data={"mode": "subscribe", "challenge": "c4f2e9"})
    assert (r.status_code, r.text) == (200, "c4f2e9")
    assert web.sent == []


def test_good_token_enqueues_one_push_per_entry(web):
    body = documented()
    body["entry"].append({"uuid": JOB.upper(), "changed_fields": [], "time": "2026-11-23 10:00:01"})
    r = post(web, body)
    assert r.status_code == 200
    assert web.sent == [
        ("bridge.webhook.servicem8_allocation", [ALLOCATION]),
        ("bridge.webhook.servicem8_allocation", [JOB]),  # uuids normalised to lower case
    ]
    r = post(web, documented("job", JOB))
    assert r.json()["enqueued"] == 1
    assert web.sent[-1] == ("bridge.webhook.servicem8_job", [JOB])
    r = post(web, documented("jobactivity", ALLOCATION))  # a fixed booking
    assert r.json()["enqueued"] == 1
    assert web.sent[-1] == ("bridge.webhook.servicem8_activity", [ALLOCATION])


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
def test_wrong_or_missing_token_is_401_and_enqueues_nothing(web, token):
    r = post(web, documented(), token=token)
    assert r.status_code == 401
    assert web.sent == []


def test_a_duplicate_delivery_is_acknowledged_and_enqueued_once(web):
    first, second = post(web, documented()), post(web, documented())
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == {"enqueued": 0, "duplicates": 1, "ignored": []}
    assert len(web.sent) == 1
    post(web, documented(time="2026-11-23 10:05:00"))  # a later change of the same record
    assert len(web.sent) == 2


def test_unknown_objects_and_events_are_acknowledged_and_ignored(web):
    r = post(web, documented("invoice", JOB))
    assert r.status_code == 200 and r.json()["enqueued"] == 0
    assert "not synced" in r.json()["ignored"][0]
    r = post(
        web, {"channel": "customer", "type": "CUSTOMER_CREATED", "id": 4}, source="coredination"
    )
    assert r.status_code == 200 and r.json()["enqueued"] == 0
    r = post(web, {"hello": "world"})
    assert r.status_code == 200
    assert web.sent == []


def _counted_rejected(web) -> int:
    return web.runtime.stores.activity.stats().get("webhook.servicem8.rejected", 0)


def test_an_oversized_body_is_answered_200_counted_and_not_queued(web):
    """Every authenticated delivery gets a 2xx: ServiceM8 deactivates a subscription whose
    deliveries keep failing. What cannot be used is counted; the poll catches its change."""
    body = documented()
    body["padding"] = "x" * 5000
    r = post(web, body)
    assert r.status_code == 200 and "larger than" in r.json()["ignored"][0]
    assert web.sent == [] and _counted_rejected(web) == 1


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"object": "joballocation", "entry": [', "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b"[" * 100 + b"]" * 100, "application/json"),
        (b"mode=subscribe&challenge=has space", "application/x-www-form-urlencoded"),
    ],
)
def test_a_malformed_body_is_answered_200_counted_and_not_queued(web, raw, content_type):
    r = post(web, raw, content_type=content_type)
    assert r.status_code == 200 and r.json()["enqueued"] == 0
    assert web.sent == [] and _counted_rejected(web) == 1


def test_other_media_types_are_answered_200_counted_and_not_queued(web):
    r = post(web, b"<xml/>", content_type="application/xml")
    assert r.status_code == 200 and r.json()["ignored"] == ["unsupported content type"]
    assert web.sent == [] and _counted_rejected(web) == 1


def test_the_subscription_check_is_answered_as_a_get_too(web):
    r = web.get(f"/webhooks/servicem8/{TOKEN}", params={"mode": "subscribe", "challenge": "c-42"})
    assert (r.status_code, r.text) == (200, "c-42")
    check = {"mode": "subscribe", "challenge": "c"}
    assert web.get("/webhooks/servicem8/wrong", params=check).status_code == 401
    assert web.get(f"/webhooks/servicem8/{TOKEN}").status_code == 404
    assert web.sent == []


def test_observed_shapes_are_understood(web):
    form = "object=joballocation&entry=" + json.dumps(documented()["entry"])
    r = post(web, form.encode(), content_type="application/x-www-form-urlencoded")
    assert r.json()["enqueued"] == 1
    event = {"id": "evt-1", "type": "job.updated", "data": {"uuid": JOB, "status": "Work Order"}}
    assert post(web, event).json()["enqueued"] == 1
    entry = [{"uuid": ALLOCATION, "time": "t2"}]
    payload = {"eventName": "webhook_subscription",
               "eventArgs": {"object": "JobAllocation", "entry": entry}}  # fmt: skip
    jwt = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
        for part in ({"alg": "HS256"}, payload, {"sig": 1})
    )
    assert post(web, jwt.encode(), content_type="application/jwt").json()["enqueued"] == 1
    assert web.sent == [
        ("bridge.webhook.servicem8_allocation", [ALLOCATION]),
        ("bridge.webhook.servicem8_job", [JOB]),
        ("bridge.webhook.servicem8_allocation", [ALLOCATION]),
    ]


def test_coredination_events_enqueue_a_pull_of_the_job(web):
    body = {"channel": "job", "type": "RESOURCE_SCHEDULED", "jobId": 41, "jobUuid": JOB,
            "eventTimeStamp": 1763900000000, "event": {"id": 7}}  # fmt: skip
    assert post(web, body, source="coredination").json()["enqueued"] == 1
    assert post(web, body, source="coredination").json()["duplicates"] == 1
    assert (
        post(web, {"job": {"id": 42}, "type": "x"}, source="coredination").json()["enqueued"] == 1
    )
    body["event"] = {
        "id": 8,
        "type": "SCHEDULE",
        "toUserId": 2000001,
        "newResourceState": "SCHEDULED",
    }
    assert post(web, body, source="coredination").json()["enqueued"] == 1
    assert web.sent == [
        ("bridge.webhook.coredination_job", [JOB, "RESOURCE_SCHEDULED", "", ""]),
        ("bridge.webhook.coredination_job", ["42", "x", "", ""]),
        ("bridge.webhook.coredination_job", [JOB, "SCHEDULE", "2000001", "SCHEDULED"]),
    ]


def test_a_failed_enqueue_is_2xx_counted_and_a_redelivery_is_not_dropped(web):
    def broken(task: str, args: list[str]) -> None:
        raise ConnectionError("broker down")

    app = create_app(web.runtime.settings, web.runtime, broken)
    assert post(TestClient(app), documented()).status_code == 202
    stats = web.runtime.stores.activity.stats()
    assert stats["webhook.servicem8.enqueue_failed"] == 1
    assert post(web, documented()).json()["enqueued"] == 1


def test_healthz_reports_each_part(web):
    r = web.get("/healthz")
    assert r.status_code == 503  # no beat, no worker in this test
    assert r.json() == {"healthy": False, "redis": "ok", "beat": "no beat holds the schedule lock",
                        "workers": 0, "polls": "ok (0 connection(s) watched)",
                        "stale_connections": 0, "stale": []}  # fmt: skip
    stores = web.runtime.stores
    stores.activity.heartbeat("w1@host", time.time(), 30)
    stores.redis.set(stores.keys.beat_lock, "token", ex=30)
    assert web.get("/healthz").json() == {
        "healthy": True,
        "redis": "ok",
        "beat": "ok",
        "workers": 1,
        "polls": "ok (0 connection(s) watched)",
        "stale_connections": 0,
        "stale": [],
    }


def _fleet_samples(web) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = web.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("bridge_fleet_")
    }


def test_a_connection_whose_polls_stopped_is_unhealthy_named_until_it_polls_again(web, fleet):
    """Every active connection's last whole poll is watched by the fleet tick: one with none
    for three times its longest poll interval (900 s by default) fails /healthz/connections,
    named with why, and shows in /healthz (which stays 200: one tenant's polls must not take the
    receiver out of a load balancer) and /metrics; a pause takes it out of the check (a paused
    connection does not poll), and its next whole poll makes it healthy again."""
    stores = web.runtime.stores
    stores.activity.heartbeat("w1@host", time.time(), 30)
    stores.redis.set(stores.keys.beat_lock, "token", ex=30)
    (beta,) = fleet.add(1)
    (acme,) = fleet.add(1, polled_ago=1_000, prefix="acme")  # its polls stopped 1,000 s ago
    (gamma,) = fleet.add(1, polled_ago=2_000, prefix="gamma")
    fleet.watched_since(3_600)  # the tick has been watching them for an hour
    fleet.tick()
    deployment = web.get("/healthz")
    assert deployment.status_code == 200 and deployment.json()["stale_connections"] == 2
    r = web.get("/healthz/connections")
    assert r.status_code == 503
    body = r.json()
    assert (body["healthy"], body["beat"], body["workers"]) == (False, "ok", 1)
    assert body["polls"] == "2 active connection(s) with no whole poll in time"
    assert body["stale_connections"] == 2
    assert [s["connection"] for s in body["stale"]] == [gamma, acme]  # most overdue first
    stale = body["stale"][1]
    assert stale["allowed_seconds"] == 900.0 and 990 < stale["polled_seconds_ago"] < 1_100
    assert stale["why"].startswith("no whole poll of both systems for ")
    samples = _fleet_samples(web)
    assert samples[("bridge_fleet_stale_connections", ())] == 2
    named = ("bridge_fleet_stale_connection_poll_age_seconds", (("connection", acme),))
    assert 990 < samples[named] < 1_100
    assert 1_990 < samples[("bridge_fleet_worst_poll_age_seconds", ())] < 2_100
    # The port is public: a client /metrics would refuse learns how many, not which.
    app = create_app(web.runtime.settings, web.runtime, web.sent)
    outside = TestClient(app, client=("203.0.113.9", 50000)).get("/healthz/connections")
    assert outside.status_code == 503 and outside.json()["stale_connections"] == 2
    assert "stale" not in outside.json() and acme not in outside.text

    ConnectionRegistry(stores.redis, SecretBox(()), keys=fleet.keys).pause(gamma, "billing")
    fleet.tick()
    body = web.get("/healthz/connections").json()
    assert [s["connection"] for s in body["stale"]] == [acme]
    samples = _fleet_samples(web)
    assert samples[("bridge_fleet_connections", (("status", "paused"),))] == 1
    assert ("bridge_fleet_stale_connection_poll_age_seconds", (("connection", gamma),)) not in (
        samples
    )

    fleet.polled([acme], time.time())  # its polls run again
    fleet.tick()
    r = web.get("/healthz/connections")
    assert r.status_code == 200
    assert (r.json()["polls"], r.json()["stale"]) == ("ok (3 connection(s) watched)", [])
    samples = _fleet_samples(web)
    assert samples[("bridge_fleet_stale_connections", ())] == 0
    assert samples[("bridge_fleet_worst_poll_age_seconds", ())] < 100
    assert beta in {dict(labels).get("connection") for _, labels in samples}


def test_metrics_are_prometheus_text_with_every_family(web):
    post(web, documented())
    post(web, documented())
    text = _scrape(web).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("bridge_links", ())] == 0
    assert samples[("bridge_dead_letters", ())] == 0
    assert samples[("bridge_pending_mappings", ())] == 0
    assert samples[("bridge_budget_limit", (("api", "servicem8"), ("window", "minute")))] == 180
    assert samples[("bridge_budget_limit", (("api", "servicem8"), ("window", "day")))] == 20_000
    assert ("bridge_budget_used", (("api", "servicem8"), ("window", "day"))) in samples
    assert (
        samples[("bridge_webhooks_total", (("result", "enqueued"), ("source", "servicem8")))] == 1
    )
    assert (
        samples[("bridge_webhooks_total", (("result", "duplicate"), ("source", "servicem8")))] == 1
    )
    assert samples[("bridge_api_paused", (("api", "servicem8"),))] == 0
    assert TOKEN not in text


# --- who may read /metrics (bridge/web/metrics.py): the receiver's port is public -----------------
METRICS_TOKEN = "mtk-test-5e1f0a9c3d7b"
LOOPBACK = ("127.0.0.1", 50000)


def _scrape(web, client=LOOPBACK, authorization: str | None = None, metrics_token=None):
    """GET /metrics from ``client`` (host, port), on an app over the fixture's runtime with
    ``METRICS_TOKEN`` set to ``metrics_token`` (None: unset)."""
    from pydantic import SecretStr

    token = SecretStr(metrics_token) if metrics_token is not None else None
    settings = web.runtime.settings.model_copy(update={"metrics_token": token})
    app = create_app(settings, web.runtime, web.sent)
    headers = {"authorization": authorization} if authorization is not None else {}
    return TestClient(app, client=client).get("/metrics", headers=headers)


@pytest.mark.parametrize("client", [LOOPBACK, ("10.1.2.3", 1234), ("::1", 1234)])
def test_with_metrics_token_a_scrape_needs_it_as_its_bearer_token(web, client):
    """Set, the token is asked of every client, loopback ones too; wrong or missing is 401."""
    refused = [None, "", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {METRICS_TOKEN[:-1]}",
               f"Bearer {METRICS_TOKEN}x", METRICS_TOKEN, f"Basic {METRICS_TOKEN}"]  # fmt: skip
    for authorization in refused:
        r = _scrape(web, client, authorization, metrics_token=METRICS_TOKEN)
        assert r.status_code == 401, authorization
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "METRICS_TOKEN" in r.text and "bridge_links" not in r.text
        assert METRICS_TOKEN not in r.text
    for authorization in (f"Bearer {METRICS_TOKEN}", f"bearer {METRICS_TOKEN}"):
        r = _scrape(web, client, authorization, metrics_token=METRICS_TOKEN)
        assert r.status_code == 200 and "bridge_links" in r.text


@pytest.mark.parametrize(
    ("client", "answered"),
    [
        (LOOPBACK, True),
        (("127.8.9.10", 1234), True),
        (("::1", 1234), True),
        (("::ffff:127.0.0.1", 1234), True),  # IPv4 loopback on a dual-stack socket
        (("10.1.2.3", 1234), False),
        (("172.18.0.5", 1234), False),  # another container on the compose network (Prometheus)
        (("2001:db8::1", 1234), False),
        (("::ffff:10.1.2.3", 1234), False),
        (("testclient", 50000), False),  # a host that is no address
    ],
)
def test_without_metrics_token_only_loopback_clients_are_answered(web, client, answered):
    r = _scrape(web, client)
    if answered:
        assert r.status_code == 200 and "bridge_links" in r.text
    else:
        assert r.status_code == 403
        assert "METRICS_TOKEN" in r.text and len(r.text.strip().splitlines()) == 1
        assert "bridge_links" not in r.text
    # An empty METRICS_TOKEN is no token: it would let an empty bearer token in.
    assert _scrape(web, client, "Bearer ", metrics_token="").status_code == r.status_code


def test_the_metrics_token_is_a_secret_of_the_log_redactor(web):
    from pydantic import SecretStr

    settings = web.runtime.settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)})
    assert METRICS_TOKEN in settings.secret_values()
    assert METRICS_TOKEN not in repr(settings)


def test_a_registry_connection_receives_on_its_own_token(web, redis_client):
    """Each registry connection's callback URLs carry a token derived from WEBHOOK_TOKEN and its
    id; a delivery there is that connection's (its own store, its tasks named by it), a paused
    one's is dropped, and a token of no connection is 401."""
    from pydantic import SecretStr

    from bridge.connections import ConnectionRegistry, ConnectionSecrets, SecretBox, new_key
    from bridge.connections.models import Connection, connection_webhook_token
    from bridge.store import Stores
    from bridge.store.keys import FleetKeys

    settings = web.runtime.settings
    keys = FleetKeys.for_deployment(settings.bridge_connection_id)
    registry = ConnectionRegistry(redis_client, SecretBox([new_key()]), keys=keys)
    secrets = ConnectionSecrets(servicem8_api_key=SecretStr("k-1234"),
                                coredination_api_key=SecretStr("c-1234"))  # fmt: skip
    for connection in ("north", "south"):
        registry.add(Connection(id=f"{settings.bridge_connection_id}-{connection}"), secrets)
    north = f"{settings.bridge_connection_id}-north"
    south = f"{settings.bridge_connection_id}-south"
    try:
        token = connection_webhook_token(TOKEN, north)
        sent_before = list(web.sent)
        lane = f"b:{settings.bridge_connection_id}:celery:bridge.{settings.bridge_connection_id}"
        r = post(web, documented(), token=token)
        assert r.status_code == 200 and r.json()["enqueued"] == 1
        assert web.sent == sent_before  # not the deployment's own sender
        queued = [json.loads(m) for m in redis_client.lrange(f"{lane}.interactive", 0, -1)]
        assert [m["headers"]["kwargsrepr"] for m in queued] == [repr({"connection": north})]
        assert Stores.connect(redis_client, north).activity.stats()["webhook.servicem8.enqueued"]
        # A paused connection's deliveries are answered and dropped; a made-up token is 401.
        registry.pause(south, "billing")
        from bridge.connections import fleet

        fleet.REFRESH_SECONDS, saved = 0.0, fleet.REFRESH_SECONDS
        try:
            r = post(web, documented(), token=connection_webhook_token(TOKEN, south))
        finally:
            fleet.REFRESH_SECONDS = saved
        assert r.status_code == 200 and r.json()["ignored"] == ["connection not active"]
        assert post(web, documented(), token=connection_webhook_token(TOKEN, "nobody")
                    ).status_code == 401  # fmt: skip
        assert post(web, documented(), token=token[:-1]).status_code == 401
    finally:
        for connection in (north, south):
            Stores.connect(redis_client, connection).wipe()
        redis_client.delete(keys.connections, keys.secrets, keys.waiting)
        for key in redis_client.scan_iter(f"b:{settings.bridge_connection_id}:celery:*"):
            redis_client.delete(key)
