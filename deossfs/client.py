"""deossfs as a library: `AsyncClient` (trio) and `Client` (blocking), docs/library.md.

Both stand on the same engine as the CLI, the mount and the gateway (`ObjectStore`): a
file put here is an ordinary CESS file that `deossfs get`, the mount and any gateway
read, and the other way round. The names `deossfs.__all__` lists are the stable surface;
what they return is described by the dataclasses below. Errors are the project's one
taxonomy (`deossfs.DeossError` and its kinds); problems with local files are the
`OSError` Python raises for them.

`Client` runs an `AsyncClient` on a trio loop in a thread of its own: its methods block
the caller, and progress callbacks run on that loop's thread (keep them quick).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import trio

from .chain.interface import Territory
from .config import Config, load_config
from .errors import ConfigError, InvalidInput, NotFound
from .names import split_target
from .namespace import delete, delete_bucket, list_objects, put_empty, put_object, resolve
from .processing.pipeline import ReadInto, bytes_reader, file_reader
from .store import ObjectStore, atomic_output, single_error_nursery

#: what `put` takes: a path, bytes, a binary file object, or an iterator of bytes
Source = (str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
          | Iterable[bytes] | AsyncIterable[bytes])
#: progress(done, total): bytes of the call's file done so far, and of the whole
Progress = Callable[[int, int], None]


class _ProgressCounter:
    """Calls `progress(done, total)` as counts come in, `done` kept within `total`;
    `finish()` makes the last call say "all" (a stage's output may be shorter)."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total, self.progress, self.done = total, progress, 0

    def __call__(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        if self.progress is not None and self.done < self.total:
            self.progress(self.total, self.total)


#: a devnet directory's config file
DEVNET_CONFIG = "deossfs.toml"
_SPOOL_CHUNK = 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """An object as listed: its stored length (`stat` gives a processed file's own length)."""

    bucket: str
    key: str
    fid: str
    size: int


@dataclass(frozen=True)
class StoredObject:
    """What `put` stored. An object of zero bytes has no FID ("") and no segments: CESS
    stores no empty file, so it lives in the bucket's metadata object, as in the mount."""

    bucket: str
    key: str
    fid: str
    #: the file's own length
    size: int
    segments: int
    encrypted: bool


@dataclass(frozen=True)
class FragmentStat:
    index: int
    hash: str
    #: the storage node's account, and its endpoint when the chain lists it
    node: str
    endpoint: str | None
    available: bool


@dataclass(frozen=True)
class SegmentStat:
    index: int
    hash: str
    fragments: tuple[FragmentStat, ...]


@dataclass(frozen=True)
class ObjectStat:
    """Everything the chain (and the file's first bytes) say of one object. One of zero
    bytes is on no chain: FID "", state "empty", no segments."""

    bucket: str
    key: str
    fid: str
    #: the file's own length; `stored_size` is what the chain records (they differ for a
    #: file stored through a processing stage)
    size: int
    stored_size: int
    #: the chain's file state ("Active", ...)
    state: str
    encrypted: bool
    #: the processing stage the file was stored through, and its parameters (None: none)
    stage: str | None
    stage_params: dict[str, Any] | None
    segments: tuple[SegmentStat, ...]


@dataclass(frozen=True)
class FileStatus:
    """Where a file is: "stored" (Active on the chain) or "uploading" (its storage order
    waits for reports: `reported` of the 12 columns are in)."""

    fid: str
    state: str
    size: int
    reported: int


def config_path(config: str | os.PathLike[str] | None) -> str | None:
    """A config file, or a devnet directory's config; None leaves the choice to
    load_config ($DEOSSFS_CONFIG, then ~/.config/deossfs/config.toml)."""
    if config is None:
        return None
    path = Path(config).expanduser()
    if path.is_dir():
        inner = path / DEVNET_CONFIG
        if not inner.is_file():
            raise ConfigError(f"{path} is a directory without a {DEVNET_CONFIG}",
                              hint="pass a config file, or a devnet directory (deossfs devnet up --dir DIR)")
        return str(inner)
    return str(path)


class AsyncClient:
    """One account's buckets and objects, from trio code.

        async with deossfs.AsyncClient(config="/tmp/net") as client:
            await client.put(b"hello", "photos/hello.txt")
            assert await client.get("photos/hello.txt") == b"hello"

    `config` is a config file or a devnet directory (default: $DEOSSFS_CONFIG, then
    ~/.config/deossfs/config.toml); `options` are "section.option=value" overrides, as
    the CLI's -o. Not for use from several trio runs at once.
    """

    def __init__(self, config: str | os.PathLike[str] | None = None, *,
                 options: Iterable[str] = ()) -> None:
        from .chain.factory import open_chain
        from .keys import load_key_file

        self.config: Config = load_config(config_path(config), overrides=list(options))
        self._account = load_key_file(self.config.require_key_file())
        self._chain = open_chain(self.config, self._account)
        try:
            self._store = ObjectStore(self.config, self._account, self._chain)
        except BaseException:
            self._chain.close()
            raise
        self._closed = False

    @property
    def account(self) -> str:
        """The account (SS58) whose objects these are."""
        return self._account.address

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._store.aclose()
        finally:
            self._chain.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(func, *args)

    # ---- buckets and territories -----------------------------------------------------

    async def create_bucket(self, name: str) -> None:
        from .chain.names import bucket_name_problem
        from .errors import InvalidName

        problem = bucket_name_problem(name)
        if problem:
            raise InvalidName(f"bad bucket name {name!r}: {problem}")
        await self._call(self._chain.create_bucket, self.account, name)

    async def delete_bucket(self, name: str) -> None:
        """Delete an empty bucket (NotEmpty while anything is in it; the mount's and the
        gateway's metadata objects are deleted with it)."""
        await delete_bucket(self._store, name)

    async def buckets(self) -> list[str]:
        return list(await self._call(self._chain.buckets, self.account))

    async def territory(self, name: str | None = None) -> Territory:
        """The territory `name` (default: the config's storage.territory)."""
        if name is None:
            return await self._store.territory()
        found = await self._call(self._chain.territory, self.account, name)
        if found is None:
            raise NotFound(f"territory {name!r} does not exist",
                           hint=f"mint it with `deossfs territory mint {name} --gib N`")
        return found

    async def territories(self) -> list[Territory]:
        return list(await self._call(self._chain.territories, self.account))

    async def mint_territory(self, name: str, gib: int, days: int = 30) -> Territory:
        await self._call(self._chain.mint_territory, name, gib, days)
        return await self.territory(name)

    async def expand_territory(self, name: str, gib: int) -> Territory:
        await self._call(self._chain.expand_territory, name, gib)
        return await self.territory(name)

    async def renew_territory(self, name: str, days: int) -> Territory:
        await self._call(self._chain.renew_territory, name, days)
        return await self.territory(name)

    # ---- objects -------------------------------------------------------------------------

    async def put(self, source: Source, target: str, *, encrypt: bool | None = None,
                  stage: str | None = None, progress: Progress | None = None) -> StoredObject:
        """Store `source` as "bucket/key"; returns once it is durable (Active on the chain).

        `source`: a path, bytes, a binary file object (read from its current position),
        or an iterator (or async iterator) of bytes. A put reads its bytes twice, so a
        source that cannot seek is first copied to a 0600 file in the workspace.
        `encrypt` (default storage.encryption), `stage` the processing stage (default
        processing.stage; "" for none), `progress(done, total)` as bytes are stored.
        An object of that name is replaced once the new one is durable."""
        bucket, key = split_target(target)
        async with _opened_source(self._store, source) as (read_into, size):
            advance = _ProgressCounter(size, progress)
            if size == 0:
                await put_empty(self._store, bucket, key)
                return StoredObject(bucket, key, "", 0, 0, False)

            def upload() -> Any:
                return self._store.put(read_into, size, bucket, key, encrypt=encrypt,
                                       stage=stage, progress=advance)

            plan = await put_object(self._store, bucket, key, upload)
            advance.finish()
        return StoredObject(bucket, key, plan.fid, size, len(plan.segments), plan.encrypted)

    async def get(self, target: str, dest: str | os.PathLike[str] | IO[bytes] | None = None, *,
                  start: int = 0, end: int | None = None,
                  progress: Progress | None = None) -> bytes | Path | int:
        """The object's bytes [start, end) (all of it by default; end exclusive, as a slice).

        Without `dest`, returned as bytes; with a path, written there atomically (no
        partial file on failure) and the Path returned; with a writable binary file
        object, written to it and the byte count returned."""
        info, size = await self._resolve(target)
        stop = size if end is None else min(end, size)
        if start < 0 or stop < start:
            raise InvalidInput(f"bad byte range [{start}, {end}) of a {size}-byte object")
        total = stop - start
        # a processed file's bytes are counted as fetched (stored): kept within the total
        advance = _ProgressCounter(total, progress)
        result: bytes | Path | int
        if info is None:  # an object of zero bytes
            if isinstance(dest, str | os.PathLike):
                result = await self._get_to_path(info, Path(dest), 0, 0, advance)
            else:
                result = b"" if dest is None else 0
        elif dest is None:
            out = bytearray()

            async def collect(view: memoryview) -> None:
                out.extend(view)
                advance(len(view))

            await self._store.read_range(info, start, stop, collect)
            result = bytes(out)
        elif isinstance(dest, str | os.PathLike):
            result = await self._get_to_path(info, Path(dest), start, stop, advance)
        else:
            async def write(view: memoryview) -> None:
                await trio.to_thread.run_sync(dest.write, bytes(view))  # type: ignore[union-attr]
                advance(len(view))

            await self._store.read_range(info, start, stop, write)
            result = total
        advance.finish()
        return result

    async def _get_to_path(self, info: Any, dest: Path, start: int, stop: int,
                           advance: Callable[[int], None]) -> Path:
        dest = dest.expanduser().resolve()
        if not dest.parent.is_dir():
            raise NotFound(f"directory {dest.parent} does not exist")
        async with atomic_output(dest) as fd:
            if info is None:
                pass  # an object of zero bytes
            elif start == 0 and stop == await self._store.logical_size(info):
                await self._store.read_into_fd(info, fd, advance)
            else:
                async def write(view: memoryview) -> None:
                    await trio.to_thread.run_sync(_write_all, fd, bytes(view))
                    advance(len(view))

                await self._store.read_range(info, start, stop, write)
        return dest

    @contextlib.asynccontextmanager
    async def stream(self, target: str, *, start: int = 0,
                     end: int | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        """The object's bytes [start, end) as they arrive, in pieces of up to a segment:

            async with client.stream("photos/big.mov") as pieces:
                async for piece in pieces:
                    ...

        The next segment is fetched while the current piece is consumed; leaving the
        block early stops the fetching."""
        info, size = await self._resolve(target)
        stop = size if end is None else min(end, size)
        send, receive = trio.open_memory_channel[bytes](0)

        async def produce() -> None:
            async with send:
                async def forward(view: memoryview) -> None:
                    await send.send(bytes(view))

                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    if info is not None:  # None: an object of zero bytes
                        await self._store.read_range(info, start, stop, forward)

        async with single_error_nursery() as nursery:
            nursery.start_soon(produce)
            try:
                async with receive:
                    yield receive
            finally:
                nursery.cancel_scope.cancel()

    async def _resolve(self, target: str) -> tuple[Any, int]:
        """The object's FileInfo and plaintext size; (None, 0) for one of zero bytes."""
        bucket, key = split_target(target)
        entry = await resolve(self._store, bucket, key)
        if entry is None:
            return None, 0
        info = await self._store.file_info(entry.fid)
        return info, await self._store.logical_size(info)

    async def ls(self, target: str) -> list[ObjectInfo]:
        """The objects of "bucket", or of "bucket/prefix", by key."""
        bucket, _, prefix = target.partition("/")
        entries = await list_objects(self._store, bucket, prefix)
        return [ObjectInfo(e.bucket, e.key, e.fid, e.size) for e in entries]

    async def stat(self, target: str) -> ObjectStat:
        bucket, key = split_target(target)
        entry = await resolve(self._store, bucket, key)
        if entry is None:
            return ObjectStat(bucket, key, "", size=0, stored_size=0, state="empty",
                              encrypted=False, stage=None, stage_params=None, segments=())
        info = await self._store.file_info(entry.fid)
        header = await self._store.stage_of(info)
        encrypted = await self._store.encrypted_layout(info)
        endpoints = await self._store.endpoints()
        segments = tuple(
            SegmentStat(i, seg.hash, tuple(
                FragmentStat(j, frag.hash, frag.miner, endpoints.get(frag.miner), frag.avail)
                for j, frag in enumerate(seg.fragments)))
            for i, seg in enumerate(info.segments))
        return ObjectStat(bucket, key, info.fid,
                          size=info.file_size if header is None else header.size,
                          stored_size=info.file_size, state=str(info.state.value),
                          encrypted=encrypted, stage=header.stage if header else None,
                          stage_params=dict(header.params) if header else None,
                          segments=segments)

    async def rm(self, target: str) -> str:
        """Delete "bucket/key"; returns the FID it named ("" for an object of zero bytes)."""
        bucket, key = split_target(target)
        return await delete(self._store, bucket, key)

    async def state(self, fid: str) -> FileStatus:
        """Where the file `fid` is: stored, or uploading (with the columns reported)."""
        info = await self._call(self._chain.file, fid)
        if info is not None:
            return FileStatus(fid, "stored", info.file_size, 12)
        deal = await self._call(self._chain.deal, fid)
        if deal is not None:
            return FileStatus(fid, "uploading", deal.file_size, len(deal.complete_list))
        raise NotFound(f"file {fid} is neither stored nor being stored")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _opened_source:
    """(ReadInto, size) for a put's source; a source that cannot be read twice is
    spooled to a 0600 file in the workspace first, removed afterwards."""

    def __init__(self, store: ObjectStore, source: Source) -> None:
        self.store = store
        self.source = source
        self._fds: list[int] = []
        self._spool: Path | None = None

    async def __aenter__(self) -> tuple[ReadInto, int]:
        source = self.source
        if isinstance(source, bytes | bytearray | memoryview):
            view = memoryview(source).cast("B")
            return bytes_reader(view), len(view)
        if isinstance(source, str | os.PathLike):
            fd = os.open(source, os.O_RDONLY)
            self._fds.append(fd)
            return file_reader(fd), os.fstat(fd).st_size
        if hasattr(source, "read"):
            found = await trio.to_thread.run_sync(_seekable_reader, source)
            if found is not None:
                return found
            return await self._spool_from(_file_chunks(source))  # type: ignore[arg-type]
        if isinstance(source, AsyncIterable):
            return await self._spool_from(source)
        if isinstance(source, Iterable):
            return await self._spool_from(_iterated(source))
        raise InvalidInput(f"cannot store a {type(source).__name__}: give a path, bytes, a binary "
                           "file object or an iterator of bytes")

    async def _spool_from(self, chunks: AsyncIterable[bytes]) -> tuple[ReadInto, int]:
        self._spool = self.store._spool_path()
        fd = os.open(self._spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fds.append(fd)
        size = 0
        async for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidInput(f"a put's iterator gave a {type(chunk).__name__}, not bytes")
            await trio.to_thread.run_sync(_write_all, fd, bytes(chunk))
            size += len(chunk)
        return file_reader(fd), size

    async def __aexit__(self, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        if self._spool is not None:
            self._spool.unlink(missing_ok=True)


def _seekable_reader(handle: IO[bytes]) -> tuple[ReadInto, int] | None:
    """A ReadInto over a file object from its current position, if it can seek."""
    try:
        if not handle.seekable():
            return None
        base = handle.tell()
        end = handle.seek(0, os.SEEK_END)
        handle.seek(base)
    except (OSError, ValueError, AttributeError):
        return None
    lock = threading.Lock()

    def read_into(offset: int, view: memoryview) -> int:
        with lock:  # the passes run in worker threads, one read at a time
            handle.seek(base + offset)
            done = 0
            while done < len(view):
                got = handle.readinto(view[done:])  # type: ignore[attr-defined]
                if not got:
                    break
                done += got
            return done

    return read_into, end - base


async def _file_chunks(handle: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        piece = await trio.to_thread.run_sync(handle.read, _SPOOL_CHUNK)
        if not piece:
            return
        yield piece


async def _iterated(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    iterator = iter(items)
    done = object()
    while True:
        piece = await trio.to_thread.run_sync(next, iterator, done)
        if piece is done:
            return
        yield piece  # type: ignore[misc]


# ---- the blocking client ------------------------------------------------------------------


class _Loop:
    """A trio loop in a daemon thread; other threads run coroutines on it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="deossfs-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure

    def _main(self) -> None:
        async def serve() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the constructor
            self._failure = exc
            self._ready.set()

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("a Client's methods cannot be called from its own callbacks")
        return trio.from_thread.run(func, *args, trio_token=self._token)

    def run_sync(self, func: Callable[..., T], *args: Any) -> T:
        return trio.from_thread.run_sync(func, *args, trio_token=self._token)

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self.run_sync(self._stop.set)
        self._thread.join()


class Client:
    """The blocking client: the same methods as AsyncClient, without `await`.

        with deossfs.Client(config="/tmp/net") as client:
            client.put("report.pdf", "docs/report.pdf")
            client.get("docs/report.pdf", dest="back.pdf")
    """

    def __init__(self, config: str | os.PathLike[str] | None = None, *,
                 options: Iterable[str] = ()) -> None:
        self._loop = _Loop()
        options = list(options)
        try:
            self._async = self._loop.run_sync(lambda: AsyncClient(config, options=options))
        except BaseException:
            self._loop.stop()
            raise

    @property
    def account(self) -> str:
        return self._async.account

    @property
    def config(self) -> Config:
        return self._async.config

    def close(self) -> None:
        try:
            self._loop.run(self._async.aclose)
        finally:
            self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_bucket(self, name: str) -> None:
        self._loop.run(self._async.create_bucket, name)

    def delete_bucket(self, name: str) -> None:
        self._loop.run(self._async.delete_bucket, name)

    def buckets(self) -> list[str]:
        return self._loop.run(self._async.buckets)

    def territory(self, name: str | None = None) -> Territory:
        return self._loop.run(self._async.territory, name)

    def territories(self) -> list[Territory]:
        return self._loop.run(self._async.territories)

    def mint_territory(self, name: str, gib: int, days: int = 30) -> Territory:
        return self._loop.run(self._async.mint_territory, name, gib, days)

    def expand_territory(self, name: str, gib: int) -> Territory:
        return self._loop.run(self._async.expand_territory, name, gib)

    def renew_territory(self, name: str, days: int) -> Territory:
        return self._loop.run(self._async.renew_territory, name, days)

    def put(self, source: Source, target: str, *, encrypt: bool | None = None,
            stage: str | None = None, progress: Progress | None = None) -> StoredObject:
        if isinstance(source, AsyncIterable):
            raise InvalidInput("an async iterator is for AsyncClient; give Client an iterator")
        return self._loop.run(lambda: self._async.put(source, target, encrypt=encrypt,
                                                      stage=stage, progress=progress))

    def get(self, target: str, dest: str | os.PathLike[str] | IO[bytes] | None = None, *,
            start: int = 0, end: int | None = None,
            progress: Progress | None = None) -> bytes | Path | int:
        return self._loop.run(lambda: self._async.get(target, dest, start=start, end=end,
                                                      progress=progress))

    @contextlib.contextmanager
    def stream(self, target: str, *, start: int = 0, end: int | None = None) -> Iterator[Iterator[bytes]]:
        """The object's bytes [start, end) as they arrive (see AsyncClient.stream):

            with client.stream("photos/big.mov") as pieces:
                for piece in pieces:
                    ...
        """
        pieces: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        credits = trio.Semaphore(2)  # pieces fetched ahead of the consumer
        cancel = trio.CancelScope()

        async def produce() -> None:
            try:
                with cancel:
                    async with self._async.stream(target, start=start, end=end) as received:
                        pieces.put(("open", None))
                        async for piece in received:
                            pieces.put(("data", piece))
                            await credits.acquire()
                pieces.put(("end", None))
            except Exception as exc:  # handed to the consumer's thread
                pieces.put(("error", exc))

        def read() -> Iterator[bytes]:
            while True:
                kind, value = pieces.get()
                if kind == "data":
                    yield value
                    self._loop.run_sync(credits.release)
                elif kind == "error":
                    raise value
                else:
                    return

        self._loop.run_sync(lambda: trio.lowlevel.spawn_system_task(produce))
        kind, value = pieces.get()  # the object exists and the fetching has started
        if kind == "error":
            raise value
        try:
            yield read()
        finally:
            self._loop.run_sync(cancel.cancel)

    def ls(self, target: str) -> list[ObjectInfo]:
        return self._loop.run(self._async.ls, target)

    def stat(self, target: str) -> ObjectStat:
        return self._loop.run(self._async.stat, target)

    def rm(self, target: str) -> str:
        return self._loop.run(self._async.rm, target)

    def state(self, fid: str) -> FileStatus:
        return self._loop.run(self._async.state, fid)


__all__ = ["AsyncClient", "Client", "ObjectInfo", "ObjectStat", "StoredObject", "SegmentStat",
           "FragmentStat", "FileStatus", "Source", "Progress"]
