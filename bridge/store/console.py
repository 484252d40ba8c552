"""What the operator console keeps (``bridge/web/console``), per deployment: the random key its
session cookies are signed with (made once, shared by every web process, so a restart or a
second process keeps people signed in), and failed sign-ins per client, counted a minute."""

from __future__ import annotations

import secrets
from typing import Any

from bridge.store.keys import FleetKeys

FAILS_SECONDS = 60


class ConsoleStore:
    def __init__(self, redis: Any, keys: FleetKeys) -> None:
        self.r = redis
        self.keys = keys

    def signing_key(self) -> bytes:
        """The deployment's console key: 32 random bytes, made by whichever process asks first."""
        key = self.keys.console_key
        self.r.set(key, secrets.token_bytes(32), nx=True)
        return bytes(self.r.get(key))

    def failed_sign_in(self, client: str) -> int:
        """Count a failed sign-in of ``client``; how many it made this minute."""
        key = self.keys.console_fails(client)
        with self.r.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, FAILS_SECONDS, nx=True)
            count, _ = pipe.execute()
        return int(count)

    def sign_ins_failed(self, client: str) -> int:
        value = self.r.get(self.keys.console_fails(client))
        return int(value or 0)
