"""The ServiceM8 simulator's subscription health and two of its dialect switches, over loopback:
each object subscription has a uuid, ``active`` and its last failure; the default list shows the
active ones and ``status=all`` every one; a re-post with the same ``unique_id`` reactivates; delete
by uuid; repeated failed deliveries deactivate (docs/servicem8-api.md#webhooks). Then JSON ``null``
for a date (``null_clears``) and when the day limit restarts (``day_reset``)."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from bridge.simulators.servicem8 import (
    EMPTY_STAMP,
    FIRST_READING,
    ServiceM8Dialect,
    ServiceM8Simulator,
)
from tests.conftest import SM8_KEY, Receiver

ROW_KEYS = {"uuid", "object", "fields", "callback_url", "unique_id", "active",
            "last_failure_reason", "last_failure_at"}  # fmt: skip
# 12:00 UTC on a June day: 22:00 in Sydney (UTC+10, no daylight saving in June), 08:00 in New York.
NOON_UTC = datetime(2025, 6, 10, 12, 0, tzinfo=UTC).timestamp()
HOUR = 3600.0


class Clock:
    def __init__(self, now: float) -> None:
        self.t = now

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def hook(receiver: Receiver) -> Receiver:
    """The shared loopback callback (tests/conftest.py), by the name these tests give it."""
    return receiver


@pytest.fixture
def clock() -> Clock:
    return Clock(NOON_UTC)


@pytest.fixture
def sim(clock: Clock) -> Iterator[ServiceM8Simulator]:
    """A simulator on a clock the test moves, so stamps and midnights are known."""
    s = ServiceM8Simulator(api_keys=(SM8_KEY,), seed=7, clock=clock).start()
    yield s
    s.stop()


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the simulator")
        time.sleep(0.01)


def call(sim: ServiceM8Simulator, method: str, path: str, **kw: Any) -> requests.Response:
    return requests.request(
        method, f"{sim.root_url}/{path}", headers={"X-Api-Key": SM8_KEY}, timeout=5, **kw
    )


def subscribe(
    sim: ServiceM8Simulator, url: str, obj: str = "job", fields: str = "", unique_id: str = ""
) -> requests.Response:
    form = {"object": obj, "fields": fields, "callback_url": url}
    if unique_id:
        form["unique_id"] = unique_id
    return call(sim, "POST", "webhook_subscriptions/object", data=form)


def listed(sim: ServiceM8Simulator, status: str | None = None) -> list[dict[str, Any]]:
    answer = call(sim, "GET", "webhook_subscriptions", params={"status": status} if status else {})
    assert answer.status_code == 200
    rows: list[dict[str, Any]] = answer.json()
    return rows


def deliver(sim: ServiceM8Simulator, times: int = 1) -> None:
    """Change ``times`` jobs, one webhook each, and wait until every delivery has settled."""
    for i in range(times):
        made = call(sim, "POST", "api_1.0/job.json", json={"status": "Quote", "job_address": i})
        assert made.status_code == 200
    wait_for(lambda: sim.deliverer.pending() == 0)


def only(rows: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(rows) == 1, rows
    return rows[0]


# --- the list, create-or-update and delete -----------------------------------------------------


def test_a_subscription_lists_with_its_uuid_active_and_no_failure(sim, hook):
    made = subscribe(sim, hook.url, fields="status", unique_id="bridge-a-job")
    assert (made.status_code, made.json()) == (200, {"success": True})
    row = only(listed(sim))
    assert set(row) == ROW_KEYS
    assert str(uuidlib.UUID(row["uuid"])) == row["uuid"]
    assert (row["object"], row["fields"], row["callback_url"]) == ("job", "status", hook.url)
    assert (row["unique_id"], row["active"]) == ("bridge-a-job", 1)
    assert (row["last_failure_reason"], row["last_failure_at"]) == ("", EMPTY_STAMP)
    assert listed(sim, "all") == [row]


def test_the_default_list_shows_active_ones_and_status_all_every_one(sim, hook):
    subscribe(sim, hook.url, obj="job")
    subscribe(sim, hook.url, obj="jobactivity")
    hook.status = 503
    deliver(sim, 3)  # only the job subscription hears of jobs
    assert [r["object"] for r in listed(sim)] == ["jobactivity"]
    every = {r["object"]: r["active"] for r in listed(sim, "all")}
    assert every == {"job": 0, "jobactivity": 1}


def test_a_repost_with_the_same_unique_id_updates_the_one_and_reactivates_it(sim, hook, clock):
    subscribe(sim, hook.url, fields="status", unique_id="bridge-a-job")
    first = only(listed(sim))
    hook.status = 503
    clock.t += 90
    deliver(sim, 3)
    dead = only(listed(sim, "all"))
    assert (dead["active"], dead["last_failure_reason"]) == (0, "HTTP 503")
    assert dead["last_failure_at"] == "2025-06-10 22:01:30"  # Sydney time of the fake clock
    assert listed(sim) == []
    hook.status = 200
    assert subscribe(sim, hook.url, fields="job_address", unique_id="bridge-a-job").ok
    again = only(listed(sim))
    assert (again["uuid"], again["active"], again["fields"]) == (first["uuid"], 1, "job_address")
    assert again["last_failure_reason"] == "HTTP 503"  # kept as history through the reactivation
    seen = len(hook.posts)
    deliver(sim)
    assert len(hook.posts) == seen + 1  # delivering again
    assert sim.failures[first["uuid"]] == 0


def test_a_new_unique_id_on_another_object_is_a_second_subscription(sim, hook):
    subscribe(sim, hook.url, obj="job", unique_id="bridge-a-job")
    subscribe(sim, hook.url, obj="jobactivity", unique_id="bridge-a-jobactivity")
    subscribe(sim, hook.url, obj="job", fields="status", unique_id="bridge-a-job")
    rows = listed(sim)
    assert sorted((r["object"], r["fields"]) for r in rows) == [
        ("job", "status"),
        ("jobactivity", ""),
    ]
    assert len(sim.subscriptions) == 2


def test_without_a_unique_id_the_object_and_callback_are_the_key(sim, hook):
    subscribe(sim, hook.url, obj="job")
    uuid = only(listed(sim))["uuid"]
    subscribe(sim, hook.url, obj="job", fields="status")
    row = only(listed(sim))
    assert (row["uuid"], row["fields"]) == (uuid, "status")


def test_a_failed_handshake_leaves_a_deactivated_subscription_deactivated(sim, hook):
    subscribe(sim, hook.url, unique_id="bridge-a-job")
    hook.status = 503
    deliver(sim, 3)
    hook.challenge_ok = False
    refused = subscribe(sim, hook.url, unique_id="bridge-a-job")
    assert refused.status_code == 400
    assert "challenge" in refused.json()["message"]
    assert only(listed(sim, "all"))["active"] == 0


def test_delete_by_uuid_removes_that_one_and_an_unknown_uuid_is_a_404(sim, hook):
    subscribe(sim, hook.url, obj="job")
    subscribe(sim, hook.url, obj="jobactivity")
    job = next(r for r in listed(sim) if r["object"] == "job")
    gone = call(sim, "DELETE", f"webhook_subscriptions/{job['uuid']}")
    assert (gone.status_code, gone.json()) == (200, {"success": True})
    assert [r["object"] for r in listed(sim, "all")] == ["jobactivity"]
    missing = call(sim, "DELETE", f"webhook_subscriptions/{uuidlib.uuid4()}")
    assert missing.status_code == 404 and missing.json()["message"] == "Subscription not found"
    again = call(sim, "DELETE", f"webhook_subscriptions/{job['uuid']}")
    assert again.status_code == 404


def test_delete_by_matching_fields_still_works_on_any_subscription(sim, hook):
    subscribe(sim, hook.url, obj="job")
    hook.status = 503
    deliver(sim, 3)
    form = {"object": "job", "callback_url": hook.url}
    assert call(sim, "DELETE", "webhook_subscriptions", data=form).status_code == 200
    assert sim.subscriptions == []
    assert call(sim, "DELETE", "webhook_subscriptions", data=form).status_code == 404


# --- failed deliveries -------------------------------------------------------------------------


def test_three_503s_in_a_row_deactivate_and_deliveries_stop(sim, hook):
    subscribe(sim, hook.url)
    hook.status = 503
    deliver(sim)
    row = only(listed(sim))  # one failure is recorded, and the subscription stays active
    assert (row["active"], row["last_failure_reason"]) == (1, "HTTP 503")
    assert row["last_failure_at"] == "2025-06-10 22:00:00"
    deliver(sim, 2)
    assert (only(listed(sim, "all"))["active"], sim.deactivated) == (0, 1)
    assert len(hook.posts) == 3
    hook.status = 200
    deliver(sim, 2)
    assert len(hook.posts) == 3  # an inactive subscription is sent nothing
    assert sim.deliverer.stats["rejected"] == 3


def test_a_success_between_failures_restarts_the_count(sim, hook):
    subscribe(sim, hook.url)
    hook.statuses.extend([503, 500, 200, 503, 502])
    deliver(sim, 5)
    row = only(listed(sim))
    assert (row["active"], row["last_failure_reason"]) == (1, "HTTP 502")
    hook.status = 404
    deliver(sim)
    assert only(listed(sim, "all"))["last_failure_reason"] == "HTTP 404"
    assert listed(sim) == [] and sim.deactivated == 1


def test_a_callback_nobody_listens_on_is_refused_connections_and_is_deactivated(sim, hook):
    subscribe(sim, hook.url)
    hook.close()
    deliver(sim, 3)
    row = only(listed(sim, "all"))
    assert (row["active"], row["last_failure_reason"]) == (0, "connection refused")
    assert sim.deliverer.stats["failed"] == 3


def test_a_callback_slower_than_the_delivery_timeout_fails_as_a_timeout(sim, hook):
    sim.set_dialect(deactivate_after_failures=1)
    sim.deliverer.timeout = 0.2
    subscribe(sim, hook.url)
    hook.delay = 0.6
    deliver(sim)
    row = only(listed(sim, "all"))
    assert (row["active"], row["last_failure_reason"]) == (0, "timeout")


def test_zero_failures_allowed_means_never_deactivated(sim, hook):
    sim.set_dialect(deactivate_after_failures=0)
    subscribe(sim, hook.url)
    hook.status = 500
    deliver(sim, 5)
    row = only(listed(sim))
    assert (row["active"], row["last_failure_reason"]) == (1, "HTTP 500")
    assert len(hook.posts) == 5 and sim.deactivated == 0


def test_dropped_deliveries_are_not_attempts_and_do_not_count(sim, hook):
    subscribe(sim, hook.url)
    hook.status = 503
    sim.deliverer.faults.drop_rate = 1.0
    deliver(sim, 4)
    assert sim.deliverer.stats["dropped"] == 4 and hook.posts == []
    row = only(listed(sim))
    assert (row["active"], row["last_failure_reason"]) == (1, "")


def test_a_deleted_subscriptions_late_outcome_is_ignored(sim, hook):
    subscribe(sim, hook.url)
    sim.deliverer.faults.paused = True
    hook.status = 503
    made = call(sim, "POST", "api_1.0/job.json", json={"status": "Quote"})
    assert made.status_code == 200 and sim.deliverer.pending() == 1
    uuid = only(listed(sim))["uuid"]
    assert call(sim, "DELETE", f"webhook_subscriptions/{uuid}").status_code == 200
    sim.deliverer.faults.paused = False
    wait_for(lambda: sim.deliverer.pending() == 0)
    assert sim.subscriptions == [] and uuid not in sim.failures
    assert sim.deliverer.stats["callback_errors"] == 0


def test_reset_clears_subscriptions_and_their_health(sim, hook):
    subscribe(sim, hook.url)
    hook.status = 503
    deliver(sim, 3)
    sim.reset()
    assert (sim.subscriptions, sim.failures, sim.deactivated) == ([], {}, 0)


# --- the dialect switches ----------------------------------------------------------------------


def test_the_new_switches_default_to_the_harder_reading_and_the_first_reading_keeps_the_old():
    def switches(d: ServiceM8Dialect) -> tuple[bool, str, int]:
        return d.null_clears, d.day_reset, d.deactivate_after_failures

    assert switches(ServiceM8Dialect()) == (False, "utc", 3)
    assert switches(FIRST_READING) == (True, "rolling", 0)
    assert ServiceM8Simulator().dialect.day_reset == "utc"


@pytest.mark.parametrize(
    "switches",
    [
        {"null_clears": 1},
        {"day_reset": "monthly"},
        {"deactivate_after_failures": -1},
        {"deactivate_after_failures": True},
        {"deactivate_after_failures": "3"},
        {"deactivate_after_failures": 2.5},
    ],
)
def test_the_new_switches_refuse_a_reading_they_do_not_know(switches):
    with pytest.raises(ValueError, match="dialect"):
        ServiceM8Dialect(**switches)


def test_the_new_switches_can_be_set_from_json_through_the_admin_surface(sim):
    url = f"{sim.root_url}/_admin/dialect"
    wanted = {"null_clears": True, "day_reset": "account", "deactivate_after_failures": 5}
    answer = requests.post(url, json=wanted, timeout=5)
    assert answer.status_code == 200
    assert {k: answer.json()[k] for k in wanted} == wanted
    assert sim.dialect.day_reset == "account" and sim.dialect.null_clears is True
    for bad in ({"null_clears": "yes"}, {"day_reset": "UTC"}, {"deactivate_after_failures": -2}):
        assert requests.post(url, json=bad, timeout=5).status_code == 400
    assert sim.dialect.deactivate_after_failures == 5


# --- JSON null for a date ----------------------------------------------------------------------


@pytest.fixture
def job(sim: ServiceM8Simulator) -> str:
    made = call(
        sim,
        "POST",
        "api_1.0/job.json",
        json={"status": "Completed", "completion_date": "2025-06-01 10:00:00", "job_address": "1"},
    )
    return str(made.headers["x-record-uuid"])


def completion(sim: ServiceM8Simulator, job: str) -> str:
    return str(call(sim, "GET", f"api_1.0/job/{job}.json").json()["completion_date"])


@pytest.mark.parametrize(("as_success", "status"), [(True, 200), (False, 400)])
def test_null_for_a_date_is_refused_by_default(sim, job, as_success, status):
    sim.set_dialect(refusal_as_success=as_success)
    answer = call(sim, "POST", f"api_1.0/job/{job}.json", json={"completion_date": None})
    assert answer.status_code == status
    assert answer.json()["message"] == "Invalid date format for completion_date: null"
    assert answer.json().get("success") is (False if as_success else None)
    assert completion(sim, job) == "2025-06-01 10:00:00"


def test_null_clears_a_date_under_null_clears(sim, job):
    sim.set_dialect(null_clears=True)
    answer = call(sim, "POST", f"api_1.0/job/{job}.json", json={"completion_date": None})
    assert answer.status_code == 200 and answer.json().get("success") is None
    assert completion(sim, job) == EMPTY_STAMP


@pytest.mark.parametrize("null_clears", [False, True])
@pytest.mark.parametrize("empty", ["", EMPTY_STAMP])
def test_an_empty_string_or_the_empty_stamp_always_clears(sim, job, null_clears, empty):
    sim.set_dialect(null_clears=null_clears)
    answer = call(sim, "POST", f"api_1.0/job/{job}.json", json={"completion_date": empty})
    assert answer.status_code == 200 and answer.json().get("success") is None
    assert completion(sim, job) == EMPTY_STAMP


def test_null_for_a_field_that_is_not_a_date_still_empties_it(sim, job):
    answer = call(sim, "POST", f"api_1.0/job/{job}.json", json={"job_address": None})
    assert answer.status_code == 200 and answer.json().get("success") is None
    assert call(sim, "GET", f"api_1.0/job/{job}.json").json()["job_address"] == ""


# --- when the day limit restarts ---------------------------------------------------------------


def exhaust_the_day(sim: ServiceM8Simulator) -> None:
    sim.set_limits(per_day=2)
    answers = [call(sim, "GET", "api_1.0/vendor.json").status_code for _ in range(3)]
    assert answers == [200, 200, 429]


def admitted(sim: ServiceM8Simulator) -> bool:
    answer = call(sim, "GET", "api_1.0/vendor.json")
    if answer.status_code == 429:
        assert answer.text == "Number of allowed API requests per day exceeded"
    return answer.status_code == 200


def test_utc_the_default_restarts_at_utc_midnight_and_not_at_the_accounts(sim, clock):
    exhaust_the_day(sim)
    clock.t += 3 * HOUR  # past midnight in Sydney (2 h on), not yet in UTC (12 h on)
    assert not admitted(sim)
    clock.t = NOON_UTC + 12 * HOUR - 1
    assert not admitted(sim)
    clock.t = NOON_UTC + 12 * HOUR
    assert admitted(sim)


def test_account_restarts_at_the_accounts_midnight_and_not_at_utcs(sim, clock):
    sim.set_dialect(day_reset="account")
    exhaust_the_day(sim)
    clock.t += 2 * HOUR - 1
    assert not admitted(sim)
    clock.t = NOON_UTC + 2 * HOUR  # midnight in Sydney
    assert admitted(sim)


def test_account_follows_a_timezone_the_vendor_was_seeded_with(sim, clock):
    sim.set_dialect(day_reset="account")
    sim.seed({"vendor": [{"timezone_name": "America/New_York"}]})  # 08:00 there, UTC-4
    exhaust_the_day(sim)
    clock.t += 13 * HOUR  # past UTC midnight, still the day before midnight in New York
    assert not admitted(sim)
    clock.t = NOON_UTC + 16 * HOUR
    assert admitted(sim)


def test_rolling_restarts_a_day_after_each_request_past_both_midnights(sim, clock):
    sim.set_dialect(day_reset="rolling")
    exhaust_the_day(sim)
    clock.t += 13 * HOUR
    assert not admitted(sim)
    clock.t = NOON_UTC + 24 * HOUR
    assert admitted(sim) and admitted(sim)  # the two of a day ago have left the window
    assert not admitted(sim)
