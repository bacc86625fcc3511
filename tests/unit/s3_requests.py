"""S3 requests as real clients send them, for the gateway's auth tests.

Requests are made and signed by botocore itself (a boto3 S3 client, S3SigV4Auth,
S3SigV4QueryAuth) and captured just before they would leave the process: what the
verifier sees is exactly what botocore would put on the wire (its URL path and
query, its headers plus the Host and Content-Length the HTTP client adds, its body).

botocore does not sign aws-chunked chunks (it sends only STREAMING-UNSIGNED-PAYLOAD-
TRAILER), so `signed_chunked_request` has botocore sign the seed request and signs
the chunks and the trailer itself, per AWS's "Transferring Payload in Multiple Chunks"
and "Including Trailing Headers" (checked against the documented example in
test_s3_payload.py). It shares no code with deossfs.gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from deossfs.gateway.credentials import AccessKey
from deossfs.gateway.s3.sigv4 import HeaderMap, VerifiedRequest, verify_request

ALICE_KEY = AccessKey("AKIDALICE00000000001", "alice+secret/with/slashes0123456789ABCD", "alice", 1.0)
BOB_KEY = AccessKey("AKIDBOB0000000000002", "b" * 40, "bob", 2.0)
KEYS = {key.access_key_id: key for key in (ALICE_KEY, BOB_KEY)}


def lookup(access_key_id: str) -> AccessKey | None:
    return KEYS.get(access_key_id)


@dataclass
class Captured:
    """One request as it would be sent."""

    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    #: the Python values the request was made from, for the tests' own checks
    context: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return HeaderMap(self.headers).get(name)

    def with_header(self, name: str, value: str | None) -> Captured:
        """A copy with header `name` replaced (or removed, for None)."""
        headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        if value is not None:
            headers.append((name, value))
        return Captured(self.method, self.raw_path, self.query, headers, self.body, self.context)

    def verify(self, now: float | None = None,
               keys: Callable[[str], AccessKey | None] = lookup) -> VerifiedRequest | None:
        return verify_request(self.method, self.raw_path, self.query, self.headers, keys,
                              time.time() if now is None else now)


class _Sent(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        self.request = request


def client(key: AccessKey = ALICE_KEY, endpoint: str = "https://gateway.test",
           region: str = "us-east-1", **config: Any) -> Any:
    """A boto3 S3 client whose requests are captured instead of sent."""
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region,
        aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}, **config),
    )

    def stop(request: AWSPreparedRequest, **_: Any) -> None:
        raise _Sent(request)

    s3.meta.events.register("before-send.s3", stop)
    return s3


def capture(call: Callable[[], Any]) -> Captured:
    """Run a client call; return the request it would have sent."""
    try:
        call()
    except _Sent as sent:
        return from_prepared(sent.request)
    raise AssertionError("the call sent no request")


def from_prepared(request: AWSPreparedRequest) -> Captured:
    url = urlsplit(request.url)
    headers = [(name, value.decode() if isinstance(value, bytes) else value)
               for name, value in request.headers.items()]
    names = {name.lower() for name, _ in headers}
    body = request.body
    if body is None:
        data = b""
    elif isinstance(body, bytes | bytearray):
        data = bytes(body)
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body.read()
    # what the HTTP client adds
    if "host" not in names:
        headers.append(("Host", url.netloc.removesuffix(":443") if url.scheme == "https"
                        else url.netloc.removesuffix(":80")))
    if "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("Content-Length", str(len(data))))
    return Captured(request.method, url.path, url.query, headers, data)


def from_url(method: str, url: str, headers: list[tuple[str, str]] | None = None) -> Captured:
    """A request for a presigned URL, as curl would send it."""
    parts = urlsplit(url)
    return Captured(method, parts.path, parts.query, [("Host", parts.netloc), *(headers or [])])


# ---- signed aws-chunked bodies ----------------------------------------------------


class _StreamingSigner(S3SigV4Auth):
    """botocore's S3 signer with a fixed x-amz-content-sha256 (the streaming constant)."""

    def __init__(self, credentials: Credentials, region: str, content_sha256: str) -> None:
        super().__init__(credentials, "s3", region)
        self._content_sha256 = content_sha256

    def payload(self, request: AWSRequest) -> str:
        return self._content_sha256


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ChunkSigner:
    """Signs aws-chunked chunks and the trailer, chained from the seed signature."""

    def __init__(self, secret: str, amz_date: str, region: str, seed_signature: str) -> None:
        self.amz_date = amz_date
        self.scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
        key = ("AWS4" + secret).encode()
        for part in (amz_date[:8], region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = key
        self.previous = seed_signature

    def _sign(self, *lines: str) -> str:
        return hmac.new(self._key, "\n".join(lines).encode(), hashlib.sha256).hexdigest()

    def chunk(self, data: bytes) -> str:
        self.previous = self._sign("AWS4-HMAC-SHA256-PAYLOAD", self.amz_date, self.scope,
                                   self.previous, _sha256_hex(b""), _sha256_hex(data))
        return self.previous

    def trailer(self, canonical: bytes) -> str:
        return self._sign("AWS4-HMAC-SHA256-TRAILER", self.amz_date, self.scope, self.previous,
                          _sha256_hex(canonical))


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def signed_chunked_request(
    payload: bytes, chunk_sizes: list[int] | int = 65536, *, key: AccessKey = ALICE_KEY,
    trailer: tuple[str, str] | None = None, region: str = "us-east-1",
    url: str = "https://gateway.test/bucket/object", extra_headers: dict[str, str] | None = None,
) -> tuple[Captured, list[bytes]]:
    """A PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]: botocore signs the seed,
    the chunks are signed here. Returns the request and its body cut into the wire pieces
    of each chunk (header line + data + CRLF), the final chunk and the trailer last."""
    sizes = _cut(len(payload), chunk_sizes)
    mode = ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" if trailer
            else "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    headers = {"Content-Encoding": "aws-chunked",
               "X-Amz-Decoded-Content-Length": str(len(payload)), **(extra_headers or {})}
    if trailer:
        headers["X-Amz-Trailer"] = trailer[0]
    seed_signer = _StreamingSigner(Credentials(key.access_key_id, key.secret), region, mode)
    # the wire length does not depend on the signatures' values: compute it with zeros
    headers["Content-Length"] = str(len(b"".join(
        _frame(payload, sizes, lambda _data: "0" * 64, trailer, lambda _t: "0" * 64))))
    request = AWSRequest(method="PUT", url=url, headers=headers)
    seed_signer.add_auth(request)
    prepared = request.prepare()
    captured = from_prepared(prepared)
    seed = (captured.header("authorization") or "").rpartition("Signature=")[2]
    signer = ChunkSigner(key.secret, captured.header("x-amz-date") or "", region, seed)
    pieces = _frame(payload, sizes, signer.chunk, trailer, signer.trailer)
    captured.body = b"".join(pieces)
    assert len(captured.body) == int(headers["Content-Length"])
    return captured, pieces


def _cut(length: int, chunk_sizes: list[int] | int) -> list[int]:
    if isinstance(chunk_sizes, int):
        return [min(chunk_sizes, length - start) for start in range(0, length, chunk_sizes)]
    assert sum(chunk_sizes) == length
    return chunk_sizes


def _frame(payload: bytes, sizes: list[int], sign_chunk: Callable[[bytes], str],
           trailer: tuple[str, str] | None, sign_trailer: Callable[[bytes], str]) -> list[bytes]:
    pieces, start = [], 0
    for size in [*sizes, 0]:
        data = payload[start:start + size]
        start += size
        header = f"{size:x};chunk-signature={sign_chunk(data)}\r\n".encode()
        pieces.append(header + data + b"\r\n" if size or not trailer else header)
    if trailer:
        canonical = f"{trailer[0]}:{trailer[1]}\n".encode()
        pieces.append(canonical.replace(b"\n", b"\r\n")
                      + f"x-amz-trailer-signature:{sign_trailer(canonical)}\r\n\r\n".encode())
    return pieces
