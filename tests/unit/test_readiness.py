"""What ``sm8cd doctor`` makes of what it reads, table by table: Redis's durability (a managed
Redis that refuses CONFIG or INFO included), the receiver's answer to the challenge, the probe's
readings, and the staff each match leaves without a user (with the nearest e-mail)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import requests
from redis.exceptions import ResponseError

from bridge.config import Settings
from bridge.ops.readiness import receiver_line, redis_durability
from bridge.probe.readings import reading_lines
from bridge.store import StaffMap
from bridge.store.durability import Durability, durability
from bridge.sync.staff import Person, nearest_email, staff_outcome


@pytest.mark.parametrize(
    ("found", "level", "said"),
    [
        (Durability(aof=True, snapshots=False, role="master", replicas=0), "ok", "append-only"),
        (Durability(aof=False, snapshots=False, role="master", replicas=2), "ok", "2 replica"),
        (Durability(aof=False, snapshots=None, role="slave", replicas=0), "ok", "a replica"),
        (Durability(aof=False, snapshots=True, role="master", replicas=0), "warn", "snapshots"),
        (
            Durability(
                aof=False, snapshots=None, role="master", replicas=0, refused=("CONFIG GET",)
            ),
            "warn",
            "CONFIG refused",
        ),
        (
            Durability(
                aof=None,
                snapshots=None,
                role=None,
                replicas=None,
                refused=("INFO persistence", "INFO replication", "CONFIG GET"),
            ),
            "warn",
            "cannot tell",
        ),
        (Durability(aof=False, snapshots=False, role="master", replicas=0), "fail", "none"),
    ],
)
def test_redis_durability_reads_as_the_table_says(found, level, said):
    line = redis_durability(found)
    assert (line.level, said in line.detail) == (level, True), line
    assert line.level == "ok" or "appendonly yes" in line.todo


class ManagedRedis:
    """A managed Redis: INFO answers, CONFIG is refused (renamed away)."""

    def __init__(self, **info: dict[str, Any]) -> None:
        self.answers = info

    def info(self, section: str) -> dict[str, Any]:
        return self.answers[section]

    def config_get(self, name: str) -> dict[str, Any]:
        raise ResponseError("unknown command 'CONFIG'")


def test_a_managed_redis_that_refuses_config_is_read_from_info():
    found = durability(
        ManagedRedis(
            persistence={"aof_enabled": 0}, replication={"role": "master", "connected_slaves": 1}
        )
    )
    assert found == Durability(
        aof=False, snapshots=None, role="master", replicas=1, refused=("CONFIG GET",)
    )
    assert redis_durability(found).level == "ok"


def test_a_redis_that_refuses_info_too_is_no_error():
    found = durability(fakeredis.FakeRedis())  # knows neither INFO nor CONFIG
    assert found.aof is None and "INFO persistence" in found.refused
    assert redis_durability(found).level == "warn"


# --- the receiver: ServiceM8's challenge, posted to the public URL ----------------------------
class Answer:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text = status, text


def _settings(**extra: Any) -> Settings:
    return Settings(
        servicem8_api_key="k",
        coredination_api_key="k",
        _env_file=None,
        webhook_token="tok-1234567890",
        **extra,
    )


def test_the_receiver_must_echo_the_challenge_sent_to_its_public_url():
    posted = {}

    def echo(url: str, data: dict[str, str], timeout: Any) -> Answer:
        posted.update(url=url, **data)
        return Answer(200, data["challenge"])

    line = receiver_line(_settings(webhook_public_url="https://hooks.example"), post=echo)
    assert line.level == "ok" and "tok-1234567890" not in line.detail
    assert posted["url"] == "https://hooks.example/webhooks/servicem8/tok-1234567890"
    assert posted["mode"] == "subscribe" and len(posted["challenge"]) >= 16


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (Answer(401, "no"), "another WEBHOOK_TOKEN"),
        (Answer(200, "hello"), "without the challenge"),
        (Answer(404, "nope"), "answered 404"),
    ],
)
def test_a_receiver_that_answers_otherwise_fails_with_what_to_do(answer, said):
    line = receiver_line(
        _settings(webhook_public_url="https://hooks.example"), post=lambda *a, **k: answer
    )
    assert line.level == "fail" and said in line.detail and line.todo


def test_no_answer_at_all_fails_and_without_a_public_url_it_only_warns():
    def down(*args: Any, **kwargs: Any) -> Answer:
        raise requests.ConnectionError("refused")

    line = receiver_line(_settings(webhook_public_url="https://hooks.example"), post=down)
    assert line.level == "fail" and "no answer" in line.detail and "WEBHOOK_PUBLIC_URL" in line.todo
    assert receiver_line(_settings(), post=down).level == "warn"


# --- the probe's readings -------------------------------------------------------------------
def _probe(writes: bool, **readings: tuple[str, str, Any]) -> dict[str, Any]:
    findings = [{"system": s, "name": n, "reading": r} for s, n, r in readings.values()]
    return {"writes": writes, "probed_at": 1000.0, "findings": findings, "left_behind": []}


def test_no_probe_is_a_warning_that_says_how_to_run_one():
    (line,) = reading_lines(None, 2000.0)
    assert line.level == "warn" and "sm8cd probe" in line.todo


def test_a_server_made_record_uuid_fails_and_a_missing_users_list_warns():
    lines = reading_lines(
        _probe(
            True,
            a=("servicem8", "record_uuid_header", "server"),
            b=("coredination", "users_endpoint", False),
            c=("servicem8", "allocation_webhooks", False),
        ),
        2000.0,
    )
    levels = {line.what: line.level for line in lines}
    assert levels == {
        "probe": "ok",
        "probe record_uuid_header": "fail",
        "probe users_endpoint": "warn",
        "probe allocation_webhooks": "ok",
    }
    assert "sm8cd staff link" in next(x for x in lines if x.what == "probe users_endpoint").todo


def test_a_read_only_probe_leaves_the_uuid_question_open_and_says_so():
    lines = reading_lines(_probe(False, a=("servicem8", "record_uuid_header", None)), 2000.0)
    assert [(x.what, x.level) for x in lines] == [
        ("probe", "warn"),
        ("probe record_uuid_header", "warn"),
    ]
    assert all("--writes" in x.todo for x in lines)


# --- staff: the nearest e-mail, and who a match leaves without a user ------------------------
@pytest.mark.parametrize(
    ("email", "others", "nearest"),
    [
        ("jo.smith@acme.com", ["jo.smyth@acme.com", "ann@acme.com"], "jo.smyth@acme.com"),
        ("jo@acme.com", ["jo@acme.com.au", "bo@other.org"], "jo@acme.com.au"),
        ("jsmith@acme.com", ["john.smith@acme.com"], "john.smith@acme.com"),
        ("anna@acme.com", ["ben@acme.com", "carl@acme.com"], None),  # one domain is no likeness
        ("", ["a@b.c"], None),
    ],
)
def test_the_nearest_email_is_named_only_when_it_is_a_likely_typo(email, others, nearest):
    assert nearest_email(email, others) == nearest


def _people(*rows: tuple[str, str | None, bool]) -> list[Person]:
    return [Person(i, f"name {i}", e, a) for i, e, a in rows]


def test_staff_outcome_counts_each_active_member_once_and_says_why_the_rest_have_no_user():
    staff = _people(
        ("s1", "A@x.com", True),
        ("s2", "b@x.com", True),
        ("s3", None, True),
        ("s4", "dup@x.com", True),
        ("s5", "jon@x.com", True),
        ("s6", "old@x.com", False),
        ("s7", "e@x.com", True),
    )
    users = _people(
        ("1", "a@x.com", True),
        ("2", "dup@x.com", True),
        ("3", "dup@x.com", True),
        ("4", "john@x.com", True),
        ("5", "e@x.com", True),
    )
    current = StaffMap({"s2": 9}, {9: "s2"}, frozenset({"s2", "s7"}))  # s2 by hand, s7 unlinked
    outcome = staff_outcome(staff, users, current)
    assert (outcome.by_email, outcome.by_hand, outcome.unlinked_by_hand) == (1, 1, 1)
    why = {u.member.id: (u.why, u.nearest.id if u.nearest else None) for u in outcome.unmatched}
    assert why == {
        "s3": ("has no e-mail in ServiceM8", None),
        "s4": ("2 Coredination users share this e-mail (never guessed)", None),
        "s5": ("no active Coredination user has this e-mail", "4"),
    }


def test_webhooks_refused_to_the_app_are_a_warning_and_unsettled_questions_are_left_to_the_probe():
    lines = reading_lines(
        _probe(
            True,
            a=("servicem8", "api_key_subscriptions", None),
            b=("servicem8", "allocation_webhooks", None),
            c=("servicem8", "day_reset", None),
        ),
        2000.0,
    )
    assert [(x.what, x.level) for x in lines] == [
        ("probe", "ok"),
        ("probe api_key_subscriptions", "warn"),
    ]
    assert lines[1].detail.startswith("ServiceM8 refused this app's webhooks")
