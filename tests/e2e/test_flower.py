"""Flower, started as operators start it (``celery -A tasks flower``), against the test broker:
basic auth on, its API closed without credentials and, with them, showing the running worker."""

from __future__ import annotations

import pytest
import requests

from bench.harness import free_port
from tests.e2e.conftest import eventually

pytestmark = pytest.mark.e2e
USER, PASSWORD = "ops", "flower-test-7d1e"


def test_flower_requires_basic_auth_and_lists_the_worker(stack):
    port = free_port()
    stack.worker("fw1")
    stack.env["FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
    flower = stack.celery("flower", ["flower", "--address=127.0.0.1", f"--port={port}"])
    api = f"http://127.0.0.1:{port}/api/workers"

    def answering() -> int | None:
        try:
            return requests.get(api, timeout=2).status_code
        except requests.ConnectionError:
            assert flower.poll() is None, stack.logs()[-2000:]
            return None

    assert eventually(answering, timeout=60) == 401
    assert requests.get(api, auth=(USER, "wrong"), timeout=5).status_code == 401

    def workers() -> list[str]:
        r = requests.get(api, params={"refresh": "1"}, auth=(USER, PASSWORD), timeout=10)
        assert r.status_code == 200
        return [name for name in r.json() if name.startswith(f"fw1-{stack.connection}@")]

    assert eventually(workers, timeout=60)
    assert PASSWORD not in stack.logs()
