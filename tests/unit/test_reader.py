"""The mount's segment reader recycles plaintext buffers: concurrent readers of many
segments, with an LRU of one so buffers are evicted and refilled all the time, must
still get exactly their bytes.

The store is a stand-in that fills each segment with its own index (the reader's
buffer logic is what is under test; reads through real nodes are in tests/fs).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import trio

from deossfs.fs.reader import _IDLE_BUFFERS, SegmentReader
from deossfs.processing.encryption import PLAINTEXT_CAPACITY

SEGMENTS = 6


@dataclass
class _Info:
    fid: str
    segments: tuple[int, ...]


class SegmentFiller:
    """Writes segment `index` as `index` repeated, in a worker thread, in steps, so a
    reader copying from a buffer being refilled would see mixed bytes."""

    def __init__(self) -> None:
        self.fetches = 0
        self.buffers: set[int] = set()

    async def file_info(self, fid: str) -> _Info:
        return _Info(fid, tuple(range(SEGMENTS)))

    async def read_segment_into(self, info: _Info, index: int, ws: object, out: bytearray) -> tuple[int, bool]:
        self.fetches += 1
        self.buffers.add(id(out))
        step = PLAINTEXT_CAPACITY // 4

        def fill() -> None:
            for start in range(0, PLAINTEXT_CAPACITY, step):
                out[start : start + step] = bytes([index]) * len(out[start : start + step])
                time.sleep(0.001)

        await trio.sleep(random.random() * 0.01)
        await trio.to_thread.run_sync(fill)
        return PLAINTEXT_CAPACITY, True


async def test_recycled_buffers_never_leak_another_segments_bytes() -> None:
    store = SegmentFiller()
    reader = SegmentReader(store, memory_segments=1)  # type: ignore[arg-type]
    size = SEGMENTS * PLAINTEXT_CAPACITY
    rng = random.Random(7)
    checked = 0

    async def read_some(seed: int) -> None:
        nonlocal checked
        local = random.Random(seed)
        for _ in range(12):
            offset = local.randrange(size - 1)
            length = local.choice([1, 4096, 131072, 1 << 20])
            data = await reader.read("f" * 64, size, offset, length, True)
            expected = b"".join(
                bytes([pos // PLAINTEXT_CAPACITY]) * (min(offset + length, size, (pos // PLAINTEXT_CAPACITY + 1)
                                                       * PLAINTEXT_CAPACITY) - pos)
                for pos in _segment_starts(offset, min(offset + length, size)))
            assert data == expected, (offset, length)
            checked += 1

    async with trio.open_nursery() as nursery:
        reader.nursery = nursery
        for task in range(16):
            nursery.start_soon(read_some, rng.randrange(1 << 30) + task)
    assert checked == 16 * 12
    # buffers were recycled: far more fetches than buffers, and those few bounded
    assert len(store.buffers) <= 1 + 3 + _IDLE_BUFFERS < store.fetches, (store.buffers, store.fetches)
    assert len(reader._idle_buffers) <= _IDLE_BUFFERS


def _segment_starts(start: int, end: int) -> list[int]:
    """`start`, then every segment boundary before `end`."""
    out = [start]
    boundary = (start // PLAINTEXT_CAPACITY + 1) * PLAINTEXT_CAPACITY
    while boundary < end:
        out.append(boundary)
        boundary += PLAINTEXT_CAPACITY
    return out
