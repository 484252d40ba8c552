"""The operator console over HTTP (FastAPI's test client): off unless configured, every page
behind a sign-in, every form behind its token, actions through the commands' own code, and a
fixed number of Redis commands per page whatever the account's size."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from bridge.store.keys import FleetKeys
from tests.sync.conftest import _web

PASSWORD = "console-pass-3b9d1f"
JOB = "1d2c3b4a-0000-4000-8000-00000000a001"
STAFF = "5e6f7a8b-0000-4000-8000-00000000b001"


@pytest.fixture
def console(redis_url: str) -> Iterator[Any]:
    for web in _web(redis_url, console_password=PASSWORD):
        web.follow_redirects = False
        yield web
        deployment = FleetKeys.for_deployment(web.runtime.lanes)
        web.runtime.redis.delete(deployment.console_key, deployment.connections)


def _signed_in(web: TestClient) -> TestClient:
    page = web.get("/console/sign-in")
    token = re.search(r'name="token" value="([^"]+)"', page.text)[1]
    answer = web.post(
        "/console/sign-in",
        data={"user": "operator", "password": PASSWORD, "token": token, "next": "/console"},
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    return web


def _token(page: Any) -> str:
    return re.search(r'name="token" value="([^"]+)"', page.text)[1]


def _seed(web: Any, n: int = 1) -> None:
    stores = web.runtime.stores
    stores.staff.save_directory("staff", {STAFF: {"name": "Ava Kim", "email": "ava@example.com"}})
    stores.staff.save_directory("users", {"41": {"name": "Ava K", "email": "ava@example.net"}})
    for i in range(n):
        job = JOB[:-4] + f"{i:04d}"
        stores.parked.set_pending(job, STAFF, "staff member has no Coredination user")
        stores.work.park_failed_job(job, 1, "refused (400)", f"{i}-0", time.time())
        stores.scope.exclude(job, "operator", time.time())
        stores.work.dead_letter({"task": "bridge.sync_job", "args": [job], "reason": "refused"},
                                cause=f"cause-{i}")  # fmt: skip


def test_the_console_is_off_without_a_password(web):
    answer = web.get("/console")
    assert answer.status_code == 404 and "CONSOLE_PASSWORD" in answer.text


def test_without_a_session_pages_redirect_and_actions_are_401(console):
    cid = console.runtime.connection
    for path in ("/console", f"/console/c/{cid}", f"/console/c/{cid}/job?ref=1"):
        answer = console.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/sign-in?next=")
    answer = console.post(f"/console/c/{cid}/staff/link", data={"staff": STAFF, "user": "41"})
    assert answer.status_code == 401
    assert console.runtime.stores.staff.staff_map().s2u == {}


def test_a_wrong_password_is_refused_and_a_client_is_held_after_ten(console):
    for _ in range(10):
        token = _token(console.get("/console/sign-in"))
        answer = console.post("/console/sign-in", data={"user": "operator", "password": "nope",
                                                        "token": token})  # fmt: skip
        assert answer.status_code == 303 and "failed=1" in answer.headers["location"]
    token = _token(console.get("/console/sign-in"))
    answer = console.post("/console/sign-in", data={"user": "operator", "password": PASSWORD,
                                                    "token": token})  # fmt: skip
    assert answer.status_code == 429
    console.runtime.redis.delete(
        FleetKeys.for_deployment(console.runtime.lanes).console_fails("127.0.0.1")
    )


def test_a_sign_in_without_its_form_token_is_refused(console):
    answer = console.post("/console/sign-in", data={"user": "operator", "password": PASSWORD})
    assert answer.status_code == 403
    assert "sm8cd_console" not in answer.cookies


def test_a_form_posted_without_its_token_is_refused_and_changes_nothing(console):
    _seed(console)
    web, cid = _signed_in(console), console.runtime.connection
    for data in ({"staff": STAFF, "user": "41"}, {"staff": STAFF, "user": "41", "token": "x"}):
        answer = web.post(f"/console/c/{cid}/staff/link", data=data)
        assert answer.status_code == 403
    assert console.runtime.stores.staff.staff_map().s2u == {}


def test_linking_a_pending_person_is_what_staff_link_does(console):
    _seed(console)
    web, cid = _signed_in(console), console.runtime.connection
    page = web.get(f"/console/c/{cid}")
    assert page.status_code == 200
    assert "Ava Kim" in page.text and "Ava K (41)" in page.text
    answer = web.post(f"/console/c/{cid}/staff/link",
                      data={"staff": STAFF, "user": "41", "token": _token(page)})  # fmt: skip
    assert answer.status_code == 303 and "linked" in answer.headers["location"]
    stores = console.runtime.stores
    assert stores.staff.staff_map().s2u == {STAFF: 41}
    assert STAFF in stores.staff.staff_map().manual
    assert stores.jobs.dirty_count() == 1  # the job it parked syncs again
    assert "Staff waiting for a link (0)" in web.get(f"/console/c/{cid}").text


def test_a_dead_letter_is_dropped_from_its_row(console):
    _seed(console)
    web, cid = _signed_in(console), console.runtime.connection
    page = web.get(f"/console/c/{cid}")
    entry = console.runtime.stores.work.dead_letters()[0][0]
    assert entry in page.text
    answer = web.post(f"/console/c/{cid}/dlq/drop", data={"entry": entry, "token": _token(page)})
    assert answer.status_code == 303 and "dropped" in answer.headers["location"]
    assert console.runtime.stores.work.dead_letters() == []
    gone = web.post(f"/console/c/{cid}/dlq/drop", data={"entry": entry, "token": _token(page)})
    assert "no%20dead%20letter" in gone.headers["location"]


def test_the_fleet_and_a_job_page_show_what_the_commands_show(console):
    web, cid = _signed_in(console), console.runtime.connection
    fleet = web.get("/console")
    assert fleet.status_code == 200 and f">{cid}</a>" in fleet.text
    assert fleet.headers["content-security-policy"].startswith("default-src 'none'")
    job = web.get(f"/console/c/{cid}/job", params={"ref": JOB})
    assert job.status_code == 200 and "Unknown: the bridge has not seen this job" in job.text
    assert web.get("/console/c/nope").status_code == 404
    said = web.get(f"/console/c/{cid}", params={"said": "<script>alert(1)</script>"}).text
    assert "<script>" not in said and "&lt;script&gt;alert(1)&lt;/script&gt;" in said
    off_site = web.get("/console/sign-in", params={"next": "https://evil.example/console"})
    assert 'value="/console"' in off_site.text and "evil" not in off_site.text


def test_a_job_deleted_in_coredination_is_parked_in_its_story(console):
    """Its own park (``cd-deleted``, not a person's) is read with the people's, in one command."""
    from datetime import UTC

    from bridge.ops.explain import tell
    from bridge.sync.context import CD_DELETED
    from mappings.scope import Scope

    stores = console.runtime.stores
    stores.parked.set_pending(JOB, CD_DELETED, "deleted in Coredination: waits for the office")
    story = tell(stores, JOB, scope=Scope(), tz=UTC)
    assert story.parked[CD_DELETED]["reason"] == "deleted in Coredination: waits for the office"
    assert any(
        line.startswith("parked cd-deleted: deleted in Coredination") for line in story.now()
    )


class Counting:
    """Redis commands sent, a pipeline's each counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        execute_command, execute = redis.Redis.execute_command, redis.client.Pipeline.execute

        def one(client: Any, *args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return execute_command(client, *args, **kwargs)

        def many(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            self.n += len(pipe.command_stack)
            return execute(pipe, *args, **kwargs)

        monkeypatch.setattr(redis.Redis, "execute_command", one)
        monkeypatch.setattr(redis.client.Pipeline, "execute", many)


def test_a_connection_page_costs_the_same_redis_commands_for_one_or_2000_of_everything(
    console, monkeypatch
):
    web, cid = _signed_in(console), console.runtime.connection
    web.get(f"/console/c/{cid}")  # the registry entry and the signing key, made once
    counting = Counting(monkeypatch)
    costs = []
    for n in (1, 2_000):
        console.runtime.stores.wipe()
        _seed(console, n)
        counting.n = 0
        page = web.get(f"/console/c/{cid}")
        costs.append(counting.n)
        assert page.status_code == 200 and f"Parked pairs ({n})" in page.text
    assert costs[0] == costs[1], costs
    assert "… and 1950 more" in page.text
