from __future__ import annotations

from typing import Any

import pytest

from bridge.sync.engine import Engine
from mappings.ids import connection_namespace


@pytest.fixture
def engine(store: Any, sm8: Any, cd: Any) -> Engine:
    return Engine(store, sm8, cd, connection_namespace(store.prefix))
