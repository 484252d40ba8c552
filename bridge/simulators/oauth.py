"""ServiceM8's OAuth authorization server on loopback (docs/servicem8-oauth.md#simulator).

``/oauth/authorize`` stands in for the page where a person signs in and adds the add-on: it
approves at once as the account named by ``approve_as`` (a vendor uuid) and redirects to the
registered ``redirect_uri`` with a one-time ``code`` and the ``state``, or with
``error=access_denied`` when no account approves. ``/oauth/access_token`` takes the form POST:
a code once, for an access token of ``expires_in`` seconds and a refresh token; a refresh token
once, for a new access token and a new (rotated) refresh token, the old one refused afterwards.
``revoke(account)`` is the add-on being removed: its refresh tokens answer 400
``invalid_grant`` and its access tokens stop working. ``refreshes`` counts refreshes by account,
``refreshed_at`` times each, ``tokens`` keeps every token handed out (to scan outputs for).

A ``ServiceM8Simulator`` made with ``bearer_account=oauth.account_of`` accepts those access
tokens for its own account. The server shares the simulators' machinery (faults, clock, counts).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from bridge.simulators.base import SimReply, SimRequest, SimServer


@dataclass
class _Code:
    account: str
    redirect_uri: str
    scope: str
    expires_at: float


@dataclass
class _Access:
    account: str
    expires_at: float


class OAuthError(Exception):
    """An RFC 6749 error answer: ``{"error": ..., "error_description": ...}``."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class OAuthSimulator(SimServer):
    name = "servicem8-oauth"

    def __init__(
        self,
        *,
        client_id: str = "sim-client",
        client_secret: str = "sim-client-secret",  # noqa: S107 (the simulator's own)
        redirect_uri: str = "https://bridge.example/oauth/callback",
        expires_in: int = 3600,
        code_seconds: float = 600.0,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(seed=seed, clock=clock)
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uri = redirect_uri  # the one registered: any other is refused
        self.expires_in = expires_in
        self.code_seconds = code_seconds
        self.approving: str | None = None  # the account the next authorize approves as
        self.codes: dict[str, _Code] = {}
        self.access: dict[str, _Access] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # current token → (account, scope)
        self.revoked: set[str] = set()
        self.refreshes: Counter[str] = Counter()
        self.refreshed_at: list[tuple[str, float]] = []  # (account, when), every refresh
        self.tokens: list[str] = []  # every token handed out, for tests that scan for leaks
        self.issued: Counter[str] = Counter()  # code exchanges by account
        self.route("GET", "/oauth/authorize", "oauth.authorize", self._authorize)
        self.route("POST", "/oauth/access_token", "oauth.access_token", self._token)
        for method in ("GET", "POST"):
            self.route(method, "/_admin/oauth", "admin", self._admin, api=False)

    # --- what a test drives --------------------------------------------------------------------
    @property
    def authorize_url(self) -> str:
        return f"{self.root_url}/oauth/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.root_url}/oauth/access_token"

    def approve_as(self, account: str | None) -> None:
        """The account (vendor uuid) whose person approves from now on; None: they decline."""
        with self.lock:
            self.approving = account
            if account is not None:
                self.revoked.discard(account)  # adding the add-on again

    def revoke(self, account: str) -> None:
        """The add-on is removed from ``account``: every token of it stops working."""
        with self.lock:
            self.revoked.add(account)
            self.refresh_tokens = {t: v for t, v in self.refresh_tokens.items() if v[0] != account}
            self.access = {t: a for t, a in self.access.items() if a.account != account}

    def account_of(self, token: str) -> str | None:
        """The account a live access token is for, or None (unknown, expired or revoked)."""
        with self.lock:
            access = self.access.get(token)
            if access is None or access.expires_at <= self.now() or access.account in self.revoked:
                return None
            return access.account

    def _admin(self, req: SimRequest, _: dict[str, str]) -> SimReply:
        """``{"approve_as": account | null, "revoke": account}`` for a test in another process."""
        data = (req.json() or {}) if req.method == "POST" else {}
        if "approve_as" in data:
            self.approve_as(data["approve_as"])
        if data.get("revoke"):
            self.revoke(str(data["revoke"]))
        return SimReply(
            200,
            {"approving": self.approving, "revoked": sorted(self.revoked),
             "refreshes": dict(self.refreshes), "issued": dict(self.issued)},
        )  # fmt: skip

    # --- routes ----------------------------------------------------------------------------------
    def error_reply(self, status: int, message: str) -> SimReply:
        return SimReply(status, {"error": "invalid_request", "error_description": message})

    def _authorize(self, req: SimRequest, _: dict[str, str]) -> SimReply:
        # ASSUMPTION: an unknown client or redirect is answered on the page, never redirected
        # (RFC 6749 4.1.2.1), and only the registered redirect_uri is accepted, character for
        # character.
        if req.arg("client_id") != self.client_id:
            return self.error_reply(400, "Unknown client_id")
        redirect = req.arg("redirect_uri") or ""
        if redirect != self.redirect_uri:
            return self.error_reply(400, "redirect_uri does not match the registered one")
        state = req.arg("state")
        answer: dict[str, str] = {} if state is None else {"state": state}
        if req.arg("response_type") != "code":
            answer["error"] = "unsupported_response_type"
        elif self.approving is None:
            answer["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = _Code(
                self.approving, redirect, req.arg("scope") or "", self.now() + self.code_seconds
            )
            answer = {"code": code, **answer}
        joiner = "&" if "?" in redirect else "?"
        return SimReply(302, None, {"Location": f"{redirect}{joiner}{urlencode(answer)}"})

    def _token(self, req: SimRequest, _: dict[str, str]) -> SimReply:
        try:
            return SimReply(200, self._grant(req.form()), {"Cache-Control": "no-store"})
        except OAuthError as exc:
            return SimReply(exc.status, {"error": exc.error, "error_description": exc.description})

    def _grant(self, form: dict[str, str]) -> dict[str, Any]:
        # ASSUMPTION: client credentials in the form, as every working client sends them.
        if form.get("client_id") != self.client_id or form.get("client_secret") != (
            self.client_secret
        ):
            raise OAuthError(401, "invalid_client", "Client authentication failed")
        kind = form.get("grant_type")
        if kind == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)  # a code is good once
            if code is None or code.expires_at <= self.now() or code.account in self.revoked:
                raise OAuthError(400, "invalid_grant", "The authorization code is invalid")
            if form.get("redirect_uri") != code.redirect_uri:
                raise OAuthError(400, "invalid_grant", "redirect_uri does not match")
            self.issued[code.account] += 1
            return self._tokens(code.account, code.scope)
        if kind == "refresh_token":
            # ASSUMPTION: no grace period: a refresh token is spent by its first use.
            held = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if held is None or held[0] in self.revoked:
                raise OAuthError(400, "invalid_grant", "The refresh token is invalid")
            self.refreshes[held[0]] += 1
            self.refreshed_at.append((held[0], self.now()))
            return self._tokens(*held)
        raise OAuthError(400, "unsupported_grant_type", "grant_type is not supported")

    def _tokens(self, account: str, scope: str) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = _Access(account, self.now() + self.expires_in)
        self.refresh_tokens[refresh] = (account, scope)
        self.tokens += [access, refresh]
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": refresh,
            "scope": scope,
        }
