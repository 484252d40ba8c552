"""Which account each API's budget belongs to.

ServiceM8 limits requests "per add-on per account" (docs/servicem8-api.md#limits), so the budget of
every connection on one ServiceM8 account is one budget: it is keyed by the account's vendor uuid,
which the client learns from ``/vendor.json`` (the read that also gives the account's timezone)
and which is remembered in Redis for every process of the connection. Until it is known (the very
first call of a connection, which is that read) a digest of the key stands in; when the account is
learnt, what was counted under the stand-in (and under the per-connection keys of the layout
before accounts) is merged into the account's budget. Coredination documents no account id and no
limit: the digest of its base URL and key stands for the group the key belongs to.

A pause for bad credentials belongs to the key (the stand-in), not to the account: one
connection's revoked key must not stop another connection on the same account.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from bridge.errors import Api
from bridge.store import ActivityStore

LEARNABLE: frozenset[Api] = frozenset({"servicem8"})


def key_digest(base_url: str, secret: str) -> str:
    """A stand-in account id: the same key on the same API gives the same id, and the id reveals
    nothing of the key."""
    return "key-" + hashlib.blake2b(f"{base_url}|{secret}".encode(), digest_size=8).hexdigest()


class AccountIds:
    def __init__(self, activity: ActivityStore, stand_ins: dict[Api, str]) -> None:
        self.activity = activity
        self.stand_ins = stand_ins
        self.on_learn: list[Callable[[Api, str], None]] = []
        self._known: dict[Api, str] = {}
        # Written down so that every key of the connection can be found (``Stores.wipe``).
        activity.note_stand_ins(stand_ins.items())

    def stand_in(self, api: Api) -> str:
        return self.stand_ins[api]

    def known(self, api: Api) -> bool:
        """Whether the real account is known (here, or to another process of the connection)."""
        if api not in self._known and api in LEARNABLE:
            stored = self.activity.account(api)
            if stored is not None:
                self._known[api] = stored
        return api in self._known

    def learn(self, api: Api, account: str) -> None:
        account = account.lower()
        if self._known.get(api) == account:
            return
        self._known[api] = account
        if self.activity.account(api) != account:
            self.activity.set_account(api, account)
            for hook in self.on_learn:  # first learnt for this connection: merge what was counted
                hook(api, account)

    def __call__(self, api: Api) -> str:
        """The account whose budget a call of ``api`` takes from. Makes no API call."""
        return self._known[api] if self.known(api) else self.stand_ins[api]
