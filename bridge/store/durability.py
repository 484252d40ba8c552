"""What the Redis server says of its own durability: the append-only file, snapshots and
replicas (``INFO persistence``, ``INFO replication``, ``CONFIG GET``), read for ``sm8cd doctor``.

A managed Redis often refuses ``CONFIG`` (and some refuse ``INFO``): what was refused is None
and named in ``refused``, never an error. Judging what the answers mean is the caller's
(``bridge.ops.readiness``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError


@dataclass(frozen=True)
class Durability:
    aof: bool | None  # the append-only file is on
    snapshots: bool | None  # RDB snapshots are scheduled (``save`` is not empty)
    role: str | None  # ``master`` or ``slave``
    replicas: int | None  # replicas connected to it
    refused: tuple[str, ...] = ()  # the commands the server refused


def durability(redis: Any) -> Durability:
    refused: list[str] = []

    def ask(name: str, call: Any) -> Any:
        try:
            return call()
        except ResponseError:  # unknown, renamed or forbidden: a managed service's choice
            refused.append(name)
            return None

    persistence = _text(ask("INFO persistence", lambda: redis.info("persistence")))
    replication = _text(ask("INFO replication", lambda: redis.info("replication")))
    config = _text(ask("CONFIG GET", lambda: redis.config_get("appendonly")))
    if config:
        config.update(_text(ask("CONFIG GET", lambda: redis.config_get("save"))))
    aof: bool | None = None
    if "aof_enabled" in persistence:
        aof = bool(int(persistence["aof_enabled"]))
    elif "appendonly" in config:
        aof = str(config["appendonly"]).lower() == "yes"
    snapshots = bool(str(config["save"]).strip()) if "save" in config else None
    replicas = replication.get("connected_slaves")
    return Durability(
        aof=aof,
        snapshots=snapshots,
        role=replication.get("role"),
        replicas=int(replicas) if replicas is not None else None,
        refused=tuple(dict.fromkeys(refused)),
    )


def _text(answer: Any) -> dict[str, Any]:
    """An answer as text keys and values (a client may hand bytes back); None as empty."""

    def text(value: Any) -> Any:
        return value.decode() if isinstance(value, bytes) else value

    return {text(k): text(v) for k, v in (answer or {}).items()}
