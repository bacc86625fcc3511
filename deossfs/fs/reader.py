"""Lazy, per-segment reads of stored files, with read-ahead.

Only the segments a read touches are fetched, through the store's read order: the
local segment cache on disk, then peers' caches, then storage nodes
(`ObjectStore._fetch_decoded`); what comes from peers or nodes enters the disk
cache as stored (ciphertext for encrypted files). Decoded plaintext segments are
kept only in memory, in a small LRU; concurrent readers of a segment share one fetch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import trio

from ..chain.interface import FileInfo
from ..processing.encryption import DECRYPT_BUFFER_SIZE, PLAINTEXT_CAPACITY
from ..processing.layout import SEGMENT_SIZE
from ..processing.pipeline import SegmentWorkspace
from ..store import ObjectStore

log = logging.getLogger(__name__)

#: segments fetched ahead of a sequential reader
READ_AHEAD_SEGMENTS = 2


#: buffer big enough for a segment's plaintext, plain or decrypted
_BUFFER_SIZE = max(SEGMENT_SIZE, DECRYPT_BUFFER_SIZE)
#: segment fetches in flight at once (each holds a 32 MiB scratch workspace)
_FETCHES = 3


@dataclass
class _Flight:
    done: trio.Event
    data: memoryview | None = None
    error: BaseException | None = None


class SegmentReader:
    """An LRU of decoded plaintext segments, and recycled scratch workspaces for the
    fetches in flight (data fragments are received in place: no joins, no decode)."""

    def __init__(self, store: ObjectStore, memory_segments: int = 4) -> None:
        self.store = store
        self.memory_segments = memory_segments
        self._lru: OrderedDict[tuple[str, int], memoryview] = OrderedDict()
        self._fetch_slots = trio.Semaphore(_FETCHES)
        self._idle_workspaces: list[SegmentWorkspace] = []
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._infos: dict[str, FileInfo] = {}
        #: fid -> True (deossfs-encrypted) / False (plain CESS layout)
        self._encrypted: dict[str, bool] = {}
        self.nursery: trio.Nursery | None = None
        self.fetched_segments = 0

    def forget(self, fid: str) -> None:
        self._infos.pop(fid, None)
        for key in [k for k in self._lru if k[0] == fid]:
            del self._lru[key]

    async def info(self, fid: str) -> FileInfo:
        info = self._infos.get(fid)
        if info is None:
            info = await self.store.file_info(fid)
            self._infos[fid] = info
        return info

    def capacity(self, fid: str, hint: bool | None) -> int:
        encrypted = self._encrypted.get(fid, hint)
        return PLAINTEXT_CAPACITY if encrypted in (True, None) else SEGMENT_SIZE

    def _evict(self) -> None:
        # evicted buffers are not recycled: a waiter of that fetch may still hold the view
        while len(self._lru) > self.memory_segments:
            self._lru.popitem(last=False)

    async def _fetch(self, fid: str, index: int) -> memoryview:
        info = await self.info(fid)
        async with self._fetch_slots:
            ws = self._idle_workspaces.pop() if self._idle_workspaces else SegmentWorkspace(with_parity=False)
            out = bytearray(_BUFFER_SIZE)
            try:
                length, encrypted = await self.store.read_segment_into(info, index, ws, out)
            finally:
                self._idle_workspaces.append(ws)
        self._encrypted[fid] = encrypted
        self.fetched_segments += 1
        return memoryview(out)[:length]

    async def segment(self, fid: str, index: int) -> memoryview:
        key = (fid, index)
        data = self._lru.get(key)
        if data is not None:
            self._lru.move_to_end(key)
            return data
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(trio.Event())
            self._flights[key] = flight
            try:
                flight.data = await self._fetch(fid, index)
                self._lru[key] = flight.data
                self._evict()
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                del self._flights[key]
                flight.done.set()
        else:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
        assert flight.data is not None
        return flight.data

    def prefetch(self, fid: str, index: int, count: int) -> None:
        """Start fetching a segment in the background (read-ahead)."""
        if self.nursery is None or index >= count:
            return
        key = (fid, index)
        if key in self._lru or key in self._flights:
            return

        async def run() -> None:
            try:
                await self.segment(fid, index)
            except Exception as exc:  # a real read will surface it
                log.debug("read-ahead of %s segment %d failed: %s", fid[:16], index, exc)

        self.nursery.start_soon(run)

    async def read(self, fid: str, size: int, offset: int, length: int, encrypted: bool | None,
                   sequential: bool = False) -> bytes:
        """Bytes [offset, offset+length) of the file `fid` of `size` plaintext bytes."""
        end = min(size, offset + length)
        if offset >= end:
            return b""
        info = await self.info(fid)
        count = len(info.segments)
        if fid not in self._encrypted and encrypted is None:
            # learn the layout from the segment this read needs (plain capacity first guess)
            await self.segment(fid, min(offset // SEGMENT_SIZE, count - 1))
        capacity = self.capacity(fid, encrypted)
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
        if sequential:
            # two segments ahead: one decodes while the next is on the wire
            following = (end - 1) // capacity + 1
            for ahead in range(READ_AHEAD_SEGMENTS):
                self.prefetch(fid, following + ahead, count)
        return b"".join(out)
