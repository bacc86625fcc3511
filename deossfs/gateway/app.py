"""The gateway's ASGI application: the API families side by side on one listener.

Today the DeOSS REST routes (deoss.py). Each family renders its own errors (DeOSS: a JSON
envelope); all take the status from `errors.to_http_status`, and all stand on the same
engine (authorization, keys, limits) and upload service.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp

from ..errors import DeossError, InvalidInput, NotFound, Unsupported, classify, to_http_status
from .auth import RequestVerifier
from .deoss import DeossApi, error_response
from .engine import GatewayEngine
from .http import AccessLog
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


def build_app(engine: GatewayEngine, uploads: UploadService, verifier: RequestVerifier) -> ASGIApp:
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
    return AccessLog(app)
