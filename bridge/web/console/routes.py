"""The console's routes (see the package's docstring); every handler runs in the thread pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from bridge.config import Settings
from bridge.config import scope as scope_of
from bridge.connections.fleet import FleetView
from bridge.connections.models import Connection
from bridge.log import get_logger
from bridge.ops import actions, console
from bridge.ops.explain import UnknownJob, tell
from bridge.process.runtime import Runtime
from bridge.store import Stores
from bridge.store.console import ConsoleStore
from bridge.store.keys import FleetKeys
from bridge.web.console.auth import PRE_SESSION, SESSION, SESSION_SECONDS, Guard, Session

log = get_logger(__name__)

PREFIX = "/console"
MAX_FORM_BYTES = 16_384
DONE = {"replay": "replayed", "drop": "dropped"}  # what a dead-letter button did
OFF = "the operator console is off: set CONSOLE_PASSWORD to turn it on (docs/console.md)\n"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Console:
    """The pages' state: the guard, the fleet's view, the templates."""

    def __init__(self, settings: Settings, runtime: Runtime, view: FleetView) -> None:
        self.settings, self.runtime, self.view = settings, runtime, view
        keys = FleetKeys.for_deployment(runtime.lanes)
        self.guard = Guard(settings.console_user, settings.console_password,
                           ConsoleStore(runtime.redis, keys))  # fmt: skip
        self.templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

    def page(
        self, request: Request, name: str, session: Session | None, **context: Any
    ) -> Response:
        context.update(request=request, prefix=PREFIX, user=session.user if session else None,
                       token=self.guard.token(session) if session else "")  # fmt: skip
        answer = self.templates.TemplateResponse(request, name, context)
        answer.headers.update(HEADERS)
        return answer

    def signed_in(self, request: Request) -> Session:
        """The request's session, else a refusal: 404 with the console off, a redirect to the
        sign-in page for a page, 401 for anything else."""
        if not self.guard.enabled:
            raise _Refused(PlainTextResponse(OFF, status_code=404))
        session = self.guard.session(request.cookies.get(SESSION))
        if session is not None:
            return session
        if request.method == "GET":
            back = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            raise _Refused(RedirectResponse(f"{PREFIX}/sign-in?next={back}", status_code=303))
        raise _Refused(PlainTextResponse("sign in first\n", status_code=401))

    async def form(self, request: Request, session: Session | None) -> dict[str, str]:
        """A posted form's fields; refused 413 when large, 403 without this session's token."""
        raw = await request.body()
        if len(raw) > MAX_FORM_BYTES:
            raise _Refused(PlainTextResponse("form too large\n", status_code=413))
        fields = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        if session is not None and not self.guard.token_ok(session, fields.get("token")):
            log.warning("console.bad_token", path=request.url.path)
            raise _Refused(PlainTextResponse("missing or wrong form token\n", status_code=403))
        return fields

    def entries(self) -> dict[str, Connection]:
        """The registry now, the deployment's own connection in it (as the receiver does)."""
        entries = self.view.entries_now()
        if self.runtime.connection not in entries:  # the console is opened before any worker ran
            self.view.registry.upsert_environment(self.settings)
            entries = self.view.entries_now()
        return entries

    def connection(self, cid: str) -> tuple[Connection, Stores, Settings]:
        found = self.entries().get(cid)
        if found is None:
            raise _Refused(PlainTextResponse(f"no connection {cid[:64]!r}\n", status_code=404))
        return found, Stores.connect(self.runtime.redis, cid), found.settings(self.settings)


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _back(cid: str, said: str) -> Response:
    return RedirectResponse(f"{PREFIX}/c/{quote(cid)}?said={quote(said)}", status_code=303)


def add_console_routes(app: FastAPI, settings: Settings, runtime: Runtime, view: FleetView) -> None:
    c = Console(settings, runtime, view)

    @app.exception_handler(_Refused)
    async def refused(_request: Request, exc: _Refused) -> Response:
        exc.response.headers.update(HEADERS)
        return exc.response

    @app.get(PREFIX + "/sign-in", include_in_schema=False)
    def sign_in_page(request: Request, next: str = PREFIX, failed: int = 0) -> Response:
        if not c.guard.enabled:
            return PlainTextResponse(OFF, status_code=404)
        pre = c.guard.new_pre_session()
        answer = c.page(request, "sign_in.html", None, next=_local(next), failed=bool(failed),
                        sign_in_token=c.guard.sign_in_token(pre))  # fmt: skip
        _cookie(answer, request, PRE_SESSION, pre, 600)
        return answer

    @app.post(PREFIX + "/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        if not c.guard.enabled:
            return PlainTextResponse(OFF, status_code=404)
        fields = await c.form(request, None)
        if not c.guard.sign_in_token_ok(request.cookies.get(PRE_SESSION), fields.get("token")):
            return PlainTextResponse("missing or wrong form token\n", status_code=403,
                                     headers=HEADERS)  # fmt: skip
        client = _client(request)
        if c.guard.locked_out(client):
            return PlainTextResponse("too many failed sign-ins: wait a minute\n",
                                     status_code=429, headers=HEADERS)  # fmt: skip
        session = c.guard.sign_in(fields.get("user", ""), fields.get("password", ""), client)
        target = _local(fields.get("next", PREFIX))
        if session is None:
            log.warning("console.sign_in_failed")
            return RedirectResponse(f"{PREFIX}/sign-in?failed=1&next={quote(target)}",
                                    status_code=303)  # fmt: skip
        log.info("console.signed_in", user=session.user)
        answer = RedirectResponse(target, status_code=303)
        _cookie(answer, request, SESSION, session.cookie, SESSION_SECONDS)
        answer.delete_cookie(PRE_SESSION, path=PREFIX)
        return answer

    @app.post(PREFIX + "/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        session = c.signed_in(request)
        await c.form(request, session)
        answer = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        answer.delete_cookie(SESSION, path=PREFIX)
        return answer

    @app.get(PREFIX, include_in_schema=False)
    def fleet(request: Request, page: int = 0) -> Response:
        session = c.signed_in(request)
        c.entries()
        status = console.fleet(c.view.registry, max(0, page))
        pages = max(1, -(-status.listed // console.PAGE))
        return c.page(request, "fleet.html", session, fleet=status, page=max(0, page),
                      pages=pages, summary=status.to_dict())  # fmt: skip

    @app.get(PREFIX + "/c/{cid}", include_in_schema=False)
    def connection(request: Request, cid: str, said: str = "") -> Response:
        session = c.signed_in(request)
        found, stores, conn_settings = c.connection(cid)
        shown = console.connection(stores, conn_settings)
        return c.page(request, "connection.html", session, connection=found, view=shown,
                      said=said[:300])  # fmt: skip

    @app.get(PREFIX + "/c/{cid}/job", include_in_schema=False)
    def job(request: Request, cid: str, ref: str = "", staff: str = "") -> Response:
        session = c.signed_in(request)
        found, stores, conn_settings = c.connection(cid)
        try:
            story = tell(stores, ref, scope=scope_of(conn_settings),
                         tz=console.zone(conn_settings, stores), staff=staff or None)  # fmt: skip
        except UnknownJob as exc:
            return c.page(request, "job.html", session, connection=found, story=None,
                          ref=ref, problem=str(exc))  # fmt: skip
        return c.page(request, "job.html", session, connection=found, story=story, ref=ref,
                      problem=None)  # fmt: skip

    @app.post(PREFIX + "/c/{cid}/staff/link", include_in_schema=False)
    async def link(request: Request, cid: str) -> Response:
        session = c.signed_in(request)
        fields = await c.form(request, session)
        staff, user = fields.get("staff", "").strip(), fields.get("user", "").strip()
        if not staff or not user.isdigit():
            return _back(cid, "choose a staff member and a user to link")
        _, stores, _ = c.connection(cid)
        jobs = actions.link_staff(stores, staff, int(user))
        log.info("console.staff_linked", connection=cid, staff=staff, user=int(user))
        return _back(cid, f"linked {staff} → user {user}; {len(jobs)} job(s) with parked pairs "
                          "sync again")  # fmt: skip

    @app.post(PREFIX + "/c/{cid}/dlq/{verb}", include_in_schema=False)
    async def dead_letter(request: Request, cid: str, verb: str) -> Response:
        session = c.signed_in(request)
        fields = await c.form(request, session)
        if verb not in DONE:
            return PlainTextResponse("replay or drop\n", status_code=404, headers=HEADERS)
        _, stores, conn_settings = c.connection(cid)
        try:
            rows = actions.selected(stores, [fields.get("entry", "")])
        except actions.NoSuchEntry as exc:
            return _back(cid, str(exc))
        if verb == "replay":
            send = actions.enqueuer(c.runtime.redis, c.runtime.redis_url, c.runtime.lanes, cid,
                                    conn_settings.connection_max_tasks).send  # fmt: skip
            done = actions.replay(stores, send, rows)
        else:
            done = actions.drop(stores, rows)
        log.info(f"console.dead_letter_{verb}", connection=cid, entries=done)
        return _back(cid, f"{DONE[verb]} {', '.join(done) or 'nothing'}")


def _local(target: str) -> str:
    """Only a path of the console itself: never another site's address."""
    return target if target.startswith(PREFIX) and "//" not in target else PREFIX


def _cookie(answer: Response, request: Request, name: str, value: str, seconds: int) -> None:
    answer.set_cookie(name, value, max_age=seconds, path=PREFIX, httponly=True,
                      samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
