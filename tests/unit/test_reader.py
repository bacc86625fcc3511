"""The segment reader (the mount's, and the gateway's shared one) recycles plaintext buffers: concurrent readers of many
segments, with an LRU of one so buffers are evicted and refilled all the time, must
still get exactly their bytes.

The store is a stand-in that fills each segment with its own index (the reader's
buffer logic is what is under test; reads through real nodes are in tests/fs).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from types import SimpleNamespace

import trio

from deossfs.processing.encryption import PLAINTEXT_CAPACITY
from deossfs.reader import _IDLE_BUFFERS, SegmentReader

SEGMENTS = 6


@dataclass
class _Info:
    fid: str
    segments: tuple[int, ...]


class SegmentFiller:
    """Writes segment `index` as `index` repeated, in a worker thread, in steps, so a
    reader copying from a buffer being refilled would see mixed bytes."""

    cipher = SimpleNamespace(key_id=b"k1")

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


class KeyedFiller(SegmentFiller):
    """A store view whose segments read as (index + its key's number): two keys, two
    plaintexts of one FID, as the gateway's views of two accounts would decrypt them."""

    def __init__(self, number: int, fetches: list[tuple[int, int]]) -> None:
        super().__init__()
        self.number = number
        self.cipher = SimpleNamespace(key_id=bytes([number]))
        self.log = fetches

    async def read_segment_into(self, info: _Info, index: int, ws: object, out: bytearray) -> tuple[int, bool]:
        self.log.append((self.number, index))
        await trio.sleep(random.random() * 0.01)
        out[:PLAINTEXT_CAPACITY] = bytes([index + self.number]) * PLAINTEXT_CAPACITY
        return PLAINTEXT_CAPACITY, True


async def test_concurrent_ranged_reads_share_fetches_and_hold_their_buffers() -> None:
    """Ten 8 MiB ranges at once (boto3's download_file), with a sink that awaits between
    pieces: every range gets exactly its bytes although only three segments stay in
    memory and five buffers exist, and each segment is fetched once per key, not once per
    range."""
    fetches: list[tuple[int, int]] = []
    alice, bob = KeyedFiller(1, fetches), KeyedFiller(100, fetches)
    peak = 0

    async def fetch(store: KeyedFiller, info: _Info, index: int, ws: object, out: bytearray) -> tuple[int, bool]:
        nonlocal peak
        peak = max(peak, reader._buffers)
        return await store.read_segment_into(info, index, ws, out)

    # the gateway's settings: buffers capped at LRU + fetches, whatever the responses pin
    reader = SegmentReader(alice, memory_segments=3, fetch_slots=2, max_buffers=5,  # type: ignore[arg-type]
                           fetch=fetch)  # type: ignore[arg-type]
    info = _Info("f" * 64, tuple(range(SEGMENTS)))
    size = SEGMENTS * PLAINTEXT_CAPACITY
    part = 8 << 20
    results: dict[tuple[int, int], bytes] = {}

    async def download(store: KeyedFiller, start: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            end = min(start + part, size)
            pieces: list[bytes] = []

            async def sink(view: memoryview) -> None:
                for offset in range(0, len(view), 1 << 20):  # sent piece by piece
                    pieces.append(bytes(view[offset:offset + (1 << 20)]))
                    await trio.sleep(0)
            await reader.read_range(store, info, start, end, PLAINTEXT_CAPACITY, sink)  # type: ignore[arg-type]
            results[(store.number, start)] = b"".join(pieces)

    async with trio.open_nursery() as nursery:
        for store in (alice, bob):
            limiter = trio.CapacityLimiter(10)
            for start in range(0, size, part):
                nursery.start_soon(download, store, start, limiter)
    for (number, start), data in results.items():
        end = min(start + part, size)
        expected = b"".join(bytes([pos // PLAINTEXT_CAPACITY + number])
                            * (min(end, (pos // PLAINTEXT_CAPACITY + 1) * PLAINTEXT_CAPACITY) - pos)
                            for pos in _segment_starts(start, end))
        assert data == expected, (number, start)
    assert len(results) == 2 * len(range(0, size, part))
    # each key fetched each segment itself (never the other's plaintext), and ranges
    # of one segment shared fetches: far fewer than one per range and segment touched
    assert 0 < peak <= 5, peak
    for number in (1, 100):
        mine = [index for who, index in fetches if who == number]
        assert set(mine) == set(range(SEGMENTS))
        assert len(mine) < len(range(0, size, part)), mine


async def test_a_cancelled_fetch_is_taken_over_by_its_waiter() -> None:
    """The request that started a segment's fetch goes away (client disconnected): a
    request waiting for the same segment fetches it itself, and is not cancelled."""
    fetches: list[tuple[int, int]] = []
    store = KeyedFiller(1, fetches)
    reader = SegmentReader(store, memory_segments=2,  # type: ignore[arg-type]
                           fetch=lambda s, info, index, ws, out: s.read_segment_into(info, index, ws, out))
    info = _Info("f" * 64, tuple(range(SEGMENTS)))
    got: list[bytes] = []

    async def sink(view: memoryview) -> None:
        got.append(bytes(view[:4]))

    first = trio.CancelScope()

    async def leaving() -> None:
        with first:
            await reader.read_range(store, info, 0, 4, PLAINTEXT_CAPACITY, sink)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leaving)
        await trio.sleep(0)  # the first request owns the fetch now
        nursery.start_soon(reader.read_range, store, info, 0, 4, PLAINTEXT_CAPACITY, sink)
        await trio.sleep(0)
        first.cancel()
    assert got == [bytes([1]) * 4]
    assert fetches == [(1, 0), (1, 0)]
