"""A Lua script queued on a pipeline. redis-py's own way (a registered script called with
``client=pipe``) makes every pipeline holding one send ``SCRIPT EXISTS`` first: a round trip of
its own at each ``execute``. Queued as ``EVAL`` of its text instead (a few hundred bytes), the
pipeline stays one round trip, and Redis still keeps the compiled script by its digest. Nothing
to load after a restart or a failover either."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import Script


def queue(pipe: Any, script: Script | str, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """``script`` (a registered script, or its text) run on ``pipe``, as ``EVAL``."""
    text = script if isinstance(script, str) else script.script
    pipe.eval(text, len(keys), *keys, *args)
