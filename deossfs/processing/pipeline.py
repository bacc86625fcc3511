"""The segment pipeline: plaintext → (encrypt) → 32 MiB segment → RS 4+8 → hashes.

A `SegmentWorkspace` is one 96 MiB allocation reused for every segment: the
segment (the 4 data fragments, contiguous) followed by the 8 parity fragments.
When encrypting, the plaintext is read into the parity area first (it is free
until the RS encode), so a segment needs no memory beyond its workspace. A
`WorkspacePool` lends workspaces to one store's puts, so they are not allocated
per put.

Everything here is blocking and CPU-bound; the trio side runs it in worker
threads. ISA-L and hashlib release the GIL, so two threads use both cores.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..directio import aligned_buffer
from .encryption import DECRYPT_BUFFER_SIZE, PLAINTEXT_CAPACITY, SegmentCipher, stored_extent
from .erasure import get_coder
from .hashes import merkle_root
from .layout import (
    DATA_SHARDS,
    FRAGMENT_SIZE,
    SEGMENT_SIZE,
    TOTAL_SHARDS,
    ZERO_FRAGMENT_HASH,
    ensure_zero,
    segment_count,
)

#: read `len(view)` bytes at `offset` into `view`; returns bytes read (short at EOF)
ReadInto = Callable[[int, memoryview], int]

_HASH_POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="hash")


def _sha256_hex(buffer: memoryview) -> str:
    return hashlib.sha256(buffer).hexdigest()  # releases the GIL


#: a buffer a segment is decoded into: a bytearray, or a page-aligned mapping
#: (`directio.aligned_buffer`), whose contents go to the segment cache with O_DIRECT as
#: they are where a bytearray's are copied through a staging buffer first
SegmentBuffer = bytearray | mmap.mmap


class SegmentWorkspace:
    """Reusable buffers for one segment: 4 data + 8 parity fragments, 96 MiB.

    Readers only decode, so they ask for `with_parity=False` (32 MiB).

    The buffer is an anonymous mapping of its own, not a bytearray: it starts as zeros
    without a 96 MiB memset (pages become resident as they are touched), and
    `release_pages` can give its memory back to the kernel even while something still
    holds a view of it, which freeing a bytearray cannot.
    """

    def __init__(self, with_parity: bool = True) -> None:
        shards = TOTAL_SHARDS if with_parity else DATA_SHARDS
        # private: MADV_DONTNEED frees private anonymous pages (they read back as zeros);
        # the default, shared, would keep them in shmem and only unmap them
        self.buffer: mmap.mmap | None = aligned_buffer(shards * FRAGMENT_SIZE)
        view = memoryview(self.buffer)
        self.segment = view[:SEGMENT_SIZE]
        self.parity_area = view[SEGMENT_SIZE:]
        self.fragments = [view[i * FRAGMENT_SIZE : (i + 1) * FRAGMENT_SIZE] for i in range(shards)]
        self.parity = self.fragments[DATA_SHARDS:]

    @classmethod
    def over(cls, buffer: SegmentBuffer) -> SegmentWorkspace:
        """A data-only workspace (`with_parity=False`) in a buffer of the caller's: a reader
        that decrypts in place receives, decodes and decrypts a segment in one buffer."""
        if len(buffer) < SEGMENT_SIZE:
            raise ValueError("a workspace needs a whole segment's room")
        ws = cls.__new__(cls)
        ws.buffer = None
        view = memoryview(buffer)
        ws.segment = view[:SEGMENT_SIZE]
        ws.parity_area = view[SEGMENT_SIZE:SEGMENT_SIZE]
        ws.fragments = [view[i * FRAGMENT_SIZE : (i + 1) * FRAGMENT_SIZE] for i in range(DATA_SHARDS)]
        ws.parity = []
        return ws

    def release_pages(self) -> None:
        """Return the memory to the kernel; the workspace stays usable (it reads as zeros)."""
        if self.buffer is not None:  # a buffer of the caller's (`over`) is theirs to free
            self.buffer.madvise(mmap.MADV_DONTNEED)


class WorkspacePool:
    """The 96 MiB workspaces of one store, lent to each put and given back after it.

    Why: a failed put's frames, which hold its workspaces (`ws`, the fragment views an
    HTTP request still refers to), can outlive it in reference cycles: an exception
    kept in a local of a frame of its own traceback (httpcore's `map_exceptions`, the
    uploader's `exc`), trio's nurseries. Only a full garbage collection frees those,
    and a mount with ~100k long-lived objects runs one seldom: with a bytearray per
    put, the 1,000-file rsync with the storage nodes down held 0.9-2.5 GiB of dead
    workspaces. Here a workspace given back releases its pages at once, whoever still
    refers to it, and is lent again to a later put. Resident memory is the workspaces
    lent right now (one per put in pass 1, two in pass 2); keeping idle pages would
    only save page faults (a put touches all of its workspace: padding, parity).

    Not thread-safe: take and give from the trio thread.
    """

    def __init__(self) -> None:
        self._idle: list[SegmentWorkspace] = []

    def take(self) -> SegmentWorkspace:
        return self._idle.pop() if self._idle else SegmentWorkspace()

    def give(self, ws: SegmentWorkspace) -> None:
        ws.release_pages()
        self._idle.append(ws)


@dataclass(frozen=True)
class SegmentPlan:
    """What pass 1 learns of a segment: enough to declare it and rebuild it identically."""

    index: int
    hash: str
    fragment_hashes: tuple[str, ...]
    salt: bytes | None


@dataclass(frozen=True)
class FilePlan:
    fid: str
    size: int  # plaintext bytes (the chain's file_size)
    encrypted: bool
    segments: tuple[SegmentPlan, ...]


class SegmentPlanner:
    """Pass 1 one segment at a time, in order: a body still arriving is planned segment by
    segment as its bytes land (every segment but the last is full, whatever the total
    size), so the hashing overlaps the transfer. Blocking; not thread-safe.

    With a `spare` workspace, a segment's hashes are computed on the hash pool while the
    next `add` reads, encrypts and encodes the next segment into the other workspace:
    those steps run on one core, and without the overlap the second core idles through
    them (pass 1 of 1 GiB used 1.6 of 2 cores). Its plan is then complete at `finish`."""

    def __init__(self, codec: SegmentCodec, ws: SegmentWorkspace, salt_context: bytes | None,
                 spare: SegmentWorkspace | None = None) -> None:
        self.codec = codec
        self.ws = ws
        self.spare = spare
        self.salt_context = salt_context
        self.segments: list[SegmentPlan] = []
        #: the segment being hashed in the background: its index, salt and digests to come
        self._pending: tuple[int, bytes | None, Callable[[], tuple[str, tuple[str, ...]]]] | None = None

    @property
    def planned_bytes(self) -> int:
        return (len(self.segments) + (self._pending is not None)) * self.codec.capacity

    def add(self, read_into: ReadInto, length: int) -> None:
        """Plan the next segment: `length` plaintext bytes (the capacity, but for the last)."""
        index = len(self.segments) + (self._pending is not None)
        ws = self.ws
        if self.spare is not None and index % 2:
            ws = self.spare
        try:
            salt = self.codec.load_span(ws, read_into, index, index * self.codec.capacity, length,
                                        None, self.salt_context)
            extent = self.codec.stored_extent(length)
            self.codec.encode(ws, extent)
        finally:
            self._collect()  # the workspace hashed before this one is free again
        digests = self.codec.hash_segment_soon(ws, extent)
        if self.spare is None:
            self.segments.append(SegmentPlan(index, *digests(), salt))
        else:
            self._pending = (index, salt, digests)

    def _collect(self) -> None:
        if self._pending is not None:
            index, salt, digests = self._pending
            self._pending = None
            self.segments.append(SegmentPlan(index, *digests(), salt))

    def finish(self, size: int) -> FilePlan:
        self._collect()
        if len(self.segments) != self.codec.segment_count(size):
            raise ValueError(f"planned {len(self.segments)} segments of a {size}-byte file")
        fid = merkle_root(s.hash for s in self.segments)
        return FilePlan(fid=fid, size=size, encrypted=self.codec.cipher is not None,
                        segments=tuple(self.segments))


def file_reader(fd: int) -> ReadInto:
    """A ReadInto over an open file descriptor (pread, so threads can share it)."""

    def read_into(offset: int, view: memoryview) -> int:
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                break
            done += got
        return done

    return read_into


def bytes_reader(data: bytes | bytearray | memoryview) -> ReadInto:
    source = memoryview(data).cast("B")

    def read_into(offset: int, view: memoryview) -> int:
        chunk = source[offset : offset + len(view)]
        view[: len(chunk)] = chunk
        return len(chunk)

    return read_into


class SegmentCodec:
    """Turns plaintext into CESS segments and back; encryption optional."""

    def __init__(self, cipher: SegmentCipher | None) -> None:
        self.cipher = cipher
        self.coder = get_coder(FRAGMENT_SIZE)

    @property
    def capacity(self) -> int:
        """Plaintext bytes per segment."""
        return PLAINTEXT_CAPACITY if self.cipher else SEGMENT_SIZE

    def segment_count(self, size: int) -> int:
        return segment_count(size, self.capacity)

    def segment_span(self, index: int, size: int) -> tuple[int, int]:
        """(offset, length) of segment `index`'s plaintext in a file of `size` bytes."""
        start = index * self.capacity
        return start, max(0, min(self.capacity, size - start))

    def load(self, ws: SegmentWorkspace, read_into: ReadInto, index: int, size: int, salt: bytes | None,
             salt_context: bytes | None = None) -> bytes | None:
        """Fill ws.segment with segment `index` as stored (encrypted or zero-padded).

        Encrypted, the salt is `salt`, else derived from `salt_context` and the plaintext
        (`SegmentCipher.salt_for`), else random; the one used is returned."""
        offset, length = self.segment_span(index, size)
        return self.load_span(ws, read_into, index, offset, length, salt, salt_context)

    def load_span(self, ws: SegmentWorkspace, read_into: ReadInto, index: int, offset: int,
                  length: int, salt: bytes | None, salt_context: bytes | None = None) -> bytes | None:
        """`load` of the `length` plaintext bytes at `offset` (the segment's span)."""
        if self.cipher is None:
            got = read_into(offset, ws.segment[:length]) if length else 0
            if got != length:
                raise OSError(f"file shrank while being read (segment {index})")
            ensure_zero(ws.segment[length:])
            return None
        scratch = ws.parity_area[:length]
        got = read_into(offset, scratch) if length else 0
        if got != length:
            raise OSError(f"file shrank while being read (segment {index})")
        if salt is None:
            salt = (self.cipher.salt_for(salt_context, index, scratch) if salt_context is not None
                    else self.cipher.new_salt())
        self.cipher.encrypt_into(scratch, ws.segment, index, salt)
        return salt

    def stored_extent(self, length: int) -> int:
        """How many bytes from the start of a stored segment holding `length` plaintext
        bytes can be non-zero (the rest is padding, zeros in either layout)."""
        return length if self.cipher is None else stored_extent(length)

    def encode(self, ws: SegmentWorkspace, extent: int = SEGMENT_SIZE) -> None:
        """RS-encode ws.segment into its 8 parity fragments. With `extent` (ws.segment is
        zero past it, as `load` leaves it), only each fragment's first `extent` bytes are
        computed and the parity past them is made zero: a small file's segment then
        touches a few pages of the 64 MiB parity area, not all of them."""
        if extent >= FRAGMENT_SIZE:
            self.coder.encode(ws.segment, ws.parity)
            return
        computed = min(FRAGMENT_SIZE, -(-extent // 64) * 64)  # whole vectors for ISA-L
        self.coder.encode(ws.segment, ws.parity, extent=computed)
        for fragment in ws.parity:
            ensure_zero(fragment[computed:])

    @staticmethod
    def hash_segment(ws: SegmentWorkspace, extent: int = SEGMENT_SIZE) -> tuple[str, tuple[str, ...]]:
        """The segment hash and the 12 fragment hashes, hashed on both cores; data
        fragments wholly past `extent` are the zero fragment, whose hash is known."""
        return SegmentCodec.hash_segment_soon(ws, extent)()

    @staticmethod
    def hash_segment_soon(ws: SegmentWorkspace, extent: int = SEGMENT_SIZE
                          ) -> Callable[[], tuple[str, tuple[str, ...]]]:
        """`hash_segment` started on the hash pool; call the result to wait for it (the
        workspace must not change until then)."""
        buffers: list[memoryview] = [ws.segment, *ws.fragments]
        zero = {1 + i for i in range(DATA_SHARDS) if i * FRAGMENT_SIZE >= extent}
        futures = [None if n in zero else _HASH_POOL.submit(_sha256_hex, buffers[n])
                   for n in range(len(buffers))]

        def digests() -> tuple[str, tuple[str, ...]]:
            done = [ZERO_FRAGMENT_HASH if f is None else f.result() for f in futures]
            return done[0], tuple(done[1:])

        return digests

    def plan(
        self, read_into: ReadInto, size: int, ws: SegmentWorkspace | None = None,
        salt_context: bytes | None = None,
        progress: Callable[[int], None] | None = None,
        spare: SegmentWorkspace | None = None,
    ) -> FilePlan:
        """Pass 1: encrypt, encode and hash every segment; keep only hashes and salts.

        With `salt_context` (encrypted files), the same bytes planned again under the same
        context give the same FID; without it every plan is a fresh encryption. With a
        `spare` workspace, one segment is hashed while the next is encoded (SegmentPlanner)."""
        planner = SegmentPlanner(self, ws or SegmentWorkspace(), salt_context, spare)
        for index in range(self.segment_count(size)):
            length = self.segment_span(index, size)[1]
            planner.add(read_into, length)
            if progress:
                progress(length)
        return planner.finish(size)

    def rebuild(self, ws: SegmentWorkspace, read_into: ReadInto, plan: FilePlan, index: int) -> None:
        """Pass 2: recreate segment `index` exactly as planned (same salt)."""
        self.load(ws, read_into, index, plan.size, plan.segments[index].salt)
        self.encode(ws, self.stored_extent(self.segment_span(index, plan.size)[1]))

    def decode(self, fragments: Mapping[int, bytes | bytearray | memoryview], ws: SegmentWorkspace) -> None:
        """Rebuild ws.segment from any 4 fragments (data ones are copied, not decoded)."""
        self.coder.decode(fragments, ws.segment)

    def plaintext(self, ws: SegmentWorkspace, index: int, size: int, out: bytearray | memoryview | None = None) -> memoryview:
        """The plaintext bytes of a decoded segment (a view into `out` or the workspace)."""
        _, length = self.segment_span(index, size)
        if self.cipher is None:
            return ws.segment[:length]
        if out is None or len(out) < DECRYPT_BUFFER_SIZE:
            out = bytearray(DECRYPT_BUFFER_SIZE)
        got = self.cipher.decrypt_into(ws.segment, index, out)
        return memoryview(out)[: min(got, length)]
