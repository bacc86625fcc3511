"""The catalog: one owner's S3 objects, in the namespace the mount and the CLI share.

The S3 API stands on it (docs/s3-names.md says how keys and bucket names map). Per bucket
it keeps, in a local SQLite index (catalog/index.py), the entries of the bucket's metadata
object - the same object the mount reads and writes (catalog/protocol.py) - with each
entry's S3 key. So:

- reads, listings and deletes after a write through this catalog are strong: `record_put`,
  `delete` and `copy` change the index before they return, and `get`/`list` read it;
- the bytes are stored by the caller (`store.put` under `prepare_put`'s path) before
  `record_put` records them; an object of zero bytes, or a folder, is an entry only;
- other writers' changes (a mount, another gateway, other CESS tools) come in through
  `refresh` (catalog/merge.py): the chain's listing of the bucket and their metadata
  objects, at most every REFRESH_SECONDS per bucket, or at once when asked (a miss);
- a background task (`run`) publishes a changed bucket's metadata object once the bucket
  is quiet (SAVE_QUIET, at most SAVE_MAX_DELAY after its first change), as the mount
  does, and deletes replaced versions from the chain; `aclose` saves what is unsaved.

Everything touching the index runs on the trio thread between awaits (statements are
local and short), so a change is never seen half made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from ..chain.names import bucket_name_problem
from ..errors import (
    AlreadyExists,
    DeossError,
    IntegrityError,
    InvalidInput,
    InvalidName,
    KeyConflict,
    KeyTooLongError,
    NoSuchBucket,
    NoSuchKey,
    NotEmpty,
    NotFound,
    TemporaryError,
    cli_message,
)
from ..names import MAX_KEY_BYTES
from ..processing.pipeline import bytes_reader
from ..store import ObjectStore
from .index import CatalogIndex, Entry, parent_of
from .merge import (
    apply_listing,
    apply_object,
    dir_entry,
    ensure_dirs,
    hashed_name_files,
    remove_entry,
)
from .names import key_path, path_key
from .protocol import (
    META_KEY,
    SAVE_TICK,
    decode_object,
    encode_object,
    entries_digest,
    removals_list,
    save_due,
    snapshot_object,
)
from .records import (
    FILE_MODE,
    ListPage,
    ObjectRecord,
    record_of,
    s3_xattrs,
    with_s3_xattrs,
)

log = logging.getLogger(__name__)

#: seconds a bucket's listing and metadata objects are trusted before they are read again
REFRESH_SECONDS = 2.0
#: how long a deleted FID is remembered: a listing made before the delete must not bring
#: it back as an object of another tool
DELETES_KEPT_SECONDS = 600.0


@dataclass(frozen=True)
class PutTarget:
    """Where the caller stores an object's bytes: `store.put(..., bucket, path, ...)` with
    `replace_existing=False` (the catalog deletes the version it replaces)."""

    bucket: str
    key: str
    path: str


class Catalog:
    """One owner's objects. `store` acts for that owner (`ObjectStore.acting_for`) and
    encrypts the metadata objects with the owner's key; `path` is the index's SQLite file;
    `uid`/`gid` own the entries it creates (default: this process's), as the mount shows
    them."""

    def __init__(self, store: ObjectStore, path: Path, *, uid: int | None = None,
                 gid: int | None = None) -> None:
        self.store = store
        self.owner = store.owner
        self.index = CatalogIndex(path)
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        #: per bucket, when the last complete refresh started (trio clock)
        self._refreshed: dict[str, float] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._saving: set[str] = set()
        #: other writers' metadata objects merged since this catalog's last save: that
        #: save replaces them (as in the mount)
        self._merged: dict[str, set[str]] = {}
        self._first_change: dict[str, float] = {}
        self._last_change: dict[str, float] = {}
        #: per bucket, the metadata object saved last and a digest of its entries
        self._saved: dict[str, tuple[str, str]] = {}
        #: metadata objects that cannot be read (another key): not fetched again
        self._unreadable: set[str] = set()
        #: per bucket under refresh, the paths written here since its listing was read
        self._written: dict[str, set[str]] = {}
        self._wake = trio.Event()
        self._closed = False

    # ---- buckets ------------------------------------------------------------------------

    async def _chain(self, func: object, *args: object) -> object:
        return await self.store._chain(func, *args)  # type: ignore[arg-type]

    async def buckets(self) -> list[str]:
        """The owner's buckets (deossfs' names: chain/naming.py)."""
        return await self._chain(self.store.chain.buckets, self.owner)  # type: ignore[return-value]

    async def bucket_dates(self, buckets: list[str]) -> dict[str, int]:
        """Creation times (ns) for `buckets`, all the owner's buckets as just listed: when
        this catalog created or first listed each (index.bucket_dates)."""
        return self.index.bucket_dates(buckets, time.time_ns())

    async def create_bucket(self, bucket: str) -> None:
        problem = bucket_name_problem(bucket)
        if problem:
            raise InvalidName(f"bucket name {bucket!r}: {problem}")
        await self._chain(self.store.chain.create_bucket, self.owner, bucket)
        self.index.bucket_created(bucket, time.time_ns())

    async def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket (NotEmpty while it holds any entry: objects, folders, and
        what the mount keeps there). Its metadata objects go first."""
        await self.refresh(bucket, force=True)
        if self.index.all(bucket):
            raise NotEmpty(f"bucket {bucket!r} is not empty")
        await self._process_deletes()
        info = await self._chain(self.store.chain.bucket, self.owner, bucket)
        files = self.index.chain_files(bucket)
        for fid in info.object_list if info is not None else ():  # type: ignore[attr-defined]
            if files.get(fid, ("", 0))[0] == META_KEY:
                await self.store.delete_fid(fid)
        await self._chain(self.store.chain.delete_bucket, self.owner, bucket)
        self.index.drop_bucket(bucket)
        self._refreshed.pop(bucket, None)

    # ---- reading ------------------------------------------------------------------------

    async def get(self, bucket: str, key: str, *, refresh_on_miss: bool = True) -> ObjectRecord:
        """The object `key` (NoSuchKey, NoSuchBucket). A miss reads the bucket's listing
        and metadata objects again first (unless `refresh_on_miss` is False), so an object
        another writer just published is found."""
        key_path(key)  # InvalidName / KeyTooLongError for keys no object can have
        await self.refresh(bucket)
        record = self._record(bucket, key)
        if record is None and refresh_on_miss:
            await self.refresh(bucket, force=True)
            record = self._record(bucket, key)
        if record is None:
            raise NoSuchKey(f"no object {key!r} in bucket {bucket!r}")
        return record

    def _record(self, bucket: str, key: str) -> ObjectRecord | None:
        entry = self.index.by_key(bucket, key)
        if entry is None:
            return None
        if entry.is_dir and not entry.marked and self.index.has_children(bucket, entry.path):
            return None  # a directory is an object when it is a folder object or empty
        if entry.kind == "link":
            file = self.index.get(bucket, entry.target or "")
            return None if file is None else record_of(key, entry.entry, file.entry)
        return record_of(key, entry.entry)

    async def list(self, bucket: str, *, prefix: str = "", start_after: str = "",
                   limit: int = 1000, delimiter: str = "") -> ListPage:
        """Up to `limit` objects and common prefixes (with a `delimiter`) whose keys start
        with `prefix` and come after `start_after` (a key or a prefix of an earlier page),
        in UTF-8 byte order, as S3 lists them."""
        await self.refresh(bucket)
        objects, prefixes, truncated, last = self.index.list_page(
            bucket, prefix, start_after, max(0, limit), delimiter)
        return ListPage(objects, prefixes, truncated, last)

    async def totals(self, bucket: str) -> tuple[int, int]:
        """(objects, bytes) in `bucket`, as a listing of it counts them."""
        await self.refresh(bucket)
        return self.index.totals(bucket)

    # ---- writing ------------------------------------------------------------------------

    async def prepare_put(self, bucket: str, key: str) -> PutTarget:
        """Check that `key` can be stored in `bucket` and where its bytes go; raises what a
        put would (InvalidName, KeyTooLongError, KeyConflict, NoSuchBucket) before any
        byte is sent. A key ending in `/` is a folder: it takes no bytes."""
        path, is_dir = key_path(key)
        if len(path.encode()) > MAX_KEY_BYTES:
            raise KeyTooLongError(
                f"key {key[:60]!r}... is stored as a path of {len(path.encode())} bytes "
                f"(its escapes: docs/s3-names.md); deossfs stores paths of up to {MAX_KEY_BYTES}")
        await self._known(bucket)
        self._check_place(bucket, path, "dir" if is_dir else "file")
        return PutTarget(bucket, key, path)

    async def record_put(self, bucket: str, record: ObjectRecord, *,
                         check: Callable[[ObjectRecord | None], None] | None = None) -> ObjectRecord | None:
        """Record an object whose bytes the caller has stored (FID `record.fid` in this
        bucket; None for zero bytes or a folder). Returns the object it replaced, whose
        content is deleted from the chain once nothing names it.

        `check(current)` (a conditional write's condition) is called with the object the
        key names at the very moment of the change, or None, and nothing changes if it
        raises: no other put or delete through this catalog can come in between."""
        path, is_dir = key_path(record.key)
        if is_dir and (record.size or record.fid):
            raise InvalidInput(f"{record.key!r} ends in '/': a folder, which holds no bytes "
                               "here (deossfs keeps it as a directory)")
        if bool(record.size) != bool(record.fid):
            raise InvalidInput("an object has a FID exactly when it has bytes")
        xattrs = s3_xattrs(record)  # refuses bad metadata before anything changes
        await self._known(bucket)
        if record.fid:
            await self._check_fid(bucket, record.fid)
        # from here on no await: the index changes at once and entirely
        if check is not None:
            check(self._record(bucket, record.key))
        self._check_place(bucket, path, "dir" if is_dir else "file")
        now = time.time_ns()
        old = self.index.get(bucket, path)
        replaced = None
        if old is not None and not (old.foreign_object and old.fid == record.fid):
            replaced = self._visible_record(bucket, record.key, old)
        self._wrote(bucket, path)
        with self.index.transaction():
            if old is None:
                ensure_dirs(self.index, bucket, path, self.uid, self.gid, now)
                base = dir_entry(path, self.uid, self.gid, now) if is_dir else \
                    {"p": path, "k": "file", "m": FILE_MODE, "u": self.uid, "g": self.gid}
            else:  # the entry's mode, owner and other xattrs stay (as a rewrite in the mount)
                base = dict(old.entry)
            stamp = max(now, (old.ctime_ns + 1) if old is not None else 0)
            written = record.modified_ns or now
            base.update(a=written, t=written, c=stamp)
            if not is_dir:
                base.update(s=record.size, f=record.fid, e=int(record.encrypted))
            self.index.put(bucket, with_s3_xattrs(base, xattrs))
            if record.fid:
                self.index.unqueue_delete(record.fid)
                # the chain-name view of this FID (listed before this record): gone
                for other in self.index.with_fid(bucket, record.fid):
                    if other.foreign_object and other.path != path:
                        self.index.remove(bucket, other.path)
            if old is not None and old.fid and old.fid != record.fid:
                self._forget_fid(bucket, old.fid)
        self._changed(bucket)
        return replaced

    async def put(self, bucket: str, record: ObjectRecord, data: bytes) -> ObjectRecord | None:
        """Store `data` and record it (small objects, tests): prepare_put, store.put,
        record_put. `record.fid` and `record.size` are filled in."""
        target = await self.prepare_put(bucket, record.key)
        fid = None
        if data:
            plan = await self.store.put(bytes_reader(data), len(data), bucket, target.path,
                                        encrypt=record.encrypted, replace_existing=False)
            fid = plan.fid
        return await self.record_put(bucket, replace(record, fid=fid, size=len(data)))

    async def delete(self, bucket: str, key: str) -> ObjectRecord | None:
        """Delete object `key`; the object deleted, or None when there was none. Its content
        is deleted from the chain (in the background, at once) unless another object
        names it; directories left empty above it go too, unless they are folder objects."""
        path, is_dir = key_path(key)
        await self._known(bucket)
        await self.refresh(bucket)
        entry = self.index.get(bucket, path)
        if entry is None or entry.is_dir != is_dir or entry.kind not in ("file", "link", "dir"):
            return None
        record = self._visible_record(bucket, key, entry)
        if record is None:
            return None
        now = time.time_ns()
        self._wrote(bucket, path)
        with self.index.transaction():
            if is_dir and self.index.has_children(bucket, path):
                # S3 deletes the folder object, not what is below it
                self.index.put(bucket, with_s3_xattrs(dict(entry.entry, c=max(now, entry.ctime_ns + 1)), {}))
            else:
                gone = remove_entry(self.index, bucket, entry, now)
                self.index.record_removal(bucket, path, now)
                self._prune(bucket, parent_of(path), now)
                if gone:
                    self._forget_fid(bucket, gone)
        self._changed(bucket)
        return record

    async def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
                   content_type: str | None = None, metadata: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None,
                   replace_attributes: bool = False) -> ObjectRecord | None:
        """Copy an object without moving its bytes: within a bucket the copy is a new entry
        naming the same FID (as two files of the mount can), and either can be deleted or
        rewritten on its own. Across buckets CESS cannot share a FID (an owner declares a
        file once, in one bucket): returns None, and the caller uploads the bytes again -
        except for an object of zero bytes or a folder, which is copied here. The copy has
        the source's S3 attributes, or the given ones with `replace_attributes`."""
        source = await self.get(src_bucket, src_key)
        if source.fid and src_bucket != dst_bucket:
            return None
        if replace_attributes:
            source = replace(source, content_type=content_type, metadata=dict(metadata or {}),
                             headers=dict(headers or {}))
        await self.record_put(dst_bucket, replace(source, key=dst_key, modified_ns=0))
        return await self.get(dst_bucket, dst_key, refresh_on_miss=False)

    # ---- the index's rules ----------------------------------------------------------------

    def _visible_record(self, bucket: str, key: str, entry: Entry) -> ObjectRecord | None:
        """The S3 object an entry is under `key`, if it is one."""
        if entry.kind == "file":
            return record_of(key, entry.entry)
        if entry.is_dir and (entry.marked or not self.index.has_children(bucket, entry.path)):
            return record_of(key if key.endswith("/") else key + "/", entry.entry)
        if entry.kind == "link":
            file = self.index.get(bucket, entry.target or "")
            return None if file is None else record_of(key, entry.entry, file.entry)
        return None

    def _check_place(self, bucket: str, path: str, kind: str) -> None:
        """KeyConflict when an object of `kind` cannot be at `path`: something above it is
        no directory, or the name is taken by something else."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            above = self.index.get(bucket, "/".join(parts[:depth]))
            if above is not None and not above.is_dir:
                shown = path_key("/".join(parts[:depth])) or "/".join(parts[:depth])
                raise KeyConflict(
                    f"{path_key(path, kind == 'dir') or path!r} cannot be stored: {shown!r} is "
                    "an object, and deossfs keeps keys as files and folders (as the mount "
                    "shows them), so no key can be an object and the folder of another")
        existing = self.index.get(bucket, path)
        if existing is None or existing.kind == kind:
            return
        what = {"dir": "a folder (a directory in the mount)", "link": "a hard link in the mount",
                "symlink": "a symbolic link in the mount",
                "special": "a special file in the mount"}.get(existing.kind, "a file")
        raise KeyConflict(f"{path_key(path, kind == 'dir') or path!r} cannot be stored: that "
                          f"name is {what}")

    def _prune(self, bucket: str, directory: str, now: int) -> None:
        """Remove directories left empty above a deleted object, as S3 has no directories:
        up to the first that holds something or is a folder object."""
        while directory:
            entry = self.index.get(bucket, directory)
            if entry is None or not entry.is_dir or entry.marked \
                    or self.index.has_children(bucket, directory):
                return
            self.index.remove(bucket, directory)
            self.index.record_removal(bucket, directory, now)
            directory = parent_of(directory)

    def discard(self, bucket: str, fid: str) -> None:
        """Bytes a caller stored for a record that was not made (a failed condition): they
        are deleted from the chain unless something names them."""
        self._forget_fid(bucket, fid)

    def _forget_fid(self, bucket: str, fid: str) -> None:
        """A FID lost a name: delete it from the chain when nothing names it any more."""
        if not self.index.named(fid):
            self.index.queue_delete(bucket, fid, time.time())
            self._wake.set()

    async def _check_fid(self, bucket: str, fid: str) -> None:
        """The FID a record names is on the chain, this owner's, in this bucket."""
        info = await self._chain(self.store.chain.file, fid)
        if info is None:
            raise TemporaryError(f"file {fid[:16]}… is not (or no longer) on the chain; "
                                 "store the object again")
        buckets = {b.bucket_name for b in info.owners if b.user == self.owner}  # type: ignore[attr-defined]
        if bucket not in buckets:
            if buckets:
                raise AlreadyExists(
                    f"these bytes are stored unencrypted in bucket {sorted(buckets)[0]!r} already, "
                    "and CESS keeps one copy per account in one bucket",
                    hint="store them encrypted, or copy the object within that bucket")
            raise InvalidInput(f"file {fid[:16]}… is not this account's")

    def _wrote(self, bucket: str, *paths: str) -> None:
        """Local writes (newer than a listing being read) of these paths."""
        if bucket in self._written:
            self._written[bucket].update(paths)

    def _changed(self, bucket: str) -> None:
        self.index.set_bucket_state(bucket, dirty=True)
        now = time.monotonic()
        self._first_change.setdefault(bucket, now)
        self._last_change[bucket] = now
        self._wake.set()

    def _lock(self, bucket: str) -> trio.Lock:
        return self._locks.setdefault(bucket, trio.Lock())

    # ---- other writers' changes --------------------------------------------------------------

    async def _known(self, bucket: str) -> None:
        """Refreshed at least once by this process (which also tells that it exists)."""
        if bucket not in self._refreshed:
            await self.refresh(bucket, force=True)

    async def refresh(self, bucket: str, *, force: bool = False) -> None:
        """Read the bucket's chain listing and the metadata objects other writers saved
        into the index: at most every REFRESH_SECONDS, or now with `force` (concurrent
        forced refreshes share one). NoSuchBucket when the bucket is gone. If the chain
        does not answer, a bucket read before is served as it was (logged)."""
        asked = trio.current_time()
        last = self._refreshed.get(bucket)
        if not force and last is not None and (asked - last < REFRESH_SECONDS or bucket in self._saving):
            return
        async with self._lock(bucket):
            last = self._refreshed.get(bucket)
            if last is not None and (last >= asked or (not force and asked - last < REFRESH_SECONDS)):
                return
            try:
                await self._refresh(bucket)
            except NoSuchBucket:
                raise
            except DeossError as exc:
                if last is None or not exc.temporary:
                    raise
                log.warning("bucket %s: cannot read its listing (%s); answering from the index",
                            bucket, cli_message(exc))

    async def _refresh(self, bucket: str) -> None:
        started = trio.current_time()
        written = self._written[bucket] = set()  # what record_put & co. change meanwhile
        try:
            info = await self._chain(self.store.chain.bucket, self.owner, bucket)
            if info is None:
                self.index.drop_bucket(bucket)
                self._refreshed.pop(bucket, None)
                raise NoSuchBucket(f"bucket {bucket!r} does not exist",
                                   hint=f"create it with `deossfs bucket create {bucket}`")
            listed = set(info.object_list)  # type: ignore[attr-defined]
            known = self.index.chain_files(bucket)
            named = self.index.fids(bucket)
            # a chain read per FID only for those nothing names yet (new objects of other
            # tools, metadata objects), once: a FID's name and size never change
            wanted = sorted(fid for fid in listed if fid not in known and fid not in named)
            fetched = await trio.to_thread.run_sync(self._chain_names, bucket, wanted) if wanted else {}
            self.index.set_chain_files(bucket, fetched, listed)
            files = self.index.chain_files(bucket)
            metas = sorted(fid for fid in listed if files.get(fid, ("", 0))[0] == META_KEY)
            await self._load_metadata(bucket, metas)
            with self.index.transaction():
                in_order = [fid for fid in info.object_list if fid not in metas]  # type: ignore[attr-defined]
                apply_listing(self.index, bucket, in_order, files, written=written,
                              uid=self.uid, gid=self.gid, now_ns=time.time_ns())
        finally:
            self._written.pop(bucket, None)
        self._refreshed[bucket] = started

    def _chain_names(self, bucket: str, fids: list[str]) -> dict[str, tuple[str, int]]:
        """(worker thread) The chain's file_name and size of each FID in this bucket."""
        out = {}
        for info in self.store.chain.files(fids):
            if info is None:
                continue
            for brief in info.owners:
                if brief.user == self.owner and brief.bucket_name == bucket:
                    out[info.fid] = (brief.file_name, info.file_size)
                    break
        return out

    async def _load_metadata(self, bucket: str, metas: list[str]) -> None:
        """Apply the metadata objects of the bucket this catalog has not seen (as the mount
        does: one is applied as it is; several - saved at once by two writers - are merged,
        nothing removed, and this catalog's next save replaces them all)."""
        _, meta_fid = self.index.bucket_state(bucket)
        merged = self._merged.setdefault(bucket, set())
        unseen = [fid for fid in metas if fid != meta_fid and fid not in merged
                  and fid not in self._unreadable]
        if not unseen:
            return
        conflict = len(metas) > 1
        for fid in unseen:
            try:
                blob = await self.store.read_object(fid)
                meta = await trio.to_thread.run_sync(decode_object, blob)
            except (IntegrityError, ValueError, zlib.error) as exc:
                # e.g. saved by a mount with another key: left alone, never replaced
                log.warning("bucket %s: metadata object %s is unreadable here (%s); ignoring it",
                            bucket, fid[:16], exc)
                self._unreadable.add(fid)
                continue
            except NotFound:
                continue  # replaced meanwhile
            except DeossError as exc:  # the nodes, for now: the next refresh tries again
                log.warning("bucket %s: reading metadata object %s failed: %s", bucket, fid[:16],
                            cli_message(exc))
                continue
            dirty, _ = self.index.bucket_state(bucket)
            with self.index.transaction():
                lost, republish = apply_object(self.index, bucket, meta,
                                               allow_deletes=not dirty and not conflict,
                                               uid=self.uid, gid=self.gid, now_ns=time.time_ns())
                for gone in lost:
                    log.info("bucket %s: version %s was replaced by a newer one elsewhere", bucket, gone[:16])
                    self._forget_fid(bucket, gone)
            if conflict:
                merged.add(fid)
            else:
                self.index.set_bucket_state(bucket, meta_fid=fid)
            if republish:
                self._changed(bucket)
        if conflict and merged:
            log.info("bucket %s has %d metadata objects (saved by two writers at once): merging them",
                     bucket, len(metas))
            self._changed(bucket)

    # ---- publishing ------------------------------------------------------------------------

    def snapshot(self, bucket: str) -> dict:
        """The bucket's metadata object as this catalog would save it now."""
        placeholders = {e.path for e in hashed_name_files(self.index, bucket) if e.foreign_object}
        entries = [entry for entry in map(json.loads, self.index.entries_json(bucket))
                   if entry["p"] not in placeholders]
        named = {e["p"] for e in entries}
        removed = removals_list(self.index.removals(bucket, time.time_ns()), named)
        return snapshot_object(entries, removed)

    def _save_due(self, bucket: str) -> bool:
        return save_due(self._first_change.get(bucket), self._last_change.get(bucket), time.monotonic())

    async def save(self, bucket: str) -> None:
        """Store the bucket's metadata object, replacing the one loaded or saved last and
        those merged since; nothing when the bucket has no unsaved change."""
        self._saving.add(bucket)
        try:
            async with self._lock(bucket):
                await self._save(bucket)
        finally:
            self._saving.discard(bucket)

    async def _save(self, bucket: str) -> None:
        dirty, old_fid = self.index.bucket_state(bucket)
        if not dirty:
            return
        snapshot = self.snapshot(bucket)
        self.index.set_bucket_state(bucket, dirty=False)
        self._first_change.pop(bucket, None)
        self._last_change.pop(bucket, None)
        digest = entries_digest(snapshot["entries"])
        if old_fid and self._saved.get(bucket) == (old_fid, digest) and not self._merged.get(bucket):
            return
        replaced = set(self._merged.get(bucket, ()))
        blob = await trio.to_thread.run_sync(encode_object, snapshot)
        try:
            # never through a processing stage: the mount reads this object too, and
            # reads no processed file (docs/extending.md)
            plan = await self.store.put(bytes_reader(blob), len(blob), bucket, META_KEY,
                                        encrypt=True, replace_existing=False, stage="")
        except BaseException as exc:
            self._changed(bucket)  # still unsaved: the next round saves it
            if isinstance(exc, DeossError):
                log.warning("saving the metadata of bucket %s failed: %s", bucket, cli_message(exc))
            raise
        self.index.set_bucket_state(bucket, meta_fid=plan.fid)
        self._saved[bucket] = (plan.fid, digest)
        self._merged[bucket] = self._merged.get(bucket, set()) - replaced
        for fid in sorted(f for f in {old_fid, *replaced} if f and f != plan.fid):
            try:
                await self.store.delete_fid(fid)
            except DeossError as exc:
                log.warning("deleting old metadata %s failed: %s", fid[:16], exc)

    async def _process_deletes(self) -> None:
        for fid, bucket, _attempts in self.index.pending_deletes():
            if self.index.named(fid):  # named again (the same bytes stored again)
                self.index.unqueue_delete(fid)
                continue
            try:
                await self.store.delete_fid(fid)
            except DeossError as exc:
                if exc.temporary:
                    self.index.delete_failed(fid)
                    continue
                log.warning("bucket %s: deleting %s failed: %s", bucket, fid[:16], cli_message(exc))
            self.index.delete_done(fid, time.time(), DELETES_KEPT_SECONDS)

    async def tick(self, *, everything: bool = False) -> None:
        """Delete replaced versions, and save the buckets whose save is due (all changed
        ones with `everything`)."""
        await self._process_deletes()
        for bucket in self.index.dirty_buckets():
            if not everything and (bucket in self._saving or not self._save_due(bucket)):
                continue
            try:
                await self.save(bucket)
            except NoSuchBucket:
                self.index.drop_bucket(bucket)
            except DeossError as exc:
                if everything:
                    raise
                log.warning("bucket %s: %s", bucket, cli_message(exc))

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """The background saver (in the caller's nursery)."""
        task_status.started()
        while not self._closed:
            with trio.move_on_after(SAVE_TICK):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.tick()
            except Exception as exc:  # e.g. a full local disk: the next round tries again
                log.warning("catalog of %s: %s", self.owner, cli_message(exc))

    async def aclose(self) -> None:
        """Save every changed bucket and finish the deletes; then close the index."""
        if self._closed:
            return
        try:
            with contextlib.suppress(DeossError):
                await self.tick(everything=True)
        finally:
            self._closed = True
            self._wake.set()
            self.index.close()


class Catalogs:
    """The catalogs of the owners a gateway serves, each opened on first use, with one
    background task (`run`) saving them all. `store_for(owner)` is a store acting for the
    owner with the owner's key (the metadata objects' key: GatewayEngine.store_for)."""

    def __init__(self, directory: Path, store_for: Callable[[str], ObjectStore], *,
                 uid: int | None = None, gid: int | None = None) -> None:
        self.directory = directory
        self.store_for = store_for
        self.uid, self.gid = uid, gid
        self._open: dict[str, Catalog] = {}

    def of(self, owner: str) -> Catalog:
        catalog = self._open.get(owner)
        if catalog is None:
            catalog = Catalog(self.store_for(owner), self.directory / f"{owner}.sqlite",
                              uid=self.uid, gid=self.gid)
            self._open[owner] = catalog
        return catalog

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(SAVE_TICK)
            for owner, catalog in list(self._open.items()):
                try:
                    await catalog.tick()
                except Exception as exc:
                    log.warning("catalog of %s: %s", owner, cli_message(exc))

    async def aclose(self) -> None:
        for catalog in list(self._open.values()):
            await catalog.aclose()
        self._open.clear()


__all__ = ["Catalog", "Catalogs", "ObjectRecord", "ListPage", "PutTarget", "REFRESH_SECONDS"]
