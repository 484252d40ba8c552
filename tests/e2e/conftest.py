"""Real deployment shape: ``celery -A tasks worker`` and ``celery -A tasks beat`` as separate
processes, real Redis, both simulators on loopback in this process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.harness import Stack, eventually, expected_booking
from tests.conftest import CD_KEY, SM8_KEY

__all__ = ["Stack", "eventually", "expected_booking", "stack"]

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, sm8_sim: Any, cd_sim: Any) -> Iterator[Stack]:
    s = Stack(tmp_path, redis_url, sm8_sim, cd_sim, sm8_key=SM8_KEY, cd_key=CD_KEY)
    yield s
    s.stop()
    s.wipe()
