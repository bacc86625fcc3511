"""The trash, as file managers use it (the freedesktop.org trash specification).

A file manager's Delete key (GIO's g_file_trash, KDE's KIO) moves an item to the trash
of the file system's top directory: `$topdir/.Trash-$UID/files/NAME`, after writing
`$topdir/.Trash-$UID/info/NAME.trashinfo` (its original path and deletion date). Here
the top directory is the mount root, which holds buckets, and an item's content is a
chain object that belongs to its bucket and cannot leave it without a new upload. So:

- `.Trash-$UID` at the mount root is a directory of this mount's database only (no
  bucket). Its `files`, `info` and `expunged` subdirectories are *views*: what they
  list is the union of `BUCKET/.deossfs/trash/$UID/files` (`info`, `expunged`) over
  every bucket, plus entries of their own.
- Moving an entry of a bucket into a view moves it to that hidden directory of its own
  bucket: a rename within the bucket, no upload. The bucket's metadata object carries it
  (and the file's info) like any entry, so another mount of the account sees the trash
  too, and `.Trash-$UID` appears there once that user has something in it.
- Entries made in the trash directory itself (GIO's info file, written before the item
  moves) are kept in the database and the staging directory, never uploaded ("inline",
  at most INLINE_MAX bytes). When an item arrives in `files`, the info file of the same
  name moves to its bucket, so the metadata object carries it (its content inline).
- Restoring is a rename back within the bucket; emptying moves the item to `expunged`
  (GIO's trash backend does) and deletes it, which deletes its chain object.

Each user has their own `.Trash-$UID` (mode 0700; only that user, or root, can make it).
"""

from __future__ import annotations

import errno
import re
import stat
from typing import TYPE_CHECKING

import pyfuse3

from ..catalog.protocol import META_DIR
from .db import ROOT_INODE, Row

if TYPE_CHECKING:
    from .operations import Operations

_ROOT_NAME = re.compile(rb"\.Trash-(\d{1,10})")
#: the subdirectories of a trash directory that list what every bucket holds
VIEWS = (b"files", b"info", b"expunged")
#: the views made with a trash directory that appears on its own (another mount's trash)
_MADE_WITH_ROOT = (b"files", b"info")
#: below a bucket: .deossfs/trash/UID/VIEW
_STORE = (META_DIR.encode(), b"trash")
#: the largest file kept in the trash directory itself (info files are a few hundred bytes)
INLINE_MAX = 64 * 1024
INFO_SUFFIX = b".trashinfo"


def root_uid(name: bytes) -> int | None:
    """The user of a trash directory at the mount root named `name` (`.Trash-1000`)."""
    match = _ROOT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


class Trash:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.db = ops.db
        #: inode -> (uid, view) of the view directories seen so far
        self._views: dict[int, tuple[int, bytes]] = {}

    # ---- where things are ---------------------------------------------------------

    def is_root(self, row: Row) -> bool:
        return row.parent == ROOT_INODE and row.is_dir and root_uid(row.name) is not None

    def view_of(self, ino: int) -> tuple[int, bytes] | None:
        """(uid, view) if `ino` is a view directory (`.Trash-UID/files`)."""
        known = self._views.get(ino)
        if known is not None:
            return known
        row = self.db.get(ino)
        if row is None or not row.is_dir or row.name not in VIEWS or row.parent == ROOT_INODE:
            return None
        parent = self.db.get(row.parent)
        if parent is None or parent.parent != ROOT_INODE:
            return None
        uid = root_uid(parent.name)
        if uid is None:
            return None
        self._views[ino] = (uid, row.name)
        return self._views[ino]

    def forget(self, ino: int) -> None:
        self._views.pop(ino, None)

    def local(self, ino: int) -> bool:
        """Is `ino` in a trash directory's own tree (not in any bucket)?"""
        try:
            parts = self.db.path_parts(ino)
        except KeyError:
            return False
        return bool(parts) and root_uid(parts[0]) is not None

    def stores(self, uid: int, view: bytes) -> list[int]:
        """The inodes of BUCKET/.deossfs/trash/UID/VIEW, over every bucket."""
        return [r[0] for r in self.db.conn.execute(
            "SELECT s.id FROM inodes b"
            " JOIN inodes d ON d.parent = b.id AND d.name = ?"
            " JOIN inodes t ON t.parent = d.id AND t.name = ?"
            " JOIN inodes u ON u.parent = t.id AND u.name = ?"
            " JOIN inodes s ON s.parent = u.id AND s.name = ?"
            " WHERE b.parent = ? AND b.id != ?",
            (*_STORE, str(uid).encode(), view, ROOT_INODE, ROOT_INODE)).fetchall()]

    def _parents(self, view_ino: int) -> list[int]:
        view = self.view_of(view_ino)
        return [view_ino] + (self.stores(*view) if view is not None else [])

    # ---- what a view shows --------------------------------------------------------

    def find(self, view_ino: int, name: bytes) -> Row | None:
        for parent in self._parents(view_ino)[1:]:
            row = self.db.child(parent, name)
            if row is not None:
                return row
        return None

    def children(self, view_ino: int, after_id: int) -> list[Row]:
        rows = [r for parent in self._parents(view_ino) for r in self.db.children(parent, after_id)]
        return sorted(rows, key=lambda r: r.id)

    def link_children(self, view_ino: int, after_id: int) -> list[Row]:
        rows = [r for parent in self._parents(view_ino) for r in self.db.link_children(parent, after_id)]
        return sorted(rows, key=lambda r: r.link_id)

    def has_entries(self, view_ino: int) -> bool:
        return any(self.db.has_children(parent) for parent in self._parents(view_ino))

    def subdirectory_count(self, view_ino: int) -> int:
        return sum(self.db.subdirectory_count(parent) for parent in self._parents(view_ino))

    def holds(self, uid: int) -> bool:
        """Does any bucket hold something in user `uid`'s trash?"""
        return any(self.db.has_children(s) for view in VIEWS for s in self.stores(uid, view))

    # ---- making it ----------------------------------------------------------------

    def make_root(self, uid: int, gid: int, mode: int = 0o700) -> Row:
        """`.Trash-UID` at the mount root."""
        return self.db.insert(ROOT_INODE, f".Trash-{uid}".encode(), "dir", stat.S_IFDIR | (mode & 0o7777),
                              uid, gid)

    def appear(self, uid: int) -> Row:
        """The trash directory of a user whose trash only buckets hold so far (made by
        another mount, or removed here): it appears, with its views."""
        root = self.make_root(uid, self._gid(uid))
        for view in _MADE_WITH_ROOT:
            self.db.insert(root.id, view, "dir", stat.S_IFDIR | 0o700, uid, root.gid)
        return root

    def store_for(self, bucket_ino: int, uid: int, view: bytes) -> int:
        """BUCKET/.deossfs/trash/UID/VIEW, made when missing."""
        ino = bucket_ino
        for name, mode, owner in ((_STORE[0], 0o755, 0), (_STORE[1], 0o755, 0),
                                  (str(uid).encode(), 0o700, uid), (view, 0o700, uid)):
            row = self.db.child(ino, name)
            if row is None:
                row = self.db.insert(ino, name, "dir", stat.S_IFDIR | mode, owner, self._gid(owner))
            ino = row.id
        return ino

    def _gid(self, uid: int) -> int:
        return self.ops.gid if uid == self.ops.uid else uid

    # ---- moving in and out --------------------------------------------------------

    def destination(self, row: Row, new_parent: int) -> int:
        """Where an entry renamed into `new_parent` really goes: into a view, an entry of a
        bucket goes to that bucket's trash; nothing moves between a trash directory's own
        tree and the buckets otherwise (EXDEV, so mv copies)."""
        from_trash = self.local(row.parent)
        view = self.view_of(new_parent)
        if view is not None and not from_trash:
            bucket = self.db.path_parts(row.parent)[0]
            bucket_row = self.db.child(ROOT_INODE, bucket)
            assert bucket_row is not None
            return self.store_for(bucket_row.id, *view)
        if from_trash != self.local(new_parent):
            raise pyfuse3.FUSEError(errno.EXDEV)
        return new_parent

    def adopt_info(self, view_ino: int, item: Row, name: bytes) -> None:
        """`item` arrived in a `files` view as `name`: its info file, written before into the
        trash directory's own `info`, moves to the item's bucket (and so into its metadata)."""
        view = self.view_of(view_ino)
        if view is None or view[1] != b"files":
            return
        root = self.db.get(view_ino)
        info_view = self.db.child(root.parent, b"info") if root is not None else None
        if info_view is None:
            return
        info = self.db.child(info_view.id, name + INFO_SUFFIX)
        if info is None or info.kind != "file" or info.link_id:
            return
        bucket = self.db.path_parts(item.id)[0]
        bucket_row = self.db.child(ROOT_INODE, bucket)
        if bucket_row is None:
            return
        store = self.store_for(bucket_row.id, view[0], b"info")
        stale = self.db.child(store, info.name)
        if stale is not None:
            self.ops._unlink_row(stale)
        self.db.update(info.id, parent=store)
        self.ops.changed(info.id)

    # ---- buckets ------------------------------------------------------------------

    def items_in(self, bucket_ino: int) -> int:
        """Entries of any user's trash kept in this bucket."""
        meta = self.db.child(bucket_ino, _STORE[0])
        if meta is None:
            return 0
        return sum(1 for r in self.db.descendants(meta.id) if not r.is_dir)

    def clear_bucket(self, bucket_ino: int) -> None:
        """Remove the (empty) hidden trash directories of a bucket being removed."""
        meta = self.db.child(bucket_ino, _STORE[0])
        if meta is None:
            return
        for row in reversed(self.db.descendants(meta.id)):
            self.db.delete(row.id)
        self.db.delete(meta.id)
