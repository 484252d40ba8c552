"""``SecretBox``: the connection registry's secrets encrypted at rest, with Fernet keys from
``BRIDGE_SECRET_KEYS`` (docs/connections.md#secrets-at-rest).

The keys are comma-separated Fernet keys: the first encrypts, every one decrypts
(``cryptography.fernet.MultiFernet``), so a key is rotated by putting a new one first, re-encrypting
(``sm8cd secrets rotate``) and then dropping the old one. Fernet authenticates as well as
encrypts: a token altered in Redis, or encrypted under a key not listed, does not decrypt.

No message raised here holds a key, a token or a plaintext: they name the setting only.
Imports nothing of the bridge but the settings and the error tree.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.config import Settings
from bridge.errors import ConfigError

SETTING = "BRIDGE_SECRET_KEYS"
HOW_TO_MAKE_A_KEY = (
    f"make a key with 'sm8cd secrets new-key' and set {SETTING} to it "
    "(comma-separated keys: the first encrypts, all decrypt)"
)


def new_key() -> str:
    """A fresh Fernet key (32 random bytes, url-safe base64), for ``BRIDGE_SECRET_KEYS``."""
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts under the first key, decrypts under any. Without keys every use raises a
    ``ConfigError`` saying how to make one, so a deployment without ``BRIDGE_SECRET_KEYS`` still
    runs (on its environment's keys) until it stores a secret."""

    def __init__(self, keys: Sequence[str]) -> None:
        fernets = []
        for n, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.strip().encode("ascii")))
            except (ValueError, UnicodeError):
                # Fernet's own message is generic, but the key is not repeated in any case.
                raise ConfigError(
                    f"{SETTING}: key {n} of {len(keys)} is not a Fernet key (32 url-safe "
                    "base64-encoded bytes, as 'sm8cd secrets new-key' prints)"
                ) from None
        self._fernet = MultiFernet(fernets) if fernets else None
        self.key_count = len(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.bridge_secret_keys is None:
            return cls(())
        text = settings.bridge_secret_keys.get_secret_value()
        return cls([k for k in text.split(",") if k.strip()])

    @property
    def ready(self) -> bool:
        """Whether there is a key to encrypt and decrypt with."""
        return self._fernet is not None

    def _box(self) -> MultiFernet:
        if self._fernet is None:
            raise ConfigError(
                f"{SETTING} is not set, so no secret can be stored or read: {HOW_TO_MAKE_A_KEY}"
            )
        return self._fernet

    def encrypt(self, data: bytes) -> str:
        """``data`` encrypted and authenticated under the first key, as text for Redis."""
        return self._box().encrypt(data).decode("ascii")

    def decrypt(self, token: str | bytes) -> bytes:
        """The plaintext of a token made under any of the keys; ``ConfigError`` when none of
        them made it (or it was altered)."""
        box = self._box()
        try:
            return box.decrypt(_as_bytes(token))
        except InvalidToken:
            raise ConfigError(_UNREADABLE) from None

    def rotate(self, token: str | bytes) -> str:
        """The same plaintext encrypted again under the first key (``MultiFernet.rotate``)."""
        box = self._box()
        try:
            return box.rotate(_as_bytes(token)).decode("ascii")
        except InvalidToken:
            raise ConfigError(_UNREADABLE) from None


_UNREADABLE = (
    f"a stored secret does not decrypt with {SETTING}: the key that encrypted it is not among "
    "them (put it back, after the new first key), or the stored value was altered"
)


def _as_bytes(token: str | bytes) -> bytes:
    return token.encode("ascii") if isinstance(token, str) else token
