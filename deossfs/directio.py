"""Writing large amounts of data to new files past the page cache (O_DIRECT) where possible.

Why: copying into the page cache costs far more CPU than the copy itself on the
machines measured (docs/PERFORMANCE.md): the kernel takes fresh pages for new file
data, and in a virtual machine a page's first touch is expensive - 0.25 to 2.3 CPU-s
per GiB written, against 0.06 with O_DIRECT, where the disk reads the caller's buffer
itself. Storage nodes write 3 GiB of fragments per GiB stored and the client keeps
every segment it uploads in its cache, so this is most of their write cost.

O_DIRECT needs the buffer's address, the file offset and the length to be multiples
of the device's block size (`ALIGNMENT` covers the devices in use; anonymous mappings
are page-aligned). Data that is not aligned goes through a small aligned staging
buffer; a file system that refuses O_DIRECT (tmpfs) or an odd-sized end gets ordinary
writes. Callers need not care: the bytes in the file are the same. Durability is
unchanged too: O_DIRECT does not replace fdatasync (metadata, the disk's cache).

A `sparse` writer leaves the zero blocks at the end of each write as a hole instead of
writing them. CESS pads every segment to 32 MiB, so a small file's fragments are
mostly zeros at their ends; on disk they take only the blocks that hold data. Reading
a hole gives zeros, so the bytes in the file stay the same.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading

import numpy as np

ALIGNMENT = 4096
#: size of a staging buffer (for data that does not arrive aligned)
STAGING_SIZE = 1024 * 1024
#: granularity of the holes a sparse writer leaves (a multiple of ALIGNMENT)
HOLE_BLOCK = 64 * 1024
#: idle staging buffers kept for reuse: a fresh mapping's pages cost their first touch again
_KEEP_IDLE = 16

_idle: list[mmap.mmap] = []
_idle_lock = threading.Lock()


def aligned_buffer(size: int) -> mmap.mmap:
    """`size` zero bytes, page-aligned (an anonymous private mapping): data placed here can
    be written with O_DIRECT as it is, and MADV_DONTNEED gives its pages back."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)


def _take_staging() -> mmap.mmap:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return aligned_buffer(STAGING_SIZE)


def _give_staging(buffer: mmap.mmap) -> None:
    with _idle_lock:
        if len(_idle) < _KEEP_IDLE:
            _idle.append(buffer)
            return
    buffer.close()


def zero_tail_start(view: memoryview) -> int:
    """Where the run of zero `HOLE_BLOCK`s (counted from the start of `view`) that ends
    `view` begins; `len(view)` when its last block holds data. Cost: one block for
    data that does not end in zeros."""
    end = len(view)
    cut = end - (end % HOLE_BLOCK or HOLE_BLOCK)
    while end > 0:
        cut = max(cut, 0)
        block = view[cut:end]
        words = np.frombuffer(block, dtype=np.uint64 if len(block) % 8 == 0 else np.uint8)
        if words.any():
            return end
        end, cut = cut, cut - HOLE_BLOCK
    return 0


def is_aligned(view: memoryview) -> bool:
    """Whether `view` can be written with O_DIRECT as it is (address and length)."""
    if len(view) % ALIGNMENT:
        return False
    address = np.frombuffer(view, dtype=np.uint8).ctypes.data if len(view) else 0
    return address % ALIGNMENT == 0


class DirectWriter:
    """Writes a file from its start to its end, O_DIRECT where the file system and the
    data allow it. Blocking; one writer is used by one thread at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        mode: int = 0o600,
        exclusive: bool = True,
        sparse: bool = False,
    ) -> None:
        """Create the file at `path` (`exclusive`: it must not exist; else it is truncated;
        `sparse`: trailing zero blocks of each write become holes)."""
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        try:
            fd = os.open(path, flags | os.O_DIRECT, mode)
            direct = True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system has no O_DIRECT
                raise
            fd = os.open(path, flags, mode)
            direct = False
        self._start(fd, direct, owned=True)
        self._sparse = sparse

    @classmethod
    def over(cls, fd: int) -> DirectWriter:
        """A writer into `fd`, a file its caller opened (and keeps), from offset 0 on:
        O_DIRECT is switched on for this writer's writes and off again by `close`."""
        writer = cls.__new__(cls)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            direct = True
        except OSError:
            direct = False
        writer._start(fd, direct, owned=False)
        return writer

    def _start(self, fd: int, direct: bool, owned: bool) -> None:
        self.fd = fd
        self.direct = direct
        self._owned = owned
        self.size = 0  # bytes handed to `write`
        self._written = 0  # bytes in the file (the next write's offset)
        self._staging: mmap.mmap | None = None
        self._staged = 0
        self._sparse = False  # only for a new file: a hole over old data would keep it
        self._hole_at_end = False

    def write(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        """Append `data` (aligned buffers are written straight from where they are)."""
        view = memoryview(data).cast("B")
        self.size += len(view)
        if not self.direct:
            self._write_all(view)
            return
        top_up = -self._staged % ALIGNMENT  # bytes that complete the staged block
        body = (len(view) - top_up) // ALIGNMENT * ALIGNMENT
        if (body > 0 and (body >= STAGING_SIZE or top_up + body == len(view))
                and is_aligned(view[top_up : top_up + body])):
            # what follows those bytes lies aligned (a receiver that lands its data aligned
            # after an odd start, a caller that placed it `pending` bytes past a block
            # boundary): write the completed block, then the body as it is; stage only
            # the odd end (a small body is staged too, to be written with more)
            if self._staged:
                assert self._staging is not None
                staging = memoryview(self._staging)
                staging[self._staged : self._staged + top_up] = view[:top_up]
                staged, self._staged = staging[: self._staged + top_up], 0
                self._write(staged)
            self._write(view[top_up : top_up + body])
            view = view[top_up + body :]
        if not view:
            return
        if self._staging is None:
            self._staging = _take_staging()
        staging = memoryview(self._staging)
        while view:
            count = min(len(view), STAGING_SIZE - self._staged)
            staging[self._staged : self._staged + count] = view[:count]
            self._staged += count
            view = view[count:]
            if self._staged == STAGING_SIZE:
                self._staged = 0
                self._write(staging)

    @property
    def pending(self) -> int:
        """Bytes staged but not yet written. Data for the next `write` that starts at an
        address `pending` bytes past a block boundary goes to the disk from where it is,
        but for the bytes that complete the staged block and its own odd end."""
        return self._staged % ALIGNMENT

    def flush(self) -> None:
        """Write what is staged: call once the file is complete (before fdatasync)."""
        if self._staged and self._staging is not None:
            tail = memoryview(self._staging)[: self._staged]
            self._staged = 0
            if len(tail) % ALIGNMENT:
                self._buffered()  # an odd-sized end cannot go O_DIRECT
            self._write(tail)
        if self._hole_at_end:  # the file's size covers a hole at its end too
            os.ftruncate(self.fd, self._written)
            self._hole_at_end = False

    def close(self) -> None:
        """Close the file, or give an adopted one back as it was opened (without
        flushing: call `flush` first to keep staged bytes)."""
        if self._staging is not None:
            _give_staging(self._staging)
            self._staging = None
        if self.fd < 0:
            return
        if self._owned:
            os.close(self.fd)
        else:
            self._buffered()
        self.fd = -1

    def _write(self, view: memoryview) -> None:
        if self._sparse:
            keep = zero_tail_start(view)
            if keep < len(view):
                self._write_data(view[:keep])
                self._written += len(view) - keep
                self._hole_at_end = True
                return
        self._write_data(view)

    def _write_data(self, view: memoryview) -> None:
        if not view:
            return
        self._hole_at_end = False
        if self.direct:
            try:
                self._write_all(view)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._buffered()  # refused after all (an odd device): write it the usual way
        self._write_all(view)

    def _write_all(self, view: memoryview) -> None:
        while view:
            written = os.pwrite(self.fd, view, self._written)
            self._written += written
            view = view[written:]

    def _buffered(self) -> None:
        if self.direct:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self.direct = False

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
