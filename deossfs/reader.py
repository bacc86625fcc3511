"""Lazy, per-segment reads of stored files, with read-ahead, for the mount and the gateway.

Only the segments a read touches are fetched, through the store's read order: the
local segment cache on disk, then peers' caches, then storage nodes
(`ObjectStore._fetch_decoded`); what comes from peers or nodes enters the disk
cache as stored (ciphertext for encrypted files). Decoded plaintext segments are
kept only in memory, in a small LRU; concurrent readers of a segment share one fetch.

Why the gateway needs it as much as the mount: S3 clients download with many ranged
GETs at once (boto3: 8 MiB ranges, 10 threads), so four requests touch each 32 MiB
segment. Each request fetching and decrypting on its own did that work four times, in
fresh buffers each time (this VM pays ~10x for the first touch of fresh memory).

Decrypted segments are filed under the reading key's id (`SegmentCipher.key_id`): a
gateway reads for many accounts through one reader, and a reader with another key must
fetch (and fail to decrypt) for itself, never be handed someone else's plaintext.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .chain.interface import FileInfo
from .directio import aligned_buffer
from .processing.encryption import DECRYPT_BUFFER_SIZE, PLAINTEXT_CAPACITY
from .processing.layout import SEGMENT_SIZE
from .processing.pipeline import SegmentBuffer, SegmentWorkspace

if TYPE_CHECKING:  # the store calls into this module; this one only calls back
    from .store import ObjectStore

log = logging.getLogger(__name__)

#: segments fetched ahead of a sequential reader
READ_AHEAD_SEGMENTS = 2


#: buffer big enough for a segment's plaintext, plain or decrypted
_BUFFER_SIZE = max(SEGMENT_SIZE, DECRYPT_BUFFER_SIZE)
#: segment fetches in flight at once (each holds a 32 MiB scratch workspace)
_FETCHES = 3
#: evicted plaintext buffers kept for the next fetches: a fresh 33 MiB buffer is
#: zero-filled page by page, which cost a sixth of a cold read's CPU
_IDLE_BUFFERS = _FETCHES

#: (store, info, index, scratch workspace, out) -> (plaintext length, encrypted?)
SegmentFetch = Callable[["ObjectStore", FileInfo, int, SegmentWorkspace, SegmentBuffer],
                        Awaitable[tuple[int, bool]]]
#: (key id, fid, segment index)
_Key = tuple[bytes, str, int]


async def stored_segment(store: ObjectStore, info: FileInfo, index: int, ws: SegmentWorkspace,
                         out: SegmentBuffer) -> tuple[int, bool]:
    """The mount's fetch: the stored bytes, whose layout is learnt from the segment."""
    return await store.read_segment_into(info, index, ws, out)


@dataclass(eq=False)
class _Plaintext:
    """A decoded segment's plaintext in a recycled buffer.

    `generation` changes whenever the buffer leaves the LRU (and may be refilled with
    another segment), so a task that waited for it checks that it is still the same.
    A pinned buffer (`pins` > 0: a response is sending from it) is refilled only once
    its last pin is gone."""

    buffer: SegmentBuffer
    length: int = 0
    generation: int = 0
    pins: int = 0
    retired: bool = False
    #: the buffer as a fetch's workspace, for a reader that decodes in place
    workspace: SegmentWorkspace | None = None

    @property
    def view(self) -> memoryview:
        return memoryview(self.buffer)[: self.length]


@dataclass
class _Flight:
    done: trio.Event
    data: _Plaintext | None = None
    generation: int = 0
    error: BaseException | None = None


def _key_id(store: ObjectStore) -> bytes:
    return store.cipher.key_id


class SegmentReader:
    """An LRU of decoded plaintext segments, and recycled scratch workspaces and
    plaintext buffers for the fetches in flight (data fragments are received in
    place: no joins, no decode).

    Views returned by `segment` are valid until the caller's next checkpoint: an evicted
    buffer is refilled by a later fetch, so callers copy what they need at once, or hold
    the segment with `pinned` while they use it."""

    def __init__(self, store: ObjectStore, memory_segments: int = 4, *,
                 fetch_slots: int = _FETCHES, idle_buffers: int = _IDLE_BUFFERS,
                 max_buffers: int | None = None, fetch: SegmentFetch = stored_segment,
                 in_place: bool = False) -> None:
        """`max_buffers` caps the plaintext buffers in existence (in the LRU, being
        filled, pinned by a response, idle): a fetch past it evicts the oldest unpinned
        segment, or waits for a pin to go. It must exceed `fetch_slots`. `in_place`:
        `fetch` is given a workspace over the plaintext buffer itself (no scratch
        workspace per fetch: half the memory)."""
        self.in_place = in_place
        self.store = store
        # at least one: a fetched segment must stay until its fetcher has copied from it
        self.memory_segments = max(1, memory_segments)
        self.fetch = fetch
        self._lru: OrderedDict[_Key, _Plaintext] = OrderedDict()
        self._fetch_slots = trio.Semaphore(max(1, fetch_slots))
        self._max_buffers = max_buffers
        if max_buffers is not None and max_buffers <= fetch_slots:
            raise ValueError("max_buffers must exceed fetch_slots")
        self._buffers = 0
        self._buffer_freed = trio.Event()
        self._idle_limit = idle_buffers if max_buffers is None else max_buffers
        self._idle_workspaces: list[SegmentWorkspace] = []
        self._idle_buffers: list[_Plaintext] = []
        self._flights: dict[_Key, _Flight] = {}
        self._infos: dict[str, FileInfo] = {}
        #: fid -> True (deossfs-encrypted) / False (plain CESS layout)
        self._encrypted: dict[str, bool] = {}
        self.nursery: trio.Nursery | None = None
        self.fetched_segments = 0

    def forget(self, fid: str) -> None:
        self._infos.pop(fid, None)
        for key in [k for k in self._lru if k[1] == fid]:
            self._retire(self._lru.pop(key))

    async def info(self, fid: str) -> FileInfo:
        info = self._infos.get(fid)
        if info is None:
            info = await self.store.file_info(fid)
            self._infos[fid] = info
        return info

    def capacity(self, fid: str, hint: bool | None) -> int:
        encrypted = self._encrypted.get(fid, hint)
        return PLAINTEXT_CAPACITY if encrypted in (True, None) else SEGMENT_SIZE

    def _retire(self, plain: _Plaintext) -> None:
        """`plain` left the LRU: stale for anyone who waited for it; reuse its buffer
        once nobody sends from it."""
        plain.generation += 1
        plain.retired = True
        if not plain.pins:
            self._release(plain)

    def _release(self, plain: _Plaintext) -> None:
        """A retired buffer nobody uses: idle for the next fetch, or dropped."""
        if len(self._idle_buffers) < self._idle_limit:
            self._idle_buffers.append(plain)
        else:
            self._buffers -= 1
        self._buffer_freed.set()

    def _evict(self) -> None:
        while len(self._lru) > self.memory_segments:
            self._retire(self._lru.popitem(last=False)[1])

    async def _take_buffer(self) -> _Plaintext:
        while True:
            if self._idle_buffers:
                return self._idle_buffers.pop()
            if self._max_buffers is None or self._buffers < self._max_buffers:
                self._buffers += 1
                # page-aligned: a segment read in place goes to the disk cache as it is
                return _Plaintext(aligned_buffer(_BUFFER_SIZE))
            unpinned = next((key for key, plain in self._lru.items() if not plain.pins), None)
            if unpinned is not None:
                self._retire(self._lru.pop(unpinned))
                continue
            # every buffer is being filled or sent from: wait for one to come back (all
            # waiters on one event; each looks again)
            if self._buffer_freed.is_set():
                self._buffer_freed = trio.Event()
            await self._buffer_freed.wait()

    async def _fetch(self, store: ObjectStore, info: FileInfo, index: int) -> _Plaintext:
        async with self._fetch_slots:
            plain = await self._take_buffer()
            plain.retired = False
            if self.in_place:
                if plain.workspace is None:
                    plain.workspace = SegmentWorkspace.over(plain.buffer)
                ws = plain.workspace
            else:
                ws = self._idle_workspaces.pop() if self._idle_workspaces else SegmentWorkspace(with_parity=False)
            try:
                plain.length, encrypted = await self.fetch(store, info, index, ws, plain.buffer)
            except BaseException:
                self._retire(plain)
                raise
            finally:
                if not self.in_place:
                    self._idle_workspaces.append(ws)
        self._encrypted[info.fid] = encrypted
        self.fetched_segments += 1
        return plain

    async def _plaintext(self, store: ObjectStore, info: FileInfo, index: int) -> _Plaintext:
        """Segment `index`'s plaintext, in the LRU now (valid until the next checkpoint)."""
        key = (_key_id(store), info.fid, index)
        while True:
            plain = self._lru.get(key)
            if plain is not None:
                self._lru.move_to_end(key)
                return plain
            flight = self._flights.get(key)
            if flight is None:
                flight = _Flight(trio.Event())
                self._flights[key] = flight
                try:
                    plain = await self._fetch(store, info, index)
                    flight.data, flight.generation = plain, plain.generation
                    self._lru[key] = plain
                    self._evict()
                except trio.Cancelled:
                    raise  # the waiters, not cancelled themselves, fetch it again
                except BaseException as exc:
                    flight.error = exc
                    raise
                finally:
                    del self._flights[key]
                    flight.done.set()
                if plain.generation == flight.generation:  # not evicted at once (tiny LRU)
                    return plain
                continue
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.data is not None and flight.data.generation == flight.generation:
                return flight.data
            # cancelled, or evicted (and maybe refilled) before this waiter ran: look again

    async def segment(self, fid: str, index: int) -> memoryview:
        """Segment `index`'s plaintext; valid until the caller's next checkpoint."""
        return (await self._plaintext(self.store, await self.info(fid), index)).view

    @asynccontextmanager
    async def pinned(self, store: ObjectStore, info: FileInfo, index: int) -> AsyncIterator[memoryview]:
        """Segment `index`'s plaintext as read by `store` (its key), valid inside the block
        whatever it awaits: its buffer is not refilled meanwhile."""
        plain = await self._plaintext(store, info, index)
        plain.pins += 1
        try:
            yield plain.view
        finally:
            plain.pins -= 1
            if not plain.pins and plain.retired and plain not in self._idle_buffers:
                self._release(plain)

    def prefetch(self, fid: str, index: int, count: int) -> None:
        """Start fetching a segment in the background (read-ahead)."""
        if self.nursery is None or index >= count:
            return
        key = (_key_id(self.store), fid, index)
        if key in self._lru or key in self._flights:
            return

        async def run() -> None:
            try:
                await self.segment(fid, index)
            except Exception as exc:  # a real read will surface it
                log.debug("read-ahead of %s segment %d failed: %s", fid[:16], index, exc)

        self.nursery.start_soon(run)

    async def read(self, fid: str, size: int, offset: int, length: int, encrypted: bool | None,
                   sequential: bool = False) -> bytes | memoryview:
        """Bytes [offset, offset+length) of the file `fid` of `size` plaintext bytes.

        A range within one segment (nearly every read: the kernel asks for 1 MiB at a
        time) comes back as a view of the segment's buffer, valid until the caller's next
        checkpoint: the mount hands it to FUSE at once. Copying each MiB into a bytes
        object held the GIL for a sixth of a cold read's time, the threads hashing and
        decrypting the next segments waiting for it."""
        end = min(size, offset + length)
        if offset >= end:
            return b""
        info = await self.info(fid)
        count = len(info.segments)
        if fid not in self._encrypted and encrypted is None:
            # learn the layout from the segment this read needs (plain capacity first guess)
            await self.segment(fid, min(offset // SEGMENT_SIZE, count - 1))
        capacity = self.capacity(fid, encrypted)
        result: bytes | memoryview
        if offset // capacity == (end - 1) // capacity:
            index = offset // capacity
            start = offset - index * capacity
            result = (await self.segment(fid, index))[start : start + (end - offset)]
        else:
            out = []
            pos = offset
            while pos < end:
                index = pos // capacity
                data = await self.segment(fid, index)
                start = pos - index * capacity
                piece = bytes(data[start : start + (end - pos)])
                if not piece:
                    break
                out.append(piece)
                pos += len(piece)
            result = b"".join(out)
        if sequential:
            # two segments ahead: one decodes while the next is on the wire (starting
            # them does not yield, so `result` stays valid)
            following = (end - 1) // capacity + 1
            for ahead in range(READ_AHEAD_SEGMENTS):
                self.prefetch(fid, following + ahead, count)
        return result

    async def read_range(self, store: ObjectStore, info: FileInfo, start: int, end: int,
                         capacity: int, sink: Callable[[memoryview], Awaitable[object]]) -> None:
        """Pass the plaintext bytes [start, end) of a file whose segments hold `capacity`
        plaintext bytes each to `sink`, in order, each view valid during its call. The
        segment after the current one is fetched while `sink` consumes the current; a
        fetch another request started already (a ranged GET of the same segment) is
        shared, not repeated."""
        if start >= end:
            return
        first, last = start // capacity, (end - 1) // capacity

        async def read_ahead(index: int) -> None:
            try:
                await self._plaintext(store, info, index)
            except Exception as exc:  # the read itself will surface it, in order
                log.debug("read-ahead of %s segment %d failed: %s", info.fid[:16], index, exc)

        async with trio.open_nursery() as nursery:
            for index in range(first, last + 1):
                if index < last:
                    nursery.start_soon(read_ahead, index + 1)
                async with self.pinned(store, info, index) as data:
                    offset = index * capacity
                    await sink(data[max(start - offset, 0): min(end - offset, len(data))])
