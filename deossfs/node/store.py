"""The storage node's durable fragment store.

Layout: `<root>/fragments/<fid[:2]>/<fid>/<fragment_hash>`. A fragment is
written to a temporary file in its final directory, fsynced, renamed over its
name and the directory fsynced: a reader sees a whole fragment or none, also
after a crash. A fragment's writer hashes what it writes and refuses to commit
bytes that do not match the name, so every stored file matches its hash.

FIDs and hashes are checked to be exactly 64 lowercase hex characters before
they touch a path (no traversal). The all-zero fragment is never stored: it is
always "held" and reads as zeros.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from ..directio import DirectWriter
from ..errors import IntegrityError, InvalidInput, NotFound
from ..processing.hashes import is_hash
from ..processing.layout import FRAGMENT_SIZE, ZERO_FRAGMENT_HASH

_TMP_SUFFIX = ".tmp"


def check_hash(value: str, what: str = "hash") -> str:
    """`value` if it is a CESS hash (64 lowercase hex), else `InvalidInput`."""
    if not is_hash(value):
        raise InvalidInput(f"{what} must be 64 lowercase hex characters")
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FragmentWriter:
    """Writes one fragment to a temporary file; `commit` makes it visible atomically.

    Used as a context manager it commits on a clean exit and removes the
    temporary file on an exception. `write`/`commit` are blocking (the node calls
    them from a worker thread); one writer must not be used by two threads at once.
    """

    def __init__(self, store: FragmentStore, fid: str, fragment_hash: str) -> None:
        self._store = store
        self.fid = fid
        self.fragment_hash = fragment_hash
        self.final_path = store.path(fid, fragment_hash)
        self.size = 0
        self._hasher = hashlib.sha256()
        self._done = False
        directory = self.final_path.parent
        store._ensure_dir(directory)
        self.temp_path = directory / f".{fragment_hash[:16]}.{secrets.token_hex(6)}{_TMP_SUFFIX}"
        # past the page cache where possible: most of a node's write cost otherwise (directio)
        self._file = DirectWriter(self.temp_path, mode=0o600, sparse=True)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` (hashing it on the way; hashlib releases the GIL)."""
        if self._done:
            raise ValueError("writer already closed")
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self._file.write(view)
        self.size += len(view)

    def write_many(self, chunks: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append several buffers."""
        for chunk in chunks:
            self.write(chunk)

    def hexdigest(self) -> str:
        """SHA-256 of everything written so far."""
        return self._hasher.hexdigest()

    def commit(self) -> None:
        """fsync, verify the hash, rename into place and fsync the directory."""
        if self._done:
            return
        try:
            if self.hexdigest() != self.fragment_hash:
                raise IntegrityError(
                    f"fragment data hashes to {self.hexdigest()}, not {self.fragment_hash}"
                )
            self._file.flush()
            os.fdatasync(self._file.fd)  # data and size; other metadata is not needed
            self._file.close()
            with self._store._lock:  # keeps the counters right under concurrent commits
                existed = self.final_path.exists()
                os.replace(self.temp_path, self.final_path)
                if not existed:
                    self._store._count += 1
                    self._store._bytes += self.size
            self._done = True
            _fsync_dir(self.final_path.parent)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)

    def __enter__(self) -> FragmentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class FragmentStore:
    """Fragments on disk, by FID and fragment hash. Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.base = self.root / "fragments"
        self.base.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._count, self._bytes = self._scan()

    # ---- paths ---------------------------------------------------------------
    def path(self, fid: str, fragment_hash: str) -> Path:
        check_hash(fid, "FID")
        check_hash(fragment_hash, "fragment hash")
        return self.base / fid[:2] / fid / fragment_hash

    def _fid_dir(self, fid: str) -> Path:
        check_hash(fid, "FID")
        return self.base / fid[:2] / fid

    def _ensure_dir(self, directory: Path) -> None:
        # fsync each newly created level so the fragment's directory entry survives a crash
        if directory.is_dir():
            return
        missing = []
        level = directory
        while not level.exists():
            missing.append(level)
            level = level.parent
        for created in reversed(missing):
            with contextlib.suppress(FileExistsError):
                created.mkdir()
            _fsync_dir(created.parent)

    # ---- queries -------------------------------------------------------------
    def has(self, fid: str, fragment_hash: str) -> bool:
        path = self.path(fid, fragment_hash)
        return fragment_hash == ZERO_FRAGMENT_HASH or path.is_file()

    def size(self, fid: str, fragment_hash: str) -> int:
        """Byte length of a held fragment; `NotFound` if not held."""
        path = self.path(fid, fragment_hash)
        if fragment_hash == ZERO_FRAGMENT_HASH:
            return FRAGMENT_SIZE
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"fragment {fragment_hash} of {fid} is not held") from None

    def read(self, fid: str, fragment_hash: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a fragment (end None = to its end)."""
        size = self.size(fid, fragment_hash)
        end = size if end is None else min(end, size)
        if start < 0 or start > end:
            raise InvalidInput(f"bad byte range {start}-{end}")
        if fragment_hash == ZERO_FRAGMENT_HASH:
            return bytes(end - start)
        with open(self.path(fid, fragment_hash), "rb", buffering=0) as handle:
            return os.pread(handle.fileno(), end - start, start)

    def fragments_of(self, fid: str) -> set[str]:
        """Hashes of the fragments of `fid` held (the zero fragment is not listed)."""
        directory = self._fid_dir(fid)
        try:
            return {name for name in os.listdir(directory) if is_hash(name)}
        except FileNotFoundError:
            return set()

    def fids(self) -> list[str]:
        """Every FID with at least one stored fragment."""
        found = []
        for prefix in os.listdir(self.base):
            prefix_dir = self.base / prefix
            if len(prefix) != 2 or not prefix_dir.is_dir():
                continue
            found.extend(name for name in os.listdir(prefix_dir) if is_hash(name))
        return sorted(found)

    def stats(self) -> tuple[int, int]:
        """(number of fragments, bytes) stored."""
        with self._lock:
            return self._count, self._bytes

    # ---- changes -------------------------------------------------------------
    def open_writer(self, fid: str, fragment_hash: str) -> FragmentWriter:
        """A writer for one fragment (a context manager; see `FragmentWriter`)."""
        if fragment_hash == ZERO_FRAGMENT_HASH:
            raise InvalidInput("the zero fragment is never stored")
        return FragmentWriter(self, fid, fragment_hash)

    def delete(self, fid: str, fragment_hash: str) -> bool:
        """Remove a fragment; True if it was held."""
        path = self.path(fid, fragment_hash)
        if fragment_hash == ZERO_FRAGMENT_HASH:
            return False
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return False
        self._account(-1, -size)
        directory = path.parent
        try:
            directory.rmdir()  # only succeeds once the FID holds nothing else
            _fsync_dir(directory.parent)
        except OSError:
            _fsync_dir(directory)
        return True

    def cleanup_temporaries(self) -> int:
        """Remove temporary files left by a crash (call before serving)."""
        removed = 0
        for fid in self.fids():
            directory = self._fid_dir(fid)
            for name in os.listdir(directory):
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(directory / name)
                        removed += 1
        return removed

    # ---- internals -------------------------------------------------------------
    def _account(self, count: int, size: int) -> None:
        with self._lock:
            self._count += count
            self._bytes += size

    def _scan(self) -> tuple[int, int]:
        count = total = 0
        for fid in self.fids():
            directory = self._fid_dir(fid)
            with os.scandir(directory) as entries:
                for entry in entries:
                    if is_hash(entry.name) and entry.is_file():
                        count += 1
                        total += entry.stat().st_size
        return count, total

    def iter_fragments(self) -> Iterator[tuple[str, str]]:
        """(fid, fragment hash) of every stored fragment."""
        for fid in self.fids():
            for fragment_hash in sorted(self.fragments_of(fid)):
                yield fid, fragment_hash
