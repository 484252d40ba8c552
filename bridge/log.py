"""structlog setup shared by the CLI, the web receiver and Celery workers.

One processor chain renders both structlog events and stdlib records (Celery, uvicorn, urllib3):
JSON when stderr is not a terminal, a console layout when it is. The last step before rendering
blanks every configured secret and the values of credential headers (``X-Api-Key``, ``API-Key``,
``Authorization``) wherever they appear, including inside formatted tracebacks.

Events are namespaced (``"servicem8.request_failed"``) with data in fields, never in the message.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
SLOT_GENERATIONS = 8  # additions remembered per slot (Redactor.add)
_CREDENTIAL_KEYS = frozenset({"x-api-key", "api-key", "authorization", "api_key", "api_token"})
_CREDENTIAL_TEXT = re.compile(
    r"(?i)((?:x-api-key|api-key|api-token|authorization|api_key|api_token)"
    r"['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+|basic\s+)?[^\s'\",}&]+"
)


class Redactor:
    """Knows the secrets of this process and blanks them out of any text or structure."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._fixed: set[str] = set()
        # Secrets that change (a connection's OAuth tokens rotate every hour) are kept by slot,
        # the last SLOT_GENERATIONS additions each, so a long-lived worker's list stays bounded.
        self._slots: dict[str, deque[frozenset[str]]] = {}
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str], slot: str | None = None) -> None:
        new = frozenset(s for s in secrets if s and len(s) >= 4)
        with self._lock:
            if slot is None:
                self._fixed |= new
            else:
                self._slots.setdefault(slot, deque(maxlen=SLOT_GENERATIONS)).append(new)
            merged = self._fixed.union(*(g for gens in self._slots.values() for g in gens))
            # Longest first, so a secret containing another is blanked whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self._secrets = ()
            self._fixed.clear()
            self._slots.clear()

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return _CREDENTIAL_TEXT.sub(lambda m: m.group(1) + REDACTED, value)

    def value(self, value: Any, depth: int = 0) -> Any:
        if depth > 8:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {
                k: REDACTED
                if isinstance(k, str) and k.lower() in _CREDENTIAL_KEYS
                else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.value(v, depth + 1) for v in value)
        if isinstance(value, BaseException):
            return self.text(repr(value))
        return value

    def __call__(
        self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {k: self.value(v) for k, v in event_dict.items()}


redactor = Redactor()

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


HOUSEKEEPING = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: Any = None,
) -> None:
    """Install the chain on the root logger. Safe to call again (tests, Celery's signal)."""
    redactor.add(secrets)
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redactor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_bridge", False):
            root.removeHandler(old)
    handler._bridge = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # urllib3 logs full URLs at DEBUG; keep it at WARNING unless asked for.
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    # Celery's line per task received and succeeded, and beat's per task sent, are housekeeping
    # (a fleet tick every second: about 170,000 lines a day). Quiet unless LOG_LEVEL=DEBUG;
    # failures, retries given up and the bridge's own decisions are logged by the bridge.
    for name in HOUSEKEEPING:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.stdlib.get_logger(name)
