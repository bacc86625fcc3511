"""The local segment cache: segments as stored, on disk, under a size cap.

A segment is kept exactly as it is stored on CESS: 32 MiB of AES-GCM ciphertext
when the file is deossfs-encrypted (the plain CESS layout otherwise), so the cache
never holds plaintext of an encrypted file nor any key. Entries are keyed by
(fid, segment index) and verified against the chain's segment hash when read, so
a damaged or tampered entry is dropped, never used.

Storage is a `diskcache.Cache` in `<dir>/segments` with its least-recently-used
eviction. The cap is strict: before a segment is written, room is made so that
the directory (segments plus the index database and a reserve for its journal)
never exceeds `size`: after each put the least recently used entries go until
one segment of room is free again (at rest the cache holds up to `size` - 32 MiB
- 4 MiB of segments). Puts are serialized across processes by a file lock, so a
mount and a CLI command sharing the directory keep the cap too. A cap below two
segments plus the reserve turns the cache off.

The mount's staged (not yet durable) files are not cache entries: they live in
the workspace's staging directory, which the config refuses as (or inside) the
cache directory, so eviction can never touch them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import diskcache
import trio

from ..config import Config
from ..directio import DirectWriter
from ..processing.hashes import is_hash
from ..processing.layout import SEGMENT_SIZE
from .counters import Counters

log = logging.getLogger(__name__)

#: room kept for the index database and its write-ahead log
OVERHEAD = 4 * 1024 * 1024
#: free disk space a put leaves, whatever the cap: staged files (often on the same
#: disk) come before cached ones
DISK_HEADROOM = 256 * 1024 * 1024


class _SegmentDisk(diskcache.Disk):
    """diskcache's Disk, minus the partial file a failed write (disk full) leaves behind.

    Segments are written past the page cache where the file system allows (directio
    says why: on the machines measured, a put spent ~1.5 CPU-s per GiB copying the
    segments it caches into fresh page cache pages)."""

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> Any:
        try:
            if mode != "xb":
                return super()._write(full_path, iterator, mode, encoding)
            return self._write_direct(full_path, iterator)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise

    @staticmethod
    def _write_direct(full_path: str, iterator: Any) -> int:
        # as diskcache's own _write: another cache may remove the directory meanwhile
        for attempt in range(1, 11):
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(full_path))
            try:
                writer = DirectWriter(full_path, mode=0o644, sparse=True)
            except FileNotFoundError:
                if attempt == 10:
                    raise
                continue
            with writer:
                for chunk in iterator:
                    writer.write(chunk)
                writer.flush()
                return writer.size
        raise AssertionError("unreachable")


def min_size(segment_size: int = SEGMENT_SIZE) -> int:
    """The smallest useful cap: one segment kept, room for the next, the index."""
    return 2 * segment_size + OVERHEAD + 1024 * 1024


def segment_key(fid: str, index: int) -> str:
    return f"{fid}/{index}"


class _ViewReader:
    """A file-like view of a buffer: diskcache streams it to disk without a copy."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._data) if size < 0 else min(len(self._data), self._pos + size)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk


class SegmentCache:
    """Segments as stored, keyed by (fid, index); blocking methods, thread-safe.

    The trio side uses the `a*` coroutines (worker threads) or calls the blocking
    methods through `trio.to_thread.run_sync`.
    """

    def __init__(self, directory: Path, size: int, *, enabled: bool = True,
                 counters: Counters | None = None, segment_size: int = SEGMENT_SIZE) -> None:
        self.directory = Path(directory)
        self.size = size
        self.segment_size = segment_size
        self.counters = counters
        self.enabled = enabled and size >= min_size(segment_size)
        if enabled and not self.enabled:
            log.warning("cache.size %d is below %d (two segments plus the index): the cache is "
                        "off", size, min_size(segment_size))
        self._cache: diskcache.Cache | None = None
        self._open_lock = threading.Lock()
        self._put_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, address: str, counters: Counters | None = None) -> SegmentCache:
        """The cache a config describes (its directory is checked only when it is on)."""
        options = config.cache
        if options.enabled:
            directory = config.cache_dir(address)
        else:
            directory = options.dir or config.workspace_dir(address) / "cache"
        return cls(directory, options.size, enabled=options.enabled, counters=counters)

    # ---- opening ---------------------------------------------------------------
    @property
    def _limit(self) -> int:
        """diskcache's limit: after each put its least recently used entry goes when the
        cache holds more than this, which keeps one segment of room (plus the reserve)
        free for the next put."""
        return max(0, self.size - self.segment_size - OVERHEAD)

    @property
    def store_dir(self) -> Path:
        return self.directory / "segments"

    def _disk(self) -> diskcache.Cache:
        if self._cache is None:
            with self._open_lock:
                if self._cache is None:
                    self.store_dir.mkdir(parents=True, exist_ok=True)
                    os.chmod(self.directory, 0o700)
                    self._cache = diskcache.Cache(
                        str(self.store_dir),
                        size_limit=self._limit,
                        disk=_SegmentDisk,
                        eviction_policy="least-recently-used",
                        cull_limit=1,
                        statistics=False,
                    )
                    # a cap changed in the config applies to an existing directory
                    self._cache.reset("size_limit", self._limit)
        return self._cache

    def close(self) -> None:
        with self._open_lock:
            if self._cache is not None:
                self._cache.close()
                self._cache = None

    # ---- blocking API ------------------------------------------------------------
    def contains(self, fid: str, index: int) -> bool:
        if not self.enabled:
            return False
        return segment_key(fid, index) in self._disk()

    def open(self, fid: str, index: int) -> BinaryIO | None:
        """The stored segment as an open file (refreshes its LRU position), or None."""
        if not self.enabled or not is_hash(fid):
            return None
        handle = self._disk().get(segment_key(fid, index), read=True)
        return handle  # type: ignore[no-any-return]

    def get_into(self, fid: str, index: int, into: memoryview, expected_hash: str | None) -> bool:
        """Read segment (fid, index) into `into`; False (and the entry dropped) if absent,
        short or not matching `expected_hash` (the chain's segment hash)."""
        handle = self.open(fid, index)
        if handle is None:
            return False
        with handle:
            got = handle.readinto(into)
            extra = handle.read(1)
        if got != len(into) or extra:
            log.warning("cached segment %d of %s… has the wrong size; dropped", index, fid[:16])
            self.discard(fid, index)
            return False
        if expected_hash is not None and hashlib.sha256(into).hexdigest() != expected_hash:
            log.warning("cached segment %d of %s… does not match its hash; dropped", index, fid[:16])
            self.discard(fid, index)
            return False
        return True

    def put(self, fid: str, index: int, segment: memoryview | bytes | bytearray) -> bool:
        """Keep a segment as stored; True if it is in the cache afterwards.

        Never raises for disk trouble (a cache is an optimisation): logs and returns False.
        """
        if not self.enabled or not is_hash(fid):
            return False
        data = memoryview(segment).cast("B")
        if len(data) != self.segment_size:
            raise ValueError(f"a segment has {self.segment_size} bytes, not {len(data)}")
        try:
            cache = self._disk()
            with self._put_lock, self._cross_process_lock():
                key = segment_key(fid, index)
                if key in cache:
                    cache.touch(key)
                    return True
                # room for this segment first, so the directory never holds more than the
                # cap; normally the eviction after the previous put left it (`_disk`)
                if cache.volume() + self.segment_size + OVERHEAD // 2 > self.size:
                    cache.cull()
                    if cache.volume() + self.segment_size + OVERHEAD // 2 > self.size:
                        return False
                if shutil.disk_usage(self.store_dir).free < self.segment_size + DISK_HEADROOM:
                    log.info("not caching segment %d of %s…: less than %d MiB would be left on "
                             "the disk", index, fid[:16], DISK_HEADROOM // 2**20)
                    return False
                cache.set(key, _ViewReader(data), read=True)
        except (OSError, diskcache.Timeout) as exc:
            log.warning("cannot cache segment %d of %s…: %s", index, fid[:16], exc)
            return False
        return True

    def discard(self, fid: str, index: int) -> None:
        if self.enabled:
            self._disk().delete(segment_key(fid, index))

    def usage(self) -> dict[str, int | bool | str]:
        """What `deossfs status` shows: on/off, directory, cap, bytes used, segments."""
        info: dict[str, int | bool | str] = {
            "enabled": self.enabled, "dir": str(self.directory), "size_limit": self.size,
            "used_bytes": 0, "segments": 0,
        }
        if self.enabled and self.store_dir.exists():
            cache = self._disk()
            info["used_bytes"] = cache.volume()
            info["segments"] = len(cache)
        return info

    def keys(self) -> Iterator[tuple[str, int]]:
        if not self.enabled:
            return
        for key in self._disk().iterkeys():
            fid, _, index = str(key).partition("/")
            yield fid, int(index)

    @contextlib.contextmanager
    def _cross_process_lock(self) -> Iterator[None]:
        fd = os.open(self.store_dir / ".put.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ---- trio API ----------------------------------------------------------------
    async def aget_into(self, fid: str, index: int, into: memoryview, expected_hash: str | None) -> bool:
        if not self.enabled:
            return False
        return await trio.to_thread.run_sync(self.get_into, fid, index, into, expected_hash)

    async def put_segment(self, fid: str, index: int, segment: memoryview | bytes | bytearray) -> bool:
        """Keep segment `index` of `fid` (as stored) if the cache is on; never raises for disk trouble."""
        if not self.enabled:
            return False
        stored = await trio.to_thread.run_sync(self.put, fid, index, segment)
        if stored and self.counters is not None:
            await trio.to_thread.run_sync(lambda: self.counters.add(segments_cached=1))  # type: ignore[union-attr]
        return stored
