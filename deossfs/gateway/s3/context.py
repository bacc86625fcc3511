"""What every S3 request needs before its operation runs: who signed it, for which bucket
and key, and how its errors are written (S3's XML, with S3's codes).

Errors: the S3 API raises the project's taxonomy (NoSuchKey, AccessDenied, RateLimited...)
or S3AuthError / S3Error for what only S3 has a name for; `error_response` names each in
S3's terms once, here, and takes the status from `errors.to_http_status` unless S3 fixes
another.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response

from ...errors import (
    AccessDenied,
    AlreadyExists,
    ChainError,
    DeossError,
    IntegrityError,
    InvalidInput,
    InvalidName,
    KeyConflict,
    KeyTooLongError,
    NameTooLong,
    NoSpace,
    NoSuchBucket,
    NoSuchKey,
    NotEmpty,
    NotFound,
    NotYetStored,
    PermanentError,
    RangeNotSatisfiable,
    RateLimited,
    RequestTimeout,
    TemporaryError,
    TooLarge,
    Unauthenticated,
    Unsupported,
    classify,
    cli_message,
    to_http_status,
)
from ..credentials import KeyStore
from ..engine import GatewayEngine
from . import xml
from .sigv4 import HeaderMap, S3AuthError, VerifiedRequest, verify_request


class S3Error(PermanentError):
    """An error only S3 has a name for: `code`, message, HTTP `status`."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.http_status = code, status


class NoSuchUpload(NotFound):
    """A multipart upload that does not exist (completed, aborted or never made)."""


#: taxonomy class -> S3 error code (the first class in an error's MRO found here names it)
_CODES: list[tuple[type[BaseException], str]] = [
    (NoSuchBucket, "NoSuchBucket"), (NoSuchKey, "NoSuchKey"), (NoSuchUpload, "NoSuchUpload"),
    (KeyTooLongError, "KeyTooLongError"), (NameTooLong, "KeyTooLongError"),
    (KeyConflict, "KeyConflict"), (xml.MalformedXML, "MalformedXML"),
    (RangeNotSatisfiable, "InvalidRange"), (RequestTimeout, "RequestTimeout"),
    (InvalidName, "InvalidArgument"), (InvalidInput, "InvalidArgument"),
    (NotEmpty, "BucketNotEmpty"), (AlreadyExists, "BucketAlreadyOwnedByYou"),
    (NotFound, "NoSuchKey"), (Unauthenticated, "AccessDenied"), (AccessDenied, "AccessDenied"),
    (TooLarge, "EntityTooLarge"), (NoSpace, "InsufficientStorage"), (Unsupported, "NotImplemented"),
    (RateLimited, "SlowDown"), (NotYetStored, "OperationAborted"), (IntegrityError, "InternalError"),
    (TemporaryError, "ServiceUnavailable"), (ChainError, "InvalidRequest"),
]
#: statuses S3 fixes for a code, where the taxonomy's differs
_STATUS = {"SlowDown": 503, "RequestTimeout": 400, "KeyConflict": 409, "OperationAborted": 409,
           "InternalError": 500}


def code_and_status(exc: BaseException) -> tuple[str, int]:
    exc = classify(exc)
    if isinstance(exc, S3AuthError):
        return exc.code, exc.status
    if isinstance(exc, S3Error):
        return exc.code, exc.http_status
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code, _STATUS.get(code, to_http_status(exc))
    return "InternalError", 500


def error_response(exc: BaseException, resource: str, request_id: str, head: bool = False) -> Response:
    """S3's XML error for `exc` (a HEAD answers the status alone, as S3 does)."""
    code, status = code_and_status(exc)
    headers = {"x-amz-request-id": request_id}
    if code == "SlowDown":
        headers["Retry-After"] = "2"
    if head:
        return Response(status_code=status, headers=headers)
    message = str(exc) if isinstance(exc, S3AuthError | S3Error) else cli_message(exc)
    children: list[tuple[str, str | None]] = [("Code", code), ("Message", message),
                                              ("Resource", resource), ("RequestId", request_id)]
    details = getattr(exc, "details", None) or {}
    children += list(details.items())
    body = xml.document("Error", children, namespace=False)
    return Response(body, status_code=status, media_type="application/xml", headers=headers)


@dataclass
class S3Call:
    """One S3 request, authenticated: the account it acts for and what it names."""

    request: Request
    verified: VerifiedRequest
    owner: str
    bucket: str  # "" for the service (ListBuckets)
    key: str  # "" for a bucket or the service
    query: dict[str, str]
    headers: HeaderMap
    request_id: str

    @property
    def resource(self) -> str:
        return "/" + self.bucket + ("/" + self.key if self.key else "")

    def has(self, name: str) -> bool:
        return name in self.query

    def header(self, name: str, default: str | None = None) -> str | None:
        value = self.headers.get(name)
        return default if value is None else value


def split_path(raw_path: bytes, host_bucket: str | None) -> tuple[str, str]:
    """(bucket, key) of a request path as sent: path-style `/bucket/key`, or with the
    bucket taken from the Host (virtual-host style) the whole path is the key. The key is
    percent-decoded once, as UTF-8; its slashes (even `//` and a leading one) stay."""
    path = raw_path[1:] if raw_path.startswith(b"/") else raw_path
    if host_bucket is not None:
        bucket, rest = host_bucket, path
    else:
        bucket_raw, _, rest = path.partition(b"/")
        bucket = _decode(bucket_raw)
    return bucket, _decode(rest)


def _decode(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the request path is not UTF-8 once percent-decoded") from None


def host_bucket(host: str | None, domain: str) -> str | None:
    """The bucket of a virtual-host-style request (Host: bucket.DOMAIN[:port])."""
    if not domain or not host:
        return None
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    suffix = "." + domain.lower().strip(".")
    name = name.lower()
    return name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else None


async def authenticate(request: Request, engine: GatewayEngine, keys: KeyStore) -> S3Call:
    """Verify the request's SigV4 signature and that the gateway may act for its account."""
    import trio

    scope = request.scope
    headers = HeaderMap((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"])
    request_id = scope.setdefault("state", {}).setdefault("request_id", secrets.token_hex(8).upper())
    raw_path = scope.get("raw_path") or scope["path"].encode()
    # verifying is hashing and a stat of the key file: cheap, done on the trio thread
    verified = verify_request(scope["method"], raw_path, scope["query_string"], headers,
                              keys.lookup, time.time())
    if verified is None:
        raise S3Error("AccessDenied", "Anonymous access is not allowed: sign the request with "
                      "an access key from `deossfs gateway key create`.", 403)
    scope["state"]["account"] = verified.account
    await engine.authorize(verified.account)
    bucket, key = split_path(raw_path, host_bucket(headers.get("host"), engine.config.gateway.domain))
    query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    await trio.lowlevel.checkpoint()
    return S3Call(request, verified, verified.account, bucket, key, query, headers, request_id)


def is_s3_request(scope: dict, domain: str) -> bool:
    """Does a request belong to the S3 API rather than DeOSS's routes? Signed with SigV4
    (header or presigned URL), or addressed to a bucket host; unsigned requests to a
    DeOSS path stay with DeOSS."""
    query = scope.get("query_string", b"")
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and value.startswith((b"AWS4-", b"AWS ")):
            return True
        if name == b"host" and host_bucket(value.decode("latin-1"), domain):
            return True
    if b"X-Amz-Credential=" in query or b"X-Amz-Signature=" in query or b"AWSAccessKeyId=" in query:
        return True
    first = scope["path"].split("/", 2)[1] if scope["path"].count("/") else ""
    return first not in DEOSS_TOP and scope["path"] != "/favicon.ico"


#: the first path segments of DeOSS's routes (and the console's)
DEOSS_TOP = frozenset({"file", "files", "object", "resume", "fragment", "bucket", "territory",
                       "version", "console"})


def s3_error_for(exc: BaseException) -> DeossError:
    return exc if isinstance(exc, DeossError) else S3Error("InternalError", "internal error", 500)
