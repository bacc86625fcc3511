"""The storage node's HTTP/1.1 server: h11 parses, blocking sockets in threads move the bytes.

Why not an ASGI server: a node receives 3 GiB of fragments per GiB stored, and under
hypercorn (h11 on trio) every piece of a body was copied three times by h11, became an
ASGI message and woke the event loop; measured on fragment uploads, that cost 0.35-0.5
CPU-s per GiB more than this design, and ASGI has no way to send a file without reading
it (docs/PERFORMANCE.md). Here each connection has a thread with a blocking socket: a
body is received with `recv_into` into one reused buffer (MSG_WAITALL: one system call
per MiB), a fragment is sent with `sendfile`, and the GIL is released throughout.

What is parsed is parsed by h11 (request line and headers, with its limits and
checks); a body with Content-Length is read here, one without it (chunked) through h11.
Each request gets a fresh h11 connection object, since the body bypasses it.

Limits: `max_connections` connections at once (more wait in the listen queue); a
client silent for `idle_timeout` between requests, or for `read_timeout` within one,
is dropped; request heads over 16 KiB are refused.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable

import h11

from ..directio import aligned_buffer
from ..metrics import BYTES_IN, BYTES_OUT, REQUESTS, method_label

log = logging.getLogger(__name__)

#: a body is received this much at a time (one reused buffer per connection)
RECV_CHUNK = 1024 * 1024
#: the most a request head may take
MAX_HEAD = 16 * 1024
#: a piece of a request body handed to its consumer (the receive buffer itself, or bytes)
Piece = bytes | bytearray | mmap.mmap | memoryview


class ClientGone(Exception):
    """The client disconnected, or went silent past the timeout, mid-request."""


def _set_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-side timeouts, so the socket stays blocking (one `recv` per MiB with
    MSG_WAITALL; a Python-level timeout would poll before every call)."""
    packed = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, packed)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, packed)


class Exchange:
    """One request on a connection, as a handler sees it (blocking; its thread only)."""

    def __init__(self, server: ThreadedServer, sock: socket.socket, conn: h11.Connection,
                 request: h11.Request, client: str, buffer: mmap.mmap) -> None:
        self._server = server
        self._sock = sock
        self._conn = conn
        self._buffer = buffer
        self.method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        self.path = target.split("?", 1)[0]
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            # the first occurrence wins, for the signature check and the handler alike
            self.headers.setdefault(raw_name.decode("latin-1").lower(), raw_value.decode("latin-1"))
        self.client = client
        declared = self.headers.get("content-length")
        self._length = int(declared) if declared is not None and "transfer-encoding" not in self.headers else None
        self._chunked = "transfer-encoding" in self.headers
        # body bytes that came with the head
        self._early, _ = conn.trailing_data
        #: bytes after this request's body (the next pipelined request)
        self.leftover = b""
        self.body_done = self._length == 0 or (self._length is None and not self._chunked)
        self._left = self._length or 0  # body bytes not read yet (Content-Length)
        self._consumed = 0
        if self.body_done:  # no body: what came after the head is the next request
            self.leftover, self._early = bytes(self._early), b""
        self.responded = False
        self.keep_alive = (request.http_version == b"1.1"
                           and "close" not in self.headers.get("connection", "").lower())

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def body_length(self) -> int | None:
        """The body's Content-Length; None for a chunked body."""
        return self._length

    # ---- the body ----------------------------------------------------------------
    def read_body(self, consume: Callable[[Piece], None], limit: int,
                  next_size: Callable[[], int] | None = None) -> int:
        """Hand the body to `consume` in pieces (a piece is valid during the call only);
        returns how much of it has been read. More than `limit` bytes: stops, and the
        connection closes after the answer. `ClientGone` if the client leaves mid-body.
        If `consume` raises, a later call goes on after the piece it was given.

        A Content-Length body comes in pieces of RECV_CHUNK, received into a page-aligned
        buffer, unless `next_size()` asks for a shorter one (a receiver that wants its data
        to land block-aligned, for O_DIRECT)."""
        if self.body_done:
            return self._consumed
        if self._length is None:
            return self._read_chunked(consume, limit)
        if self._length > limit:
            self.stop_reading()
            return self._consumed
        if self._early:
            early, self._early = bytes(self._early), b""
            first, self.leftover = early[: self._left], early[self._left :]
            self._taken(len(first))
            if first:
                consume(first)
        view = memoryview(self._buffer)
        while self._left:
            count = min(len(self._buffer), self._left)
            if next_size is not None:
                count = max(1, min(count, next_size()))
            try:
                got = self._sock.recv_into(view, count, socket.MSG_WAITALL)
                piece: Piece = self._buffer if count == len(self._buffer) else view[:count]
            except OSError as exc:  # a reset, or SO_RCVTIMEO (EAGAIN)
                self.stop_reading()
                raise ClientGone() from exc
            if got != count:
                self.stop_reading()
                raise ClientGone()
            self._taken(count)
            consume(piece)
        return self._consumed

    def _taken(self, count: int) -> None:
        BYTES_IN.labels("http").inc(count)
        self._left -= count
        self._consumed += count
        if not self._left:
            self.body_done = True

    def _read_chunked(self, consume: Callable[[Piece], None], limit: int) -> int:
        conn = self._conn
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = self._sock.recv(RECV_CHUNK)
                except OSError as exc:
                    self.stop_reading()
                    raise ClientGone() from exc
                if not data:
                    self.stop_reading()
                    raise ClientGone()
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Data):
                self._consumed += len(event.data)
                BYTES_IN.labels("http").inc(len(event.data))
                if self._consumed > limit:
                    self.stop_reading()
                    return self._consumed
                consume(event.data)
                continue
            if isinstance(event, h11.EndOfMessage):
                self.body_done = True
                self.leftover, _ = conn.trailing_data
                return self._consumed
            self.stop_reading()
            raise ClientGone()

    def stop_reading(self) -> None:
        """Leave the rest of the body unread: the connection closes after the answer."""
        self.body_done = True
        self.keep_alive = False

    # ---- the answer ----------------------------------------------------------------
    def _head(self, status: int, headers: Iterable[tuple[str, str]], length: int) -> bytes:
        fields = [(name, value) for name, value in headers]
        fields.append(("content-length", str(length)))
        if not self.keep_alive:
            fields.append(("connection", "close"))
        self.responded = True
        REQUESTS.labels("http", method_label(self.method), str(status)).inc()
        return self._conn.send(h11.Response(status_code=status, headers=fields))  # type: ignore[return-value]

    def respond(self, status: int, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        self._send_all([self._head(status, headers, len(body)), body])

    def respond_file(self, status: int, headers: Iterable[tuple[str, str]], fd: int, offset: int,
                     count: int) -> None:
        """Answer with bytes [offset, offset + count) of an open file (sendfile: no copy)."""
        self._send_all([self._head(status, headers, count)])
        end = offset + count
        while offset < end:
            try:
                sent = os.sendfile(self._sock.fileno(), fd, offset, end - offset)
            except OSError as exc:
                self.keep_alive = False
                raise ClientGone() from exc
            if sent == 0:
                self.keep_alive = False
                raise OSError("file shrank while being sent")
            offset += sent
            BYTES_OUT.labels("http").inc(sent)

    def respond_repeated(self, status: int, headers: Iterable[tuple[str, str]], block: bytes,
                         count: int) -> None:
        """Answer with `count` bytes made of `block` repeated (the zero fragment)."""
        self._send_all([self._head(status, headers, count)])
        view = memoryview(block)
        while count:
            piece = view[: min(len(view), count)]
            self._send_all([piece])
            count -= len(piece)

    def _send_all(self, parts: list[bytes | memoryview]) -> None:
        views = [memoryview(part) for part in parts if len(part)]
        try:
            while views:
                sent = self._sock.sendmsg(views)
                BYTES_OUT.labels("http").inc(sent)
                while views and sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                if sent:
                    views[0] = views[0][sent:]
        except OSError as exc:
            self.keep_alive = False
            raise ClientGone() from exc


Handler = Callable[[Exchange], None]


class ThreadedServer:
    """Accepts connections on host:port and serves each in a worker thread.

    Workers are kept (up to `max_connections` of them), not started per connection:
    what a thread sets up once - the embedded chain's SQLite connection is one per
    thread - is then set up once per worker rather than once per connection."""

    def __init__(self, host: str, port: int, handler: Handler, *, max_connections: int = 256,
                 idle_timeout: float = 30.0, read_timeout: float = 60.0,
                 listen_fd: int | None = None) -> None:
        """`listen_fd`: a listening socket bound already (handed over by `devnet up`, so
        that two devnets starting at once cannot pick one port); else bind host:port."""
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        if listen_fd is not None:
            self._listener = socket.socket(fileno=listen_fd)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.create_server((host, port), family=family, backlog=128)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[socket.socket, tuple] | None] = queue.SimpleQueue()
        self._idle_workers = 0
        self._workers: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="node-accept", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end every connection, wait for the workers (blocking)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._acceptor.join(timeout)
        with self._lock:
            connections = list(self._connections)
            workers = list(self._workers)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for _ in workers:
            self._queue.put(None)
        for worker in workers:
            worker.join(timeout)

    def _accept_loop(self) -> None:
        while not self._stopping:
            self._slots.acquire()
            try:
                sock, address = self._listener.accept()
            except OSError:
                self._slots.release()
                if self._stopping:
                    return
                continue
            with self._lock:
                self._connections.add(sock)
                if self._idle_workers:
                    self._idle_workers -= 1
                else:
                    worker = threading.Thread(target=self._work, daemon=True, name="node-conn")
                    self._workers.append(worker)
                    worker.start()
            self._queue.put((sock, address))

    def _work(self) -> None:
        # the worker's receive buffer, for all its connections; page-aligned, so a
        # fragment's data received into it can be written with O_DIRECT as it is
        buffer = aligned_buffer(RECV_CHUNK)
        while (item := self._queue.get()) is not None:
            sock, address = item
            try:
                self._serve(sock, address, buffer)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
                with self._lock:
                    self._connections.discard(sock)
                    self._idle_workers += 1
                self._slots.release()

    def _serve(self, sock: socket.socket, address: tuple, buffer: mmap.mmap) -> None:
        client = f"{address[0]}:{address[1]}"
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending = b""
            while not self._stopping:
                exchange = self._next_request(sock, pending, client, buffer)
                if exchange is None:
                    return
                try:
                    self.handler(exchange)
                except ClientGone:
                    return
                if not exchange.responded or not exchange.keep_alive or not exchange.body_done:
                    return
                pending = exchange.leftover
        except Exception:
            log.exception("connection from %s failed", client)

    def _next_request(self, sock: socket.socket, pending: bytes, client: str,
                      buffer: mmap.mmap) -> Exchange | None:
        """The next request's head, parsed; None when the client is done (or misbehaves,
        after a 4xx answer)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if pending:
            conn.receive_data(pending)
        _set_timeout(sock, self.idle_timeout)
        started = bool(pending)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse_head(sock, conn, exc)
                return None
            if isinstance(event, h11.Request):
                _set_timeout(sock, self.read_timeout)
                return Exchange(self, sock, conn, event, client, buffer)
            if event is not h11.NEED_DATA:  # ConnectionClosed
                return None
            try:
                data = sock.recv(MAX_HEAD)
            except OSError:
                return None  # idle past the timeout, or reset
            if not data:
                return None
            if not started:
                started = True
                _set_timeout(sock, self.read_timeout)
            conn.receive_data(data)

    @staticmethod
    def _refuse_head(sock: socket.socket, conn: h11.Connection, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        body = b'{"code":%d,"msg":"malformed request"}' % status
        try:
            head = conn.send(h11.Response(status_code=status, headers=[
                ("content-type", "application/json"), ("content-length", str(len(body))),
                ("connection", "close")]))
            sock.sendall(head + body)  # type: ignore[operator]
        except (h11.LocalProtocolError, OSError):
            pass
