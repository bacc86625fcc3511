"""Processing stages: a plug-in transforms a file's bytes before segmentation and back
after assembly (compression, a cipher of one's own, a format conversion).

The record. A file stored through a stage begins with a self-describing envelope, inside
the bytes that are then encrypted and segmented:

    MAGIC (16 bytes) | header length (4 bytes, big-endian) | header (UTF-8 JSON) | body

The header names the stage, its parameters, and the length and SHA-256 of the original
bytes; the body is what the stage wrote. The envelope is data like any other to CESS:
segments, fragments and the FID are computed over the stored bytes (envelope and body),
so the file is an ordinary CESS file. A file stored without a stage has no envelope and
is byte-identical to what deossfs stored before stages existed. docs/extending.md weighs
this against the other places the record could live.

One ambiguity is closed at the door: a file put *without* a stage whose own bytes begin
with MAGIC is stored through the built-in `identity` stage, so a reader never mistakes
a user's bytes for an envelope.

Why a spool: `ObjectStore.put` reads its source twice (pass 1 hashes, pass 2 sends), and
a stage need not be deterministic (a cipher with a random nonce). So the stage runs once,
into a 0600 file in the workspace, and both passes read that file. Everything here is
blocking: the store runs it in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import trio

from ..errors import PluginError
from ..plugins import PROCESSING_GROUP, instantiate, load
from .pipeline import ReadInto, file_reader

log = logging.getLogger(__name__)

MAGIC = b"\x89DEOSSFS\x00STAGE\r\n"
assert len(MAGIC) == 16
_LENGTH = struct.Struct(">I")
#: the longest header accepted (a stage's parameters must be small)
MAX_HEADER = 64 * 1024
#: bytes of the stored stream that hold any header: enough to parse it from
PROBE_BYTES = len(MAGIC) + _LENGTH.size + MAX_HEADER
ENVELOPE_VERSION = 1
_COPY_CHUNK = 1024 * 1024


@runtime_checkable
class ProcessingStage(Protocol):
    """What a `deossfs.processing` entry point makes (docs/extending.md is the contract).

    The entry point is called with the config's `processing.options` as keyword arguments
    (to encode, or to decode files of the configured stage), or with none (to decode a
    file whose stage is not the configured one). Both methods are blocking, run in worker
    threads, and may be called from several threads at once."""

    def encode(self, source: BinaryIO, sink: BinaryIO) -> Mapping[str, Any] | None:
        """Read the file's bytes from `source` to its end, write the transformed bytes to
        `sink`, and return the parameters decoding needs (JSON-able, recorded with the
        file) - or None to decline: the file is then stored as it is."""
        ...

    def decode(self, source: BinaryIO, sink: BinaryIO, params: Mapping[str, Any]) -> None:
        """Read transformed bytes from `source` to its end and write the original bytes
        to `sink`; `params` is what `encode` returned."""
        ...


class IdentityStage:
    """The built-in stage that changes nothing (see the module's docstring)."""

    def encode(self, source: BinaryIO, sink: BinaryIO) -> Mapping[str, Any] | None:
        _copy(source, sink)
        return {}

    def decode(self, source: BinaryIO, sink: BinaryIO, params: Mapping[str, Any]) -> None:
        _copy(source, sink)


BUILTIN_STAGES: dict[str, Callable[..., ProcessingStage]] = {"identity": IdentityStage}


def load_stage(name: str, options: Mapping[str, Any] | None = None) -> ProcessingStage:
    """The stage registered as `name`, made with `options`; MissingPlugin/PluginError."""
    factory = load(PROCESSING_GROUP, name, BUILTIN_STAGES)
    stage = instantiate(PROCESSING_GROUP, name, factory, options or {})
    if not callable(getattr(stage, "encode", None)) or not callable(getattr(stage, "decode", None)):
        raise PluginError(f"processing stage {name!r} has no encode/decode methods",
                          hint="see docs/extending.md for what a stage provides")
    return stage


# ---- the envelope -------------------------------------------------------------------------


@dataclass(frozen=True)
class StageHeader:
    """The envelope of a file stored through a stage."""

    stage: str
    params: dict[str, Any]
    #: length and SHA-256 (hex) of the original bytes
    size: int
    sha256: str
    #: bytes the envelope takes before the body
    length: int

    def to_bytes(self) -> bytes:
        return envelope(self.stage, self.params, self.size, self.sha256)


def envelope(stage: str, params: Mapping[str, Any], size: int, sha256: str) -> bytes:
    try:
        text = json.dumps({"v": ENVELOPE_VERSION, "stage": stage, "params": dict(params),
                           "size": size, "sha256": sha256}, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PluginError(f"processing stage {stage!r} returned parameters that are not JSON: "
                          f"{exc}") from None
    header = text.encode()
    if len(header) > MAX_HEADER:
        raise PluginError(f"processing stage {stage!r} returned {len(header)} bytes of "
                          f"parameters; at most {MAX_HEADER} are recorded with a file")
    return MAGIC + _LENGTH.pack(len(header)) + header


def parse_header(prefix: bytes | memoryview) -> StageHeader | None:
    """The envelope at the start of a stored stream (`prefix`: its first PROBE_BYTES, or
    all of it if shorter), or None if the stream has none."""
    prefix = bytes(prefix[:PROBE_BYTES])
    if not prefix.startswith(MAGIC):
        return None
    start = len(MAGIC) + _LENGTH.size
    try:
        (length,) = _LENGTH.unpack_from(prefix, len(MAGIC))
        if length > MAX_HEADER or start + length > len(prefix):
            raise ValueError("header past the probe")
        data = json.loads(prefix[start:start + length])
        header = StageHeader(stage=str(data["stage"]), params=dict(data["params"]),
                             size=int(data["size"]), sha256=str(data["sha256"]),
                             length=start + length)
        if data.get("v") != ENVELOPE_VERSION or header.size < 0 or len(header.sha256) != 64:
            raise ValueError("unknown version or bad fields")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        # not one of ours: bytes another tool stored that happen to begin like an envelope
        # (deossfs wraps such bytes in the identity stage), read as they are
        log.warning("a file begins like a processing envelope but is none (%s): read as stored", exc)
        return None
    return header


def starts_with_magic(read_into: ReadInto, size: int) -> bool:
    """Whether a source's own bytes begin as an envelope does (then it is stored through
    the identity stage)."""
    if size < len(MAGIC):
        return False
    head = bytearray(len(MAGIC))
    got = read_into(0, memoryview(head))
    return got == len(MAGIC) and bytes(head) == MAGIC


# ---- running a stage -------------------------------------------------------------------------


class SourceShrank(OSError):
    """The source had fewer bytes than its size said (it changed while being stored)."""


class _SourceReader(io.RawIOBase):
    """The original bytes as a file a stage reads, counting and hashing what it took."""

    def __init__(self, read_into: ReadInto, size: int) -> None:
        self._read_into = read_into
        self.size = size
        self.offset = 0
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # BufferedReader.tell() asks this and subtracts what it holds unread: the
        # position the stage reached, not what was read ahead
        return self.offset

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self.offset)
        if want <= 0:
            return 0
        got = self._read_into(self.offset, view[:want])
        if got <= 0:
            raise SourceShrank(f"file shrank while being read (at byte {self.offset} of {self.size})")
        self.digest.update(view[:got])
        self.offset += got
        return got


class _CountingWriter(io.RawIOBase):
    """A sink that counts and hashes what a stage writes, and hands it on."""

    def __init__(self, forward: Callable[[memoryview], None], limit: int | None = None) -> None:
        self._forward = forward
        self.count = 0
        self.digest = hashlib.sha256()
        self._limit = limit

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.count += len(view)
        if self._limit is not None and self.count > self._limit:
            raise _TooLong()
        self.digest.update(view)
        self._forward(view)
        return len(view)


class _TooLong(Exception):
    pass


@dataclass
class StagedSource:
    """A source after its stage: the envelope, then the body in a spool file."""

    header: StageHeader
    body_fd: int
    body_size: int

    @property
    def size(self) -> int:
        return self.header.length + self.body_size

    def reader(self) -> ReadInto:
        """The stored stream (envelope + body) as a ReadInto."""
        head = memoryview(self.header.to_bytes())
        body = file_reader(self.body_fd)
        split = len(head)

        def read_into(offset: int, view: memoryview) -> int:
            done = 0
            if offset < split:
                piece = head[offset:offset + len(view)]
                view[:len(piece)] = piece
                done = len(piece)
            if done < len(view):
                done += body(offset + done - split, view[done:])
            return done

        return read_into


def encode_source(name: str, stage: ProcessingStage, read_into: ReadInto, size: int,
                  spool: Path, *, verify: bool = True) -> StagedSource | None:
    """Run `stage` over `size` bytes into the file `spool` (created 0600; the caller
    removes it and closes `body_fd`). None if the stage declined. With `verify`, the body
    is decoded once and must give the original bytes back. Errors name the stage."""
    source = _SourceReader(read_into, size)
    fd = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(os.dup(fd), "wb", buffering=_COPY_CHUNK) as sink:
            reader = io.BufferedReader(source, _COPY_CHUNK)
            try:
                params = stage.encode(reader, sink)
                consumed = reader.tell()
            except SourceShrank:
                raise
            except Exception as exc:
                raise PluginError(f"processing stage {name!r} failed while encoding: {exc!r}",
                                  hint="the file was not stored") from exc
        if params is None:
            os.close(fd)
            return None
        if not isinstance(params, Mapping):
            raise PluginError(f"processing stage {name!r} returned {type(params).__name__} from "
                              "encode, not a mapping of parameters (or None to decline)")
        if consumed != size:
            raise PluginError(f"processing stage {name!r} read {consumed} of the file's "
                              f"{size} bytes and stopped", hint="a stage reads its source to the end")
        header_bytes = envelope(name, params, size, source.digest.hexdigest())
        header = parse_header(header_bytes)
        assert header is not None
        staged = StagedSource(header, fd, os.fstat(fd).st_size)
        if verify:
            verify_body(name, stage, staged)
        return staged
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def verify_body(name: str, stage: ProcessingStage, staged: StagedSource) -> None:
    """Decode the spooled body and check it is the original (size and SHA-256)."""
    body = io.BufferedReader(_SourceReader(file_reader(staged.body_fd), staged.body_size), _COPY_CHUNK)
    decode_body(name, stage, staged.header, body, lambda _view: None)


def decode_body(name: str, stage: ProcessingStage, header: StageHeader, body: BinaryIO,
                forward: Callable[[memoryview], None]) -> None:
    """Decode `body` (the bytes after the envelope) through `stage`, passing the original
    bytes to `forward` in order; PluginError unless they are exactly the recorded size
    and hash (nothing past the recorded size is ever forwarded)."""
    sink = _CountingWriter(forward, limit=header.size)
    try:
        stage.decode(body, sink, dict(header.params))  # type: ignore[arg-type]
    except _TooLong:
        raise PluginError(f"processing stage {name!r} gave back more than the file's "
                          f"{header.size} bytes") from None
    except (PluginError, _Stop):
        raise
    except Exception as exc:
        raise PluginError(f"processing stage {name!r} failed while decoding: {exc!r}") from exc
    if sink.count != header.size:
        raise PluginError(f"processing stage {name!r} gave back {sink.count} bytes; the file "
                          f"had {header.size}")
    if sink.digest.hexdigest() != header.sha256:
        raise PluginError(f"processing stage {name!r} gave back other bytes than were stored "
                          "(SHA-256 differs)")


class _Stop(Exception):
    """Raised by a consumer to end a decode early (a range read has what it wants)."""


Stop = _Stop


def _copy(source: BinaryIO, sink: BinaryIO) -> None:
    while True:
        piece = source.read(_COPY_CHUNK)
        if not piece:
            return
        sink.write(piece)


# ---- reading a spooled stored stream back -----------------------------------------------


def decode_to_fd(stage: ProcessingStage, header: StageHeader, raw: int, fd: int) -> None:
    """Decode the spooled stored stream `raw` into `fd` (blocking)."""
    with os.fdopen(os.dup(raw), "rb", buffering=1024 * 1024) as body, \
            os.fdopen(os.dup(fd), "wb", buffering=1024 * 1024) as out:
        body.seek(header.length)
        decode_body(header.stage, stage, header, body, out.write)


def decode_range(stage: ProcessingStage, header: StageHeader, raw: int, start: int, end: int,
                  sink: Callable[[memoryview], Awaitable[object]]) -> None:
    """Decode the spooled stream, handing [start, end) to the async `sink` (blocking: a
    worker thread that calls back into trio), and stop once past `end`."""
    position = 0

    def forward(view: memoryview) -> None:
        nonlocal position
        first, last = position, position + len(view)
        position = last
        if last > start and first < end:
            trio.from_thread.run(sink, view[max(start - first, 0): min(end, last) - first])
        if last >= end:
            raise _Stop()

    with os.fdopen(os.dup(raw), "rb", buffering=1024 * 1024) as body:
        body.seek(header.length)
        with contextlib.suppress(_Stop):
            decode_body(header.stage, stage, header, body, forward)
