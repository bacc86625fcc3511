"""A storage node reading a fragment upload's multipart body (node/server.py).

Real parts: python-multipart's parser, the node's sink and fragment store on disk. The
canonical form (one `file` part, then the closing delimiter - what CESS clients send)
skips the parser's scan of the 8 MiB of data; every other shape must be read exactly as
the parser alone reads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from python_multipart.exceptions import MultipartParseError

from deossfs.node.server import _CanonicalForm, _MultipartReader, _UploadSink
from deossfs.node.store import FragmentStore
from deossfs.processing.layout import FRAGMENT_SIZE

BOUNDARY = b"7d1c0ffee5eed"
MIB = 1024 * 1024
FID = "ab" * 32


def file_part(data: bytes, name: str = "file", filename: str = "f") -> bytes:
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"" + name.encode()
            + b"\"; filename=\"" + filename.encode() + b"\"\r\nContent-Type: application/octet-stream"
            b"\r\n\r\n" + data + b"\r\n")


def field(name: str, value: bytes) -> bytes:
    return b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() \
        + b"\"\r\n\r\n" + value + b"\r\n"


CLOSE = b"--" + BOUNDARY + b"--\r\n"


def read(tmp_path: Path, body: bytes, data_hash: str, pieces: list[int], canonical: bool
         ) -> tuple[int, str, bool, int]:
    """(bytes to the sink, their SHA-256, whether the parser saw the end, bytes read
    without the parser) after feeding `body` in pieces of the given sizes (the last
    repeated), as the connection hands it over."""
    store = FragmentStore(tmp_path / f"store-{os.urandom(4).hex()}")
    sink = _UploadSink(store, FID, data_hash)
    reader = _MultipartReader(BOUNDARY, sink)
    form = _CanonicalForm(reader, sink, BOUNDARY, len(body)) if canonical else None
    position, index = 0, 0
    while position < len(body):
        size = pieces[min(index, len(pieces) - 1)]
        piece = bytearray(body[position:position + size])  # reused buffer: valid during the call
        (form.feed if form else reader.feed)(piece)
        piece[:] = b"\0" * len(piece)
        position += size
        index += 1
    digest = sink.hexdigest()
    sink.abort()
    return sink.size, digest, reader.ended, form.direct_bytes if form else 0


@pytest.mark.parametrize("pieces", [[MIB], [100, MIB], [7, 5, 3 * MIB], [MIB - 1]],
                         ids=["1MiB", "early-head", "head-in-pieces", "odd"])
def test_the_canonical_form_is_read_without_the_parser_and_gives_the_same_bytes(
        tmp_path: Path, pieces: list[int]) -> None:
    data = os.urandom(FRAGMENT_SIZE)
    digest = hashlib.sha256(data).hexdigest()
    body = file_part(data, filename=digest) + CLOSE
    assert read(tmp_path, body, digest, pieces, canonical=False) == (FRAGMENT_SIZE, digest, True, 0)
    size, got, ended, direct = read(tmp_path, body, digest, pieces, canonical=True)
    assert (size, got, ended) == (FRAGMENT_SIZE, digest, True)
    assert direct == FRAGMENT_SIZE


@pytest.mark.parametrize("shape", ["field-first", "field-after", "preamble", "epilogue"])
def test_other_shapes_are_read_exactly_as_the_parser_reads_them(tmp_path: Path, shape: str) -> None:
    data = os.urandom(FRAGMENT_SIZE)
    digest = hashlib.sha256(data).hexdigest()
    body = {
        "field-first": field("note", b"hello") + file_part(data) + CLOSE,
        "field-after": file_part(data) + field("note", b"hello") + CLOSE,
        "preamble": b"a preamble\r\n\r\nthat clients may send\r\n" + file_part(data) + CLOSE,
        "epilogue": file_part(data) + CLOSE + b"an epilogue",
    }[shape]
    def outcome(canonical: bool) -> object:
        try:
            return read(tmp_path, body, digest, [MIB], canonical)
        except Exception as exc:  # python-multipart refuses a preamble
            return type(exc)

    plain = outcome(canonical=False)
    assert outcome(canonical=True) == plain
    if shape == "preamble":
        assert plain is MultipartParseError
    else:
        assert plain[:3] == (FRAGMENT_SIZE, digest, True)  # type: ignore[index]


def test_a_wrong_closing_delimiter_is_not_an_end(tmp_path: Path) -> None:
    data = os.urandom(FRAGMENT_SIZE)
    digest = hashlib.sha256(data).hexdigest()
    body = file_part(data) + b"--" + b"X" * len(BOUNDARY) + b"--\r\n"
    size, _, ended, direct = read(tmp_path, body, digest, [MIB], canonical=True)
    assert direct == FRAGMENT_SIZE and not ended  # refused: "multipart body ended early"


def test_data_holding_the_boundary_is_kept_whole_and_judged_by_its_hash(tmp_path: Path) -> None:
    data = bytearray(os.urandom(FRAGMENT_SIZE))
    inner = b"\r\n--" + BOUNDARY + b"\r\n"
    data[MIB:MIB + len(inner)] = inner
    digest = hashlib.sha256(data).hexdigest()
    body = file_part(bytes(data)) + CLOSE
    size, got, ended, _ = read(tmp_path, body, digest, [MIB], canonical=True)
    assert (size, got, ended) == (FRAGMENT_SIZE, digest, True)


def test_reads_are_sized_so_whole_buffers_land_block_aligned_in_the_file(tmp_path: Path) -> None:
    """As Exchange.read_body asks `next_read_size` before each receive: after the odd
    start (the bytes that came with the request head), one short read tops the data up to
    a block boundary; every whole buffer after it starts at a block-aligned file offset."""
    data = os.urandom(FRAGMENT_SIZE)
    digest = hashlib.sha256(data).hexdigest()
    body = file_part(data, filename=digest) + CLOSE
    store = FragmentStore(tmp_path / "store")
    sink = _UploadSink(store, FID, digest)
    form = _CanonicalForm(_MultipartReader(BOUNDARY, sink), sink, BOUNDARY, len(body))
    early = 15_500  # what a 16 KiB first receive holds besides the request head
    form.feed(body[:early])
    position, offsets_of_whole_buffers = early, []
    while position < len(body):
        count = min(MIB, len(body) - position, form.next_read_size())
        if count == MIB:
            offsets_of_whole_buffers.append(sink.size)
        form.feed(memoryview(body)[position:position + count])
        position += count
    assert sink.size == FRAGMENT_SIZE and sink.hexdigest() == digest
    assert len(offsets_of_whole_buffers) >= 7
    assert all(offset % 4096 == 0 for offset in offsets_of_whole_buffers)
    sink.abort()
