"""The mount's local state: inodes, xattrs and the upload journal, in one SQLite file.

Only the trio thread touches this connection (S3QL does the same): every query is
local and short, so it runs inline between checkpoints. Other processes
(`deossfs status`) open the file read-only; WAL lets them read while we write.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..processing.encryption import LEGACY_SALT_CONTEXT

ROOT_INODE = 1
#: seconds a journaled file's upload may be put off by further changes (upload_delay)
MAX_UPLOAD_DEFER = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS inodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    kind TEXT NOT NULL,              -- dir | file | symlink | special (fifo, socket, device)
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    target BLOB,                     -- symlink target
    fid TEXT,                        -- durable content on CESS (NULL: empty or never uploaded)
    encrypted INTEGER NOT NULL DEFAULT 1,
    staged INTEGER NOT NULL DEFAULT 0,   -- staging/<id> holds the whole current content
    state TEXT NOT NULL DEFAULT 'stored',-- staged | uploading | stored | failed
    error TEXT,
    generation INTEGER NOT NULL DEFAULT 0,        -- bumped by every content change
    durable_generation INTEGER NOT NULL DEFAULT 0,-- the generation last made durable
    foreign_object INTEGER NOT NULL DEFAULT 0,    -- stored by another CESS tool: defaults
    rdev INTEGER NOT NULL DEFAULT 0,              -- a device node's device number
    inline INTEGER NOT NULL DEFAULT 0,            -- content kept here and in the metadata
                                                  -- object, never uploaded (fs/trash.py)
    UNIQUE (parent, name)
);
-- hard links: names of an inode besides its own (parent, name) above, which is the name
-- the file is uploaded under; a name is unique across both tables (checked in Operations)
CREATE TABLE IF NOT EXISTS links (
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX IF NOT EXISTS links_by_ino ON links (ino);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
);
-- the journal: every closed-but-not-yet-durable file
CREATE TABLE IF NOT EXISTS uploads (
    ino INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL,
    queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT,
    done_bytes INTEGER NOT NULL DEFAULT 0,
    total_bytes INTEGER NOT NULL DEFAULT 0,
    path TEXT NOT NULL DEFAULT '',
    salt_context BLOB                -- kept across retries: a retry has the same FID
);
-- chain files to delete once nothing refers to them (replaced or unlinked)
-- files whose FID must be declared again under their current name (after a rename)
CREATE TABLE IF NOT EXISTS declares (ino INTEGER PRIMARY KEY);
-- files with writes not journaled yet (open for writing): after a crash, the next mount
-- journals what was written, as a local file system keeps it
CREATE TABLE IF NOT EXISTS writing (ino INTEGER PRIMARY KEY);
-- names removed through this mount lately (unlink, rmdir, the old name of a rename), with
-- when: a metadata object merged with another mount's must not bring them back
CREATE TABLE IF NOT EXISTS removed (
    bucket TEXT NOT NULL, path TEXT NOT NULL, at_ns INTEGER NOT NULL,
    PRIMARY KEY (bucket, path)
);
CREATE TABLE IF NOT EXISTS chain_deletes (fid TEXT PRIMARY KEY, queued_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    dirty INTEGER NOT NULL DEFAULT 0,     -- metadata changed since the last save
    meta_fid TEXT,                         -- the metadata object last loaded or saved
    refreshed_at REAL NOT NULL DEFAULT 0
);
"""


@dataclass
class Row:
    id: int
    parent: int
    name: bytes
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None
    fid: str | None
    encrypted: int
    staged: int
    state: str
    error: str | None
    generation: int
    durable_generation: int
    foreign_object: int
    rdev: int
    inline: int
    #: not a column: the hard link this row was found through (0: the inode's own name),
    #: whose parent and name it then carries
    link_id: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


COLUMNS = [f for f in Row.__dataclass_fields__ if f != "link_id"]


def now_ns() -> int:
    return time.time_ns()


class Database:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # durability of the journal matters (kill -9 must lose no closed file): FULL
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.executescript(SCHEMA)
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(uploads)")}
        if "salt_context" not in columns:  # a workspace from before retries kept their FID
            self.conn.execute("ALTER TABLE uploads ADD COLUMN salt_context BLOB")
        if self.conn.execute("PRAGMA user_version").fetchone()[0] < 1:
            # salts now hash the plaintext with GMAC: an upload journaled before keeps the
            # SHA-256 salts its first attempt may have declared a storage order with
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                rows = self.conn.execute("SELECT ino, salt_context FROM uploads"
                                         " WHERE salt_context IS NOT NULL").fetchall()
                self.conn.executemany("UPDATE uploads SET salt_context=? WHERE ino=?",
                                      [(LEGACY_SALT_CONTEXT + bytes(ctx), ino) for ino, ctx in rows])
                self.conn.execute("PRAGMA user_version = 1")
        inode_columns = {r[1] for r in self.conn.execute("PRAGMA table_info(inodes)")}
        for column in ("rdev", "inline"):  # workspaces from before these columns
            if column not in inode_columns:
                self.conn.execute(f"ALTER TABLE inodes ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        if self.get(ROOT_INODE) is None:
            t = now_ns()
            self.conn.execute(
                "INSERT INTO inodes (id, parent, name, kind, mode, uid, gid, atime_ns, mtime_ns,"
                " ctime_ns) VALUES (?, ?, ?, 'dir', ?, 0, 0, ?, ?, ?)",
                (ROOT_INODE, ROOT_INODE, b"", stat.S_IFDIR | 0o755, t, t, t),
            )

    def close(self) -> None:
        self.conn.close()

    # ---- inodes -----------------------------------------------------------

    def _row(self, values: tuple | None) -> Row | None:
        return Row(*values) if values else None

    def get(self, ino: int) -> Row | None:
        cur = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM inodes WHERE id=?", (ino,))
        return self._row(cur.fetchone())

    def child(self, parent: int, name: bytes) -> Row | None:
        """The inode named `name` in `parent`, by its own name or by a hard link."""
        cur = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM inodes WHERE parent=? AND name=? AND id != ?",
            (parent, name, ROOT_INODE),
        )
        row = self._row(cur.fetchone())
        if row is not None:
            return row
        link = self.conn.execute("SELECT id, ino FROM links WHERE parent=? AND name=?", (parent, name)).fetchone()
        if link is None:
            return None
        row = self.get(link[1])
        return replace(row, parent=parent, name=name, link_id=link[0]) if row is not None else None

    def link_children(self, parent: int, after_id: int = 0) -> list[Row]:
        """The inodes hard-linked into `parent`, each under its link's name, by link id."""
        out = []
        for link_id, name, ino in self.conn.execute(
                "SELECT id, name, ino FROM links WHERE parent=? AND id > ? ORDER BY id", (parent, after_id)).fetchall():
            row = self.get(ino)
            if row is not None:
                out.append(replace(row, parent=parent, name=name, link_id=link_id))
        return out

    def add_link(self, ino: int, parent: int, name: bytes) -> None:
        self.conn.execute("INSERT INTO links (parent, name, ino) VALUES (?, ?, ?)", (parent, name, ino))

    def move_link(self, link_id: int, parent: int, name: bytes) -> None:
        self.conn.execute("UPDATE links SET parent=?, name=? WHERE id=?", (parent, name, link_id))

    def remove_link(self, link_id: int) -> None:
        self.conn.execute("DELETE FROM links WHERE id=?", (link_id,))

    def link_count(self, ino: int) -> int:
        """How many hard links the inode has besides its own name."""
        return self.conn.execute("SELECT COUNT(*) FROM links WHERE ino=?", (ino,)).fetchone()[0]

    def swap_with_link(self, link_id: int) -> None:
        """The link's name becomes the inode's own name, and its own name the link's."""
        parent, name, ino = self.conn.execute("SELECT parent, name, ino FROM links WHERE id=?", (link_id,)).fetchone()
        own = self.conn.execute("SELECT parent, name FROM inodes WHERE id=?", (ino,)).fetchone()
        self.conn.execute("UPDATE links SET parent=?, name=? WHERE id=?", (*own, link_id))
        self.update(ino, parent=parent, name=name)

    def promote_link(self, ino: int) -> bool:
        """The inode's own name goes: its oldest hard link becomes its name. False if
        it has none."""
        link = self.conn.execute("SELECT id, parent, name FROM links WHERE ino=? ORDER BY id LIMIT 1",
                                 (ino,)).fetchone()
        if link is None:
            return False
        self.conn.execute("DELETE FROM links WHERE id=?", (link[0],))
        self.update(ino, parent=link[1], name=link[2])
        return True

    def children(self, parent: int, after_id: int = 0) -> list[Row]:
        cur = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM inodes WHERE parent=? AND id > ? AND id != ?"
            " ORDER BY id",
            (parent, after_id, ROOT_INODE),
        )
        return [Row(*v) for v in cur.fetchall()]

    def file_fids(self) -> dict[int, str]:
        """inode -> FID of every file stored on the chain."""
        return dict(self.conn.execute("SELECT id, fid FROM inodes WHERE fid IS NOT NULL"))

    def files_with_hashed_names(self, parent: int) -> list[Row]:
        """The files in `parent` whose name has the form of a hashed chain name
        (names.is_hashed_name: the caller checks the digits); the range scan keeps a
        bucket's refresh from reading every entry."""
        cur = self.conn.execute(
            f"SELECT {', '.join(COLUMNS)} FROM inodes WHERE parent=? AND name >= ? AND name < ?"
            " AND length(name) = 50 AND kind = 'file'",
            (parent, b"~k", b"~l"),
        )
        return [Row(*v) for v in cur.fetchall()]

    def subdirectory_count(self, parent: int) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM inodes WHERE parent=? AND kind='dir' AND id != ?",
                                 (parent, ROOT_INODE)).fetchone()[0]

    def has_children(self, parent: int) -> bool:
        cur = self.conn.execute("SELECT 1 FROM inodes WHERE parent=? AND id != ? LIMIT 1",
                                (parent, ROOT_INODE))
        if cur.fetchone() is not None:
            return True
        return self.conn.execute("SELECT 1 FROM links WHERE parent=? LIMIT 1", (parent,)).fetchone() is not None

    def insert(self, parent: int, name: bytes, kind: str, mode: int, uid: int, gid: int,
               **extra: object) -> Row:
        t = now_ns()
        values = {"parent": parent, "name": name, "kind": kind, "mode": mode, "uid": uid,
                  "gid": gid, "atime_ns": t, "mtime_ns": t, "ctime_ns": t, **extra}
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.conn.execute(f"INSERT INTO inodes ({cols}) VALUES ({marks})", tuple(values.values()))
        row = self.get(cur.lastrowid)  # type: ignore[arg-type]
        assert row is not None
        return row

    def update(self, ino: int, **values: object) -> None:
        if not values:
            return
        sets = ", ".join(f"{k}=?" for k in values)
        self.conn.execute(f"UPDATE inodes SET {sets} WHERE id=?", (*values.values(), ino))

    def delete(self, ino: int) -> None:
        self.conn.execute("DELETE FROM inodes WHERE id=?", (ino,))
        self.conn.execute("DELETE FROM links WHERE ino=?", (ino,))
        self.conn.execute("DELETE FROM xattrs WHERE ino=?", (ino,))
        self.conn.execute("DELETE FROM uploads WHERE ino=?", (ino,))
        self.conn.execute("DELETE FROM writing WHERE ino=?", (ino,))

    def path_parts(self, ino: int) -> list[bytes]:
        """Names from the root down to `ino` (the first is the bucket)."""
        parts: list[bytes] = []
        while ino != ROOT_INODE:
            row = self.conn.execute("SELECT parent, name FROM inodes WHERE id=?", (ino,)).fetchone()
            if row is None:
                raise KeyError(ino)
            parts.append(row[1])
            ino = row[0]
        return list(reversed(parts))

    def files_with_fid(self, fid: str) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT id FROM inodes WHERE fid=?", (fid,))]

    def descendants(self, ino: int) -> list[Row]:
        """Every inode below `ino` (not `ino` itself)."""
        out: list[Row] = []
        stack = [ino]
        while stack:
            for row in self.children(stack.pop()):
                out.append(row)
                if row.is_dir:
                    stack.append(row.id)
        return out

    # ---- xattrs ----------------------------------------------------------

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        row = self.conn.execute("SELECT value FROM xattrs WHERE ino=? AND name=?", (ino, name)).fetchone()
        return row[0] if row else None

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        return {n: v for n, v in self.conn.execute("SELECT name, value FROM xattrs WHERE ino=?", (ino,))}

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.conn.execute("INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)", (ino, name, value))

    def remove_xattr(self, ino: int, name: bytes) -> bool:
        return self.conn.execute("DELETE FROM xattrs WHERE ino=? AND name=?", (ino, name)).rowcount > 0

    # ---- the upload journal ------------------------------------------------

    def enqueue(self, ino: int, generation: int, total: int, path: str, delay: float = 0.0) -> None:
        """Journal version `generation` of `ino`; its upload may start `delay` s from now,
        but no later than MAX_UPLOAD_DEFER after the file was first journaled: a file
        changed (and closed or fsynced) more often than `delay` still reaches the network."""
        now = time.time()
        self.conn.execute(
            "INSERT INTO uploads (ino, generation, queued_at, next_try, total_bytes, path, salt_context)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(ino) DO UPDATE SET generation=excluded.generation,"
            " next_try=MIN(excluded.next_try, uploads.queued_at + ?),"
            " attempts=0, error=NULL, total_bytes=excluded.total_bytes, done_bytes=0, path=excluded.path",
            (ino, generation, now, now + delay, total, path, os.urandom(16), MAX_UPLOAD_DEFER),
        )

    def upload_now(self, ino: int) -> None:
        """Someone waits for `ino` to be durable: skip the settle delay (not a retry's backoff)."""
        self.conn.execute("UPDATE uploads SET next_try=0 WHERE ino=? AND attempts=0", (ino,))

    def salt_context(self, ino: int) -> bytes | None:
        row = self.conn.execute("SELECT salt_context FROM uploads WHERE ino=?", (ino,)).fetchone()
        return row[0] if row else None

    def mark_writing(self, ino: int) -> None:
        self.conn.execute("INSERT OR IGNORE INTO writing (ino) VALUES (?)", (ino,))

    def done_writing(self, ino: int) -> None:
        self.conn.execute("DELETE FROM writing WHERE ino=?", (ino,))

    def interrupted_writes(self) -> list[int]:
        return [r[0] for r in self.conn.execute("SELECT ino FROM writing ORDER BY ino")]

    def pending_uploads(self) -> list[tuple]:
        return self.conn.execute(
            "SELECT ino, generation, attempts, next_try, error, done_bytes, total_bytes, path"
            " FROM uploads ORDER BY queued_at").fetchall()

    def upload_progress(self, ino: int, done: int) -> None:
        self.conn.execute("UPDATE uploads SET done_bytes=? WHERE ino=?", (done, ino))

    def upload_failed(self, ino: int, error: str, retry_in: float) -> None:
        self.conn.execute(
            "UPDATE uploads SET attempts=attempts+1, error=?, next_try=? WHERE ino=?",
            (error, time.time() + retry_in, ino))

    def upload_done(self, ino: int, generation: int) -> None:
        self.conn.execute("DELETE FROM uploads WHERE ino=? AND generation=?", (ino, generation))

    # ---- removed names ------------------------------------------------------

    def record_removal(self, bucket: str, path: str, at_ns: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO removed (bucket, path, at_ns) VALUES (?, ?, ?)",
                          (bucket, path, at_ns))

    def removals(self, bucket: str, since_ns: int) -> dict[str, int]:
        """path -> when, for the bucket's names removed since `since_ns` (older ones are
        forgotten here)."""
        self.conn.execute("DELETE FROM removed WHERE at_ns < ?", (since_ns,))
        return dict(self.conn.execute("SELECT path, at_ns FROM removed WHERE bucket=?", (bucket,)).fetchall())

    # ---- chain deletes and buckets -------------------------------------------

    def queue_chain_delete(self, fid: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO chain_deletes (fid, queued_at) VALUES (?, ?)", (fid, time.time()))

    def chain_deletes(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT fid FROM chain_deletes")]

    def chain_delete_done(self, fid: str) -> None:
        self.conn.execute("DELETE FROM chain_deletes WHERE fid=?", (fid,))

    def bucket_state(self, name: str) -> tuple[int, str | None, float]:
        row = self.conn.execute("SELECT dirty, meta_fid, refreshed_at FROM buckets WHERE name=?", (name,)).fetchone()
        return (row[0], row[1], row[2]) if row else (0, None, 0.0)

    def set_bucket_state(self, name: str, **values: object) -> None:
        self.conn.execute("INSERT OR IGNORE INTO buckets (name) VALUES (?)", (name,))
        sets = ", ".join(f"{k}=?" for k in values)
        self.conn.execute(f"UPDATE buckets SET {sets} WHERE name=?", (*values.values(), name))

    def dirty_buckets(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM buckets WHERE dirty=1")]
