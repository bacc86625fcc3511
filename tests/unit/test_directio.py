"""directio.DirectWriter: the bytes in the file are the caller's, whatever their alignment,
O_DIRECT where the file system has it, ordinary writes where it has not."""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

import pytest

from deossfs.directio import (
    ALIGNMENT,
    HOLE_BLOCK,
    STAGING_SIZE,
    DirectWriter,
    is_aligned,
    zero_tail_start,
)


def _chunks() -> list[memoryview]:
    aligned = mmap.mmap(-1, 2 * STAGING_SIZE)
    aligned.write(os.urandom(2 * STAGING_SIZE))
    odd = os.urandom(STAGING_SIZE + 123)
    return [
        memoryview(aligned)[:STAGING_SIZE],  # straight from the caller's buffer
        memoryview(odd),  # through the staging buffer, across its end
        memoryview(aligned)[STAGING_SIZE:],  # aligned, but after staged bytes: staged too
        memoryview(b"tail"),  # an odd-sized end
    ]


def test_aligned_means_address_and_length() -> None:
    buffer = mmap.mmap(-1, 2 * ALIGNMENT)
    assert is_aligned(memoryview(buffer))
    assert not is_aligned(memoryview(buffer)[1 : ALIGNMENT + 1])
    assert not is_aligned(memoryview(buffer)[: ALIGNMENT - 1])


def test_mixed_writes_give_the_same_bytes(tmp_path: Path) -> None:
    chunks = _chunks()
    path = tmp_path / "out.bin"
    with DirectWriter(path) as writer:
        direct_at_start = writer.direct
        for chunk in chunks:
            writer.write(chunk)
        writer.flush()
        assert writer.size == sum(len(c) for c in chunks)
    assert path.read_bytes() == b"".join(bytes(c) for c in chunks)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert direct_at_start == _has_o_direct(tmp_path)


def test_aligned_data_after_a_block_aligned_staged_start_is_written_as_it_is(tmp_path: Path) -> None:
    """A node receiving a fragment: an odd start (after the multipart head), topped up to
    a block boundary, then whole aligned buffers - those go straight to the disk."""
    buffer = mmap.mmap(-1, 1024 * 1024)
    buffer[:] = os.urandom(len(buffer))
    start = os.urandom(15000)
    top_up = os.urandom(ALIGNMENT - len(start) % ALIGNMENT)
    path = tmp_path / "out.bin"
    with DirectWriter(path) as writer:
        writer.write(start)
        writer.write(top_up)
        assert writer._staged % ALIGNMENT == 0
        writer.write(memoryview(buffer))
        if writer.direct:
            assert writer._staged == 0, "the aligned buffer was not copied into the staging buffer"
        writer.write(b"odd end")
        writer.flush()
    assert path.read_bytes() == start + top_up + bytes(buffer) + b"odd end"


def test_data_placed_after_the_pending_bytes_goes_to_the_disk_from_where_it_is(tmp_path: Path) -> None:
    """A get's segments: each is decrypted `pending` bytes past a block boundary of an
    aligned buffer, so only the bytes that complete the staged block and its odd end are
    copied; the rest is one write straight from the buffer. Data not placed so is staged."""
    path = tmp_path / "out.bin"
    expected = bytearray(os.urandom(3000))
    with DirectWriter(path) as writer:
        straight: list[int] = []  # lengths written from the caller's buffer, not the staging one
        write_data = writer._write_data

        def recording(view: memoryview) -> None:
            if view.obj is not writer._staging:
                straight.append(len(view))
            write_data(view)

        writer._write_data = recording  # type: ignore[method-assign]
        writer.write(bytes(expected))
        for length in (3 * STAGING_SIZE + 123, 2 * STAGING_SIZE + 4000, 2 * STAGING_SIZE):
            buffer = mmap.mmap(-1, length + ALIGNMENT)
            pending = writer.pending
            data = memoryview(buffer)[pending : pending + length]
            data[:] = os.urandom(length)
            expected += data
            straight.clear()
            writer.write(data)
            if writer.direct:
                assert straight == [(length - (-pending % ALIGNMENT)) // ALIGNMENT * ALIGNMENT]
        unplaced = os.urandom(2 * STAGING_SIZE)  # a bytes object's address: staged
        expected += unplaced
        straight.clear()
        writer.write(unplaced)
        assert straight == []
        writer.flush()
    assert path.read_bytes() == expected


def _has_o_direct(directory: Path) -> bool:
    probe = directory / f"probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


def test_over_a_callers_file_gives_it_back_as_it_was(tmp_path: Path) -> None:
    chunks = _chunks()
    path = tmp_path / "theirs.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        writer = DirectWriter.over(fd)
        assert writer.direct == _has_o_direct(tmp_path)
        for chunk in chunks:
            writer.write(chunk)
        writer.flush()
        writer.close()
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags  # O_DIRECT off again, fd still open
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes(c) for c in chunks)


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "there"
    path.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        DirectWriter(path)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_tmpfs_same_bytes_direct_only_where_offered() -> None:
    """tmpfs has O_DIRECT only since Linux 6.6: either way the file holds the same bytes."""
    directory = Path("/dev/shm")
    path = directory / f"deossfs-directio-{os.getpid()}"
    try:
        chunks = _chunks()
        with DirectWriter(path) as writer:
            assert writer.direct == _has_o_direct(directory)
            for chunk in chunks:
                writer.write(chunk)
            writer.flush()
        assert path.read_bytes() == b"".join(bytes(c) for c in chunks)
    finally:
        path.unlink(missing_ok=True)


def _padded_fragment() -> list[memoryview]:
    """A small file's fragment as CESS pads it: data, then zeros to 8 MiB, arriving in
    pieces of several alignments (one ends in zeros mid-way, then data follows)."""
    data = os.urandom(300_000)
    zeros_then_data = bytes(HOLE_BLOCK * 3) + os.urandom(5000)
    tail = bytes(8 * 1024 * 1024 - len(data) - len(zeros_then_data))
    buffer = mmap.mmap(-1, len(tail))  # aligned zeros: written straight or left as a hole
    return [memoryview(data), memoryview(zeros_then_data), memoryview(buffer)]


@pytest.mark.parametrize("sparse", [False, True])
def test_sparse_writer_keeps_the_bytes_and_leaves_zero_ends_as_holes(
    tmp_path: Path, sparse: bool
) -> None:
    chunks = _padded_fragment()
    path = tmp_path / "fragment"
    with DirectWriter(path, sparse=sparse) as writer:
        for chunk in chunks:
            writer.write(chunk)
        writer.flush()
    expected = b"".join(bytes(c) for c in chunks)
    assert path.stat().st_size == len(expected)
    assert path.read_bytes() == expected
    allocated = path.stat().st_blocks * 512
    if sparse:
        assert allocated < 1024 * 1024  # the data and a few blocks, not 8 MiB
    else:
        assert allocated >= len(expected) - ALIGNMENT


def test_zero_tail_start() -> None:
    block = HOLE_BLOCK
    assert zero_tail_start(memoryview(bytes(3 * block))) == 0
    assert zero_tail_start(memoryview(b"x" + bytes(3 * block))) == block
    assert zero_tail_start(memoryview(bytes(block) + b"x")) == block + 1
    assert zero_tail_start(memoryview(b"x" * (block + 10))) == block + 10
    assert zero_tail_start(memoryview(b"x" * block + bytes(10))) == block
    assert zero_tail_start(memoryview(b"")) == 0
