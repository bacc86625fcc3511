"""The storage node daemon: cess-miner's fragment API over HTTP, on trio + hypercorn.

Routes (a hand-written ASGI router; there are only three):
- `PUT /fragment` - store a fragment of a pending deal. Headers `Fid`, `Fragment`,
  `Account`, `Message`, `Signature`; body multipart/form-data with the field
  `file` (filename = fragment hash), or a raw `application/octet-stream` body.
  The body is parsed streaming, hashed and written to a temporary file in
  batches from worker threads, then committed atomically. A fragment of a stored
  file (no deal) is taken only under a restoral order (`deossfs verify --repair`):
  sent by an owner or its gateway, claimed by this node (`claim_restoral_order`,
  unless it holds the claim already), and completed once stored
  (`restoral_order_complete`), which makes this node the fragment's holder.
- `GET /fragment` - read a fragment (or a `Range`) back; owners of the file,
  their authorized gateways, and while the deal is pending its user (and the
  user's gateways) may read.
- `GET /status` - unsigned: account, endpoint, fragment count, bytes stored.

Once the node holds every fragment of a column j of a deal (fragment j of each
segment; zero fragments count as held) it sends `transfer_report(j + 1, fid)`.
Reports the chain could not take are retried in the background.

Every refusal is a JSON `{"code": <status>, "msg": ...}` with a 4xx status (507
when the node is full, 503 when the chain is unreachable) and one log line.
Blocking work - signature checks, SQLite, chain calls, hashing batches, fsync -
runs in worker threads so the event loop keeps serving other transfers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.trio.tcp_server as _hypercorn_tcp
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..chain.interface import ChainClient, DealInfo
from ..errors import (
    ChainError,
    ChainUnavailable,
    DeossError,
    IntegrityError,
    InvalidInput,
    NodeRefused,
    NotFound,
)
from ..keys import Account
from ..p2p.signing import ReplayGuard
from ..processing.hashes import is_hash
from ..processing.layout import FRAGMENT_SIZE, TOTAL_SHARDS, ZERO_FRAGMENT_HASH
from .store import FragmentStore, FragmentWriter

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: multipart framing around an 8 MiB fragment is a few hundred bytes; allow some slack
MAX_BODY = FRAGMENT_SIZE + 64 * 1024
#: bytes gathered before one hash+write batch goes to a worker thread
FLUSH_BYTES = 1024 * 1024
#: a GET response is sent in pieces of this size
READ_CHUNK = 1024 * 1024
_ZERO_CHUNK = bytes(READ_CHUNK)
_RANGE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")


class Refusal(Exception):
    """A request the node will not serve: answered with `status` and `message`."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


# ---- reports -------------------------------------------------------------------


def reportable_columns(deal: DealInfo, held: set[str], received: set[str], me: str) -> list[int]:
    """0-based columns this node may report for `deal`, best first.

    A column qualifies when every one of its fragments is held (the zero fragment
    always is), it is not reported yet, and it contains a fragment this node was
    actually sent (`received`): otherwise a node that got column 1 could claim an
    all-zero column 0 meant for another node, which then has nothing to report.
    Columns with real data come before all-zero ones (identical hashes across
    columns, e.g. an all-zero file, make several columns qualify at once).
    """
    if any(done.miner == me for done in deal.complete_list):
        return []  # a node reports one column per deal
    reported = {done.index for done in deal.complete_list}
    held = held | {ZERO_FRAGMENT_HASH}
    ranked = []
    for j in range(TOTAL_SHARDS):
        if j + 1 in reported:
            continue
        if any(len(segment.fragment_hashes) <= j for segment in deal.segments):
            continue
        column = [segment.fragment_hashes[j] for segment in deal.segments]
        if not column or not all(h in held for h in column):
            continue
        if not any(h in received for h in column):
            continue
        all_zero = all(h == ZERO_FRAGMENT_HASH for h in column)
        ranked.append((all_zero, j))
    return [j for _, j in sorted(ranked)]


def report_columns(
    chain: ChainClient, store: FragmentStore, fid: str, received: Iterable[str] | None = None
) -> int | None:
    """Send `transfer_report` for a held column of `fid` (blocking; run in a thread).

    `received`: the fragments this node was sent for the current deal (the zero
    fragment among them, which is never stored); None after a restart, when only what
    it holds is known. Held fragments of an earlier deal of the same FID (stored,
    deleted, declared again) are not proof of being sent a column now: counting them
    made a node report a data column it was given last time instead of the all-zero
    column it was given now. Returns the 1-based index reported, or None when there is
    nothing (more) to report. `ChainUnavailable` propagates so the caller can retry.
    """
    deal = chain.deal(fid)
    if deal is None:
        return None  # completed, or never declared
    held = store.fragments_of(fid)
    received = set(received) if received is not None else held
    for j in reportable_columns(deal, held, received, chain.account):
        try:
            chain.transfer_report(j + 1, fid)
        except ChainError as exc:
            # most likely another node reported this column a moment ago: try the next
            log.info("transfer_report(%d, %s…) refused: %s", j + 1, fid[:16], exc)
            continue
        log.info("reported column %d of %s…", j + 1, fid[:16])
        return j + 1
    return None


# ---- request helpers -------------------------------------------------------------


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    client: str
    receive: Receive
    body_done: bool = False

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _request_from_scope(scope: Scope, receive: Receive) -> _Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        # the first occurrence wins, for the signature check and the handler alike
        headers.setdefault(name, raw_value.decode("latin-1"))
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "?"
    return _Request(
        method=scope.get("method", ""),
        path=scope.get("path", ""),
        headers=headers,
        client=peer,
        receive=receive,
    )


async def _next_chunk(request: _Request) -> bytes | None:
    """The next piece of the request body, or None at its end."""
    while not request.body_done:
        message = await request.receive()
        kind = message.get("type")
        if kind == "http.disconnect":
            request.body_done = True
            raise ClientGone()
        if kind != "http.request":
            continue
        if not message.get("more_body", False):
            request.body_done = True
        chunk = message.get("body", b"")
        if chunk:
            return chunk
    return None


async def _drain(request: _Request, limit: int = MAX_BODY) -> None:
    """Read and drop an unwanted body so the client sees our answer, not a reset."""
    received = 0
    with trio.move_on_after(30):
        try:
            while (chunk := await _next_chunk(request)) is not None:
                received += len(chunk)
                if received > limit:
                    return  # too much: answer anyway; the server then closes the connection
        except ClientGone:
            pass


def _json_bytes(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def _send_json(
    send: Send, status: int, payload: dict, headers: Iterable[tuple[str, str]] = ()
) -> None:
    body = _json_bytes(payload)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _hash_header(request: _Request, name: str) -> str:
    value = request.header(name)
    if value is None:
        raise Refusal(400, f"missing {name} header")
    value = value.strip()
    if not is_hash(value):
        raise Refusal(400, f"{name} header must be 64 lowercase hex characters")
    return value


def _parse_range(value: str, size: int) -> tuple[int, int]:
    """(start, end exclusive) of a single `bytes=a-b` range; `Refusal(416)` if unusable."""
    unsatisfiable = Refusal(
        416, f"bad or unsatisfiable range {value[:60]!r}", [("content-range", f"bytes */{size}")]
    )
    match = _RANGE.fullmatch(value.strip())
    if match is None:
        raise unsatisfiable
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            raise unsatisfiable
        return max(0, size - int(last)), size  # suffix range: the last n bytes
    start = int(first)
    end = int(last) + 1 if last else size
    if start >= size or end <= start:
        raise unsatisfiable
    return start, min(end, size)


class _UploadSink:
    """Collects the fragment's bytes and hands them, in batches, to a worker thread.

    Parser callbacks only append memoryviews of the received chunks (no copy); a
    batch of about `FLUSH_BYTES` is then hashed and written with one `writev` off
    the event loop. Bytes beyond `FRAGMENT_SIZE` are counted, not kept.
    """

    def __init__(self, store: FragmentStore, fid: str, fragment_hash: str) -> None:
        self.store = store
        self.fid = fid
        self.fragment_hash = fragment_hash
        self.pending: list[memoryview] = []
        self.pending_bytes = 0
        self.size = 0
        self.writer: FragmentWriter | None = None
        # the zero fragment is never stored, only hashed (if it is sent with a body at all)
        self._hasher = hashlib.sha256() if fragment_hash == ZERO_FRAGMENT_HASH else None

    def add(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.size > FRAGMENT_SIZE:
            return
        self.pending.append(memoryview(data)[start:end])
        self.pending_bytes += end - start

    async def flush(self, *, force: bool = False) -> None:
        if not self.pending or (self.pending_bytes < FLUSH_BYTES and not force):
            return
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        await trio.to_thread.run_sync(self._write, batch)

    def _write(self, batch: list[memoryview]) -> None:
        if self._hasher is not None:
            for view in batch:
                self._hasher.update(view)
            return
        if self.writer is None:
            self.writer = self.store.open_writer(self.fid, self.fragment_hash)
        self.writer.write_many(batch)

    def hexdigest(self) -> str:
        if self._hasher is not None:
            return self._hasher.hexdigest()
        if self.writer is None:
            return ""
        return self.writer.hexdigest()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class _MultipartReader:
    """Drives python-multipart's streaming parser; sends the `file` field to a sink."""

    def __init__(self, boundary: bytes, sink: _UploadSink) -> None:
        self.sink = sink
        self.ended = False
        self.file_parts = 0
        self.filename: str | None = None
        self.other_bytes = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_end": self._end,
            },
            max_size=MAX_BODY,
        )

    def feed(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def _part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_field).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        if params.get(b"name") == b"file":
            self.file_parts += 1
            if self.file_parts > 1:
                raise Refusal(400, "more than one `file` field")
            self._in_file = True
            filename = params.get(b"filename")
            self.filename = filename.decode("latin-1") if filename is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.add(data, start, end)
        else:
            self.other_bytes += end - start
            if self.other_bytes > 4096:
                raise Refusal(400, "unexpected form fields besides `file`")

    def _end(self) -> None:
        self.ended = True


# ---- the node --------------------------------------------------------------------


class NodeApp:
    """State and request handlers of one storage node (an ASGI application)."""

    def __init__(
        self,
        store: FragmentStore,
        chain: ChainClient,
        account: Account,
        guard: ReplayGuard,
        *,
        endpoint: str = "",
        capacity: int | None = None,
        retry_interval: float = 5.0,
        report_wait: float = 2.0,
        max_uploads: int = 64,
    ) -> None:
        self.store = store
        self.chain = chain
        self.account = account
        self.guard = guard
        self.endpoint = endpoint
        self.capacity = capacity
        self.retry_interval = retry_interval
        self.report_wait = report_wait
        self._uploads = trio.CapacityLimiter(max_uploads)
        #: deals whose report failed for a temporary reason; retried in the background
        self.pending_reports: set[str] = set()
        #: fid -> fragments sent to this node since its last report for that fid (the
        #: never stored zero fragment too): what it may report a column for
        self._received: dict[str, set[str]] = {}
        self._report_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    # ---- ASGI entry ------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        request = _request_from_scope(scope, receive)
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self._route(request, tracked_send)
        except ClientGone:
            log.info(
                "%s %s from %s: client went away", request.method, request.path, request.client
            )
        except Exception as exc:
            refusal = self._as_refusal(exc)
            level = (
                logging.ERROR if refusal.status >= 500 and refusal.status != 503 else logging.INFO
            )
            log.log(
                level,
                "refused %s %s from %s: %d %s",
                request.method,
                request.path,
                request.client,
                refusal.status,
                refusal.message,
                exc_info=level == logging.ERROR,
            )
            if started:
                return  # mid-body: nothing sensible to add; the server closes the stream
            if request.method == "PUT" and not request.body_done:
                await _drain(request)
            await _send_json(
                send,
                refusal.status,
                {"code": refusal.status, "msg": refusal.message},
                refusal.headers,
            )

    @staticmethod
    def _as_refusal(exc: Exception) -> Refusal:
        if isinstance(exc, Refusal):
            return exc
        if isinstance(exc, NodeRefused):
            return Refusal(exc.status, str(exc))
        if isinstance(exc, ChainUnavailable):
            return Refusal(503, f"chain unavailable: {exc}")
        if isinstance(exc, IntegrityError):
            return Refusal(400, str(exc))
        if isinstance(exc, InvalidInput):
            return Refusal(400, str(exc))
        if isinstance(exc, NotFound):
            return Refusal(404, str(exc))
        if isinstance(exc, FormParserError):
            return Refusal(400, f"malformed multipart body: {exc}")
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Refusal(507, "node storage is full")
        if isinstance(exc, DeossError):
            return Refusal(500, f"{type(exc).__name__}: {exc}")
        return Refusal(500, f"internal error ({type(exc).__name__})")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, request: _Request, send: Send) -> None:
        routes: dict[str, dict[str, Callable[[_Request, Send], Awaitable[None]]]] = {
            "/fragment": {"PUT": self._put_fragment, "GET": self._get_fragment},
            "/status": {"GET": self._status},
        }
        methods = routes.get(request.path)
        if methods is None:
            raise Refusal(404, "no such route")
        handler = methods.get(request.method)
        if handler is None:
            raise Refusal(
                405, f"method {request.method[:10]} not allowed", [("allow", ", ".join(methods))]
            )
        await handler(request, send)

    # ---- GET /status -------------------------------------------------------------
    async def _status(self, request: _Request, send: Send) -> None:
        count, used = self.store.stats()
        await _send_json(
            send,
            200,
            {
                "code": 200,
                "account": self.account.address,
                "endpoint": self.endpoint,
                "fragments": count,
                "bytes": used,
                "idle_space": self.capacity,
                "pending_reports": len(self.pending_reports),
            },
        )

    # ---- PUT /fragment -------------------------------------------------------------
    async def _put_fragment(self, request: _Request, send: Send) -> None:
        fid = _hash_header(request, "Fid")
        fragment = _hash_header(request, "Fragment")
        boundary = self._boundary(request)
        declared = request.header("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refusal(400, "bad Content-Length")
            if int(declared) > MAX_BODY:
                request.body_done = True  # not worth reading: answer, then the connection closes
                raise Refusal(413, f"body larger than a fragment ({FRAGMENT_SIZE} bytes)")

        signer = await trio.to_thread.run_sync(
            self.guard.check, request.headers, "PUT", fid, fragment
        )
        deal = await trio.to_thread.run_sync(self.chain.deal, fid)
        if deal is None:
            # not a storage order: maybe a lost fragment being re-homed here (a restoral order)
            await trio.to_thread.run_sync(self._claim_restoral, signer, fid, fragment)
        else:
            if not any(fragment in segment.fragment_hashes for segment in deal.segments):
                raise Refusal(403, "fragment is not part of this deal")
            await self._require_user_or_gateway(signer, deal.user.user)
        if fragment != ZERO_FRAGMENT_HASH and not self.store.has(fid, fragment):
            _, used = self.store.stats()
            if self.capacity is not None and used + FRAGMENT_SIZE > self.capacity:
                raise Refusal(507, "node storage is full")

        async with self._uploads:
            await self._receive_fragment(request, fid, fragment, boundary)
        if deal is None:
            await self._complete_restoral(fragment)
        else:
            await self._after_store(fid, fragment)
        await _send_json(send, 200, {"code": 200, "msg": "ok"})

    def _claim_restoral(self, signer: str, fid: str, fragment: str) -> None:
        """Accept `fragment` of stored file `fid` only under a restoral order we hold (blocking).

        The order must be for this file; the sender an owner of it (or a gateway one
        authorized). An order nobody holds is claimed now (`claim_restoral_order`); one
        this node claimed before (a retried PUT) is used again; one another node holds
        until its deadline is refused.
        """
        order = self.chain.restoral_order(fragment)
        if order is None or order.fid != fid:
            raise Refusal(404, f"no pending storage deal or restoral order for {fid}")
        if not self._may_read(signer, fid):
            raise Refusal(403, "signer is not an owner of the file nor a gateway one authorized")
        me = self.account.address
        claimed = order.count > 0 and self.chain.block_number() <= order.deadline
        if claimed and order.miner == me:
            return
        if claimed:
            raise Refusal(409, "the restoral order is claimed by another storage node")
        try:
            self.chain.claim_restoral_order(fragment)
        except ChainError as exc:
            raise Refusal(409, f"cannot claim the restoral order: {exc}") from None
        log.info("claimed the restoral order of fragment %s… of %s…", fragment[:16], fid[:16])

    async def _complete_restoral(self, fragment: str) -> None:
        """The fragment is stored: become its holder on the chain (`restoral_order_complete`).

        If the chain is unreachable the PUT is answered 503; the fragment stays, and
        the sender's retry completes the order.
        """
        try:
            await trio.to_thread.run_sync(self.chain.restoral_order_complete, fragment)
        except ChainError as exc:
            raise Refusal(409, f"the restoral order could not be completed: {exc}") from None
        log.info("restored fragment %s…", fragment[:16])

    @staticmethod
    def _boundary(request: _Request) -> bytes | None:
        """The multipart boundary, or None for a raw octet-stream body."""
        content_type = request.header("content-type") or ""
        kind, params = parse_options_header(content_type)
        if kind == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary or len(boundary) > 200:
                raise Refusal(400, "multipart body without a usable boundary")
            return boundary
        if kind in (b"application/octet-stream", b""):
            return None
        raise Refusal(
            415, "body must be multipart/form-data (field `file`) or application/octet-stream"
        )

    async def _require_user_or_gateway(self, signer: str, user: str) -> None:
        if signer == user:
            return
        gateways = await trio.to_thread.run_sync(self.chain.authorized_gateways, user)
        if signer not in gateways:
            raise Refusal(403, "signer is neither the deal's user nor a gateway it authorized")

    async def _receive_fragment(
        self, request: _Request, fid: str, fragment: str, boundary: bytes | None
    ) -> None:
        sink = _UploadSink(self.store, fid, fragment)
        reader = _MultipartReader(boundary, sink) if boundary is not None else None
        received = 0
        try:
            while (chunk := await _next_chunk(request)) is not None:
                received += len(chunk)
                if received > MAX_BODY:
                    request.body_done = True  # stop reading; the connection closes after the answer
                    raise Refusal(413, f"body larger than a fragment ({FRAGMENT_SIZE} bytes)")
                if reader is not None:
                    reader.feed(chunk)
                else:
                    sink.add(chunk, 0, len(chunk))
                await sink.flush()
            if sink.size > FRAGMENT_SIZE:
                raise Refusal(413, f"fragment larger than {FRAGMENT_SIZE} bytes")
            if reader is not None:
                if not reader.ended:
                    raise Refusal(400, "multipart body ended early")
                if reader.file_parts == 0:
                    raise Refusal(400, "multipart body has no `file` field")
                if reader.filename is not None and reader.filename != fragment:
                    raise Refusal(400, "the file's filename must be its fragment hash")
            await sink.flush(force=True)
            if fragment == ZERO_FRAGMENT_HASH and sink.size == 0:
                return  # cess-miner convention: the zero fragment comes without a body
            if sink.size != FRAGMENT_SIZE:
                raise Refusal(400, f"fragment has {sink.size} bytes, not {FRAGMENT_SIZE}")
            if sink.hexdigest() != fragment:
                raise Refusal(400, "fragment data does not match the Fragment hash")
            if sink.writer is not None:
                await trio.to_thread.run_sync(sink.writer.commit)
        finally:
            # no-op after a commit; otherwise drops the temporary file
            sink.abort()

    # ---- reports ---------------------------------------------------------------------
    async def _after_store(self, fid: str, fragment: str) -> None:
        self._received.setdefault(fid, set()).add(fragment)
        if self._nursery is None:
            await self._report(fid)
            return
        # wait briefly so a fast chain has the report when the PUT returns; a slow one
        # finishes in the background rather than holding the gateway's request
        done = trio.Event()

        async def report_then_signal() -> None:
            try:
                await self._report(fid)
            finally:
                done.set()

        self._nursery.start_soon(report_then_signal)
        with trio.move_on_after(self.report_wait):
            await done.wait()

    async def _report(self, fid: str) -> None:
        lock = self._report_locks.setdefault(fid, trio.Lock())
        try:
            async with lock:  # one report attempt per deal at a time
                received = self._received.get(fid)
                try:
                    index = await trio.to_thread.run_sync(
                        report_columns, self.chain, self.store, fid,
                        None if received is None else set(received),
                    )
                except ChainUnavailable as exc:
                    log.info("transfer report for %s… postponed: %s", fid[:16], exc)
                    self.pending_reports.add(fid)
                    return
                except Exception:
                    log.exception("transfer report for %s… failed; will retry", fid[:16])
                    self.pending_reports.add(fid)
                    return
                # reported, or nothing reportable (yet): the next fragment re-triggers it
                self.pending_reports.discard(fid)
                if index is not None:
                    self._received.pop(fid, None)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._report_locks.pop(fid, None)

    async def retry_reports(self) -> None:
        """Retry the reports that could not be sent, every `retry_interval` seconds.

        The first pass runs at once: after a restart it sends what a crash or a
        chain outage left owed (see `recover_pending`).
        """
        while True:
            for fid in list(self.pending_reports):
                await self._report(fid)
            await trio.sleep(self.retry_interval)

    def recover_pending(self) -> None:
        """After a restart: re-check every deal we hold fragments of (blocking)."""
        self.pending_reports.update(self.store.fids())

    # ---- GET /fragment -------------------------------------------------------------
    async def _get_fragment(self, request: _Request, send: Send) -> None:
        fid = _hash_header(request, "Fid")
        fragment = _hash_header(request, "Fragment")
        signer = await trio.to_thread.run_sync(
            self.guard.check, request.headers, "GET", fid, fragment
        )
        allowed = await trio.to_thread.run_sync(self._may_read, signer, fid)
        if allowed is None:
            raise Refusal(404, f"no file or pending deal {fid}")
        if not allowed:
            raise Refusal(403, "signer is not an owner of the file nor a gateway one authorized")
        if not self.store.has(fid, fragment):
            raise Refusal(404, "fragment not held by this node")
        size = self.store.size(fid, fragment)
        range_header = request.header("range")
        if range_header is None:
            start, end, status = 0, size, 200
        else:
            start, end = _parse_range(range_header, size)
            status = 206
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(end - start).encode()),
            (b"accept-ranges", b"bytes"),
        ]
        if status == 206:
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))

        if fragment == ZERO_FRAGMENT_HASH:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await self._send_zeros(send, end - start)
            return
        fd = await trio.to_thread.run_sync(os.open, self.store.path(fid, fragment), os.O_RDONLY)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            position = start
            while position < end:
                count = min(READ_CHUNK, end - position)
                chunk = await trio.to_thread.run_sync(os.pread, fd, count, position)
                if not chunk:
                    raise OSError(errno.EIO, "fragment file shrank while being sent")
                position += len(chunk)
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": position < end}
                )
            if start == end:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            os.close(fd)

    @staticmethod
    async def _send_zeros(send: Send, length: int) -> None:
        remaining = length
        while remaining > 0:
            count = min(READ_CHUNK, remaining)
            remaining -= count
            await send(
                {
                    "type": "http.response.body",
                    "body": _ZERO_CHUNK if count == READ_CHUNK else bytes(count),
                    "more_body": remaining > 0,
                }
            )
        if length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _may_read(self, signer: str, fid: str) -> bool | None:
        """True if `signer` may read `fid`'s fragments; None if the chain knows no such file."""
        info = self.chain.file(fid)
        deal = self.chain.deal(fid)
        if info is None and deal is None:
            return None
        users = []
        if info is not None:
            users.extend(owner.user for owner in info.owners)
        if deal is not None:
            users.append(deal.user.user)
        if signer in users:
            return True
        return any(signer in self.chain.authorized_gateways(user) for user in dict.fromkeys(users))

    # ---- running ---------------------------------------------------------------------
    async def run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the nursery for report tasks and run the retry loop (until cancelled)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await self.retry_reports()
            finally:
                self._nursery = None


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    return f"{host}:{port}"


async def serve_node(
    node_dir: Path,
    account: Account,
    chain: ChainClient,
    host: str,
    port: int,
    idle_space: int,
    *,
    public_endpoint: str | None = None,
    window_seconds: float = 120,
    retry_interval: float = 5.0,
    listen_fd: int | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a storage node in `node_dir` on host:port until cancelled.

    Port 0 picks a free port; `listen_fd` serves a socket the caller already bound
    (`deossfs devnet up` binds each node's port and hands it over, so two devnets
    starting at once cannot pick the same one). Once listening, the node registers
    `http://host:port` (or `public_endpoint`) with `idle_space` bytes on the
    chain, then reports that endpoint through `task_status.started`.
    """
    node_dir = Path(node_dir)
    store = await trio.to_thread.run_sync(FragmentStore, node_dir)
    removed = await trio.to_thread.run_sync(store.cleanup_temporaries)
    if removed:
        log.info("removed %d temporary files left by an interrupted upload", removed)
    guard = await trio.to_thread.run_sync(ReplayGuard, node_dir / "replay.sqlite3", window_seconds)
    node = NodeApp(store, chain, account, guard, capacity=idle_space, retry_interval=retry_interval)
    await trio.to_thread.run_sync(node.recover_pending)

    # hypercorn reads 64 KiB per receive; a node takes 8 MiB bodies, and 1 MiB reads
    # cut its per-request Python work several-fold. The node process runs only this
    # server, so changing the module's constant affects nothing else.
    _hypercorn_tcp.MAX_RECV = 1024 * 1024
    config = Config()
    config.bind = [f"fd://{listen_fd}" if listen_fd is not None else _bind_address(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("deossfs.node.http")
    config.read_timeout = 60  # a sender that stalls this long mid-request is dropped
    config.keep_alive_timeout = 30
    config.include_server_header = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run_background)
            binds: list[str] = await nursery.start(partial(serve, node, config, mode="asgi"))
            endpoint = public_endpoint or (
                binds[0] if binds else f"http://{_bind_address(host, port)}"
            )
            node.endpoint = endpoint
            await trio.to_thread.run_sync(chain.register_storage_node, endpoint, idle_space)
            log.info("storage node %s serving at %s", account.address, endpoint)
            task_status.started(endpoint)
    finally:
        guard.close()


def run_node(
    node_dir: Path,
    account: Account,
    chain: ChainClient,
    host: str,
    port: int,
    idle_space: int,
    **options: Any,
) -> None:
    """Blocking `serve_node` (for the CLI): runs until SIGINT or SIGTERM, then stops cleanly."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(serve_node, node_dir, account, chain, host, port, idle_space, **options)
            )
            if threading.current_thread() is not threading.main_thread():
                return  # signals can only be caught in the main thread; Ctrl-C still works
            # a process manager's SIGTERM ends the node like Ctrl-C, not mid-write
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("SIGTERM: stopping the storage node")
                    nursery.cancel_scope.cancel()
                    return

    trio.run(main)
