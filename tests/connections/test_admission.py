"""Fair shares of the shared lanes (bridge/connections/admission.py): a registry connection has at
most its limit of tasks queued or running; the rest wait in Redis, most urgent lane first, and
one noisy connection never holds back another."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.connections.admission import HOLD_SECONDS, Admission
from bridge.queues import message_of
from bridge.store.keys import FleetKeys, Keys


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admission(redis_client: Any, clock: Clock) -> Iterator[Admission]:
    keys = FleetKeys(prefix=f"b:fleettest{uuid.uuid4().hex[:8]}:")
    yield Admission(redis_client, keys, limit=2, clock=clock)
    redis_client.delete(keys.waiting)


@pytest.fixture
def names(redis_client: Any) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        for key in redis_client.scan_iter(Keys(name).key("admission:*")):
            redis_client.delete(key)


def _connection(names: list[str]) -> str:
    names.append(f"adm{uuid.uuid4().hex[:8]}")
    return names[-1]


def _message(n: int, lane: str = "sync") -> dict[str, Any]:
    return message_of(f"task-{n}", [str(n)], {}, f"id-{n}", f"bridge.dep.{lane}")


def test_up_to_the_limit_go_now_and_the_rest_wait(admission, names):
    noisy = _connection(names)
    sent = [admission.offer(noisy, "sync", _message(n)) for n in range(5)]
    assert sent == [True, True, False, False, False]
    assert admission.waiting(noisy) == 3
    # Another connection is not held back by the first one's backlog.
    quiet = _connection(names)
    assert admission.offer(quiet, "poll", _message(9, "poll"))


def test_a_task_that_ends_admits_the_next_most_urgent_first(admission, names):
    noisy = _connection(names)
    for n in range(2):
        assert admission.offer(noisy, "bulk", _message(n, "bulk"))
    admission.offer(noisy, "bulk", _message(2, "bulk"))
    admission.offer(noisy, "interactive", _message(3, "interactive"))
    # Admitted ones keep their slot when they start.
    assert admission.start(noisy, "bulk", _message(0, "bulk"))
    admitted = admission.finish(noisy, "id-0")
    assert [m["id"] for m in admitted] == ["id-3"]  # the webhook before the backfill
    assert admission.finish(noisy, "id-1") == [_message(2, "bulk")]
    assert admission.waiting(noisy) == 0
    assert admission.finish(noisy, "id-3") == [] and admission.finish(noisy, "id-2") == []


def test_a_message_no_offer_admitted_takes_a_free_slot_or_waits_again(admission, names):
    connection = _connection(names)
    retry = _message(7)  # a Celery retry, or a message from a sender of another process
    assert admission.start(connection, "sync", retry)  # a slot is free
    assert admission.offer(connection, "sync", _message(8))
    late = _message(9)
    assert not admission.start(connection, "sync", late)  # both slots are taken
    assert admission.waiting(connection) == 1
    assert admission.finish(connection, "id-7") == [late]  # back at the head, admitted first


def test_a_slot_whose_task_was_lost_lapses_and_the_tick_admits_the_next(admission, names, clock):
    connection = _connection(names)
    for n in range(3):
        admission.offer(connection, "sync", _message(n))
    assert admission.admit_waiting() == []  # both slots held
    clock.now += HOLD_SECONDS + 1  # the worker running them was killed, no finish came
    assert admission.admit_waiting() == [(connection, _message(2))]
    assert admission.admit_waiting() == []  # nothing waits now: the connection leaves the set
    assert not admission.r.sismember(admission.keys.waiting, connection)


def test_while_its_budget_is_spent_nothing_more_of_the_connection_is_admitted(admission, names):
    connection = _connection(names)
    for n in range(4):
        admission.offer(connection, "interactive", _message(n, "interactive"))
    admission.hold(connection, 0.3)  # a task of it found the budget spent for 0.3 s
    assert admission.finish(connection, "id-0") == []  # its slot stays free for the others
    assert not admission.offer(connection, "interactive", _message(9, "interactive"))
    assert admission.admit_waiting() == []
    time.sleep(0.35)  # the budget's slot is near: the tick admits again
    assert [m["id"] for _, m in admission.admit_waiting()] == ["id-2"]
