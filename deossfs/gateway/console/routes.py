"""The web console: server-rendered pages under /console/ on the gateway's listener.

What a person does in a browser with their account's buckets: sign in with an S3 access
key, browse buckets and objects, upload, download, share, rename, delete, see where each
file's fragments are and whether their nodes answer, and manage territories. Every action
goes through the calls the S3 and REST routes make for the same thing - the engine's
authorization, the account's catalog, the upload service, the chain - so the console can
do nothing its user's access key could not. Bytes move through the S3 API itself: the
browser uploads (PutObject, multipart parts) and shares (GetObject) with URLs the console
presigns for it; the secret never leaves the gateway. docs/console.md shows each page.

This module: the application, sessions and sign-in, CSRF, the security headers, and the
bucket and territory pages. browser.py has the object pages and the upload API.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import trio
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...catalog.catalog import Catalog, Catalogs
from ...chain.interface import BLOCK_SECONDS
from ...errors import (
    AccessDenied,
    DeossError,
    InvalidInput,
    NotEmpty,
    classify,
    cli_message,
    to_http_status,
)
from ..credentials import AccessKey, KeyStore
from ..engine import GatewayEngine
from ..uploads import UploadService
from .nodes import NodeProbe
from .session import Session, SessionStore, SignInLimiter, tokens_match

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "deossfs_console"
SIGNIN_COOKIE = "deossfs_console_signin"
PREFIX = "/console"
#: the browser may load and connect to this origin only; no inline script or style
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_DUMMY_SECRET = secrets.token_urlsafe(30)


class SignInRequired(Exception):
    """No live session (none, forged, expired, or its key removed): back to sign-in."""

    def __init__(self, message: str | None = None, *, ended: bool = True) -> None:
        super().__init__(message or "")
        self.message = message
        #: there was a session (its cookie came): say that it ended
        self.ended = ended


class CsrfRefused(Exception):
    """A request that would change something without this session's CSRF token."""


@dataclass
class User:
    """The signed-in account of a request."""

    session: Session
    #: the access key signed in with (its secret stays on the server: it signs URLs)
    key: AccessKey
    catalog: Catalog

    @property
    def account(self) -> str:
        return self.key.account

    @property
    def csrf(self) -> str:
        return self.session.csrf


def url(path: str, **query: Any) -> str:
    """A console URL: `path` (segments already quoted) with a query of the non-empty values."""
    pairs = {k: v for k, v in query.items() if v not in (None, "")}
    return PREFIX + path + ("?" + urlencode(pairs, quote_via=quote) if pairs else "")


def seg(text: str) -> str:
    """One path segment, quoted."""
    return quote(text, safe="")


def human_bytes(size: int | float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def human_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


class SecurityHeaders:
    """ASGI middleware: the console's security headers on every response that has none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        static = scope["path"].startswith(PREFIX + "/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"),
                         (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"cache-control", b"private, max-age=3600" if static else b"no-store")]
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in names]
            await send(message)

        await self.app(scope, receive, with_headers)


class Console:
    """The console of one gateway: what its pages stand on, and the pages."""

    def __init__(self, engine: GatewayEngine, uploads: UploadService, keys: KeyStore,
                 catalogs: Catalogs, s3: Any) -> None:
        self.engine = engine
        self.uploads = uploads
        self.keys = keys
        self.catalogs = catalogs
        #: the S3 API: its object operations copy bytes across buckets for a move
        self.s3 = s3
        settings = engine.config.gateway
        self.sessions = SessionStore(engine.workspace / "console-sessions.sqlite3", settings.console_session)
        self.limiter = SignInLimiter()
        self.probe = NodeProbe(engine.account)
        environment = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                         autoescape=True, undefined=jinja2.StrictUndefined)
        environment.globals.update(url=url, seg=seg, human_bytes=human_bytes, human_time=human_time)
        self.templates = Jinja2Templates(env=environment)
        from .browser import BrowserPages  # the object pages stand on this class

        self.browser = BrowserPages(self)

    def close(self) -> None:
        self.sessions.close()

    # ---- the application ---------------------------------------------------------------

    def app(self) -> ASGIApp:
        routes = [
            Route("/", self.home, methods=["GET"]),
            Route("/signin", self.signin_page, methods=["GET"]),
            Route("/signin", self.signin, methods=["POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/buckets", self.buckets_page, methods=["GET"]),
            Route("/buckets/create", self.bucket_create, methods=["POST"]),
            Route("/buckets/delete", self.bucket_delete, methods=["POST"]),
            Route("/territory", self.territory_page, methods=["GET"]),
            Route("/territory/{name}/{action}", self.territory_change, methods=["POST"]),
            *self.browser.routes(),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ]
        inner = Starlette(routes=routes, exception_handlers={
            SignInRequired: self._signin_required, CsrfRefused: self._csrf_refused,
            HTTPException: self._http_error, Exception: self._error, DeossError: self._error})
        return SecurityHeaders(_Prefixed(inner))

    # ---- rendering ------------------------------------------------------------------------

    def render(self, request: Request, template: str, user: User | None, status: int = 200,
               **context: Any) -> Response:
        flash = self.sessions.take_flash(user.session) if user is not None else None
        context.update(user=user, flash=flash, csrf=user.csrf if user else "",
                       secure=request.url.scheme == "https")
        context.setdefault("title", "DeOSS console")
        context.setdefault("error", None)
        return self.templates.TemplateResponse(request, template, context, status_code=status)

    def done(self, user: User, message: str, to: str) -> RedirectResponse:
        """After a form: remember the outcome for the next page, and go there (303)."""
        self.sessions.set_flash(user.session, message)
        return RedirectResponse(to, status_code=303)

    async def _signin_required(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        if request.url.path.startswith(PREFIX + "/api/"):
            return JSONResponse({"error": "signin", "message": exc.message or "sign in again"},
                                status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(url("/signin", next=target if request.method == "GET" else None,
                                        why="expired" if exc.ended and exc.message is None else None),
                                    status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    async def _csrf_refused(self, request: Request, exc: Exception) -> Response:
        message = ("This request did not carry the page's security token, so nothing was "
                   "changed. Reload the page and try again.")
        if request.url.path.startswith(PREFIX + "/api/"):
            return JSONResponse({"error": "csrf", "message": message}, status_code=403)
        return self.render(request, "message.html", None, status=403, title="Refused",
                           message=message)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = "There is no such page in the console." if exc.status_code == 404 else \
            f"{request.method} is not allowed here." if exc.status_code == 405 else str(exc.detail)
        return self.render(request, "message.html", await self._signed_in(request), status=exc.status_code,
                           title="Not found" if exc.status_code == 404 else "Refused", message=message)

    async def _error(self, request: Request, exc: Exception) -> Response:
        exc = classify(_unwrap(exc))  # type: ignore[assignment]
        status = to_http_status(exc)
        if not isinstance(exc, DeossError):
            log.error("console %s %s failed", request.method, request.url.path, exc_info=exc)
            message = "The console failed on this request; the gateway's log has the details."
        else:
            message = cli_message(exc)
        if request.url.path.startswith(PREFIX + "/api/"):
            return JSONResponse({"error": type(exc).__name__, "message": message}, status_code=status)
        return self.render(request, "message.html", await self._signed_in(request), status=status,
                           title="Error", message=message)

    async def _signed_in(self, request: Request) -> User | None:
        """The user of an error page, when there is one: it keeps the menu and sign-out."""
        try:
            return await self.user(request)
        except Exception:  # noqa: BLE001 - no session, or none usable: a page without the menu
            return None

    # ---- who is asking -----------------------------------------------------------------------

    async def user(self, request: Request) -> User:
        """The signed-in account of the request (SignInRequired when there is none), once the
        gateway may still act for it."""
        cookie = request.cookies.get(COOKIE)
        session = self.sessions.get(cookie)
        if session is None:
            raise SignInRequired(ended=cookie is not None)
        key = self.keys.lookup(session.access_key_id)
        if key is None or key.account != session.account:
            self.sessions.delete(session)
            raise SignInRequired("The access key of this session was removed: sign in with another.")
        request.scope.setdefault("state", {})["account"] = key.account
        try:
            await self.engine.authorize(key.account)
        except AccessDenied as exc:
            self.sessions.delete(session)
            raise SignInRequired(cli_message(exc)) from None
        return User(session, key, self.catalogs.of(key.account))

    async def form(self, request: Request, user: User) -> FormData:
        """The posted form, once it carries this session's CSRF token (else CsrfRefused)."""
        form = await request.form(max_files=0, max_fields=2000)
        sent = form.get("csrf")
        if not tokens_match(sent if isinstance(sent, str) else None, user.csrf):
            raise CsrfRefused()
        return form

    def check_csrf_header(self, request: Request, user: User) -> None:
        if not tokens_match(request.headers.get("x-csrf-token"), user.csrf):
            raise CsrfRefused()

    # ---- sign-in ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return RedirectResponse(url("/buckets"), status_code=303)

    def _signin_form(self, request: Request, status: int = 200, error: str | None = None,
                     access_key_id: str = "") -> Response:
        token = secrets.token_urlsafe(24)
        next_page = request.query_params.get("next", "")
        why = request.query_params.get("why")
        notice = "Your session has ended: sign in again." if why == "expired" and not error else None
        response = self.render(request, "signin.html", None, status=status, title="Sign in",
                               signin_token=token, next_page=_safe_next(next_page) or "",
                               error=error, notice=notice, access_key_id=access_key_id)
        response.set_cookie(SIGNIN_COOKIE, token, max_age=3600, path=PREFIX, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def signin_page(self, request: Request) -> Response:
        if self.sessions.get(request.cookies.get(COOKIE)) is not None:
            return RedirectResponse(_safe_next(request.query_params.get("next", "")) or url("/buckets"),
                                    status_code=303)
        return self._signin_form(request)

    async def signin(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        token = form.get("signin_token")
        if not isinstance(token, str) or not tokens_match(token, request.cookies.get(SIGNIN_COOKIE, "")):
            raise CsrfRefused()
        access_key_id = str(form.get("access_key_id", "")).strip()[:64]
        secret = str(form.get("secret", ""))[:256]
        address = request.client.host if request.client else "-"
        wait = self.limiter.wait(address, access_key_id)
        if wait > 0:
            return self._signin_form(request, 429, f"Too many failed sign-ins: try again in "
                                     f"{int(wait) + 1} seconds.", access_key_id)
        key = self.keys.lookup(access_key_id)
        # the comparison is made even for an unknown key, so that timing tells nothing
        matches = hmac.compare_digest(secret.encode(), (key.secret if key else _DUMMY_SECRET).encode())
        if key is None or not matches:
            self.limiter.failed(address, access_key_id)
            log.info("console sign-in refused for access key %r from %s", access_key_id, address)
            return self._signin_form(request, 401, "The access key or the secret is wrong. Use a key "
                                     "made with `deossfs gateway key create`.", access_key_id)
        try:
            await self.engine.authorize(key.account)
        except AccessDenied as exc:
            return self._signin_form(request, 403, cli_message(exc), access_key_id)
        cookie, _ = self.sessions.create(key.access_key_id, key.account)
        log.info("console sign-in of %s (access key %s) from %s", key.account, key.access_key_id, address)
        response = RedirectResponse(_safe_next(str(form.get("next", ""))) or url("/buckets"), status_code=303)
        response.set_cookie(COOKIE, cookie, max_age=int(self.sessions.lifetime), path=PREFIX,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        response.delete_cookie(SIGNIN_COOKIE, path=PREFIX)
        return response

    async def signout(self, request: Request) -> Response:
        user = await self.user(request)
        await self.form(request, user)
        self.sessions.delete(user.session)
        response = RedirectResponse(url("/signin"), status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    # ---- buckets --------------------------------------------------------------------------

    async def buckets_page(self, request: Request) -> Response:
        user = await self.user(request)
        rows = []
        for name in sorted(await user.catalog.buckets()):
            try:
                objects, size = await user.catalog.totals(name)
            except DeossError as exc:  # one bucket that cannot be read does not hide the others
                rows.append({"name": name, "objects": None, "bytes": None, "problem": cli_message(exc)})
                continue
            rows.append({"name": name, "objects": objects, "bytes": size, "problem": None})
        return self.render(request, "buckets.html", user, title="Buckets", buckets=rows)

    async def bucket_create(self, request: Request) -> Response:
        user = await self.user(request)
        form = await self.form(request, user)
        name = str(form.get("name", "")).strip()
        try:
            await user.catalog.create_bucket(name)
        except DeossError as exc:
            return self.done(user, f"Bucket {name!r} was not created: {cli_message(exc)}", url("/buckets"))
        return self.done(user, f"Bucket {name} created.", url("/buckets"))

    async def bucket_delete(self, request: Request) -> Response:
        user = await self.user(request)
        form = await self.form(request, user)
        name = str(form.get("name", ""))
        try:
            if name not in await user.catalog.buckets():
                raise InvalidInput(f"there is no bucket {name!r}")
            await user.catalog.delete_bucket(name)
        except NotEmpty:
            return self.done(user, f"Bucket {name} is not empty: delete its objects first.", url("/buckets"))
        except DeossError as exc:
            return self.done(user, f"Bucket {name!r} was not deleted: {cli_message(exc)}", url("/buckets"))
        return self.done(user, f"Bucket {name} deleted.", url("/buckets"))

    # ---- territories ----------------------------------------------------------------------

    async def territory_page(self, request: Request) -> Response:
        user = await self.user(request)
        chain = self.engine.chain
        territories = await trio.to_thread.run_sync(chain.territories, user.account)
        block = await trio.to_thread.run_sync(chain.block_number)
        now = time.time()
        rows = [{"t": t, "used": t.used_space + t.locked_space,
                 "percent": round(100 * (t.used_space + t.locked_space) / t.total_space) if t.total_space else 0,
                 "expires": now + (t.deadline - block) * BLOCK_SECONDS}
                for t in sorted(territories, key=lambda t: t.name)]
        return self.render(request, "territory.html", user, title="Territory", territories=rows,
                           own=user.account == self.engine.address, gateway=self.engine.address)

    async def territory_change(self, request: Request) -> Response:
        """Expand or renew: a payment its owner signs on the chain, which an authorization
        does not delegate - so only for the gateway's own account, as the REST routes."""
        user = await self.user(request)
        form = await self.form(request, user)
        name, action = request.path_params["name"], request.path_params["action"]
        back = url("/territory")
        if action not in ("expand", "renew"):
            return self.done(user, "Territories can be expanded or renewed here.", back)
        if user.account != self.engine.address:
            return self.done(user, "Territories are expanded and renewed with their owner's own "
                             "signature on the chain: run `deossfs territory expand|renew` with "
                             "your key.", back)
        text = str(form.get("amount", "")).strip()
        if not text.isdigit() or not 0 < int(text) <= 100_000:
            return self.done(user, f"{'GiB' if action == 'expand' else 'Days'} must be a whole "
                             "number from 1 to 100000.", back)
        chain = self.engine.chain
        try:
            if action == "expand":
                await trio.to_thread.run_sync(chain.expand_territory, name, int(text))
            else:
                await trio.to_thread.run_sync(chain.renew_territory, name, int(text))
        except DeossError as exc:
            return self.done(user, f"Territory {name!r} was not changed: {cli_message(exc)}", back)
        what = f"expanded by {text} GiB" if action == "expand" else f"renewed for {text} days"
        return self.done(user, f"Territory {name} {what}.", back)


class _Prefixed:
    """The console's routes are written without /console; requests arrive with it (the
    root path, as ASGI mounts say it: the request's URL stays whole)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PREFIX:
            await RedirectResponse(PREFIX + "/", status_code=308)(scope, receive, send)
            return
        await self.app(dict(scope, root_path=PREFIX), receive, send)


def _safe_next(target: str) -> str | None:
    """A page to go to after sign-in: one of the console's own, never another site."""
    if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target \
            and "://" not in target and not target.startswith(PREFIX + "/signin"):
        return target
    return None


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
