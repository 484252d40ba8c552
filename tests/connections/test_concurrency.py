"""Concurrent changes to one connection are never lost: every read-modify-write is watched, and
retried when another writer came between its read and its write."""

from __future__ import annotations

import threading

from bridge.connections import ConnectionRegistry, ConnectionSecrets, make_connection
from tests.connections.conftest import ACCESS, CD_KEY, REFRESH

CD_URL = "https://cd.example.test/api/1"


def meddling_clock(meddle):
    """A clock that, the first time it is read (between a change's read and its write), lets
    another writer change the same connection."""
    calls = []

    def clock():
        if not calls:
            meddle()
        calls.append(1)
        return 1_800_000_000.0

    clock.calls = calls
    return clock


def test_a_pause_racing_a_learnt_account_keeps_both(
    registry, redis_client, box, fleet_keys, keys_of_acme
):
    registry.add(make_connection(id="acme"), keys_of_acme)
    clock = meddling_clock(lambda: registry.set_account("acme", "VENDOR-1"))
    racing = ConnectionRegistry(redis_client, box, keys=fleet_keys, clock=clock)
    racing.pause("acme", "billing hold")
    after = registry.get("acme")
    assert (after.status, after.reason, after.servicem8_account) == (
        "paused",
        "billing hold",
        "vendor-1",
    )
    assert len(clock.calls) == 2  # the first attempt was thrown away and tried again


def test_a_pair_racing_a_grant_refresh_keeps_the_new_refresh_token(
    registry, redis_client, box, fleet_keys
):
    grant = {"access_token": ACCESS, "refresh_token": REFRESH, "expires_at": 1}
    registry.add(
        make_connection(id="oauth-1", status="authorised"), ConnectionSecrets(servicem8_grant=grant)
    )
    clock = meddling_clock(lambda: registry.update_grant("oauth-1", "access-2", "refresh-2", 99))
    ConnectionRegistry(redis_client, box, keys=fleet_keys, clock=clock).pair(
        "oauth-1", CD_URL, CD_KEY
    )
    secrets = registry.secrets("oauth-1")
    # Refresh tokens rotate at every use: writing back the one read first would lose the account.
    assert secrets.servicem8_grant.refresh_token.get_secret_value() == "refresh-2"
    assert secrets.servicem8_grant.expires_at == 99
    assert secrets.coredination_api_key.get_secret_value() == CD_KEY
    assert registry.get("oauth-1").status == "active"


def test_many_writers_at_once_lose_no_change(registry, keys_of_acme):
    registry.add(make_connection(id="acme"), keys_of_acme)
    values = {
        "servicem8_poll_seconds": lambda i: 10.0 + i,
        "coredination_poll_seconds": lambda i: 20.0 + i,
        "conflict_tie_winner": lambda i: ("servicem8", "coredination")[i % 2],
        "servicem8_pull_booking": lambda i: ("auto", "flexible", "fixed")[i % 3],
        "servicem8_timezone": lambda i: ("UTC", "Australia/Sydney")[i % 2],
    }
    rounds = 12

    def configure(name):
        for i in range(rounds):
            registry.configure("acme", {name: values[name](i)})

    def toggle():
        for i in range(rounds):
            registry.pause("acme", f"round {i}")
            registry.resume("acme")

    workers = [threading.Thread(target=configure, args=(n,)) for n in values]
    workers.append(threading.Thread(target=toggle))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = registry.get("acme")
    assert after.overrides == {name: make(rounds - 1) for name, make in values.items()}
    assert after.status == "active"
