"""Server-side AWS Signature Version 4 for S3: the Authorization header and presigned URLs.

Framework-independent: `verify_request` takes the request line and headers as sent
and answers with a `VerifiedRequest` (whose key, and what the body must satisfy),
None for a request without any authentication, or raises `S3AuthError` carrying S3's
error code and HTTP status. The body is checked afterwards, as it streams, by
`gateway/s3/payload.py`, from the `VerifiedRequest`.

The canonical request is AWS's, as S3 computes it:

    METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n
    signed header names \\n payload hash

- The URI is the path as sent, each segment percent-decoded and UriEncoded once
  (S3 does not encode it twice nor remove dot segments or double slashes); an
  encoded slash (%2F) stays encoded, a literal '/' separates segments.
- The query's names and values are percent-decoded ('+' is a space, as the route
  that reads the query will also take it) and UriEncoded, then sorted by name and
  value; a name without '=' has an empty value; X-Amz-Signature is left out.
- The headers named in SignedHeaders, lower-cased, their values trimmed with inner
  runs of spaces folded to one, repeated headers joined by ','.
- The payload hash is the x-amz-content-sha256 header (required with the header;
  UNSIGNED-PAYLOAD for a presigned URL unless the header or an X-Amz-Content-Sha256
  parameter says otherwise).

Any region in the credential scope is accepted (a gateway has no region); the
service must be s3. Signatures are compared in constant time. A header-signed
request more than 15 minutes from `now` is RequestTimeTooSkewed; a presigned URL
is valid from its X-Amz-Date (15 minutes of skew allowed) for X-Amz-Expires seconds
(at most 604800, a week). Every x-amz-* header a request carries must be signed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from urllib.parse import quote, unquote_to_bytes

from ...errors import PermanentError
from ..credentials import AccessKey

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINATOR = "aws4_request"
MAX_SKEW = timedelta(minutes=15)
MAX_PRESIGNED_EXPIRES = 604800
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_NOT_SUPPORTED = (
    "The authorization mechanism you have provided is not supported. "
    "Please use AWS4-HMAC-SHA256."
)
_CREDENTIAL_SHAPE = 'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
_QUERY_PARAMETERS = (
    "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date",
    "X-Amz-SignedHeaders", "X-Amz-Expires",
)


class S3AuthError(PermanentError):
    """A request S3 would refuse: its error `code`, message and HTTP `status`.

    `details` are extra elements of S3's XML error body (e.g. the StringToSign and
    CanonicalRequest of a SignatureDoesNotMatch, which help a client find its bug;
    they hold nothing secret)."""

    def __init__(
        self, code: str, message: str, status: int = 403, *,
        details: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.details = details or {}
        super().__init__(message)


def malformed_header(why: str) -> S3AuthError:
    return S3AuthError(
        "AuthorizationHeaderMalformed", f"The authorization header is malformed; {why}", 400
    )


def malformed_query(why: str) -> S3AuthError:
    return S3AuthError("AuthorizationQueryParametersError", why, 400)


class PayloadMode(Enum):
    """What x-amz-content-sha256 says about the body (the value is the header's)."""

    UNSIGNED = "UNSIGNED-PAYLOAD"
    #: a hex SHA-256 of the body, checked when the body has been read
    SHA256 = "<sha256>"
    STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
    STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"

    @property
    def chunked(self) -> bool:
        """The body is aws-chunked."""
        return self.value.startswith("STREAMING-")

    @property
    def signed_chunks(self) -> bool:
        return self in (PayloadMode.STREAMING_SIGNED, PayloadMode.STREAMING_SIGNED_TRAILER)

    @property
    def has_trailer(self) -> bool:
        return self.value.endswith("-TRAILER")


def payload_mode_of(content_sha256: str) -> PayloadMode:
    """The mode an x-amz-content-sha256 value announces, or S3's error for it."""
    if _HEX_SHA256.fullmatch(content_sha256):
        return PayloadMode.SHA256
    for mode in PayloadMode:
        if mode.value == content_sha256 and mode is not PayloadMode.SHA256:
            return mode
    if content_sha256.startswith("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"):
        raise S3AuthError(
            "NotImplemented", "Signature Version 4A (ECDSA) is not supported; "
            "sign with AWS4-HMAC-SHA256.", 501,
        )
    raise S3AuthError(
        "InvalidArgument",
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
        "or a valid sha256 value.", 400,
    )


class HeaderMap:
    """A case-insensitive multi-map of request headers, built from (name, value) pairs."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name.lower(), []).append(value)

    @classmethod
    def of(cls, headers: HeaderMap | Iterable[tuple[str, str]]) -> HeaderMap:
        return headers if isinstance(headers, HeaderMap) else cls(headers)

    def get(self, name: str) -> str | None:
        """The header's value; repeated headers joined with ',' (as HTTP combines them)."""
        values = self._values.get(name.lower())
        return None if values is None else ",".join(values)

    def get_all(self, name: str) -> list[str]:
        return self._values.get(name.lower(), [])

    def names(self) -> Iterable[str]:
        return self._values.keys()

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._values


@dataclass(frozen=True)
class ChunkSigning:
    """What the signatures of aws-chunked chunks and trailers are computed from."""

    signing_key: bytes = field(repr=False)
    #: the request's timestamp, e.g. 20130524T000000Z
    amz_date: str
    #: the credential scope, e.g. 20130524/us-east-1/s3/aws4_request
    scope: str
    #: the request's own signature, which the first chunk's signature chains from
    seed_signature: str

    def sign(self, string_to_sign: str) -> str:
        return hmac.new(self.signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose signature is good: who signed it and what its body must satisfy."""

    access_key: AccessKey
    #: signed by query parameters (a presigned URL) rather than the Authorization header
    presigned: bool
    payload_mode: PayloadMode
    #: the payload hash that was signed: a hex SHA-256 (mode SHA256) or the mode's constant
    content_sha256: str
    #: names announced by x-amz-trailer, lower-case (e.g. ("x-amz-checksum-crc32",))
    trailer_names: tuple[str, ...]
    region: str
    signed_at: datetime
    #: when a presigned URL stops being valid (None for header auth)
    expires_at: datetime | None
    signed_headers: tuple[str, ...]
    signing: ChunkSigning

    @property
    def account(self) -> str:
        return self.access_key.account


def verify_request(
    method: str,
    raw_path: str | bytes,
    query_string: str | bytes,
    headers: HeaderMap | Iterable[tuple[str, str]],
    lookup: Callable[[str], AccessKey | None],
    now: datetime | float,
) -> VerifiedRequest | None:
    """Check a request's SigV4 signature; None when it carries no authentication at all.

    `raw_path` and `query_string` are as sent (percent-encoded; ASGI's `raw_path` and
    `query_string`); str is taken as UTF-8. `lookup` finds a key by its id (e.g.
    `KeyStore.lookup`); `now` is seconds since the epoch or a datetime (naive: UTC)."""
    headers = HeaderMap.of(headers)
    if isinstance(now, int | float):
        now = datetime.fromtimestamp(now, UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    query = _parse_query(_to_bytes(query_string))
    names = {name for name, _ in query}
    authorization = headers.get_all("authorization")
    if authorization and (names & {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"}):
        raise S3AuthError(
            "InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm "
            "query parameter, Signature query string parameter or the Authorization header "
            "should be specified", 400,
        )
    if authorization:
        if len(authorization) > 1:
            raise malformed_header("only one Authorization header is allowed.")
        parsed = _parse_authorization(authorization[0])
    elif names & {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"}:
        parsed = _parse_presigned(query, now)
    elif names & {"AWSAccessKeyId", "Signature"}:
        raise S3AuthError("InvalidRequest", _NOT_SUPPORTED, 400)
    else:
        return None
    if "x-amz-security-token" in headers or "X-Amz-Security-Token" in names:
        raise S3AuthError(
            "InvalidToken", "This gateway issues no session tokens; sign with an access "
            "key from `deossfs gateway key create` and no X-Amz-Security-Token.", 400,
        )
    return _verify(method, raw_path, query, headers, parsed, lookup, now)


# ---- parsing the two forms ---------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    access_key_id: str
    date: str
    region: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # the timestamp that is signed
    signed_at: datetime
    expires_at: datetime | None
    presigned: bool


def _parse_authorization(value: str) -> _Parsed:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        if algorithm in ("AWS", "AWS4-ECDSA-P256-SHA256"):
            raise S3AuthError("InvalidRequest", _NOT_SUPPORTED, 400)
        raise S3AuthError("InvalidArgument", "Unsupported Authorization Type", 400)
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, part = item.strip().partition("=")
        if not sep or name in parts:
            raise malformed_header(f'the authorization component "{item.strip()}" is malformed.')
        parts[name] = part
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise malformed_header(
            "the authorization header requires three components: "
            "Credential, SignedHeaders, and Signature."
        )
    akid, date, region = _parse_credential(parts["Credential"], malformed_header)
    signed_headers = _parse_signed_headers(parts["SignedHeaders"], malformed_header)
    return _Parsed(akid, date, region, signed_headers, parts["Signature"], "",
                   datetime.min.replace(tzinfo=UTC), None, presigned=False)


def _parse_presigned(query: list[tuple[str, str]], now: datetime) -> _Parsed:
    params: dict[str, str] = {}
    for name, value in query:
        if name in _QUERY_PARAMETERS or name == "X-Amz-Content-Sha256":
            if name in params:
                raise malformed_query(f"{name} may appear only once in the query string.")
            params[name] = value
    if any(name not in params for name in _QUERY_PARAMETERS):
        raise malformed_query(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            "and X-Amz-Expires parameters."
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise malformed_query(
            "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"."
        )
    akid, date, region = _parse_credential(
        params["X-Amz-Credential"], lambda why: malformed_query(
            f"Error parsing the X-Amz-Credential parameter; {why}"
        ),
    )
    signed_at = _parse_amz_date(params["X-Amz-Date"])
    if signed_at is None:
        raise malformed_query(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        )
    expires = params["X-Amz-Expires"]
    if not re.fullmatch(r"-?\d{1,10}", expires):
        raise malformed_query("X-Amz-Expires should be a number")
    if int(expires) < 0:
        raise malformed_query("X-Amz-Expires must be non-negative")
    if int(expires) > MAX_PRESIGNED_EXPIRES:
        raise malformed_query(
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_PRESIGNED_EXPIRES}"
        )
    if date != params["X-Amz-Date"][:8]:
        raise malformed_query(
            "Error parsing the X-Amz-Credential parameter; Invalid credential date. "
            "Date is not the same as X-Amz-Date."
        )
    if signed_at - now > MAX_SKEW:
        raise S3AuthError("AccessDenied", "Request is not valid yet")
    expires_at = signed_at + timedelta(seconds=int(expires))
    if now > expires_at:
        raise S3AuthError("AccessDenied", "Request has expired")
    signed_headers = _parse_signed_headers(
        params["X-Amz-SignedHeaders"],
        lambda why: malformed_query(f"Error parsing the X-Amz-SignedHeaders parameter; {why}"),
    )
    return _Parsed(akid, date, region, signed_headers, params["X-Amz-Signature"],
                   params["X-Amz-Date"], signed_at, expires_at, presigned=True)


def _parse_credential(
    credential: str, malformed: Callable[[str], S3AuthError]
) -> tuple[str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0] or not parts[2]:
        raise malformed(f"the Credential is mal-formed; {_CREDENTIAL_SHAPE}")
    akid, date, region, service, terminator = parts
    if not re.fullmatch(r"\d{8}", date):
        raise malformed(f'incorrect date format "{date}". This date in the credential must '
                        'be in the format "yyyyMMdd".')
    if service != SERVICE:
        raise malformed(f'incorrect service "{service}". This endpoint belongs to "s3".')
    if terminator != TERMINATOR:
        raise malformed(
            f'incorrect terminal "{terminator}". This endpoint uses "aws4_request".'
        )
    return akid, date, region


def _parse_signed_headers(
    text: str, malformed: Callable[[str], S3AuthError]
) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in names):
        raise malformed("the SignedHeaders are malformed; expecting lower-case header names "
                        "separated by ';'.")
    if "host" not in names:
        raise malformed("the SignedHeaders must include host.")
    return names


def _parse_amz_date(text: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(text):
        return None
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _header_timestamp(headers: HeaderMap) -> tuple[str, datetime]:
    """The signed timestamp of a header-signed request: x-amz-date, else Date."""
    amz_date = headers.get("x-amz-date")
    if amz_date is not None:
        parsed = _parse_amz_date(amz_date.strip())
        if parsed is not None:
            return amz_date.strip(), parsed
    else:
        date = headers.get("date")
        try:
            parsed = parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            parsed = None
        if parsed is not None:  # "-0000" (botocore's) parses without a zone: it is UTC
            parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
            return parsed.strftime("%Y%m%dT%H%M%SZ"), parsed
    raise S3AuthError("AccessDenied", "AWS authentication requires a valid Date or "
                      "x-amz-date header")


# ---- verifying -----------------------------------------------------------------


def _verify(
    method: str,
    raw_path: str | bytes,
    query: list[tuple[str, str]],
    headers: HeaderMap,
    parsed: _Parsed,
    lookup: Callable[[str], AccessKey | None],
    now: datetime,
) -> VerifiedRequest:
    if parsed.presigned:
        amz_date, signed_at = parsed.amz_date, parsed.signed_at
        content_sha256 = headers.get("x-amz-content-sha256")
        if content_sha256 is None:
            content_sha256 = dict(query).get("X-Amz-Content-Sha256", PayloadMode.UNSIGNED.value)
    else:
        amz_date, signed_at = _header_timestamp(headers)
        if parsed.date != amz_date[:8]:
            raise malformed_header("Invalid credential date. Date is not the same as X-Amz-Date.")
        content_sha256 = headers.get("x-amz-content-sha256")
        if content_sha256 is None:
            raise S3AuthError(
                "InvalidRequest", "Missing required header for this request: "
                "x-amz-content-sha256", 400,
            )
    content_sha256 = content_sha256.strip()
    mode = payload_mode_of(content_sha256)
    if parsed.presigned and mode.signed_chunks:
        raise S3AuthError("InvalidRequest", "A presigned URL cannot carry signed chunks "
                          "(STREAMING-AWS4-HMAC-SHA256-PAYLOAD); sign the request's "
                          "Authorization header instead.", 400)
    _check_all_amz_headers_signed(headers, parsed.signed_headers, parsed.presigned)

    key = lookup(parsed.access_key_id)
    if key is None:
        raise S3AuthError(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            details={"AWSAccessKeyId": parsed.access_key_id},
        )
    if not parsed.presigned and abs(now - signed_at) > MAX_SKEW:
        raise S3AuthError(
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            details={
                "RequestTime": amz_date,
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "MaxAllowedSkewMilliseconds": str(int(MAX_SKEW.total_seconds() * 1000)),
            },
        )

    absent = [name for name in parsed.signed_headers if name not in headers]
    if absent:  # else a signed empty header could be dropped unnoticed
        raise S3AuthError(
            "SignatureDoesNotMatch", "The request signature we calculated does not match the "
            f"signature you provided: the signed header {absent[0]} is not in the request.",
            details={"AWSAccessKeyId": parsed.access_key_id},
        )
    scope = f"{parsed.date}/{parsed.region}/{SERVICE}/{TERMINATOR}"
    signing_key = derive_signing_key(key.secret, parsed.date, parsed.region)
    signing = ChunkSigning(signing_key, amz_date, scope, parsed.signature)
    canonical_requests = [
        "\n".join((
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(query, presigned=parsed.presigned),
            headers_block,
            ";".join(parsed.signed_headers),
            content_sha256,
        ))
        for headers_block in canonical_headers(headers, parsed.signed_headers)
    ]
    provided = parsed.signature.encode() if _SIGNATURE.fullmatch(parsed.signature) else b""
    string_to_sign = ""
    matched = False
    for canonical_request in canonical_requests:
        string_to_sign = "\n".join((
            ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()
        ))
        # compare_digest on every candidate: no early exit that timing could reveal
        matched |= hmac.compare_digest(signing.sign(string_to_sign).encode(), provided)
    if not matched:
        raise S3AuthError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            details={
                "AWSAccessKeyId": parsed.access_key_id,
                "StringToSign": string_to_sign,
                "SignatureProvided": parsed.signature,
                "CanonicalRequest": canonical_requests[0],
            },
        )
    return VerifiedRequest(
        access_key=key,
        presigned=parsed.presigned,
        payload_mode=mode,
        content_sha256=content_sha256,
        trailer_names=trailer_names(headers),
        region=parsed.region,
        signed_at=signed_at,
        expires_at=parsed.expires_at,
        signed_headers=parsed.signed_headers,
        signing=signing,
    )


def _check_all_amz_headers_signed(
    headers: HeaderMap, signed: tuple[str, ...], presigned: bool
) -> None:
    unsigned = sorted(
        name for name in headers.names()
        if name.startswith("x-amz-") and name not in signed
        # a presigned URL's payload hash is this header, so it is covered anyway
        and not (presigned and name == "x-amz-content-sha256")
    )
    if unsigned:
        raise S3AuthError(
            "AccessDenied", "There were headers present in the request which were not signed",
            details={"HeadersNotSigned": ", ".join(unsigned)},
        )


def trailer_names(headers: HeaderMap) -> tuple[str, ...]:
    """The trailers x-amz-trailer announces, lower-case."""
    value = headers.get("x-amz-trailer") or ""
    return tuple(name.strip().lower() for name in value.split(",") if name.strip())


def derive_signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """SigV4's signing key: HMAC-SHA256 chained over date, region, service, aws4_request."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


# ---- canonical forms ------------------------------------------------------------


def _to_bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else bytes(text)


def uri_encode(data: bytes, keep_slash: bool = False) -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - . _ ~ (and '/' if kept) as %XX."""
    return quote(data, safe="/" if keep_slash else "")


def canonical_uri(raw_path: str | bytes) -> str:
    """The path as S3 signs it: segments decoded and encoded once, '/' kept as sent."""
    path = _to_bytes(raw_path) or b"/"
    return "/".join(uri_encode(unquote_to_bytes(segment)) for segment in path.split(b"/"))


def _parse_query(raw_query: bytes) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a query string, as the route will read them.

    Names and values are decoded to str as UTF-8 with surrogate escapes, so that
    encoding them back gives the exact bytes the client sent."""
    pairs = []
    for piece in raw_query.split(b"&"):
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        pairs.append((_decode_component(name), _decode_component(value)))
    return pairs


def _decode_component(raw: bytes) -> str:
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8", "surrogateescape")


def canonical_query(query: list[tuple[str, str]], presigned: bool = False) -> str:
    """The canonical query string: encoded pairs sorted by name, then value."""
    encoded = sorted(
        (uri_encode(name.encode("utf-8", "surrogateescape")),
         uri_encode(value.encode("utf-8", "surrogateescape")))
        for name, value in query
        if not (presigned and name == "X-Amz-Signature")
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def _trim_spaces(value: str) -> str:
    """AWS's Trimall: no spaces at either end, runs of spaces as one."""
    return re.sub(r"[ \t]+", " ", value.strip(" \t"))


def _trim_whitespace(value: str) -> str:
    """botocore's Trimall: splits on any whitespace (tabs, NBSP...), joins with a space."""
    return " ".join(value.split())


def canonical_headers(headers: HeaderMap, signed: tuple[str, ...]) -> list[str]:
    """The canonical header lines (ending in a newline), as one or two candidates.

    SDKs differ on what Trimall folds: AWS's text and most SDKs fold spaces, botocore
    folds any whitespace. Both forms are tried only when a signed value holds other
    whitespace than spaces (a tab, say); otherwise they are the same."""
    values = [(name, headers.get_all(name)) for name in signed]
    forms = []
    for trim in (_trim_spaces, _trim_whitespace):
        lines = "".join(
            f"{name}:{','.join(trim(v) for v in vals)}\n" for name, vals in values
        )
        if lines not in forms:
            forms.append(lines)
    return forms
