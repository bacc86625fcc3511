"""The gateway side of the gateway <-> storage node transfer (cess-miner's HTTP API).

`PUT /fragment` sends a fragment as the multipart field `file` whose filename is
the fragment hash; `GET /fragment` fetches one, optionally a byte range. Every
request is signed with `signing.sign_request` (fresh, single-use).

Errors: a node that cannot be reached, times out or answers 5xx raises
`NodeUnavailable` (temporary); a 4xx raises `NodeRefused` with the node's status
and message; a whole fragment whose bytes do not match its hash raises
`IntegrityError` - unverified whole fragments are never returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from types import TracebackType

import httpcore
import httpx
import trio

from ..errors import IntegrityError, InvalidInput, NodeRefused, NodeUnavailable
from ..keys import Account
from ..processing.layout import FRAGMENT_SIZE, ZERO_FRAGMENT_HASH
from .signing import sign_request

log = logging.getLogger(__name__)

#: slices handed to the HTTP stack; h11 joins each into a new bytes object, so keep them small
_SEND_SLICE = 1024 * 1024
_ZERO_FRAGMENT = bytes(FRAGMENT_SIZE)


def base_url(endpoint: str) -> str:
    """`http://host:port` for an endpoint given with or without a scheme."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        raise InvalidInput("empty storage node endpoint")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    return endpoint


def _node_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.content)
    except ValueError:
        text = response.content[:200].decode(errors="replace").strip()
        return text or response.reason_phrase
    if isinstance(body, dict):
        for key in ("msg", "error", "message"):
            if isinstance(body.get(key), str):
                return body[key]
    return str(body)[:200]


# httpcore reads responses 64 KiB at a time; fragments are 8 MiB, and 1 MiB reads
# cut the client's per-fragment Python work several-fold (see docs/PERFORMANCE.md).
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 1024 * 1024


class NodeClient:
    """Talks to storage nodes as `account`. One connection pool for all nodes."""

    def __init__(
        self,
        account: Account,
        timeout: float = 30.0,
        *,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network (tests); `max_connections` bounds the pool."""
        self.account = account
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            trust_env=False,  # node traffic must not detour through a proxy from the environment
        )

    # ---- lifecycle -------------------------------------------------------------
    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- requests --------------------------------------------------------------
    def _headers(self, method: str, fid: str, fragment_hash: str) -> dict[str, str]:
        headers = sign_request(self.account, method, fid, fragment_hash)
        headers["Fid"] = fid
        headers["Fragment"] = fragment_hash
        return headers

    async def put_fragment(
        self,
        endpoint: str,
        fid: str,
        fragment_hash: str,
        data: bytes | bytearray | memoryview | None,
    ) -> None:
        """Store one fragment on a node. `data` None (or the zero hash) sends an empty file."""
        if data is None or fragment_hash == ZERO_FRAGMENT_HASH:
            payload = memoryview(b"")
        else:
            payload = memoryview(data).cast("B")
        boundary = secrets.token_hex(16)
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{fragment_hash}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        headers = self._headers("PUT", fid, fragment_hash)
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        # an explicit length keeps httpx from falling back to chunked encoding
        headers["Content-Length"] = str(len(head) + len(payload) + len(tail))

        async def body() -> AsyncIterator[bytes]:
            # slices of the caller's buffer: no 8 MiB copy is made here
            yield head
            for offset in range(0, len(payload), _SEND_SLICE):
                yield payload[offset : offset + _SEND_SLICE]  # type: ignore[misc]
            yield tail

        url = base_url(endpoint) + "/fragment"
        try:
            response = await self._client.put(url, content=body(), headers=headers)
        except httpx.TransportError as exc:
            raise NodeUnavailable(f"node {endpoint} did not take the fragment: {exc!r}") from None
        self._check(response, endpoint)
        self._check_code(response, endpoint)

    async def get_fragment(
        self,
        endpoint: str,
        fid: str,
        fragment_hash: str,
        byte_range: tuple[int, int] | None = None,
        *,
        into: memoryview | None = None,
    ) -> bytes | memoryview:
        """Fetch a fragment, or bytes [start, end) of it (end exclusive, like a slice).

        With `into` (an 8 MiB writable buffer; whole fragments only) the bytes are
        received in place and `into` is returned: no joining, no copy.

        A whole fragment is verified (8 MiB, SHA-256 = `fragment_hash`) before it
        is returned. A range cannot be checked against the hash and is returned
        unverified: use ranges only where the caller verifies otherwise.
        The zero fragment is answered locally, without a request.
        """
        if byte_range is not None:
            start, end = byte_range
            if not 0 <= start < end <= FRAGMENT_SIZE:
                raise InvalidInput(f"bad fragment byte range [{start}, {end})")
        if into is not None and (byte_range is not None or len(into) != FRAGMENT_SIZE):
            raise InvalidInput("receiving in place needs a whole fragment and an 8 MiB buffer")
        if fragment_hash == ZERO_FRAGMENT_HASH:
            if byte_range is None:
                if into is not None:
                    into[:] = _ZERO_FRAGMENT
                    return into
                return _ZERO_FRAGMENT
            return bytes(byte_range[1] - byte_range[0])

        headers = self._headers("GET", fid, fragment_hash)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        url = base_url(endpoint) + "/fragment"
        try:
            async with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code >= 300:
                    await response.aread()
                    self._check(response, endpoint)
                limit = FRAGMENT_SIZE
                if response.status_code == 206 and byte_range is not None:
                    limit = byte_range[1] - byte_range[0]
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise IntegrityError(
                        f"node {endpoint} sent {declared} bytes for a fragment of {FRAGMENT_SIZE}"
                    )
                chunks: list[bytes] = []
                received = 0
                async for chunk in response.aiter_raw():
                    if received + len(chunk) > limit:
                        raise IntegrityError(f"node {endpoint} sent more than {limit} bytes")
                    if into is not None and response.status_code == 200:
                        into[received : received + len(chunk)] = chunk
                    else:
                        chunks.append(chunk)
                    received += len(chunk)
                status = response.status_code
        except httpx.TransportError as exc:
            raise NodeUnavailable(f"node {endpoint} did not send the fragment: {exc!r}") from None
        # one join: the chunks are dropped right after, and the result is immutable
        data: bytes | memoryview = into[:received] if into is not None and status == 200 else b"".join(chunks)
        del chunks

        if status == 206:
            if byte_range is None or len(data) != byte_range[1] - byte_range[0]:
                raise IntegrityError(f"node {endpoint} sent a partial answer not asked for")
            return data
        # a whole fragment (also when a node ignored our Range): verify before use
        if len(data) != FRAGMENT_SIZE:
            raise IntegrityError(
                f"fragment {fragment_hash[:16]}… from {endpoint} has {len(data)} bytes, "
                f"not {FRAGMENT_SIZE}"
            )
        digest = await trio.to_thread.run_sync(hashlib.sha256, data)
        if digest.hexdigest() != fragment_hash:
            raise IntegrityError(
                f"fragment {fragment_hash[:16]}… from {endpoint} does not match its hash"
            )
        if byte_range is not None:
            return bytes(data[byte_range[0] : byte_range[1]])
        return data

    async def status(self, endpoint: str) -> dict:
        """The node's unsigned `GET /status` (account, endpoint, fragments, bytes)."""
        try:
            response = await self._client.get(base_url(endpoint) + "/status")
        except httpx.TransportError as exc:
            raise NodeUnavailable(f"node {endpoint} did not answer: {exc!r}") from None
        self._check(response, endpoint)
        try:
            body = response.json()
        except ValueError:
            raise NodeUnavailable(f"node {endpoint} answered /status with non-JSON") from None
        if not isinstance(body, dict):
            raise NodeUnavailable(f"node {endpoint} answered /status with {body!r:.80}")
        return body

    @staticmethod
    def _check_code(response: httpx.Response, endpoint: str) -> None:
        """Some CESS services answer errors with HTTP 200 and a JSON `code`: honour it."""
        try:
            body = json.loads(response.content)
        except ValueError:
            return
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, int) or isinstance(code, bool) or code in (0, 200):
            return
        message = _node_message(response)
        if 400 <= code < 500:
            raise NodeRefused(f"node {endpoint} refused ({code}): {message}", status=code)
        if code >= 500:
            raise NodeUnavailable(f"node {endpoint} answered code {code}: {message}")
        raise NodeRefused(f"node {endpoint} refused (code {code}): {message}")

    @staticmethod
    def _check(response: httpx.Response, endpoint: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        message = _node_message(response)
        if 400 <= status < 500:
            raise NodeRefused(f"node {endpoint} refused ({status}): {message}", status=status)
        raise NodeUnavailable(f"node {endpoint} answered {status}: {message}")
