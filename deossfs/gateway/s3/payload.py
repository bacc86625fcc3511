"""S3 request bodies, checked as they stream: digests, checksums, lengths, aws-chunked.

`PayloadVerifier` is fed the body as it arrives (any piece sizes) and returns the
payload bytes as memoryviews into the pieces it was given (decoded from aws-chunked
where the body is; nothing is copied or buffered but chunk header lines); `finish()`
checks what can only be checked at the end and returns the digests. Any failure is an
`S3AuthError` with S3's code. Framework-independent, and blocking only for the hashing
of the bytes fed (hashlib releases the GIL on buffers over 2 KiB).

The bytes returned are provisional until `finish()` returns: a hex x-amz-content-sha256,
Content-MD5, x-amz-checksum-* and trailers can only be checked once the whole body is
in, so the caller stages them and commits nothing before `finish()`. A signed chunk's
signature is checked as soon as the chunk is complete, so a tampered chunk stops the
upload there.

What is checked:
- plain bodies: Content-Length (IncompleteBody when short), a hex x-amz-content-sha256
  (XAmzContentSHA256Mismatch), Content-MD5 (InvalidDigest when malformed, BadDigest when
  different), one x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256} header (InvalidRequest
  when malformed, BadDigest when different);
- aws-chunked bodies (x-amz-content-sha256 STREAMING-*): the chunk framing, each chunk's
  signature chained from the seed signature (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]),
  non-final signed chunks of at least 8 KiB, x-amz-decoded-content-length, the trailer
  x-amz-trailer announced (its checksum, and in the signed variant its signature).

Every check is also made on the MD5 of the payload (the ETag) and the checksums that
x-amz-sdk-checksum-algorithm names, which S3 returns to clients that ask.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Protocol

from awscrt import checksums as crt

from ...processing.checksums import crc32
from .sigv4 import (
    EMPTY_SHA256,
    ChunkSigning,
    HeaderMap,
    PayloadMode,
    S3AuthError,
    VerifiedRequest,
    payload_mode_of,
    trailer_names,
)

#: S3's smallest signed chunk but the last (InvalidChunkSizeError below it)
MIN_SIGNED_CHUNK = 8192
#: a chunk header or trailer line longer than this is refused (ours are < 100 bytes)
MAX_LINE = 4096
#: all trailer lines together
MAX_TRAILER = 16384

_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
_CHUNK_SIGNATURE = re.compile(rb"chunk-signature=([0-9a-f]{64})")
_TRAILER_SIGNATURE = "x-amz-trailer-signature"


class _Checksum(Protocol):
    def update(self, data: memoryview) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A CRC as a hash object: `function(data, previous) -> int`, `size` bytes big-endian."""

    def __init__(self, function: Callable[[memoryview, int], int], size: int) -> None:
        self._function = function
        self._size = size
        self._value = 0

    def update(self, data: memoryview) -> None:
        self._value = self._function(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


#: S3's checksum algorithms: name → (new hash object, digest size in bytes)
CHECKSUMS: dict[str, tuple[Callable[[], _Checksum], int]] = {
    "crc32": (lambda: _Crc(crc32, 4), 4),  # ISA-L: 3-4x zlib's rate, the same value
    "crc32c": (lambda: _Crc(crt.crc32c, 4), 4),
    "crc64nvme": (lambda: _Crc(crt.crc64nvme, 8), 8),
    "sha1": (hashlib.sha1, 20),
    "sha256": (hashlib.sha256, 32),
}
_CHECKSUM_HEADER = "x-amz-checksum-"


def _algorithm_of(header_name: str) -> str | None:
    """"crc32" for "x-amz-checksum-crc32"; None for other names (x-amz-checksum-type...)."""
    name = header_name.lower()
    if name.startswith(_CHECKSUM_HEADER) and name[len(_CHECKSUM_HEADER):] in CHECKSUMS:
        return name[len(_CHECKSUM_HEADER):]
    return None


def decode_checksum(algorithm: str, value: str, where: str) -> bytes:
    """A base64 checksum value, or S3's InvalidRequest when it is not one."""
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != CHECKSUMS[algorithm][1]:
        raise S3AuthError(
            "InvalidRequest", f"Value for x-amz-checksum-{algorithm} {where} is invalid.", 400
        )
    return digest


def _too_long(limit: int, what: str) -> S3AuthError:
    return S3AuthError(
        "InvalidRequest", f"The request body is longer than the {limit} bytes its {what} "
        "declares.", 400,
    )


def _incomplete() -> S3AuthError:
    return S3AuthError(
        "IncompleteBody",
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        400,
    )


def _malformed_chunks(why: str) -> S3AuthError:
    return S3AuthError("InvalidRequest", f"Malformed aws-chunked body: {why}", 400)


def _malformed_trailer(why: str) -> S3AuthError:
    return S3AuthError(
        "MalformedTrailerError",
        f"The request contained trailing data that was not well-formed: {why}", 400,
    )


def _signature_mismatch(what: str) -> S3AuthError:
    return S3AuthError(
        "SignatureDoesNotMatch",
        f"The {what} signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
    )


def _parse_length(value: str | None, header: str) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        raise S3AuthError("InvalidArgument", f"{header} must be a non-negative integer", 400)
    return int(value)


def stored_content_encoding(headers: HeaderMap) -> str | None:
    """The Content-Encoding to store with the object: the header without aws-chunked."""
    value = headers.get("content-encoding")
    if value is None:
        return None
    kept = [v.strip() for v in value.split(",") if v.strip() and v.strip() != "aws-chunked"]
    return ", ".join(kept) or None


@dataclass(frozen=True)
class PayloadResult:
    """The digests of a verified payload."""

    #: payload bytes (decoded from aws-chunked)
    size: int
    md5: bytes
    #: checksums computed (and checked, where one was sent): algorithm → base64 value
    checksums: dict[str, str]

    @property
    def etag(self) -> str:
        """S3's ETag of a single-part object: the hex MD5 of its bytes (without quotes)."""
        return self.md5.hex()


class _State(Enum):
    DATA = auto()  # inside a chunk's (or a plain body's) data
    CHUNK_HEADER = auto()  # expecting "<hex size>[;chunk-signature=<sig>]\r\n"
    CHUNK_END = auto()  # expecting the "\r\n" after a chunk's data
    TRAILER = auto()  # expecting "name:value\r\n" lines, or the empty line ending them
    FINAL_CRLF = auto()  # expecting the "\r\n" after the last chunk (no trailer)
    DONE = auto()


#: the states that expect an empty line: the state after it, and what else would mean
_EMPTY_LINE_STATES = {
    _State.CHUNK_END: (_State.CHUNK_HEADER, "a chunk is longer than its size"),
    _State.FINAL_CRLF: (_State.DONE, "bytes after the last chunk"),
}


class PayloadVerifier:
    """Checks one request body as it is fed; see the module's docstring.

    `headers` are the request's (a HeaderMap or (name, value) pairs); `verified` is
    its `verify_request` result (None for an anonymous
    request: its body may be a plain one, hex-digested or not, or unsigned aws-chunked).
    `required` is the checksum algorithm the result must have (a part of a multipart
    upload created with one): computed when the request carries no checksum, refused
    when it carries another. Raises S3AuthError at once for bad headers (Content-MD5,
    x-amz-checksum-*...)."""

    def __init__(self, headers: HeaderMap | Iterable[tuple[str, str]],
                 verified: VerifiedRequest | None = None, required: str | None = None,
                 default: str | None = None) -> None:
        """`required`: that algorithm's checksum is computed if the request carries none,
        and another algorithm's is refused. `default`: that algorithm's is computed if
        the request carries none (S3's CRC64NVME for an object sent without one)."""
        headers = HeaderMap.of(headers)
        self._verified = verified
        if verified is not None:
            self.mode, content_sha256 = verified.payload_mode, verified.content_sha256
            announced = verified.trailer_names
        else:
            content_sha256 = (headers.get("x-amz-content-sha256") or "UNSIGNED-PAYLOAD").strip()
            self.mode, announced = payload_mode_of(content_sha256), trailer_names(headers)
            if self.mode.signed_chunks:
                raise S3AuthError("AccessDenied", "Signed chunks need a signed request.")
        self._content_length = _parse_length(headers.get("content-length"), "Content-Length")
        self._expected_sha256 = (
            bytes.fromhex(content_sha256) if self.mode is PayloadMode.SHA256 else None
        )
        self._sha256 = hashlib.sha256() if self._expected_sha256 is not None else None
        self._md5 = hashlib.md5()
        self._expected_md5 = self._content_md5(headers.get("content-md5"))
        self._expected_checksums: dict[str, bytes] = {}  # from headers, then trailers
        self._checksums: dict[str, _Checksum] = {}
        self._setup_checksums(headers, announced)
        if required is not None and required not in self._checksums:
            if self._checksums:
                raise S3AuthError(
                    "InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: "
                    f"{required}, actual checksum Type: {next(iter(self._checksums))}", 400,
                )
            self._checksums[required] = CHECKSUMS[required][0]()
        if default is not None and not self._checksums:
            self._checksums[default] = CHECKSUMS[default][0]()
        self._wire = 0  # bytes fed
        self._size = 0  # payload bytes
        if self.mode.chunked:
            self._decoded_length = _parse_length(
                headers.get("x-amz-decoded-content-length"), "x-amz-decoded-content-length"
            )
            if self._decoded_length is None:
                raise S3AuthError(
                    "MissingContentLength", "You must provide the x-amz-decoded-content-length "
                    "header with an aws-chunked body.", 411,
                )
            self._state = _State.CHUNK_HEADER
            self._data_left = 0
        else:
            self._decoded_length = self._content_length
            self._state = _State.DATA
            self._data_left = -1  # unbounded: a plain body ends when it ends
        # aws-chunked line parsing and signed chunks
        self._line = bytearray()
        self._previous_signature = verified.signing.seed_signature if verified else ""
        self._chunk_signature = b""
        self._chunk_sha256 = hashlib.sha256()
        self._last_chunk_small = False
        self._trailers: list[tuple[str, str]] = []
        self._trailer_bytes = 0
        self._trailer_signature: str | None = None
        self._announced = announced

    @staticmethod
    def _content_md5(value: str | None) -> bytes | None:
        if value is None:
            return None
        try:
            digest = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 16:
            raise S3AuthError("InvalidDigest", "The Content-MD5 you specified was invalid.", 400)
        return digest

    def _setup_checksums(self, headers: HeaderMap, announced: tuple[str, ...]) -> None:
        algorithms = set()
        for name in headers.names():
            algorithm = _algorithm_of(name)
            if algorithm is not None:
                value = headers.get(name) or ""
                self._expected_checksums[algorithm] = decode_checksum(algorithm, value, "header")
                algorithms.add(algorithm)
        if announced and not self.mode.has_trailer:
            raise S3AuthError(
                "InvalidRequest", "x-amz-trailer needs an x-amz-content-sha256 of "
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER or STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER.",
                400,
            )
        for name in announced:
            algorithm = _algorithm_of(name)
            if algorithm is None:
                raise _malformed_trailer(f"unsupported trailer {name!r} in x-amz-trailer")
            algorithms.add(algorithm)
        if len(algorithms) > 1 or len(announced) > 1:
            raise S3AuthError(
                "InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum "
                "Types are not allowed.", 400,
            )
        sdk_algorithm = headers.get("x-amz-sdk-checksum-algorithm")
        if sdk_algorithm is not None:
            if sdk_algorithm.strip().lower() not in CHECKSUMS:
                raise S3AuthError(
                    "InvalidRequest", "Value for x-amz-sdk-checksum-algorithm header is invalid.",
                    400,
                )
            algorithms.add(sdk_algorithm.strip().lower())
        self._checksums = {algorithm: CHECKSUMS[algorithm][0]() for algorithm in algorithms}

    # ---- feeding -----------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Take the next piece of the body; return the payload bytes it holds (views into it)."""
        view = memoryview(data).cast("B")
        self._wire += len(view)
        if self._content_length is not None and self._wire > self._content_length:
            raise _too_long(self._content_length, "Content-Length")
        if not self.mode.chunked:
            self._payload(view)
            return [view] if view else []
        out = []
        position, end = 0, len(view)
        while position < end:
            if self._state is _State.DATA:
                take = min(self._data_left, end - position)
                piece = view[position:position + take]
                self._payload(piece)
                out.append(piece)
                position += take
                self._data_left -= take
                if self._data_left == 0:
                    self._chunk_done()
            elif self._state is _State.DONE:
                raise _malformed_chunks("bytes after the end of the body")
            else:
                position = self._take_line(data, view, position)
        return out

    def _payload(self, view: memoryview) -> None:
        """Hash payload bytes."""
        self._size += len(view)
        if self._decoded_length is not None and self._size > self._decoded_length:
            what = "x-amz-decoded-content-length" if self.mode.chunked else "Content-Length"
            raise _too_long(self._decoded_length, what)
        self._md5.update(view)
        if self._sha256 is not None:
            self._sha256.update(view)
        if self.mode.signed_chunks:
            self._chunk_sha256.update(view)
        for checksum in self._checksums.values():
            checksum.update(view)

    def _take_line(self, data: bytes | bytearray | memoryview, view: memoryview, position: int) -> int:
        """Add bytes up to the next '\\n' to the line; handle it once complete."""
        room = MAX_LINE - len(self._line)
        window_end = min(len(view), position + room)
        if isinstance(data, bytes | bytearray):
            newline = data.find(b"\n", position, window_end)
        else:  # a memoryview: copy a little for the search (lines are short), more if needed
            newline = -1
            for probe_end in (min(window_end, position + 128), window_end):
                found = bytes(view[position:probe_end]).find(b"\n")
                if found >= 0:
                    newline = position + found
                    break
        if newline < 0:
            if window_end - position >= room:
                raise _malformed_chunks("a chunk header or trailer line is too long")
            self._line += view[position:window_end]
            return window_end
        self._line += view[position:newline + 1]
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n"):
            raise _malformed_chunks("a line does not end with CRLF")
        self._on_line(line[:-2])
        return newline + 1

    def _on_line(self, line: bytes) -> None:
        if self._state is _State.CHUNK_HEADER:
            self._chunk_header(line)
        elif self._state is _State.TRAILER:
            self._trailer_line(line)
        else:  # CHUNK_END or FINAL_CRLF: an empty line
            following, why = _EMPTY_LINE_STATES[self._state]
            if line:
                raise _malformed_chunks(why)
            self._state = following

    def _chunk_header(self, line: bytes) -> None:
        size_text, _, extension = line.partition(b";")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise _malformed_chunks(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if self.mode.signed_chunks:
            match = _CHUNK_SIGNATURE.fullmatch(extension)
            if match is None:
                raise _signature_mismatch("chunk")  # absent or not a signature at all
            self._chunk_signature = match.group(1)
            if size and self._last_chunk_small:
                raise S3AuthError(
                    "InvalidChunkSizeError",
                    "Only the last chunk is allowed to have a size less than 8192 bytes", 400,
                )
            self._last_chunk_small = size < MIN_SIGNED_CHUNK
        declared = self._decoded_length or 0  # never None with aws-chunked (__init__)
        if self._size + size > declared:
            raise _too_long(declared, "x-amz-decoded-content-length")
        if size == 0:
            self._chunk_done(last=True)
            return
        self._data_left = size
        self._state = _State.DATA

    def _chunk_done(self, last: bool = False) -> None:
        """A chunk's data is all in: check its signature; after the last, what follows it."""
        if self.mode.signed_chunks:
            signing = self._signing()
            expected = signing.sign("\n".join((
                "AWS4-HMAC-SHA256-PAYLOAD", signing.amz_date, signing.scope,
                self._previous_signature, EMPTY_SHA256, self._chunk_sha256.hexdigest(),
            )))
            if not _same(expected, self._chunk_signature):
                raise _signature_mismatch("chunk")
            self._previous_signature = expected
            self._chunk_sha256 = hashlib.sha256()
        if not last:
            self._state = _State.CHUNK_END
            return
        if self._size != self._decoded_length:
            raise _incomplete()
        self._state = _State.TRAILER if self.mode.has_trailer else _State.FINAL_CRLF

    def _signing(self) -> ChunkSigning:
        assert self._verified is not None  # signed modes need one (checked in __init__)
        return self._verified.signing

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER:
            raise _malformed_trailer("the trailer is too long")
        if not line:
            if self._trailer_bytes == 2 and self._announced:
                return  # some SDKs end the zero-size chunk with a CRLF before the trailer
            self._trailers_done()
            return
        if self._trailer_signature is not None:
            raise _malformed_trailer("x-amz-trailer-signature must be the last trailer")
        name_bytes, sep, value_bytes = line.partition(b":")
        try:
            name, value = name_bytes.decode("ascii").strip().lower(), value_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed_trailer("a trailer is not ASCII") from None
        if not sep or not name:
            raise _malformed_trailer("a trailer line is not name:value")
        if name == _TRAILER_SIGNATURE:
            if not self.mode.signed_chunks:
                raise _malformed_trailer("an unsigned payload has no x-amz-trailer-signature")
            self._trailer_signature = value.strip()
            return
        if name not in self._announced or any(name == n for n, _ in self._trailers):
            raise _malformed_trailer(f"trailer {name!r} was not announced by x-amz-trailer")
        self._trailers.append((name, value.strip()))

    def _trailers_done(self) -> None:
        missing = [name for name in self._announced if name not in dict(self._trailers)]
        if missing:
            raise _malformed_trailer(f"the trailer {missing[0]} announced was not sent")
        if self.mode.signed_chunks:
            if self._trailer_signature is None:
                raise _signature_mismatch("trailer")
            signing = self._signing()
            canonical = "".join(f"{name}:{value}\n" for name, value in self._trailers)
            expected = signing.sign("\n".join((
                "AWS4-HMAC-SHA256-TRAILER", signing.amz_date, signing.scope,
                self._previous_signature, hashlib.sha256(canonical.encode()).hexdigest(),
            )))
            if not _same(expected, self._trailer_signature.encode()):
                raise _signature_mismatch("trailer")
        for name, value in self._trailers:
            algorithm = _algorithm_of(name)
            assert algorithm is not None  # announced names were checked in __init__
            self._expected_checksums[algorithm] = decode_checksum(
                algorithm, value, "trailing header"
            )
        self._state = _State.DONE

    # ---- the end -----------------------------------------------------------

    def finish(self) -> PayloadResult:
        """The body has ended: check what remains and return the digests."""
        if self._content_length is not None and self._wire < self._content_length:
            raise _incomplete()
        if self.mode.chunked:
            self._finish_chunks()
        elif self._decoded_length is not None and self._size < self._decoded_length:
            raise _incomplete()
        md5 = self._md5.digest()
        if self._expected_md5 is not None and md5 != self._expected_md5:
            raise S3AuthError(
                "BadDigest", "The Content-MD5 you specified did not match what was received.",
                400,
            )
        if self._sha256 is not None and self._sha256.digest() != self._expected_sha256:
            raise S3AuthError(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        checksums = {}
        for algorithm, checksum in self._checksums.items():
            digest = checksum.digest()
            expected = self._expected_checksums.get(algorithm)
            if expected is not None and digest != expected:
                raise S3AuthError(
                    "BadDigest", f"The {algorithm.upper()} you specified did not match the "
                    "calculated checksum.", 400,
                )
            checksums[algorithm] = base64.b64encode(digest).decode()
        return PayloadResult(self._size, md5, checksums)

    def _finish_chunks(self) -> None:
        # the body may end without the final CRLF (or the trailer's), which some SDKs omit
        if self._state is _State.TRAILER:
            if self._line:
                line = bytes(self._line)
                self._line.clear()
                self._trailer_line(line.removesuffix(b"\r"))
            if self._state is _State.TRAILER:
                self._trailers_done()
        elif self._state is _State.FINAL_CRLF and not self._line:
            self._state = _State.DONE
        if self._state is not _State.DONE:
            raise _incomplete()


def _same(expected: str, provided: bytes) -> bool:
    return hmac.compare_digest(expected.encode(), provided)
