"""Which account each API's budget belongs to.

ServiceM8 limits requests "per add-on per account" (docs/servicem8-api.md#limits), so the budget of
every connection on one ServiceM8 account is one budget: it is keyed by the account's vendor uuid,
which the client learns from ``/vendor.json`` (the read that also gives the account's timezone)
and which is remembered in Redis for every process of the connection. Until it is known (the very
first call of a connection, which is that read) a digest of the key stands in. Coredination
documents no account id and no limit: a digest of its base URL and key stands for the group the
key belongs to.
"""

from __future__ import annotations

import hashlib

from bridge.errors import Api
from bridge.store import ActivityStore


def key_digest(base_url: str, secret: str) -> str:
    """A stand-in account id: the same key on the same API gives the same id, and the id reveals
    nothing of the key."""
    return "key-" + hashlib.blake2b(f"{base_url}|{secret}".encode(), digest_size=8).hexdigest()


class AccountIds:
    def __init__(self, activity: ActivityStore, stand_ins: dict[Api, str]) -> None:
        self.activity = activity
        self.stand_ins = stand_ins
        self._known: dict[Api, str] = {}

    def known(self, api: Api) -> bool:
        """Whether the real account is known (here, or to another process of the connection)."""
        if api not in self._known:
            stored = self.activity.account(api)
            if stored is not None:
                self._known[api] = stored
        return api in self._known

    def learn(self, api: Api, account: str) -> None:
        account = account.lower()
        if self._known.get(api) != account:
            self._known[api] = account
            self.activity.set_account(api, account)

    def __call__(self, api: Api) -> str:
        return self._known[api] if self.known(api) else self.stand_ins[api]

    def peek(self, api: Api) -> str:
        """The same, without calling any API (status, metrics); so is ``__call__``."""
        return self(api)
