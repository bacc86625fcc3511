"""The storage node daemon: cess-miner's fragment API over HTTP (node/http.py's threads).

Routes (there are only three):
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
Each connection is served by a thread of its own (node/http.py says why), so the
handlers here are plain blocking code: signature checks, SQLite, chain calls,
hashing, writes and fsync run where the request is; reports that the chain is slow
to take finish in a background thread, and failed ones are retried by a trio task.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from functools import partial
from pathlib import Path
from typing import Any

import trio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..chain.interface import ChainClient, DealInfo
from ..directio import ALIGNMENT
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
from .http import RECV_CHUNK, ClientGone, Exchange, Piece, ThreadedServer
from .store import FragmentStore, FragmentWriter

log = logging.getLogger(__name__)

#: multipart framing around an 8 MiB fragment is a few hundred bytes; allow some slack
MAX_BODY = FRAGMENT_SIZE + 64 * 1024
#: the most bytes before a multipart body's first part data (preamble, boundary, headers)
MAX_PART_HEAD = 16 * 1024
#: the zero fragment is answered from this block
_ZERO_CHUNK = bytes(1024 * 1024)
_RANGE = re.compile(r"bytes=(\d{0,15})-(\d{0,15})")


class Refusal(Exception):
    """A request the node will not serve: answered with `status` and `message`."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


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


def _drain(request: Exchange, limit: int = MAX_BODY) -> None:
    """Read and drop an unwanted body so the client sees our answer, not a reset."""
    with contextlib.suppress(ClientGone):
        request.read_body(lambda piece: None, limit)


def _json_bytes(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _send_json(
    request: Exchange, status: int, payload: dict, headers: Iterable[tuple[str, str]] = ()
) -> None:
    request.respond(status, [("content-type", "application/json"), *headers], _json_bytes(payload))


def _hash_header(request: Exchange, name: str) -> str:
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
    """The fragment's bytes, hashed and written as they arrive (in the connection's thread).

    Bytes beyond `FRAGMENT_SIZE` are counted, not kept. The zero fragment is never
    stored, only hashed (if it is sent with a body at all).
    """

    def __init__(self, store: FragmentStore, fid: str, fragment_hash: str) -> None:
        self.store = store
        self.fid = fid
        self.fragment_hash = fragment_hash
        self.size = 0
        self.writer: FragmentWriter | None = None
        self._hasher = hashlib.sha256() if fragment_hash == ZERO_FRAGMENT_HASH else None

    def add(self, data: Piece, start: int, end: int) -> None:
        self.size += end - start
        if self.size > FRAGMENT_SIZE or end == start:
            return
        view = memoryview(data)[start:end]
        if self._hasher is not None:
            self._hasher.update(view)
            return
        if self.writer is None:
            self.writer = self.store.open_writer(self.fid, self.fragment_hash)
        self.writer.write(view)

    def next_read_size(self) -> int:
        """How much to receive next so that the data stays block-aligned in the file (an
        odd start is topped up to a block boundary), and whole receive buffers, landing
        page-aligned, are written with O_DIRECT as they are."""
        return (-self.size) % ALIGNMENT or RECV_CHUNK

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

    def feed(self, chunk: Piece) -> None:
        if not isinstance(chunk, bytes | bytearray):  # the receive buffer: the parser wants bytes' methods
            chunk = bytes(chunk)
        self.parser.write(chunk)  # type: ignore[arg-type] - it reads any bytes-like with find()

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

    @property
    def in_file_data(self) -> bool:
        """The `file` part's headers are read: what follows is its data."""
        return self._in_file

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.sink.add(data, start, end)
        else:
            self.other_bytes += end - start
            if self.other_bytes > 4096:
                raise Refusal(400, "unexpected form fields besides `file`")

    def _end(self) -> None:
        self.ended = True


class _CanonicalForm:
    """A fragment upload read without scanning its 8 MiB for the boundary, when it has the
    form every CESS client sends: one `file` part, then the closing delimiter.

    python-multipart searches every data byte for the boundary (`bytes.find`: ~8% of a
    node's CPU). When the Content-Length leaves exactly FRAGMENT_SIZE bytes between the
    file part's headers and a closing delimiter, those bytes go straight to the sink;
    the parser still reads the part's headers and the closing delimiter, so a body of
    any other shape is refused just as before (or parsed as before, when its length
    says it has another shape). Data holding the boundary itself, which RFC 2046 rules
    out, is taken as data here; the fragment hash decides whether it is kept.
    """

    def __init__(self, reader: _MultipartReader, sink: _UploadSink, boundary: bytes,
                 body_length: int) -> None:
        self.reader, self.sink = reader, sink
        self.body_length = body_length
        self.closing = len(b"\r\n--" + boundary + b"--\r\n")
        self.position = 0  # body bytes seen
        self.head = bytearray()  # bytes before the file's data, while looking for its end
        self.data_end: int | None = None  # where the data ends (canonical) - None: not yet
        self.parsing = False  # not canonical: everything goes to the parser
        self.direct_bytes = 0

    def feed(self, piece: Piece) -> None:
        start = self.position
        self.position += len(piece)
        if self.parsing:
            self.reader.feed(piece)
        elif self.data_end is None:
            self._look_for_data(piece)
        else:
            self._data(piece, start)

    def next_read_size(self) -> int:
        return self.sink.next_read_size() if self.data_end is not None else RECV_CHUNK

    def _look_for_data(self, piece: Piece) -> None:
        self.head += piece
        blank = self.head.find(b"\r\n\r\n", 0, MAX_PART_HEAD)
        if blank < 0:
            if len(self.head) >= MAX_PART_HEAD:
                self._parse_the_rest()
            return
        headers_end = blank + 4
        self.reader.feed(self.head[:headers_end])
        if self.reader.in_file_data and self.body_length - headers_end - self.closing == FRAGMENT_SIZE:
            self.data_end = self.body_length - self.closing
            rest, self.head = memoryview(self.head)[headers_end:], bytearray()
            self._data(rest, headers_end)
        else:
            self.head = self.head[headers_end:]
            self._parse_the_rest()

    def _parse_the_rest(self) -> None:
        self.parsing = True
        head, self.head = self.head, bytearray()
        if head:
            self.reader.feed(head)

    def _data(self, piece: Piece, start: int) -> None:
        assert self.data_end is not None
        split = max(0, min(len(piece), self.data_end - start))
        if split:
            self.sink.add(piece, 0, split)
            self.direct_bytes += split
        if split < len(piece):
            self.reader.feed(bytes(memoryview(piece)[split:]))  # the closing delimiter


# ---- the node --------------------------------------------------------------------


class NodeApp:
    """State and request handlers of one storage node (blocking; one thread per request)."""

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
        self._uploads = threading.BoundedSemaphore(max_uploads)
        self._lock = threading.Lock()
        #: deals whose report failed for a temporary reason; retried in the background
        self.pending_reports: set[str] = set()
        #: fid -> fragments sent to this node since its last report for that fid (the
        #: never stored zero fragment too): what it may report a column for
        self._received: dict[str, set[str]] = {}
        self._report_locks: dict[str, threading.Lock] = {}
        #: reports the chain is slow to take finish here, not in the gateway's request
        self._reporters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="report")

    def close(self) -> None:
        self._reporters.shutdown(wait=True)

    # ---- entry ---------------------------------------------------------------------
    def handle(self, request: Exchange) -> None:
        """Answer one request (node/http.py calls this in the connection's thread)."""
        try:
            self._route(request)
        except ClientGone:
            log.info("%s %s from %s: client went away", request.method, request.path, request.client)
            raise
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
            if request.responded:
                raise ClientGone() from None  # mid-body: nothing sensible to add; close
            if request.method == "PUT" and not request.body_done:
                _drain(request)
            _send_json(
                request,
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

    def _route(self, request: Exchange) -> None:
        routes: dict[str, dict[str, Callable[[Exchange], None]]] = {
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
        handler(request)

    # ---- GET /status -------------------------------------------------------------
    def _status(self, request: Exchange) -> None:
        count, used = self.store.stats()
        _send_json(
            request,
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
    def _put_fragment(self, request: Exchange) -> None:
        fid = _hash_header(request, "Fid")
        fragment = _hash_header(request, "Fragment")
        boundary = self._boundary(request)
        declared = request.header("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refusal(400, "bad Content-Length")
            if int(declared) > MAX_BODY:
                request.stop_reading()  # not worth reading: answer, then the connection closes
                raise Refusal(413, f"body larger than a fragment ({FRAGMENT_SIZE} bytes)")

        signer = self.guard.check(request.headers, "PUT", fid, fragment)
        deal = self.chain.deal(fid)
        if deal is None:
            # not a storage order: maybe a lost fragment being re-homed here (a restoral order)
            self._claim_restoral(signer, fid, fragment)
        else:
            if not any(fragment in segment.fragment_hashes for segment in deal.segments):
                raise Refusal(403, "fragment is not part of this deal")
            self._require_user_or_gateway(signer, deal.user.user)
        if fragment != ZERO_FRAGMENT_HASH and not self.store.has(fid, fragment):
            _, used = self.store.stats()
            if self.capacity is not None and used + FRAGMENT_SIZE > self.capacity:
                raise Refusal(507, "node storage is full")

        with self._uploads:
            self._receive_fragment(request, fid, fragment, boundary)
        if deal is None:
            self._complete_restoral(fragment)
        else:
            self._after_store(fid, fragment)
        _send_json(request, 200, {"code": 200, "msg": "ok"})

    def _claim_restoral(self, signer: str, fid: str, fragment: str) -> None:
        """Accept `fragment` of stored file `fid` only under a restoral order we hold.

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

    def _complete_restoral(self, fragment: str) -> None:
        """The fragment is stored: become its holder on the chain (`restoral_order_complete`).

        If the chain is unreachable the PUT is answered 503; the fragment stays, and
        the sender's retry completes the order.
        """
        try:
            self.chain.restoral_order_complete(fragment)
        except ChainError as exc:
            raise Refusal(409, f"the restoral order could not be completed: {exc}") from None
        log.info("restored fragment %s…", fragment[:16])

    @staticmethod
    def _boundary(request: Exchange) -> bytes | None:
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

    def _require_user_or_gateway(self, signer: str, user: str) -> None:
        if signer == user:
            return
        if signer not in self.chain.authorized_gateways(user):
            raise Refusal(403, "signer is neither the deal's user nor a gateway it authorized")

    def _receive_fragment(
        self, request: Exchange, fid: str, fragment: str, boundary: bytes | None
    ) -> None:
        sink = _UploadSink(self.store, fid, fragment)
        reader = _MultipartReader(boundary, sink) if boundary is not None else None
        consume: Callable[[Piece], None]
        next_size: Callable[[], int] | None = None
        if reader is None:
            consume, next_size = lambda piece: sink.add(piece, 0, len(piece)), sink.next_read_size  # noqa: E731
        elif request.body_length is not None:
            assert boundary is not None
            form = _CanonicalForm(reader, sink, boundary, request.body_length)
            consume, next_size = form.feed, form.next_read_size
        else:
            consume = reader.feed
        try:
            received = request.read_body(consume, MAX_BODY, next_size)
            if received > MAX_BODY:
                raise Refusal(413, f"body larger than a fragment ({FRAGMENT_SIZE} bytes)")
            if sink.size > FRAGMENT_SIZE:
                raise Refusal(413, f"fragment larger than {FRAGMENT_SIZE} bytes")
            if reader is not None:
                if not reader.ended:
                    raise Refusal(400, "multipart body ended early")
                if reader.file_parts == 0:
                    raise Refusal(400, "multipart body has no `file` field")
                if reader.filename is not None and reader.filename != fragment:
                    raise Refusal(400, "the file's filename must be its fragment hash")
            if fragment == ZERO_FRAGMENT_HASH and sink.size == 0:
                return  # cess-miner convention: the zero fragment comes without a body
            if sink.size != FRAGMENT_SIZE:
                raise Refusal(400, f"fragment has {sink.size} bytes, not {FRAGMENT_SIZE}")
            if sink.hexdigest() != fragment:
                raise Refusal(400, "fragment data does not match the Fragment hash")
            if sink.writer is not None:
                sink.writer.commit()
        finally:
            # no-op after a commit; otherwise drops the temporary file
            sink.abort()

    # ---- reports ---------------------------------------------------------------------
    def _after_store(self, fid: str, fragment: str) -> None:
        with self._lock:
            self._received.setdefault(fid, set()).add(fragment)
        # wait briefly so a fast chain has the report when the PUT returns; a slow one
        # finishes in the background rather than holding the gateway's request
        try:
            future = self._reporters.submit(self.report, fid)
        except RuntimeError:  # shutting down: the retry task or a restart reports it
            return
        wait_futures([future], timeout=self.report_wait)

    def report(self, fid: str) -> None:
        """Report a held column of `fid` if there is one (blocking); a failure to reach
        the chain leaves it for `retry_reports`."""
        with self._lock:
            lock = self._report_locks.setdefault(fid, threading.Lock())
        with lock:  # one report attempt per deal at a time
            with self._lock:
                received = self._received.get(fid)
                received = None if received is None else set(received)
            try:
                index = report_columns(self.chain, self.store, fid, received)
            except ChainUnavailable as exc:
                log.info("transfer report for %s… postponed: %s", fid[:16], exc)
                with self._lock:
                    self.pending_reports.add(fid)
                return
            except Exception:
                log.exception("transfer report for %s… failed; will retry", fid[:16])
                with self._lock:
                    self.pending_reports.add(fid)
                return
            with self._lock:
                # reported, or nothing reportable (yet): the next fragment re-triggers it
                self.pending_reports.discard(fid)
                if index is not None:
                    self._received.pop(fid, None)
                self._report_locks.pop(fid, None)

    async def retry_reports(self) -> None:
        """Retry the reports that could not be sent, every `retry_interval` seconds.

        The first pass runs at once: after a restart it sends what a crash or a
        chain outage left owed (see `recover_pending`).
        """
        while True:
            with self._lock:
                owed = list(self.pending_reports)
            for fid in owed:
                await trio.to_thread.run_sync(self.report, fid)
            await trio.sleep(self.retry_interval)

    def recover_pending(self) -> None:
        """After a restart: re-check every deal we hold fragments of (blocking)."""
        self.pending_reports.update(self.store.fids())

    # ---- GET /fragment -------------------------------------------------------------
    def _get_fragment(self, request: Exchange) -> None:
        fid = _hash_header(request, "Fid")
        fragment = _hash_header(request, "Fragment")
        signer = self.guard.check(request.headers, "GET", fid, fragment)
        allowed = self._may_read(signer, fid)
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
        headers = [("content-type", "application/octet-stream"), ("accept-ranges", "bytes")]
        if status == 206:
            headers.append(("content-range", f"bytes {start}-{end - 1}/{size}"))
        if fragment == ZERO_FRAGMENT_HASH:
            request.respond_repeated(status, headers, _ZERO_CHUNK, end - start)
            return
        fd = os.open(self.store.path(fid, fragment), os.O_RDONLY)
        try:
            request.respond_file(status, headers, fd, start, end - start)
        finally:
            os.close(fd)

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
    server = ThreadedServer(host, port, node.handle, listen_fd=listen_fd)
    try:
        server.start()
        endpoint = public_endpoint or f"http://{_bind_address(server.address[0], server.address[1])}"
        node.endpoint = endpoint
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.retry_reports)
            await trio.to_thread.run_sync(chain.register_storage_node, endpoint, idle_space)
            log.info("storage node %s serving at %s", account.address, endpoint)
            task_status.started(endpoint)
            await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)
            await trio.to_thread.run_sync(node.close)
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
