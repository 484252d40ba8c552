"""Every CoredinationClient method against the simulator over loopback."""

from __future__ import annotations

import json
import uuid as uuidlib
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from bridge.coredination import CoredinationClient
from bridge.errors import AuthError, NotFound, Rejected
from mappings.jobfields import job_body

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def users(cd_sim):
    return [
        cd_sim.add_user("ava@example.com", "Ava", "Nguyen"),
        cd_sim.add_user("ben@example.com", "Ben", "Okafor"),
    ]


def jobs(cd: CoredinationClient, *args, **filters):
    return list(cd.iter_jobs(*args, **filters))


def test_users(cd: CoredinationClient, users):
    listed = cd.list_users(page_size=1)
    assert [(u.id, u.email, u.display_name) for u in listed] == [
        (users[0]["id"], "ava@example.com", "Ava Nguyen"),
        (users[1]["id"], "ben@example.com", "Ben Okafor"),
    ]


def test_upsert_is_idempotent_and_get_by_id_or_uuid(cd: CoredinationClient, cd_sim):
    uuid = str(uuidlib.uuid4())
    body = job_body(
        title="Hot water unit",
        description="Replace",
        start=T0,
        end=T0.replace(hour=10),
        place_name="1 George St, Sydney",
    )
    first = cd.upsert_job(uuid, body)
    second = cd.upsert_job(uuid, {**body, "title": "Hot water unit (urgent)"})
    assert first.id == second.id and len(cd_sim.jobs) == 1
    by_id, by_uuid = cd.get_job(first.id), cd.get_job(uuid)
    assert by_id.uuid == by_uuid.uuid == uuid
    assert by_uuid.title == "Hot water unit (urgent)"
    assert by_uuid.start_time == T0
    assert by_uuid.destinations[0].location.place_name == "1 George St, Sydney"
    assert [e.type for e in by_uuid.events] == ["CREATE", "UPDATE"]


def test_resource_operations_record_events(cd: CoredinationClient, cd_sim, users):
    cd_sim.set_dialect(unassign=True)  # where it is missing: test_coredination_dialects.py
    uuid = str(uuidlib.uuid4())
    cd.upsert_job(uuid, job_body(title="t", description=None, start=T0, end=None))
    ava, ben = users
    cd.resource_op("schedule", uuid, ava["id"], send_message=True)
    cd.resource_op("assign", uuid, ben["uuid"])
    job = cd.get_job(uuid)
    assert {r.user_id: r.state for r in job.resources} == {
        ava["id"]: "SCHEDULED",
        ben["id"]: "ASSIGNED",
    }
    assert job.state == "SCHEDULED"
    cd.resource_op("unschedule", uuid, ava["id"])
    cd.resource_op("unassign", uuid, ben["id"])
    events = cd.get_job(uuid).events or []
    assert [(e.type, e.to_user_id) for e in events if e.to_user_id] == [
        ("SCHEDULE", ava["id"]),
        ("ASSIGN", ben["id"]),
        ("UNSCHEDULE", ava["id"]),
        ("UNASSIGN", ben["id"]),
    ]
    assert cd.get_job(uuid).resources == []


def test_resource_op_for_unknown_user_is_not_found(cd: CoredinationClient):
    uuid = str(uuidlib.uuid4())
    cd.upsert_job(uuid, {"title": "t"})
    with pytest.raises(NotFound):
        cd.resource_op("schedule", uuid, 99)


def test_flags_are_sent_bare(cd: CoredinationClient, cd_sim, users):
    seen: list[str] = []
    original = cd.transport.session.request

    def spy(method, url, **kw):
        seen.append(url)
        return original(method, url, **kw)

    cd.transport.session.request = spy
    job = cd.upsert_job(str(uuidlib.uuid4()), {"title": "t"})
    cd.resource_op("schedule", job.id, users[0]["id"], send_message=True)
    list(cd.iter_jobs(untimed=True, current=True))
    assert seen[1].endswith("&sendMessage")
    assert "?untimed&current" in seen[2] or seen[2].endswith("&untimed&current")


def test_lists_default_filter_untimed_states_modified_and_paging(
    cd: CoredinationClient, cd_sim, users
):
    now = datetime.fromtimestamp(cd_sim.now(), UTC)
    future = now.replace(microsecond=0).timestamp() * 1000 + 86_400_000
    timed = cd.upsert_job(str(uuidlib.uuid4()), {"title": "timed", "startTime": int(future)})
    untimed = cd.upsert_job(str(uuidlib.uuid4()), {"title": "untimed"})
    past = cd.upsert_job(str(uuidlib.uuid4()), {"title": "past", "startTime": 1_000_000})
    cd.resource_op("schedule", past.id, users[0]["id"])
    cd_sim.user_action(str(past.id), str(users[0]["id"]), "FINISHED")

    assert [j.title for j in jobs(cd)] == ["timed"]  # upcoming, timed, not finished
    assert {j.title for j in jobs(cd, untimed=True)} == {"timed", "untimed"}
    assert jobs(cd, "unassigned", untimed=True, from_=0)[0].title in {"timed", "untimed"}
    assert [j.title for j in jobs(cd, "user", users[0]["id"], from_=0, states="FINISHED")] == [
        "past"
    ]
    everything = list(cd.iter_changed_jobs(0, page_size=2))
    assert {j.title for j in everything} == {"timed", "untimed", "past"}
    assert all(j.events is None for j in everything)  # list items carry no events

    later = cd_sim.now_ms() + 1
    cd_sim._base_clock = lambda: (later + 5000) / 1000
    cd.upsert_job(untimed.uuid, {"title": "untimed, renamed"})
    changed = list(cd.iter_changed_jobs(later))
    assert [j.uuid for j in changed] == [untimed.uuid]
    assert timed.uuid not in [j.uuid for j in changed]


def test_list_paths_need_the_right_ref(cd: CoredinationClient):
    with pytest.raises(ValueError):
        jobs(cd, "user")
    with pytest.raises(ValueError):
        jobs(cd, "nope")


def test_invalid_job_body_is_rejected(cd: CoredinationClient):
    with pytest.raises(Rejected):
        cd.upsert_job(str(uuidlib.uuid4()), {"startTime": [1, 2]})


def test_bad_key_is_an_auth_error(settings):
    client = CoredinationClient.from_settings(
        settings.model_copy(update={"coredination_api_key": SecretStr("wrong")})
    )
    with pytest.raises(AuthError):
        client.list_users()


def test_webhook_subscription_and_delivery(cd: CoredinationClient, cd_sim, users, receiver):
    hook = cd.subscribe_webhook(receiver.url, ["job"], "SCHEDULE|UNSCHEDULE")
    assert [h["id"] for h in cd.list_webhooks()] == [hook["id"]]
    uuid = str(uuidlib.uuid4())
    cd.upsert_job(uuid, {"title": "t"})
    cd.resource_op("schedule", uuid, users[0]["id"])
    body = json.loads(receiver.wait(1)[0]["body"])
    assert (body["type"], body["jobUuid"], body["event"]["toUserId"]) == (
        "SCHEDULE",
        uuid,
        users[0]["id"],
    )
    assert len(receiver.posts) == 1  # CREATE and UPDATE were filtered out
    cd.delete_webhook(hook["id"])
    assert cd.list_webhooks() == []


def test_every_documented_list_path(cd: CoredinationClient, cd_sim, users):
    tagged = cd.upsert_job(str(uuidlib.uuid4()), {"title": "tagged", "customerId": 7,
                           "projectId": 8, "orderId": 9, "assetId": 10,
                           "startTime": 4_102_444_800_000})  # fmt: skip
    cd.upsert_job(str(uuidlib.uuid4()), {"title": "other", "startTime": 4_102_444_800_000})
    for kind, ref in (("customer", 7), ("project", 8), ("order", 9), ("asset", 10)):
        assert [j.id for j in jobs(cd, kind, ref)] == [tagged.id], kind
    assert {j.title for j in jobs(cd, "all")} == {"tagged", "other"}
    assert {j.title for j in jobs(cd, "unassigned")} == {"tagged", "other"}
    with pytest.raises(Rejected):  # /mine needs a user token; the bridge sends only an API key
        jobs(cd, "mine")
