"""HTTP plumbing every API of the gateway shares: request bodies streamed to disk (raw or
multipart, through python-multipart), byte ranges (RFC 9110), stored files streamed out
segment by segment, and the one access-log line per request.

Nothing here knows an API's error format: DeOSS answers JSON, S3 answers XML; both take
the status from `errors.to_http_status`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..chain.interface import FileInfo
from ..errors import InvalidInput, RangeNotSatisfiable, RequestTimeout
from ..metrics import BYTES_IN, BYTES_OUT, REQUESTS, method_label
from ..store import ObjectStore, single_error_nursery

access_log = logging.getLogger("deossfs.gateway.access")

#: bytes gathered before one write to a staging file
WRITE_BATCH = 1024 * 1024
#: a response body is sent in pieces of this size: each is copied once, into the bytes the
#: server sends, and larger pieces take fewer trips through its send path
SEND_PIECE = 4 * 1024 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


# ---- the access log ------------------------------------------------------------------


class AccessLog:
    """ASGI middleware: one line per request — method, path, account, status, bytes, ms —
    and the request and byte counters of metrics.py.

    Routes name the account they acted for in `scope["state"]["account"]`
    (`request.state.account`); a request the client abandoned is logged with status 499."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        scope.setdefault("state", {})
        status = 499
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body = len(message.get("body", b""))
                sent += body
                BYTES_OUT.labels("http").inc(body)
            await send(message)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                BYTES_IN.labels("http").inc(len(message.get("body", b"")))
            return message

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            REQUESTS.labels("http", method_label(scope["method"]), str(status)).inc()
            path = scope.get("raw_path", scope["path"].encode())
            if isinstance(path, bytes):
                path = path.decode("latin-1")
            query = scope.get("query_string", b"")
            if query and b"Signature" not in query and b"signature" not in query.lower():
                path += "?" + query.decode("latin-1")
            access_log.info("%s %s %s %d %d %.0f", scope["method"], path,
                            scope["state"].get("account", "-"), status, sent,
                            (time.monotonic() - started) * 1000)


# ---- request bodies ---------------------------------------------------------------------


async def body_chunks(request: Request, idle_timeout: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; a client silent for `idle_timeout` seconds gets
    RequestTimeout (408), one that disconnects raises starlette's ClientDisconnect."""
    stream = request.stream().__aiter__()
    while True:
        with trio.move_on_after(idle_timeout) as scope:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            raise RequestTimeout(f"the request body stalled for {idle_timeout:.0f} s",
                                 hint="send the body without pauses")
        if chunk:
            yield chunk


class StagingFile:
    """A request body being written to a 0600 file: batched writes, the size so far, and a
    ceiling that stops an oversized body as soon as it passes it.

    The pieces are gathered in one reused WRITE_BATCH buffer (one copy per byte, where a
    bytes per piece joined per batch made two), then written together."""

    def __init__(self, path: os.PathLike[str] | str, limit: int | None = None,
                 too_large: Callable[[int], Exception] | None = None) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0
        self.limit = limit
        self.too_large = too_large
        self._batch: bytearray | None = None
        self._batched = 0
        #: bytes written to the file so far, and who wants to know when it grows
        self.flushed = 0
        self.on_flush: Callable[[int], None] | None = None

    @classmethod
    def existing(cls, path: os.PathLike[str] | str, size: int) -> StagingFile:
        """A staged file written already (the chunks of a resumable upload)."""
        staged = cls.__new__(cls)
        staged.path, staged.fd, staged.size = os.fspath(path), -1, size
        staged.limit, staged.too_large, staged._batch, staged._batched = None, None, None, 0
        staged.flushed, staged.on_flush = size, None
        return staged

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = self._account(data)
        while view:
            view = self._gather(view)
            if self._batched == WRITE_BATCH:
                self.flush()

    async def write_async(self, data: bytes | bytearray | memoryview) -> None:
        """`write`, with each full batch written by a worker thread: a write into the page
        cache takes about a millisecond per batch, which the event loop, receiving every
        other request's body meanwhile, should not wait out."""
        view = self._account(data)
        while view:
            view = self._gather(view)
            if self._batched == WRITE_BATCH:
                await trio.to_thread.run_sync(self._write_batch)
                self._report()

    def flush(self) -> None:
        if self._batched:
            self._write_batch()
            self._report()

    def _account(self, data: bytes | bytearray | memoryview) -> memoryview:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise self.too_large(self.size) if self.too_large else InvalidInput("body too large")
        return memoryview(data).cast("B")

    def _gather(self, view: memoryview) -> memoryview:
        """Copy what fits of `view` into the batch; the rest."""
        if self._batch is None:
            self._batch = bytearray(WRITE_BATCH)
        count = min(len(view), WRITE_BATCH - self._batched)
        self._batch[self._batched:self._batched + count] = view[:count]
        self._batched += count
        return view[count:]

    def _write_batch(self) -> None:
        assert self._batch is not None
        data = memoryview(self._batch)[:self._batched]
        while data:
            data = data[os.write(self.fd, data):]
        self.flushed += self._batched
        self._batched = 0

    def _report(self) -> None:
        if self.on_flush is not None:
            self.on_flush(self.flushed)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = -1
                self._batch = None

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._batch = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass
class FormFile:
    """One file part of a multipart body, staged."""

    filename: str
    staged: StagingFile


@dataclass
class _PartState:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: bytes = b""
    header_name: bytes = b""
    header_value: bytes = b""
    current: FormFile | None = None


async def receive_multipart(
    request: Request, field_name: str, new_file: Callable[[str], StagingFile],
    idle_timeout: float, max_files: int = 1000,
) -> list[FormFile]:
    """Stage every part named `field_name` of a multipart/form-data body (python-multipart
    parses; other fields are ignored); a malformed or truncated body is InvalidInput."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidInput("the body must be multipart/form-data with a boundary",
                           hint=f"send the file as the form field {field_name!r}")
    files: list[FormFile] = []
    state = _PartState()
    finished = False
    wanted = field_name.encode()

    def on_part_begin() -> None:
        state.headers.clear()
        state.current = None

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_name += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[state.header_name.strip().lower()] = state.header_value.strip()
        state.header_name, state.header_value = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state.headers.get(b"content-disposition", b""))
        if disposition.get(b"name") != wanted:
            return
        if len(files) >= max_files:
            raise InvalidInput(f"at most {max_files} files in one request")
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        state.current = FormFile(filename, new_file(filename))
        files.append(state.current)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.current is not None:
            state.current.staged.write(data[start:end])

    def on_part_end() -> None:
        if state.current is not None:
            state.current.staged.close()
            state.current = None

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end, "on_end": on_end,
    })
    try:
        async for chunk in body_chunks(request, idle_timeout):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        _discard(files)
        raise InvalidInput(f"the multipart body is malformed: {exc}") from None
    except BaseException:
        _discard(files)
        raise
    if not finished:
        _discard(files)
        raise InvalidInput("the multipart body ended before its closing boundary (truncated)")
    return files


def _discard(files: list[FormFile]) -> None:
    for item in files:
        item.staged.discard()


async def receive_raw(request: Request, staged: StagingFile, idle_timeout: float) -> None:
    """Stage a raw body; one shorter than its Content-Length is InvalidInput."""
    try:
        async for chunk in body_chunks(request, idle_timeout):
            await staged.write_async(chunk)
        staged.close()
    except BaseException:
        staged.discard()
        raise
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) != staged.size:
        staged.discard()
        raise InvalidInput(f"the body has {staged.size} bytes, Content-Length says {declared}")


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput("Content-Length is not a number")
    return int(value)


# ---- ranges ------------------------------------------------------------------------------


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single-range `Range: bytes=...` header over `size` bytes.

    None: no header, or one to ignore as RFC 9110 allows (several ranges, another unit, a
    malformed value): the whole body is sent. A range that starts past the end is
    RangeNotSatisfiable (416)."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(f"an empty suffix range of a {size}-byte file")
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        raise RangeNotSatisfiable(f"the range starts at byte {start} of a {size}-byte file")
    return start, end


# ---- stored files out -----------------------------------------------------------------


#: on every stored file served: an uploaded HTML file opened in a browser runs sandboxed
#: (an opaque origin, no scripts), never as a page of the gateway's origin, where the web
#: console lives; and its type is not sniffed into something else
STORED_CONTENT_HEADERS = {"content-security-policy": "sandbox", "x-content-type-options": "nosniff"}


class StoredFileResponse:
    """An ASGI response that streams bytes [start, end) of a stored file: only the segments
    the range touches are fetched (`ObjectStore.read_range`), in pieces of SEND_PIECE, and
    the fetching stops as soon as the client disconnects."""

    def __init__(self, store: ObjectStore, info: FileInfo, start: int, end: int, status: int,
                 headers: dict[str, str], head_only: bool = False) -> None:
        self.store, self.info = store, info
        self.start, self.end = start, end
        self.status = status
        self.headers = {**STORED_CONTENT_HEADERS, **headers, "content-length": str(end - start)}
        self.head_only = head_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def start() -> None:
            nonlocal started
            started = True
            await send({"type": "http.response.start", "status": self.status,
                        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                    for k, v in self.headers.items()]})

        if self.head_only or self.start >= self.end:
            await start()
            await send({"type": "http.response.body", "body": b""})
            return

        async def sink(data: memoryview) -> None:
            # the status goes out with the first bytes: a file that cannot be read (a
            # wrong key, too few fragments) is still answered with a proper error
            if not started:
                await start()
            for offset in range(0, len(data), SEND_PIECE):
                await send({"type": "http.response.body",
                            "body": bytes(data[offset:offset + SEND_PIECE]), "more_body": True})

        async with single_error_nursery() as nursery:
            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_disconnect)
            await self.store.read_range(self.info, self.start, self.end, sink)
            await send({"type": "http.response.body", "body": b""})
            nursery.cancel_scope.cancel()


def content_disposition(kind: str, filename: str) -> str:
    """`attachment`/`inline` with the name in both the plain and the RFC 8187 forms."""
    from urllib.parse import quote

    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"


JsonBody = dict[str, Any] | list[Any] | str | None
Handler = Callable[[Request], Awaitable[Any]]
ClientGone = ClientDisconnect
