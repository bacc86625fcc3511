"""The gateway's ASGI application: the API families side by side on one listener.

DeOSS's REST routes (deoss.py) and the S3 API (s3/). Each family renders its own errors
(DeOSS: a JSON envelope; S3: its XML); all take the status from `errors.to_http_status`,
and all stand on the same engine (authorization, keys, limits) and upload service.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import DeossError, InvalidInput, NotFound, Unsupported, classify, to_http_status
from .auth import RequestVerifier
from .deoss import DeossApi, error_response
from .engine import GatewayEngine
from .http import AccessLog
from .s3.context import is_s3_request
from .uploads import UploadService

log = logging.getLogger(__name__)


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups (nurseries), else the group itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _deoss_error(request: Request, exc: Exception) -> Response:
    exc = classify(_unwrap(exc))  # type: ignore[assignment]
    status = to_http_status(exc)
    if status >= 500 and not isinstance(exc, DeossError):
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    elif status >= 500:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    return error_response(exc, status)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in DeOSS's envelope."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: DeossError = NotFound(f"no route {request.method} {request.url.path}",
                                     hint="docs/gateway.md lists the routes")
    elif exc.status_code == 405:
        error = Unsupported(f"{request.method} is not a method of {request.url.path}")
        return error_response(error, 405)
    else:
        error = InvalidInput(str(exc.detail))
    return error_response(error, exc.status_code)


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("%s %s: the client disconnected before its body was complete",
             request.method, request.url.path)
    return Response(status_code=499)


class ApiDispatch:
    """DeOSS's routes and the S3 API on one listener: a request signed with SigV4 (or
    addressed to a bucket host) is S3's; unsigned requests to DeOSS's paths are DeOSS's;
    anything else is S3's (which answers S3's XML errors)."""

    def __init__(self, deoss: ASGIApp, s3: ASGIApp | None, domain: str) -> None:
        self.deoss, self.s3, self.domain = deoss, s3, domain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.s3 is not None and is_s3_request(scope, self.domain):
            await self.s3(scope, receive, send)
        else:
            await self.deoss(scope, receive, send)


def build_app(engine: GatewayEngine, uploads: UploadService, verifier: RequestVerifier,
              s3: ASGIApp | None = None) -> ASGIApp:
    deoss = DeossApi(engine, uploads, verifier)
    app = Starlette(
        routes=deoss.routes(),
        exception_handlers={
            ClientDisconnect: _client_gone,
            HTTPException: _http_error,
            Exception: _deoss_error,
            DeossError: _deoss_error,
        },
        middleware=[
            # DeOSS answers any origin (browser apps call it directly); requests are
            # authorized by signed headers, never cookies, so this grants nothing
            Middleware(CORSMiddleware, allow_origins=["*"], allow_headers=["*"],
                       allow_methods=["GET", "PUT", "POST", "DELETE", "HEAD"],
                       expose_headers=["Content-Range", "Range", "ETag", "Content-Disposition"]),
        ],
    )
    return AccessLog(ApiDispatch(app, s3, engine.config.gateway.domain))
