"""Presigned S3 URLs, made by the console for its signed-in user's access key.

The browser moves bytes through the S3 API itself (PutObject, the multipart operations,
GetObject for share links) with URLs the console signs server-side: the secret stays on
the gateway, and each URL allows one operation on one object for a limited time. They are
SigV4 query-string signatures, checked by the same verifier (`s3/sigv4.py`) as any S3
client's: the canonical forms below are that module's.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote

from ..credentials import AccessKey
from ..s3.sigv4 import (
    ALGORITHM,
    MAX_PRESIGNED_EXPIRES,
    SERVICE,
    TERMINATOR,
    canonical_query,
    canonical_uri,
    derive_signing_key,
    uri_encode,
)


def object_path(bucket: str, key: str = "") -> str:
    """The path-style request path of bucket/key, every byte of the key but unreserved
    ones escaped, '/' too: a browser then sends it as it is (it would resolve `.` and `..`
    segments, which are part of S3 keys, in a path with literal slashes)."""
    path = "/" + quote(bucket, safe="")
    return path + ("/" + quote(key, safe="") if key else "")


def presign(access_key: AccessKey, method: str, scheme: str, host: str, path: str,
            params: dict[str, str] | None = None, expires: int = 3600, region: str = "us-east-1",
            now: datetime | None = None) -> str:
    """An absolute URL for `method path?params` at scheme://host, valid `expires` seconds."""
    if not 1 <= expires <= MAX_PRESIGNED_EXPIRES:
        raise ValueError(f"a presigned URL is valid 1 to {MAX_PRESIGNED_EXPIRES} seconds")
    now = now or datetime.now(UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/{TERMINATOR}"
    query = list((params or {}).items()) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key.access_key_id}/{scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    canonical = "\n".join((method.upper(), canonical_uri(path), canonical_query(query, presigned=True),
                           f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"))
    string_to_sign = "\n".join((ALGORITHM, amz_date, scope,
                                hashlib.sha256(canonical.encode()).hexdigest()))
    key = derive_signing_key(access_key.secret, amz_date[:8], region)
    query.append(("X-Amz-Signature", hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()))
    encoded = "&".join(f"{uri_encode(name.encode())}={uri_encode(value.encode())}"
                       for name, value in query)
    return f"{scheme}://{host}{path}?{encoded}"
