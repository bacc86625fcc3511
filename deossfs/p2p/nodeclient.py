"""The gateway side of the gateway <-> storage node transfer (cess-miner's HTTP API).

`PUT /fragment` sends a fragment as the multipart field `file` whose filename is
the fragment hash; `GET /fragment` fetches one, optionally a byte range. Every
request is signed with `signing.sign_request` (fresh, single-use).

Errors: a node that cannot be reached, times out or answers 5xx raises
`NodeUnavailable` (temporary); a 4xx raises `NodeRefused` with the node's status
and message; a whole fragment whose bytes do not match its hash raises
`IntegrityError` - unverified whole fragments are never returned.

How the bytes move: each exchange runs in a worker thread on a blocking, kept-alive
connection of the standard library's `http.client` (which writes the request line
and headers and parses the answer). A fragment is sent with `sendmsg` straight from
the caller's buffer and received with `readinto` straight into it, then hashed in the
same thread: Python touches no fragment byte, and the GIL is released throughout.
httpx on trio cost about 2 CPU-s more per GiB put (h11 joined every 1 MiB slice into
a new bytes object; each socket read was a trio wakeup): docs/PERFORMANCE.md.
Cancelling a request (a straggler once 4 fragments are in, Ctrl-C) shuts its socket
down, which ends the thread's blocking call at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import secrets
import select
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

import outcome
import trio

from ..errors import IntegrityError, InvalidInput, NodeRefused, NodeUnavailable
from ..keys import Account
from ..metrics import BYTES_IN, BYTES_OUT, NODE_ERRORS, NODE_SECONDS, error_kind
from ..processing.layout import FRAGMENT_SIZE, ZERO_FRAGMENT_HASH
from .signing import sign_request

log = logging.getLogger(__name__)

_ZERO_FRAGMENT = bytes(FRAGMENT_SIZE)
#: the most of an answer's body read when it is not a fragment (JSON, error text)
_MAX_ANSWER = 64 * 1024
#: seconds an idle kept-alive connection is reused (the node drops them after 30)
KEEPALIVE_SECONDS = 25.0

T = TypeVar("T")


def base_url(endpoint: str) -> str:
    """`http://host:port` for an endpoint given with or without a scheme."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        raise InvalidInput("empty storage node endpoint")
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    return endpoint


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, endpoint: str) -> _Origin:
        url = base_url(endpoint)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidInput(f"bad storage node endpoint {endpoint!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"storage node endpoint {endpoint!r} is not http(s)://host:port")
        return cls(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


@dataclass
class _Answer:
    """What one exchange brought back (built in the worker thread)."""

    status: int
    reason: str
    body: bytes = b""  # an answer that is not a fragment (JSON, an error)
    received: int = 0  # fragment bytes received into the target
    data: memoryview | None = None  # the target, trimmed to what was received
    digest: str | None = None  # SHA-256 of `data`, for a whole fragment
    reusable: bool = False  # the connection can carry another request


def _answer_message(answer: _Answer) -> str:
    try:
        body = json.loads(answer.body)
    except ValueError:
        text = answer.body[:200].decode(errors="replace").strip()
        return text or answer.reason
    if isinstance(body, dict):
        for key in ("msg", "error", "message"):
            if isinstance(body.get(key), str):
                return body[key]
    return str(body)[:200]


def _send_parts(sock: socket.socket, parts: Sequence[memoryview]) -> None:
    """All of `parts`, with as few system calls as the socket takes (no copies here)."""
    views = [part for part in parts if len(part)]
    if isinstance(sock, ssl.SSLSocket):  # TLS sockets have no sendmsg
        for view in views:
            sock.sendall(view)
        return
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def _read_into(response: http.client.HTTPResponse, target: memoryview) -> int:
    """Fill `target` from the response body; returns how much came (less at its end)."""
    done = 0
    while done < len(target):
        got = response.readinto(target[done:])
        if not got:
            break
        done += got
    return done


def _reusable(response: http.client.HTTPResponse) -> bool:
    return not response.will_close and response.isclosed()


def _stale(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive connection the node closed meanwhile (or sent something unasked on)."""
    sock = conn.sock
    if sock is None:
        return True
    poller = select.poll()  # not select(): descriptors past 1023 are common in a mount
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


class _Pool:
    """Idle kept-alive connections by origin; used from the trio thread only."""

    def __init__(self) -> None:
        self._idle: dict[_Origin, list[tuple[http.client.HTTPConnection, float]]] = {}

    def take(self, origin: _Origin) -> http.client.HTTPConnection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn, since = idle.pop()
            if now - since < KEEPALIVE_SECONDS and not _stale(conn):
                return conn
            conn.close()
        return None

    def give(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        self._idle.setdefault(origin, []).append((conn, time.monotonic()))

    def close(self) -> None:
        for idle in self._idle.values():
            for conn, _ in idle:
                conn.close()
        self._idle.clear()


def _shut_down(conn: http.client.HTTPConnection) -> None:
    """Make a blocking call on the connection's socket return now (another thread waits)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def _metered(endpoint: str, op: str) -> Iterator[None]:
    """Time one fragment request (NODE_SECONDS) and count its failure (NODE_ERRORS)."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        NODE_ERRORS.labels(endpoint, op, error_kind(exc)).inc()
        raise
    finally:
        NODE_SECONDS.labels(endpoint, op).observe(time.perf_counter() - started)


class NodeClient:
    """Talks to storage nodes as `account`. One pool of kept-alive connections for all nodes."""

    def __init__(self, account: Account, timeout: float = 30.0, *, max_connections: int = 64) -> None:
        """`timeout`: seconds any one step (connect, send, a read) may take;
        `max_connections`: exchanges in flight at once (each holds a worker thread)."""
        self.account = account
        self.timeout = timeout
        self._pool = _Pool()
        self._threads = trio.CapacityLimiter(max_connections)

    # ---- lifecycle -------------------------------------------------------------
    async def aclose(self) -> None:
        self._pool.close()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---- one exchange ------------------------------------------------------------
    async def _exchange(
        self, endpoint: str, what: str, roundtrip: Callable[[http.client.HTTPConnection], _Answer]
    ) -> _Answer:
        """Run `roundtrip` on a kept-alive (or new) connection to `endpoint` in a worker
        thread; transport failures become `NodeUnavailable` naming `what` failed."""
        origin = _Origin.of(endpoint)
        conn = self._pool.take(origin)
        if conn is None:
            conn = origin.connection(self.timeout)
        answer: _Answer | None = None
        try:
            answer = await self._abortable(lambda: roundtrip(conn), lambda: _shut_down(conn))
        except (OSError, http.client.HTTPException) as exc:
            raise NodeUnavailable(f"node {endpoint} {what}: {exc!r}") from None
        finally:
            if answer is not None and answer.reusable:
                self._pool.give(origin, conn)
            else:
                conn.close()
        return answer

    async def _abortable(self, work: Callable[[], T], abort: Callable[[], None]) -> T:
        """`work()` in a worker thread. If the caller is cancelled meanwhile, `abort()`
        makes it return early, and the cancellation goes on once it has: the thread never
        outlives the call, so it never writes into a buffer its caller has moved on from."""
        async with self._threads:
            done = trio.Event()
            token = trio.lowlevel.current_trio_token()
            results: list[outcome.Outcome[T]] = []

            def deliver(result: outcome.Outcome[T]) -> None:  # in the worker thread
                results.append(result)
                token.run_sync_soon(done.set)

            trio.lowlevel.start_thread_soon(work, deliver)
            try:
                await done.wait()
            except trio.Cancelled:
                abort()
                with trio.CancelScope(shield=True):
                    await done.wait()
                raise
            return results[0].unwrap()

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
        headers["Content-Length"] = str(len(head) + len(payload) + len(tail))
        parts = (memoryview(head), payload, memoryview(tail))

        def roundtrip(conn: http.client.HTTPConnection) -> _Answer:
            conn.putrequest("PUT", "/fragment", skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            _send_parts(conn.sock, parts)  # type: ignore[arg-type]
            response = conn.getresponse()
            body = response.read(_MAX_ANSWER)
            return _Answer(response.status, response.reason, body, reusable=_reusable(response))

        with _metered(endpoint, "put"):
            answer = await self._exchange(endpoint, "did not take the fragment", roundtrip)
            self._check(answer, endpoint)
            self._check_code(answer, endpoint)
        BYTES_OUT.labels("nodes").inc(len(payload))

    async def get_fragment(
        self,
        endpoint: str,
        fid: str,
        fragment_hash: str,
        byte_range: tuple[int, int] | None = None,
        *,
        into: memoryview | None = None,
    ) -> bytes | memoryview:
        """`_get_fragment`, timed and its failures counted (metrics.py)."""
        with _metered(endpoint, "get"):
            return await self._get_fragment(endpoint, fid, fragment_hash, byte_range, into=into)

    async def _get_fragment(
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

        def roundtrip(conn: http.client.HTTPConnection) -> _Answer:
            conn.putrequest("GET", "/fragment", skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            status = response.status
            if status >= 300:
                body = response.read(_MAX_ANSWER)
                return _Answer(status, response.reason, body, reusable=_reusable(response))
            limit = FRAGMENT_SIZE
            if status == 206 and byte_range is not None:
                limit = byte_range[1] - byte_range[0]
            declared = response.getheader("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise IntegrityError(
                    f"node {endpoint} sent {declared} bytes for a fragment of {FRAGMENT_SIZE}"
                )
            target = into if into is not None and status == 200 else memoryview(bytearray(limit))
            received = _read_into(response, target)
            if received == limit and response.read(1):
                raise IntegrityError(f"node {endpoint} sent more than {limit} bytes")
            data = target[:received]
            digest = None
            if status == 200 and received == FRAGMENT_SIZE:
                digest = hashlib.sha256(data).hexdigest()  # releases the GIL
            return _Answer(status, response.reason, received=received, data=data, digest=digest,
                           reusable=_reusable(response))

        answer = await self._exchange(endpoint, "did not send the fragment", roundtrip)
        self._check(answer, endpoint)
        assert answer.data is not None
        data = answer.data
        BYTES_IN.labels("nodes").inc(len(data))
        if answer.status == 206:
            if byte_range is None or len(data) != byte_range[1] - byte_range[0]:
                raise IntegrityError(f"node {endpoint} sent a partial answer not asked for")
            return bytes(data)
        # a whole fragment (also when a node ignored our Range): verify before use
        if len(data) != FRAGMENT_SIZE:
            raise IntegrityError(
                f"fragment {fragment_hash[:16]}… from {endpoint} has {len(data)} bytes, "
                f"not {FRAGMENT_SIZE}"
            )
        if answer.digest != fragment_hash:
            raise IntegrityError(
                f"fragment {fragment_hash[:16]}… from {endpoint} does not match its hash"
            )
        if byte_range is not None:
            return bytes(data[byte_range[0] : byte_range[1]])
        return into if into is not None else bytes(data)

    async def status(self, endpoint: str) -> dict:
        """The node's unsigned `GET /status` (account, endpoint, fragments, bytes)."""

        def roundtrip(conn: http.client.HTTPConnection) -> _Answer:
            conn.request("GET", "/status")
            response = conn.getresponse()
            body = response.read(_MAX_ANSWER)
            return _Answer(response.status, response.reason, body, reusable=_reusable(response))

        answer = await self._exchange(endpoint, "did not answer", roundtrip)
        self._check(answer, endpoint)
        try:
            body = json.loads(answer.body)
        except ValueError:
            raise NodeUnavailable(f"node {endpoint} answered /status with non-JSON") from None
        if not isinstance(body, dict):
            raise NodeUnavailable(f"node {endpoint} answered /status with {body!r:.80}")
        return body

    @staticmethod
    def _check_code(answer: _Answer, endpoint: str) -> None:
        """Some CESS services answer errors with HTTP 200 and a JSON `code`: honour it."""
        try:
            body = json.loads(answer.body)
        except ValueError:
            return
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, int) or isinstance(code, bool) or code in (0, 200):
            return
        message = _answer_message(answer)
        if 400 <= code < 500:
            raise NodeRefused(f"node {endpoint} refused ({code}): {message}", status=code)
        if code >= 500:
            raise NodeUnavailable(f"node {endpoint} answered code {code}: {message}")
        raise NodeRefused(f"node {endpoint} refused (code {code}): {message}")

    @staticmethod
    def _check(answer: _Answer, endpoint: str) -> None:
        status = answer.status
        if 200 <= status < 300:
            return
        message = _answer_message(answer)
        if 400 <= status < 500:
            raise NodeRefused(f"node {endpoint} refused ({status}): {message}", status=status)
        raise NodeUnavailable(f"node {endpoint} answered {status}: {message}")
