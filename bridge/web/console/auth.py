"""Who may use the operator console: a sign-in with ``CONSOLE_USER``/``CONSOLE_PASSWORD``, a
signed session cookie, and a token in every form (docs/console.md#security).

- With no ``CONSOLE_PASSWORD`` the console is off: its paths answer 404 and say why.
- A session is ``user.expires.signature``, signed (HMAC-SHA256) with a key made from the
  deployment's random console key (``bridge.store.console``) and the password, so changing the
  password signs everyone out. It is ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over https,
  and lasts ``SESSION_SECONDS``.
- Every form carries a token derived from the session (the sign-in form's, from a cookie of its
  own): a post without it, or with another's, is refused 403, whatever the browser sends.
- Sign-ins failing ``MAX_FAILS`` times in a minute from one client are refused 429 until the
  minute is over. The password is compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from pydantic import SecretStr

from bridge.store.console import ConsoleStore

SESSION = "sm8cd_console"
PRE_SESSION = "sm8cd_console_signin"
SESSION_SECONDS = 12 * 3600
MAX_FAILS = 10


@dataclass(frozen=True)
class Session:
    user: str
    cookie: str


class Guard:
    def __init__(self, user: str, password: SecretStr | None, store: ConsoleStore) -> None:
        self.user = user
        self._password = password.get_secret_value() if password is not None else ""
        self.store = store
        self._key: bytes | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._password)

    def _sign(self, text: str) -> str:
        if self._key is None:  # read once per process, made once per deployment
            self._key = hmac.new(self.store.signing_key(), self._password.encode(),
                                 hashlib.sha256).digest()  # fmt: skip
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    # --- sign-in -----------------------------------------------------------------------------
    def locked_out(self, client: str) -> bool:
        return self.store.sign_ins_failed(client) >= MAX_FAILS

    def sign_in(self, user: str, password: str, client: str) -> Session | None:
        """A new session for the right user and password, else None (the failure counted)."""
        good_user = hmac.compare_digest(user.encode(), self.user.encode())
        good_password = hmac.compare_digest(password.encode(), self._password.encode())
        if not (good_user and good_password and self.enabled):
            self.store.failed_sign_in(client)
            return None
        body = f"{self.user}.{int(time.time()) + SESSION_SECONDS}"
        return Session(self.user, f"{body}.{self._sign('session.' + body)}")

    def session(self, cookie: str | None) -> Session | None:
        """The session this cookie holds, if it is signed by us and not expired."""
        if not cookie or not self.enabled:
            return None
        body, _, signature = cookie.rpartition(".")
        user, _, expires = body.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign("session." + body).encode()):
            return None
        if not expires.isdigit() or int(expires) < time.time() or user != self.user:
            return None
        return Session(user, cookie)

    # --- form tokens --------------------------------------------------------------------------
    def token(self, session: Session) -> str:
        return self._sign("form." + session.cookie)

    def token_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(
            str(given).encode(), self.token(session).encode()
        )

    @staticmethod
    def new_pre_session() -> str:
        return secrets.token_urlsafe(24)

    def sign_in_token(self, pre_session: str) -> str:
        return self._sign("sign-in." + pre_session)

    def sign_in_token_ok(self, pre_session: str | None, given: str | None) -> bool:
        if not pre_session or not given:
            return False
        return hmac.compare_digest(given.encode(), self.sign_in_token(pre_session).encode())
