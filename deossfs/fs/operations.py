"""The FUSE operations: what each POSIX call does on deossfs (docs/semantics.md).

The namespace lives in the local database (fs/db.py) and, per bucket, in an
encrypted metadata object on CESS (fs/metadata.py). File content is either staged
(a whole local copy in the workspace, being or waiting to be uploaded) or stored
(read lazily per segment through deossfs/reader.py). Writes never touch the network:
close queues the file in the journal and the uploader (fs/uploader.py) makes it
durable in the background.

One file past 800 lines: pyfuse3 takes one Operations class, whose calls share the
open-file state and the inode table; what stands apart lives beside it (db, trash,
metadata, reader, uploader).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from ..catalog.protocol import META_DIR
from ..chain.interface import TerritoryState
from ..chain.names import bucket_name_problem
from ..errors import DeossError, classify, cli_message, to_errno
from ..names import MAX_KEY_BYTES
from ..processing.encryption import PLAINTEXT_CAPACITY
from ..processing.layout import charged_space, segment_count
from ..reader import SegmentReader
from ..store import ObjectStore, largest_file
from .db import ROOT_INODE, Database, Row, now_ns
from .trash import INLINE_MAX, VIEWS, Trash, root_uid

log = logging.getLogger(__name__)

#: seconds the kernel may cache names and attributes (short: close-to-open between mounts)
ATTR_TIMEOUT = 1.0
#: seconds a bucket's listing from the chain is trusted before it is read again
REFRESH_SECONDS = 2.0
#: the longest an open waits for the chain to check for a newer version (close-to-open)
OPEN_REFRESH_SECONDS = 1.0
#: the longest name of one path component, as on local file systems
NAME_MAX = 255
#: the longest path below a bucket (`dir/sub/file`). More than PATH_MAX (4,096): only
#: absolute paths are bound by it, and programs that work with relative paths build
#: deeper trees (pjdfstest makes PATH_MAX - 1 bytes below its own directory); less than
#: the store's MAX_KEY_BYTES by room for the trash's hidden prefix (fs/trash.py)
MAX_PATH_BYTES = MAX_KEY_BYTES - 256
#: readdir offsets above this are hard links (below: inode numbers)
LINK_OFFSET = 1 << 48
#: the directory below a bucket that deossfs keeps for itself (hidden in the mount)
HIDDEN = META_DIR.encode()
XATTR_PREFIX = b"user.deossfs."
READONLY_XATTRS = (b"user.deossfs.fid", b"user.deossfs.state", b"user.deossfs.locations")


def fuse_error(code: int, message: str | None = None, *args: object) -> pyfuse3.FUSEError:
    if message:
        log.warning(message, *args)
    return pyfuse3.FUSEError(code)


@dataclass
class Handle:
    ino: int
    fd: int | None  # staging file, when the content is local
    writable: bool
    dirty: bool = False
    next_offset: int = 0  # for sequential-read detection


@dataclass
class OpenState:
    """In-memory attributes of an inode with open handles (saved to the DB on close)."""

    handles: int = 0
    size: int | None = None
    mtime_ns: int | None = None
    unlinked: bool = False
    dirty: bool = False


@dataclass
class TerritoryCache:
    remaining: int = 0
    total: int = 0
    state: str = "Active"
    name: str = ""
    fetched: float = 0.0


@dataclass
class Hooks:
    """Set by the mount: wake the uploader, mark a bucket's metadata dirty, wait for uploads."""

    wake_uploader: Callable[[], None] = lambda: None
    bucket_changed: Callable[[str], None] = lambda bucket: None
    wait_durable: Callable[[int, int], Awaitable[None]] | None = None
    refresh_bucket: Callable[[str], Awaitable[None]] | None = None
    refresh_buckets: Callable[[], Awaitable[None]] | None = None
    pending_charge: Callable[[], int] = lambda: 0
    #: is the uploader reading this inode's staging file right now?
    uploading: Callable[[int], bool] = lambda ino: False
    #: the inode has its own staging file now: the upload under way reads an older copy
    detached: Callable[[int], None] = lambda ino: None


#: st_blksize. cp sizes its buffer by it, and without the writeback cache each write(2)
#: is one synchronous FUSE request: at 128 KiB a 1 GiB cp made 8,192 requests, at 1 MiB
#: (FUSE's max_write) 1,024. Measured here (2 cores): cp 1 GiB in 1.66 -> 0.83 s, the
#: mount's CPU during it 1.0 -> 0.45 s (medians of 4, quiet machine)
IO_BLOCK = 1024 * 1024
#: ... but the staging file is written in slices of this size: one 1 MiB pwrite into a
#: fresh ext4 file took ~3x the kernel time of eight 128 KiB ones on this machine (1 GiB
#: of 1 MiB writes alone: the mount's sys time 0.3 -> 0.9-2.6 s, cp 1.4-3.2 s)
STAGING_WRITE = 128 * 1024


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # off: with it the kernel drops cached pages of files reopened for reading (measured:
    # a warm 1 GiB read fell from 5.6 GB/s to 0.6 GB/s), and writes arrive as 1 MiB
    # requests anyway, so it buys nothing for `cp` (docs/PERFORMANCE.md)
    enable_writeback_cache = False

    def __init__(self, store: ObjectStore, db: Database, workspace: Path, uid: int, gid: int) -> None:
        super().__init__()
        self.store = store
        self.db = db
        self.trash = Trash(self)
        self.staging = workspace / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.uid, self.gid = uid, gid
        self.reader = SegmentReader(store)
        self.handles: dict[int, Handle] = {}
        self.open_states: dict[int, OpenState] = {}
        self._next_fh = 1
        self.hooks = Hooks()
        self.territory = TerritoryCache()
        #: (fid, generation) last served per inode: unchanged -> the kernel may keep its cache
        self._cache_tokens: dict[int, tuple[str | None, int]] = {}
        self._forget_unlinked()
        self._journal_interrupted_writes()

    # ---- helpers -------------------------------------------------------------

    def staging_path(self, ino: int) -> Path:
        return self.staging / str(ino)

    def trim_staging(self, keep_bytes: int) -> int:
        """Remove the staged copies of durable files beyond `keep_bytes` in total, the
        least recently written first; the number removed. A copy is needed while its
        version is not durable, the file is open, or it is uploading: those stay."""
        kept = removed = 0
        for ino, size in self.db.conn.execute(
                "SELECT id, size FROM inodes WHERE staged=1 AND kind='file' AND parent != 0"
                " AND fid IS NOT NULL AND generation = durable_generation"
                " AND id NOT IN (SELECT ino FROM uploads) AND id NOT IN (SELECT ino FROM writing)"
                " ORDER BY ctime_ns DESC, id DESC").fetchall():
            state = self.open_states.get(ino)
            if (state is not None and state.handles) or self.hooks.uploading(ino):
                continue
            kept += size
            if kept <= keep_bytes:
                continue
            self.db.update(ino, staged=0)
            self.staging_path(ino).unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d staged copies of durable files (cache.staged_keep)", removed)
        return removed

    def row(self, ino: int) -> Row:
        row = self.db.get(ino)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return row

    def bucket_of(self, ino: int) -> str | None:
        """The bucket `ino` is in; None at the root, in a trash directory's own tree (no
        bucket: fs/trash.py), and for a file unlinked while open."""
        try:
            parts = self.db.path_parts(ino)
        except KeyError:  # unlinked while open: no path any more
            return None
        return parts[0].decode() if parts and root_uid(parts[0]) is None else None

    def child(self, parent: int, name: bytes) -> Row | None:
        """The entry `name` of `parent` as the mount shows it: a bucket's `.deossfs` is
        hidden; a trash view lists the trash of every bucket; a user's trash directory
        appears at the root once a bucket holds something of theirs (fs/trash.py)."""
        row = self.db.child(parent, name)
        if row is not None:
            if name == HIDDEN and parent != ROOT_INODE and self.row(parent).parent == ROOT_INODE:
                return None
            return row
        if parent == ROOT_INODE:
            uid = root_uid(name)
            return self.trash.appear(uid) if uid is not None and self.trash.holds(uid) else None
        return self.trash.find(parent, name)

    def _has_entries(self, row: Row) -> bool:
        """Does the directory list anything (rmdir's ENOTEMPTY)?"""
        if row.name in VIEWS and self.trash.view_of(row.id) is not None:
            return self.trash.has_entries(row.id)
        if row.parent == ROOT_INODE and not self.trash.is_root(row):  # a bucket: not its .deossfs
            return any(r.name != HIDDEN for r in self.db.children(row.id)[:2]) \
                or bool(self.db.link_children(row.id)) or self.trash.items_in(row.id) > 0
        return self.db.has_children(row.id)

    def _subdirectories(self, row: Row) -> int:
        if row.name in VIEWS and self.trash.view_of(row.id) is not None:
            return self.trash.subdirectory_count(row.id)
        count = self.db.subdirectory_count(row.id)
        if count and row.parent == ROOT_INODE and self.db.child(row.id, HIDDEN) is not None:
            count -= 1  # a bucket's .deossfs is not shown
        return count

    def key_of(self, ino: int) -> tuple[str, str]:
        parts = self.db.path_parts(ino)
        return parts[0].decode(), b"/".join(parts[1:]).decode()

    def _record_removal(self, parent: int, name: bytes) -> None:
        """The name `name` in `parent` is gone (metadata merges must not restore it)."""
        parts = self.db.path_parts(parent) + [name]
        if len(parts) > 1 and root_uid(parts[0]) is None:
            self.db.record_removal(parts[0].decode(), b"/".join(parts[1:]).decode(), now_ns())

    def _touch(self, directory: int) -> None:
        """An entry was added to or removed from `directory`: its mtime and ctime change."""
        t = now_ns()
        self.db.update(directory, mtime_ns=t, ctime_ns=t)

    def changed(self, ino: int) -> None:
        bucket = self.bucket_of(ino)
        if bucket:
            self.hooks.bucket_changed(bucket)

    def attrs(self, row: Row) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        state = self.open_states.get(row.id)
        size = row.size
        mtime = row.mtime_ns
        if state is not None:
            size = state.size if state.size is not None else size
            mtime = state.mtime_ns if state.mtime_ns is not None else mtime
        entry.st_ino = row.id
        entry.generation = 0
        entry.entry_timeout = ATTR_TIMEOUT
        entry.attr_timeout = ATTR_TIMEOUT
        entry.st_mode = row.mode
        if row.is_dir:  # "." and the entry in its parent, and each subdirectory's ".."
            entry.st_nlink = 2 + self._subdirectories(row)
        else:  # an unlinked file still open has no name left
            entry.st_nlink = 0 if row.parent == 0 else 1 + self.db.link_count(row.id)
        entry.st_uid = row.uid
        entry.st_gid = row.gid
        entry.st_rdev = row.rdev
        entry.st_size = len(row.target or b"") if row.kind == "symlink" else (4096 if row.is_dir else size)
        entry.st_blksize = IO_BLOCK
        entry.st_blocks = -(-entry.st_size // 512)
        entry.st_atime_ns = row.atime_ns
        entry.st_mtime_ns = mtime
        entry.st_ctime_ns = row.ctime_ns
        return entry

    def _new_owner(self, parent: int, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        """The owner of a new entry: the caller, and the directory's group if the
        directory is set-group-ID (as local file systems do)."""
        directory = self.row(parent)
        return ctx.uid, directory.gid if directory.mode & stat.S_ISGID else ctx.gid

    def _check_name(self, parent: int, name: bytes) -> None:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            raise fuse_error(errno.EINVAL, "refused a name that is not UTF-8: %r", name) from None
        if len(name) > NAME_MAX:  # what statfs promises (FUSE itself passes up to 1024)
            raise fuse_error(errno.ENAMETOOLONG, "refused a name longer than %d bytes", NAME_MAX)
        if parent == ROOT_INODE:
            return
        parts = self.db.path_parts(parent)
        if len(parts) == 1 and name == META_DIR.encode():
            raise fuse_error(errno.EPERM, "%s is reserved for deossfs metadata", META_DIR)
        self._check_path_length(self._key_length(parts) + (1 if len(parts) > 1 else 0) + len(name))

    @staticmethod
    def _key_length(parts: list[bytes]) -> int:
        """Bytes of the path below the bucket of `parts` (bucket first)."""
        return max(0, sum(len(p) + 1 for p in parts[1:]) - 1)

    @staticmethod
    def _check_path_length(length: int) -> None:
        if length > MAX_PATH_BYTES:
            raise fuse_error(errno.ENAMETOOLONG, "refused a path of %d bytes below its bucket "
                             "(at most %d)", length, MAX_PATH_BYTES)

    def _subtree_depth(self, directory: int) -> int:
        """Bytes the longest path below `directory` adds to its own (`/a/b`: 4)."""
        deepest = 0
        stack = [(directory, 0)]
        while stack:
            ino, length = stack.pop()
            for row in self.db.children(ino) + self.db.link_children(ino):
                below = length + 1 + len(row.name)
                deepest = max(deepest, below)
                if row.is_dir and not row.link_id:
                    stack.append((row.id, below))
        return deepest

    def _existing(self, parent: int, name: bytes) -> Row:
        """The entry `name` in `parent`: ENAMETOOLONG for a name no entry may have, else
        ENOENT when there is none (a lookup first asks the chain)."""
        row = self.child(parent, name)
        if row is None:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        return row

    async def _refresh_for(self, parent: int) -> None:
        if parent == ROOT_INODE:
            if self.hooks.refresh_buckets:
                await self.hooks.refresh_buckets()
            return
        bucket = self.bucket_of(parent)
        if bucket and self.hooks.refresh_bucket:
            await self.hooks.refresh_bucket(bucket)

    async def _territory(self) -> TerritoryCache:
        if time.monotonic() - self.territory.fetched > 2.0:
            try:
                t = await self.store.territory()
                self.territory = TerritoryCache(t.remaining_space, t.total_space, t.state.value,
                                                t.name, time.monotonic())
            except DeossError as exc:
                log.warning("cannot read the territory: %s", exc)
        return self.territory

    async def _check_writable_territory(self) -> None:
        territory = await self._territory()
        if territory.state != TerritoryState.ACTIVE.value and territory.fetched:
            raise fuse_error(errno.EROFS, "territory %r is %s: writes refused until it is renewed "
                             "(deossfs territory renew %s --days 30)", territory.name,
                             territory.state, territory.name)

    # ---- lookups and attributes ------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self.attrs(self.row(parent_inode))
        if name == b"..":
            row = self.row(parent_inode)
            return self.attrs(self.row(row.parent))
        row = self.child(parent_inode, name)
        if row is None and parent_inode == ROOT_INODE and root_uid(name) == ctx.uid:
            # a user looks for their trash directory (GIO does, then uses it): it is there,
            # so users of an --allow-other mount need no right to write the root (fs/trash.py)
            row = self.trash.appear(ctx.uid)
        if row is None and not self._never_a_bucket(parent_inode, name):
            await self._refresh_for(parent_inode)
        return self.attrs(self._existing(parent_inode, name))

    @staticmethod
    def _never_a_bucket(parent_inode: int, name: bytes) -> bool:
        """A root name deossfs would refuse as a bucket (`.hidden`, `.Trash-1000`).

        File managers probe such names at the mount root on every folder they show
        (GIO's `.Trash`/`.Trash-$UID` check, `.hidden`, `.directory`): answering from the
        database spares each probe a chain query, which waits out the RPC timeout when
        the chain is unreachable. A bucket of such a name made by another CESS tool is
        still found once the root is listed (opendir re-reads the bucket list)."""
        if parent_inode != ROOT_INODE:
            return False
        try:
            return bucket_name_problem(name.decode()) is not None
        except UnicodeDecodeError:
            return True

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.attrs(self.row(inode))

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        row = self.row(inode)
        values: dict[str, object] = {}
        t = now_ns()
        if fields.update_size:
            if row.kind != "file":
                raise pyfuse3.FUSEError(errno.EINVAL)
            await self._truncate(row, attr.st_size, fh)
        if fields.update_mode:
            values["mode"] = (row.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            values["uid"] = attr.st_uid
        if fields.update_gid:
            values["gid"] = attr.st_gid
        if fields.update_atime:
            values["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            values["mtime_ns"] = attr.st_mtime_ns
            state = self.open_states.get(inode)
            if state is not None:
                state.mtime_ns = attr.st_mtime_ns
        values["ctime_ns"] = attr.st_ctime_ns if fields.update_ctime else t
        self.db.update(inode, **values)
        self.changed(inode)
        return self.attrs(self.row(inode))

    def _detach_from_upload(self, ino: int, empty: bool = False) -> None:
        """Copy-on-write: before changing a staging file that is being uploaded, give
        the inode a fresh copy, so the upload keeps reading the version it hashed.

        The uploader holds its own descriptor of the old file, which stays intact
        once unlinked by the rename. Open handles move to the new file. Rare (a
        rewrite while the previous version uploads), so the copy runs inline.
        """
        if not self.hooks.uploading(ino):
            return
        path = self.staging_path(ino)
        if not path.exists():
            return
        tmp = path.with_suffix(".cow")
        if empty:
            tmp.touch(mode=0o600)
            os.truncate(tmp, 0)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, path)
        self.hooks.detached(ino)  # once per upload: later writes go to the new file directly
        for handle in self.handles.values():
            if handle.ino == ino and handle.fd is not None:
                os.close(handle.fd)
                handle.fd = os.open(path, os.O_RDWR)
        log.info("inode %d changed while uploading: the upload keeps its own copy", ino)

    async def _truncate(self, row: Row, size: int, fh: int | None) -> None:
        await self._check_writable_territory()
        state = self.open_states.get(row.id)
        current = state.size if state is not None and state.size is not None else row.size
        if size > self._size_limit(row):
            raise self._too_large(row, size)
        if size > current:  # growing writes zeros: they need territory space too
            await self._reserve_space(current, size)
        await self._ensure_staged(row, truncate=(size == 0))
        self._detach_from_upload(row.id, empty=(size == 0))
        handle = self.handles.get(fh) if fh is not None else None
        if handle is not None and handle.fd is not None:
            os.ftruncate(handle.fd, size)
            handle.dirty = True
            state = self.open_states.setdefault(row.id, OpenState())
            state.size, state.mtime_ns = size, now_ns()
            self._mark_dirty(row.id, state)
            return
        fd = os.open(self.staging_path(row.id), os.O_RDWR)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        state = self.open_states.get(row.id)
        if state is not None and state.handles:
            state.size, state.mtime_ns = size, now_ns()
            self._mark_dirty(row.id, state)
            return
        self._commit_content(row.id, size, now_ns())

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        row = self.row(inode)
        if row.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return row.target or b""

    # ---- directories ---------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        row = self.row(inode)
        if not row.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._refresh_for(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # the offset after an entry: its inode number for an inode's own name, above
        # LINK_OFFSET for a hard link (one inode can be listed under several names)
        directory = self.row(fh)
        view = directory.name in VIEWS and self.trash.view_of(fh) is not None
        bucket = directory.parent == ROOT_INODE and fh != ROOT_INODE
        if start_id < LINK_OFFSET:
            rows = self.trash.children(fh, start_id) if view else self.db.children(fh, after_id=start_id)
            for row in rows:
                if bucket and row.name == HIDDEN:
                    continue
                if not pyfuse3.readdir_reply(token, row.name, self.attrs(row), row.id):
                    return
        after = max(0, start_id - LINK_OFFSET)
        for row in self.trash.link_children(fh, after) if view else self.db.link_children(fh, after_id=after):
            if not pyfuse3.readdir_reply(token, row.name, self.attrs(row), LINK_OFFSET + row.link_id):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_name(parent_inode, name)
        if self.child(parent_inode, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if parent_inode == ROOT_INODE and root_uid(name) is not None:
            # a user's trash directory (fs/trash.py): this mount's own, no bucket
            uid = root_uid(name)
            if ctx.uid not in (uid, 0):
                raise fuse_error(errno.EACCES, "mkdir %r: that is the trash directory of user %d",
                                 name.decode(), uid)
            row = self.trash.make_root(uid, ctx.gid, mode)  # type: ignore[arg-type]
            self._touch(ROOT_INODE)
            return self.attrs(row)
        if parent_inode == ROOT_INODE:
            bucket = name.decode()
            problem = bucket_name_problem(bucket)
            if problem and bucket.startswith(".Trash"):
                # the shared `.Trash` (sticky, a directory per user) is not offered: GIO
                # then uses `.Trash-$UID` (fs/trash.py)
                log.info("mkdir %r refused: the trash directories here are .Trash-UID", bucket)
                raise pyfuse3.FUSEError(errno.EINVAL)
            if problem:
                raise fuse_error(errno.EINVAL, "mkdir %r refused: %s", bucket, problem)
            try:
                await self.store._chain(self.store.chain.create_bucket, self.store.owner, bucket)
            except DeossError as exc:
                raise fuse_error(to_errno(exc), "mkdir %r: creating the bucket failed: %s", bucket, exc) from None
        uid, gid = self._new_owner(parent_inode, ctx)
        if self.row(parent_inode).mode & stat.S_ISGID:
            mode |= stat.S_ISGID  # passed on to subdirectories, as on local file systems
        row = self.db.insert(parent_inode, name, "dir", stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self._touch(parent_inode)
        self.changed(row.id)
        return self.attrs(row)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        row = self._existing(parent_inode, name)
        if not row.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self._has_entries(row):
            if parent_inode == ROOT_INODE and self.trash.items_in(row.id):
                log.info("rmdir %s: the bucket holds %d entries in the trash; empty the trash first",
                         name.decode(errors="replace"), self.trash.items_in(row.id))
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        if parent_inode == ROOT_INODE and self.trash.is_root(row):  # this mount's own
            self.db.delete(row.id)
            self._touch(parent_inode)
            return
        if parent_inode == ROOT_INODE:
            bucket = name.decode()
            if self.hooks.refresh_bucket:
                await self.hooks.refresh_bucket(bucket)
            if self._has_entries(row):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            if any(u[7].startswith(f"{bucket}/") for u in self.db.pending_uploads()):
                raise fuse_error(errno.EBUSY, "rmdir %s: uploads into it are still pending", bucket)
            try:
                await self._delete_bucket(bucket)
            except DeossError as exc:
                raise fuse_error(to_errno(exc), "rmdir %r: deleting the bucket failed: %s", bucket, exc) from None
            self.trash.clear_bucket(row.id)
            self.db.delete(row.id)
            self.db.conn.execute("DELETE FROM buckets WHERE name=?", (bucket,))
            self._touch(parent_inode)
            return
        self.db.delete(row.id)
        self.trash.forget(row.id)
        # row.parent: where it really is (a trash view lists the trash of every bucket)
        self._record_removal(row.parent, name)
        self._touch(row.parent)
        self.changed(row.parent)

    async def _delete_bucket(self, bucket: str) -> None:
        # the bucket's metadata object is ours, and so are objects whose delete is still
        # queued (rm -rf: unlink, unlink, rmdir): remove them first, then the bucket
        queued = set(self.db.chain_deletes())
        for entry in await self.store.list(bucket):
            if entry.key.startswith(META_DIR + "/") or entry.fid in queued:
                await self.store.delete_fid(entry.fid)
                self.db.chain_delete_done(entry.fid)
        await self.store._chain(self.store.chain.delete_bucket, self.store.owner, bucket)

    # ---- creating and removing entries ---------------------------------------------

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INODE:
            raise fuse_error(errno.EPERM, "only buckets (directories) live at the mount root")
        self._check_name(parent_inode, name)
        if self.child(parent_inode, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        row = self.db.insert(parent_inode, name, "symlink", stat.S_IFLNK | 0o777, *self._new_owner(parent_inode, ctx),
                             target=target)
        self._touch(parent_inode)
        self.changed(row.id)
        return self.attrs(row)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        """A hard link: another name of the same inode (content, attributes, xattrs).

        The chain knows the file under its own name only (the one it was uploaded under);
        the other names live in the bucket's metadata object, as renames do."""
        row = self.row(inode)
        if row.is_dir:
            raise fuse_error(errno.EPERM, "link: hard links to directories are not allowed")
        if new_parent_inode == ROOT_INODE:
            raise fuse_error(errno.EPERM, "only buckets (directories) live at the mount root")
        if row.parent == 0:  # unlinked while open (linkat of /proc/self/fd/N)
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.bucket_of(inode) != self.bucket_of(new_parent_inode):
            # the other names live in the bucket's metadata object, with the file
            raise fuse_error(errno.EXDEV, "link between buckets is not possible on CESS")
        self._check_name(new_parent_inode, new_name)
        if self.child(new_parent_inode, new_name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self.db.add_link(inode, new_parent_inode, new_name)
        self.db.update(inode, ctime_ns=now_ns())
        self._touch(new_parent_inode)
        self.changed(inode)
        return self.attrs(self.row(inode))

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if not stat.S_ISREG(mode):
            # FIFOs, sockets and device nodes are names only: the kernel serves them,
            # and the metadata object keeps them (the mount is nodev: never opened as devices)
            if parent_inode == ROOT_INODE:
                raise fuse_error(errno.EPERM, "only buckets (directories) live at the mount root")
            if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
                raise pyfuse3.FUSEError(errno.EINVAL)
            self._check_name(parent_inode, name)
            if self.child(parent_inode, name) is not None:
                raise pyfuse3.FUSEError(errno.EEXIST)
            row = self.db.insert(parent_inode, name, "special", stat.S_IFMT(mode) | (mode & 0o7777),
                                 *self._new_owner(parent_inode, ctx), rdev=rdev)
            self._touch(parent_inode)
            self.changed(row.id)
            return self.attrs(row)
        fi, entry = await self.create(parent_inode, name, mode, os.O_WRONLY, ctx)
        await self.release(fi.fh)
        return entry

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        row = self._existing(parent_inode, name)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._unlink_row(row)
        # row.parent: where it really is (a trash view lists the trash of every bucket)
        self._record_removal(row.parent, name)
        self._touch(row.parent)
        self.changed(row.parent)

    def _unlink_row(self, row: Row) -> None:
        """Remove a file's name (unlink, or replaced by a rename)."""
        if row.link_id or self.db.link_count(row.id):
            # one name of several goes; the inode and its content stay
            if row.link_id:
                self.db.remove_link(row.link_id)
            else:
                self.db.promote_link(row.id)
                self._names_changed([self.row(row.id)])
            self.db.update(row.id, ctime_ns=now_ns())
            self.changed(row.id)
            return
        state = self.open_states.get(row.id)
        if state is not None and state.handles:
            # POSIX: an open file stays usable after unlink, its stored copy too;
            # both go on the last close (or, after a crash, at the next mount)
            state.unlinked = True
            self.db.update(row.id, parent=0, name=f"unlinked-{row.id}".encode())
            # nothing nameless is uploaded (an upload under way is dropped when it ends)
            self.db.conn.execute("DELETE FROM uploads WHERE ino=?", (row.id,))
        else:
            self._drop_content(row)
            self._remove_inode(row.id)

    def _forget_unlinked(self) -> None:
        """Files unlinked while open when the last mount ended: remove them now."""
        for (ino,) in self.db.conn.execute(
                "SELECT id FROM inodes WHERE parent=0 AND id != ?", (ROOT_INODE,)).fetchall():
            row = self.db.get(ino)
            if row is not None:
                self._drop_content(row)
                self._remove_inode(ino)

    def _drop_content(self, row: Row) -> None:
        """The chain copy of a removed or replaced file is deleted once nothing refers to it."""
        if row.fid and all(i == row.id for i in self.db.files_with_fid(row.fid)):
            self.db.queue_chain_delete(row.fid)
            self.reader.forget(row.fid)
            self.hooks.wake_uploader()

    def _remove_inode(self, ino: int) -> None:
        self.db.delete(ino)
        self.staging_path(ino).unlink(missing_ok=True)
        self._cache_tokens.pop(ino, None)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise fuse_error(errno.EINVAL, "rename: RENAME_EXCHANGE is not supported")
        row = self._existing(parent_inode_old, name_old)
        if ROOT_INODE in (parent_inode_old, parent_inode_new):
            # buckets cannot be renamed on CESS; EXDEV makes mv copy and delete instead
            raise fuse_error(errno.EXDEV, "rename of a bucket is not possible on CESS; mv copies instead")
        # where it really goes, and where it really is: a trash view lists the trash of
        # every bucket, and an entry moved into one goes to its own bucket's (fs/trash.py)
        new_parent = self.trash.destination(row, parent_inode_new)
        old_parent = row.parent
        if self.bucket_of(old_parent) != self.bucket_of(new_parent):
            # a FID is declared once per owner: it cannot change bucket; mv copies instead
            raise fuse_error(errno.EXDEV, "rename between buckets is not possible on CESS; mv copies instead")
        self._check_name(parent_inode_new, name_new)
        if row.is_dir:  # its deepest entry must fit at the new place too
            new_parts = self.db.path_parts(parent_inode_new) + [name_new]
            self._check_path_length(self._key_length(new_parts) + self._subtree_depth(row.id))
        # a directory (checked before the target goes) must not move into itself
        probe = new_parent
        while probe != ROOT_INODE:
            if probe == row.id:
                raise pyfuse3.FUSEError(errno.EINVAL)
            probe = self.row(probe).parent
        target = self.child(parent_inode_new, name_new)
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if target.id == row.id:
                return
            if target.is_dir:
                if not row.is_dir:
                    raise pyfuse3.FUSEError(errno.EISDIR)
                if self._has_entries(target):
                    raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            elif row.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            self._unlink_row(target)
        self._record_removal(old_parent, name_old)
        self.trash.forget(row.id)
        if row.link_id:
            self.db.move_link(row.link_id, new_parent, name_new)
            self.db.update(row.id, ctime_ns=now_ns())
            self._touch(old_parent)
            self._touch(new_parent)
            self.changed(row.id)
            return
        old_bucket = self.bucket_of(row.id)
        self.db.update(row.id, parent=new_parent, name=name_new, ctime_ns=now_ns())
        self._touch(old_parent)
        self._touch(new_parent)
        self._names_changed([row] + (self.db.descendants(row.id) if row.is_dir else []))
        if old_bucket:
            self.hooks.bucket_changed(old_bucket)
        self.changed(row.id)
        if new_parent != parent_inode_new:  # into the trash: its info file goes with it
            self.trash.adopt_info(parent_inode_new, self.row(row.id), name_new)

    def _names_changed(self, moved: list[Row]) -> None:
        """These inodes have a new own name (rename, or a hard link took the place of
        the name that was removed)."""
        # stored files keep their FID: declare it again under the new name (no re-upload)
        for item in moved:
            if item.kind == "file" and item.fid:
                self.db.conn.execute("INSERT OR IGNORE INTO declares (ino) VALUES (?)", (item.id,))
        if any(i.kind == "file" and i.fid for i in moved):
            self.hooks.wake_uploader()
        # `deossfs status` names a pending upload by its current path (rsync renames its
        # temporary file right after the close)
        for item in moved:
            if item.kind == "file":
                bucket, key = self.key_of(item.id)
                self.db.conn.execute("UPDATE uploads SET path=? WHERE ino=?", (f"{bucket}/{key}", item.id))

    # ---- files -----------------------------------------------------------------

    async def _ensure_staged(self, row: Row, truncate: bool = False) -> None:
        """Make staging/<ino> hold the file's whole current content."""
        if row.staged:
            return
        path = self.staging_path(row.id)
        tmp = path.with_suffix(".fetch")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if row.fid and not truncate:
                info = await self.store.file_info(row.fid)
                await self.store.read_into_fd(info, fd)
                os.ftruncate(fd, row.size)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        self.db.update(row.id, staged=1)

    def _new_handle(self, ino: int, fd: int | None, writable: bool) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, fd, writable)
        self.open_states.setdefault(ino, OpenState()).handles += 1
        return fh

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        row = self.row(inode)
        if row.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if row.kind == "special":  # the kernel opens FIFOs and devices itself
            raise pyfuse3.FUSEError(errno.ENXIO)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        truncate = bool(flags & os.O_TRUNC)
        if not truncate:
            row = await self._revalidate(row)
        if writable or truncate:
            await self._check_writable_territory()
        # a stored file's content is fetched at its first write (_stage_for_write), not
        # here: GIO (file managers, `gio copy`/`gio save` onto an existing file) opens the
        # file it replaces for writing only to fstat it, then writes a temporary file and
        # renames it over, so fetching here downloaded the whole old file for nothing
        if truncate or (writable and row.staged):
            try:
                await self._ensure_staged(row, truncate=truncate)
            except DeossError as exc:
                raise fuse_error(to_errno(exc), "open %d for writing: fetching its content failed: %s",
                                 inode, exc) from None
            row = self.row(inode)
            self._detach_from_upload(inode, empty=truncate)
        fd = None
        if row.staged:
            fd = os.open(self.staging_path(inode), os.O_RDWR)
        fh = self._new_handle(inode, fd, writable)
        if truncate and fd is not None and (row.size or row.fid):
            os.ftruncate(fd, 0)
            handle = self.handles[fh]
            handle.dirty = True
            state = self.open_states[inode]
            state.size, state.mtime_ns = 0, now_ns()
            self._mark_dirty(inode, state)
        elif truncate:  # nothing to cut, but O_TRUNC still changes the times (POSIX)
            t = now_ns()
            self.db.update(inode, mtime_ns=t, ctime_ns=t)
            self.changed(inode)
        token = (row.fid, row.generation)
        keep = self._cache_tokens.get(inode) == token
        self._cache_tokens[inode] = token
        log.debug("open %d flags %o keep_cache=%s", inode, flags, keep)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _revalidate(self, row: Row) -> Row:
        """Close-to-open between mounts: before a file that no handle here holds open is
        opened, its bucket's listing and metadata object are read again (at most every
        REFRESH_SECONDS), so a version another mount closed and published is the one
        opened. An unreachable chain delays the open by OPEN_REFRESH_SECONDS at most."""
        state = self.open_states.get(row.id)
        bucket = self.bucket_of(row.id)
        if (state is not None and state.handles) or not bucket or self.hooks.refresh_bucket is None:
            return row
        with trio.move_on_after(OPEN_REFRESH_SECONDS) as scope:
            await self.hooks.refresh_bucket(bucket)
        if scope.cancelled_caught:
            log.warning("open %d: the chain did not answer within %.0f s; opening the version "
                        "this mount knows", row.id, OPEN_REFRESH_SECONDS)
        fresh = self.db.get(row.id)
        if fresh is None:  # deleted by another mount
            raise pyfuse3.FUSEError(errno.ENOENT)
        return fresh

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode == ROOT_INODE:
            raise fuse_error(errno.EPERM, "only buckets (directories) live at the mount root")
        self._check_name(parent_inode, name)
        if self.child(parent_inode, name) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        await self._check_writable_territory()
        row = self.db.insert(parent_inode, name, "file", stat.S_IFREG | (mode & 0o7777),
                             *self._new_owner(parent_inode, ctx), staged=1, state="staged",
                             encrypted=1 if self.store.config.storage.encryption else 0,
                             inline=int(self.trash.local(parent_inode)))
        self._touch(parent_inode)
        fd = os.open(self.staging_path(row.id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fh = self._new_handle(row.id, fd, True)
        self.handles[fh].dirty = True  # even an empty new file must be recorded
        self._mark_dirty(row.id, self.open_states[row.id])
        self._cache_tokens[row.id] = (None, 0)
        self.changed(row.id)
        return pyfuse3.FileInfo(fh=fh), self.attrs(row)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        handle = self.handles[fh]
        row = self.row(handle.ino)
        if handle.fd is None and row.staged:
            # another handle made the content local (a writer): read that, not the chain copy
            handle.fd = os.open(self.staging_path(handle.ino), os.O_RDWR)
        if handle.fd is not None:
            return os.pread(handle.fd, size, off)
        if not row.fid or off >= row.size:
            return b""
        # a first read at 0 is no sign of a sequential reader: file managers open every
        # file of a folder they show to sniff its type from the first few KiB, and
        # reading 2 segments ahead for each tripled what browsing downloads
        sequential = off == handle.next_offset and off > 0
        handle.next_offset = off + size
        try:
            # may be a view of the reader's buffer: valid until the next checkpoint, and
            # pyfuse3 replies from it before any
            return await self.reader.read(row.fid, row.size, off, size,
                                          None if row.foreign_object else bool(row.encrypted),
                                          sequential=sequential)
        except DeossError as exc:
            raise fuse_error(to_errno(exc), "read of inode %d (%s) failed: %s", row.id,
                             row.name.decode(errors="replace"), exc) from None

    async def _stage_for_write(self, handle: Handle) -> None:
        """The first write through a handle whose open left the content stored: fetch
        the whole file into staging now (as open did before) and write there."""
        row = self.row(handle.ino)
        try:
            await self._ensure_staged(row)
        except DeossError as exc:
            raise fuse_error(to_errno(exc), "write to %d: fetching its content failed: %s",
                             handle.ino, exc) from None
        handle.fd = os.open(self.staging_path(handle.ino), os.O_RDWR)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        if handle.fd is None:
            if not handle.writable:
                raise pyfuse3.FUSEError(errno.EBADF)
            await self._stage_for_write(handle)
        state = self.open_states[handle.ino]
        end = off + len(buf)
        current = state.size if state.size is not None else os.fstat(handle.fd).st_size
        if end > current:
            row = self.row(handle.ino)
            limit = self._size_limit(row)
            if off >= limit:
                raise self._too_large(row, end)
            if end > limit:  # as local file systems do: a short write up to the limit
                buf, end = buf[: limit - off], limit
            await self._reserve_space(current, end)
        # a handle kept open across fsync may write while that version uploads
        self._detach_from_upload(handle.ino)
        written = self._pwrite(handle.fd, buf, off)
        handle.dirty = True
        self._mark_dirty(handle.ino, state)
        state.size = max(current, off + written)
        state.mtime_ns = now_ns()
        return written

    @staticmethod
    def _pwrite(fd: int, buf: bytes, off: int) -> int:
        if len(buf) <= STAGING_WRITE:
            return os.pwrite(fd, buf, off)
        view = memoryview(buf)
        written = 0
        while written < len(buf):
            try:
                done = os.pwrite(fd, view[written:written + STAGING_WRITE], off + written)
            except OSError:
                if not written:
                    raise
                break  # a short write, as pwrite(2) would: the error comes with the rest
            if not done:
                break
            written += done
        return written

    @staticmethod
    def _size_limit(row: Row) -> int:
        """The largest size the file can have: what one CESS storage order holds (a file
        of a trash directory's own tree is kept in the database: INLINE_MAX)."""
        return INLINE_MAX if row.inline else largest_file(bool(row.encrypted))

    def _too_large(self, row: Row, size: int) -> pyfuse3.FUSEError:
        return fuse_error(errno.EFBIG, "refused to make inode %d %d bytes long: a file on CESS "
                          "holds at most %d bytes", row.id, size, self._size_limit(row))

    async def _reserve_space(self, old_size: int, new_size: int) -> None:
        """ENOSPC when the territory cannot take this file (12 x 8 MiB per segment)."""
        old_segments = segment_count(old_size, PLAINTEXT_CAPACITY) if old_size else 0
        new_segments = segment_count(new_size, PLAINTEXT_CAPACITY)
        if new_segments == old_segments:
            return
        territory = await self._territory()
        if not territory.fetched:
            return
        if territory.state != TerritoryState.ACTIVE.value:
            raise fuse_error(errno.EROFS, "territory %r is %s: writes refused", territory.name, territory.state)
        need = charged_space(new_segments) + self.hooks.pending_charge()
        if need > territory.remaining:
            raise fuse_error(errno.ENOSPC, "territory %r is full: %d MiB free, writes need %d MiB "
                             "(deossfs territory expand %s --gib N)", territory.name,
                             territory.remaining // 2**20, need // 2**20, territory.name)

    def _mark_dirty(self, ino: int, state: OpenState) -> None:
        """The open file has writes that are not journaled. Recorded once per version in
        the database, so that if the mount dies before the close the next one journals
        what was written (`_journal_interrupted_writes`), as a local file system keeps it."""
        if not state.dirty:
            self.db.mark_writing(ino)
        state.dirty = True

    def _journal_interrupted_writes(self) -> None:
        """Files open for writing when the last mount died: their staged content (what
        had been written) becomes a new version, uploaded like any closed file."""
        for ino in self.db.interrupted_writes():
            row = self.db.get(ino)
            path = self.staging_path(ino)
            if row is None or row.parent == 0 or row.kind != "file" or not path.exists():
                self.db.done_writing(ino)
                continue
            info = path.stat()
            try:
                name = b"/".join(self.db.path_parts(ino)).decode(errors="replace")
            except KeyError:  # an ancestor is gone: nothing to journal under
                self.db.done_writing(ino)
                continue
            log.warning("%s was open for writing when the last mount stopped: what had been "
                        "written is kept (%d bytes) and uploaded", name, info.st_size)
            self._commit_content(ino, info.st_size, info.st_mtime_ns)

    def _commit_content(self, ino: int, size: int, mtime_ns: int) -> int:
        """A new version of the content is complete: journal it for upload."""
        self.db.done_writing(ino)
        row = self.row(ino)
        generation = row.generation + 1
        self.db.update(ino, size=size, mtime_ns=mtime_ns, ctime_ns=now_ns(), generation=generation,
                       state="staged", error=None, staged=1)
        if row.parent == 0:  # unlinked while open: nothing to upload
            return generation
        if row.inline:  # kept here and in the metadata object (fs/trash.py)
            self.db.update(ino, durable_generation=generation, state="stored")
            self.changed(ino)
            return generation
        bucket, key = self.key_of(ino)
        self.db.enqueue(ino, generation, size, f"{bucket}/{key}",
                        self.store.config.storage.upload_delay)
        self.hooks.wake_uploader()
        self.changed(ino)
        return generation

    def _commit_open(self, ino: int, state: OpenState) -> int:
        """Journal the content an open inode has now; its handles are clean afterwards."""
        row = self.row(ino)
        size = state.size if state.size is not None else self.staging_path(ino).stat().st_size
        generation = self._commit_content(ino, size, state.mtime_ns or row.mtime_ns)
        state.dirty = False
        for other in self.handles.values():
            if other.ino == ino:
                other.dirty = False
        self._cache_tokens[ino] = (row.fid, generation)
        return generation

    async def flush(self, fh: int) -> None:
        # close(2) returns once FLUSH is answered; RELEASE comes later, asynchronously.
        # Journal the content now: a closed file is never lost, even if the mount dies next.
        handle = self.handles.get(fh)
        state = self.open_states.get(handle.ino) if handle is not None else None
        if handle is not None and state is not None and state.dirty and not state.unlinked:
            self._commit_open(handle.ino, state)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        state = self.open_states[handle.ino]
        state.handles -= 1
        if handle.fd is not None:
            os.close(handle.fd)
        if state.handles > 0:
            return
        del self.open_states[handle.ino]
        if state.unlinked:
            row = self.db.get(handle.ino)
            if row is not None:
                self._drop_content(row)
            self._remove_inode(handle.ino)
            return
        if state.dirty:
            self._commit_open(handle.ino, state)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """mount.fsync = "network": until the content is durable on CESS. "local": until it
        is journaled and on this machine's disk (staging file and directory fsynced, the
        journal committed with synchronous=FULL); the upload follows.

        The kernel holds the inode's lock for the whole request, so writes to the file
        wait meanwhile. An fsync that finds an upload of an older version in flight waits
        for it and for one upload after it, which takes whatever was committed meanwhile."""
        handle = self.handles[fh]
        state = self.open_states[handle.ino]
        local = self.store.config.mount.fsync == "local"
        if local and (handle.fd is not None or self.row(handle.ino).staged):
            await self._fsync_staged(handle)
        target = self.row(handle.ino).generation
        if state.dirty:
            target = self._commit_open(handle.ino, state)
        if local:
            return
        if self.hooks.wait_durable is not None:
            try:
                await self.hooks.wait_durable(handle.ino, target)
            except DeossError as exc:
                raise fuse_error(to_errno(exc), "fsync: upload failed: %s", exc) from None

    async def _fsync_staged(self, handle: Handle) -> None:
        """The staged content on this machine's disk, and its name in staging/ (a new
        file's directory entry is lost to a power cut without the directory's fsync)."""
        # a duplicate: the handle's own descriptor may be swapped meanwhile (copy-on-write)
        try:
            fd = os.dup(handle.fd) if handle.fd is not None else \
                os.open(self.staging_path(handle.ino), os.O_RDONLY)
        except FileNotFoundError:  # dropped meanwhile: the content is stored already
            return
        try:
            await trio.to_thread.run_sync(os.fsync, fd)
        finally:
            os.close(fd)
        directory = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await trio.to_thread.run_sync(os.fsync, directory)
        finally:
            os.close(directory)

    # ---- xattrs -----------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        row = self.row(inode)
        if name in READONLY_XATTRS:
            if row.kind != "file":
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return await self._deossfs_xattr(row, name)
        value = self.db.xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def _deossfs_xattr(self, row: Row, name: bytes) -> bytes:
        if name == b"user.deossfs.fid":
            if not row.fid:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return row.fid.encode()
        if name == b"user.deossfs.state":
            pending = row.generation > row.durable_generation and row.size > 0
            state = row.state
            if state == "stored" and pending:
                state = "staged"
            if any(u[0] == row.id for u in self.db.pending_uploads()) and state == "stored":
                state = "uploading"
            return state.encode()
        if not row.fid:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            info = await self.reader.info(row.fid)
            endpoints = await self.store.endpoints()
        except DeossError as exc:
            raise fuse_error(to_errno(exc), "locations of %s: %s", row.fid, exc) from None
        lines = []
        for i, seg in enumerate(info.segments):
            for j, frag in enumerate(seg.fragments):
                lines.append(f"{i} {j} {frag.hash} {frag.miner} {endpoints.get(frag.miner, '-')}")
        return ("\n".join(lines) + "\n").encode()

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.row(inode)
        if name.startswith(XATTR_PREFIX):
            raise fuse_error(errno.EPERM, "%s is read-only", name.decode(errors="replace"))
        if not name.startswith(b"user."):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if len(value) > 64 * 1024:
            raise pyfuse3.FUSEError(errno.E2BIG)
        self.db.set_xattr(inode, name, value)
        self.db.update(inode, ctime_ns=now_ns())
        self.changed(inode)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        # user.deossfs.* are readable by name but not listed: tools that copy every
        # listed xattr (rsync -X, mv across buckets) would fail setting read-only ones
        self.row(inode)
        return list(self.db.xattrs(inode))

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.EPERM)
        if not self.db.remove_xattr(inode, name):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self.changed(inode)

    # ---- the file system as a whole -------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        territory = await self._territory()
        data = pyfuse3.StatvfsData()
        block = 4096
        data.f_bsize = block
        data.f_frsize = block
        # a user byte costs 3 territory bytes (12 fragments for 4 of data): show user bytes
        data.f_blocks = territory.total // 3 // block
        data.f_bfree = max(0, territory.remaining - self.hooks.pending_charge()) // 3 // block
        data.f_bavail = data.f_bfree
        files = self.db.conn.execute("SELECT COUNT(*) FROM inodes").fetchone()[0]
        data.f_files = files + 1_000_000
        data.f_ffree = 1_000_000
        data.f_favail = data.f_ffree
        data.f_namemax = NAME_MAX
        return data

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True  # the kernel checks permissions (default_permissions)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None



def _guarded(name: str, method: Callable) -> Callable:
    """An unexpected exception must not end the mount: pyfuse3 stops its main loop on
    anything but FUSEError. Map it to an errno (EIO only for the truly unknown) and log."""

    @functools.wraps(method)
    async def wrapper(self: Operations, *args: object) -> object:
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except DeossError as exc:
            log.warning("%s: %s", name, exc)
            raise pyfuse3.FUSEError(to_errno(exc)) from None
        except OSError as exc:
            log.warning("%s: %s", name, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except KeyError as exc:  # an inode that vanished meanwhile
            log.warning("%s: no such inode %s", name, exc)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except Exception as exc:  # trio.Cancelled is a BaseException and passes through
            known = classify(exc)
            if known is exc:
                log.exception("%s failed unexpectedly", name)
            else:  # a library's error the taxonomy knows (a full disk under SQLite)
                log.warning("%s: %s", name, cli_message(known))
            raise pyfuse3.FUSEError(to_errno(known)) from None

    return wrapper


for _name in ("lookup", "getattr", "setattr", "readlink", "opendir", "readdir", "mkdir", "rmdir",
              "symlink", "link", "mknod", "unlink", "rename", "open", "create", "read", "write",
              "flush", "release", "fsync", "getxattr", "setxattr", "listxattr", "removexattr",
              "statfs"):
    setattr(Operations, _name, _guarded(_name, getattr(Operations, _name)))
