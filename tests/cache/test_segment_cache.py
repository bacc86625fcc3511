"""The disk segment cache: LRU under a strict cap, verified reads, off means off, counters."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import threading
from pathlib import Path

import pytest

from deossfs.cache import Counters, SegmentCache, min_size, segments
from deossfs.cache.segments import OVERHEAD
from deossfs.processing.layout import SEGMENT_SIZE

S = SEGMENT_SIZE


def segment(seed: int) -> bytes:
    """A distinct 32 MiB segment, cheaply (a random block repeated)."""
    return (secrets.token_bytes(4096) + seed.to_bytes(8, "big")) * (S // 4104) + bytes(S % 4104)


def fid() -> str:
    return secrets.token_hex(32)


def disk_bytes(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # removed while we looked
                total += os.path.getsize(os.path.join(root, name))
    return total


def test_roundtrip_and_verification(tmp_path: Path) -> None:
    cache = SegmentCache(tmp_path / "c", 4 * S)
    f, data = fid(), segment(1)
    digest = hashlib.sha256(data).hexdigest()
    assert cache.put(f, 0, data)
    out = bytearray(S)
    assert cache.get_into(f, 0, memoryview(out), digest)
    assert out == data
    assert not cache.get_into(f, 1, memoryview(out), digest)  # another index: a miss
    assert not cache.get_into(fid(), 0, memoryview(out), digest)
    # a damaged entry is dropped, never used
    value_files = [p for p in (tmp_path / "c" / "segments").rglob("*.val")]
    assert len(value_files) == 1
    with open(value_files[0], "r+b") as handle:
        handle.seek(12345)
        handle.write(b"\xff\x00\xff")
    assert not cache.get_into(f, 0, memoryview(out), digest)
    assert not cache.contains(f, 0)
    cache.close()


def test_least_recently_used_segments_go_first(tmp_path: Path) -> None:
    # room for two at rest (and one arriving)
    cache = SegmentCache(tmp_path / "c", 3 * S + OVERHEAD + 2**20)
    a, b, c = fid(), fid(), fid()
    cache.put(a, 0, segment(1))
    cache.put(b, 0, segment(2))
    out = memoryview(bytearray(S))
    assert cache.get_into(a, 0, out, None)  # a is now more recent than b
    cache.put(c, 0, segment(3))
    assert cache.contains(a, 0) and cache.contains(c, 0)
    assert not cache.contains(b, 0)
    cache.close()


def test_the_cap_is_never_exceeded(tmp_path: Path) -> None:
    cap = 3 * S + OVERHEAD + 2**20
    cache = SegmentCache(tmp_path / "c", cap)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, disk_bytes(tmp_path / "c"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    fids = [fid() for _ in range(7)]
    try:
        for i, f in enumerate(fids):
            assert cache.put(f, i, segment(i))
            peak = max(peak, disk_bytes(tmp_path / "c"))
    finally:
        done.set()
        watcher.join()
    assert 2 * S < peak <= cap, peak  # it was used, and never beyond the cap
    assert [cache.contains(f, i) for i, f in enumerate(fids)] == [False] * 5 + [True] * 2
    assert cache.usage()["segments"] == 2
    cache.close()
    # a smaller cap set later applies to the existing directory
    smaller = SegmentCache(tmp_path / "c", min_size())
    smaller.put(fid(), 0, segment(9))
    assert disk_bytes(tmp_path / "c") <= min_size()
    assert smaller.usage()["segments"] == 1
    smaller.close()


def test_off_keeps_nothing(tmp_path: Path) -> None:
    for cache in (SegmentCache(tmp_path / "off", 10 * S, enabled=False),
                  SegmentCache(tmp_path / "off", min_size() - 1)):  # too small to hold anything
        assert not cache.enabled
        assert not cache.put(fid(), 0, segment(1))
        assert not cache.get_into(fid(), 0, memoryview(bytearray(S)), None)
        assert cache.usage()["segments"] == 0
    assert not (tmp_path / "off").exists()


def test_only_whole_segments_of_real_fids(tmp_path: Path) -> None:
    cache = SegmentCache(tmp_path / "c", 4 * S)
    with pytest.raises(ValueError):
        cache.put(fid(), 0, b"short")
    assert not cache.put("../../etc/passwd", 0, segment(1))
    assert cache.open("../../etc/passwd", 0) is None
    cache.close()


def test_counters_persist_and_add_up(tmp_path: Path) -> None:
    first = Counters(tmp_path / "counters")
    assert first.snapshot()["hits"] == 0
    first.add(hits=2, bytes_from_cache=2 * S)
    second = Counters(tmp_path / "counters")  # another process of the same instance
    second.add(hits=1, peer_hits=1)
    first.close()
    second.close()
    again = Counters(tmp_path / "counters").snapshot()
    assert again["hits"] == 3 and again["peer_hits"] == 1 and again["bytes_from_cache"] == 2 * S
    with pytest.raises(ValueError):
        Counters(tmp_path / "counters").add(bogus=1)


def test_a_full_disk_costs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway leaves no partial file; a nearly full disk is left to
    the staged files (the cache does not take the last free space)."""
    cache = SegmentCache(tmp_path / "c", 4 * S)
    original = segments._ViewReader.read
    calls = 0

    def failing(self: segments._ViewReader, size: int = -1) -> memoryview:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, size)

    monkeypatch.setattr(segments._ViewReader, "read", failing)
    assert not cache.put(fid(), 0, segment(1))
    assert list((tmp_path / "c").rglob("*.val")) == []
    monkeypatch.setattr(segments._ViewReader, "read", original)
    assert cache.put(fid(), 0, segment(2))

    real_usage = shutil.disk_usage
    monkeypatch.setattr(segments.shutil, "disk_usage",
                        lambda path: real_usage(path)._replace(free=S + segments.DISK_HEADROOM - 1))
    assert not cache.put(fid(), 1, segment(3))
    assert cache.usage()["segments"] == 1
    cache.close()
