"""The catalog's local index: one owner's buckets as entries of their metadata objects,
in SQLite, with the S3 key of each so that lookups and listings are one indexed query.

Only the trio thread uses the connection (as the mount does with its database): every
statement is local and short. Keys are stored as UTF-8 bytes (BLOB), so ORDER BY and
ranges are S3's order - UTF-8 byte order - exactly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .names import path_key
from .protocol import REMOVALS_KEPT_NS, decode_xattrs
from .records import EMPTY_MD5, ListedObject, etag_for, has_s3_attributes

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    bucket TEXT NOT NULL,
    path TEXT NOT NULL,           -- below the bucket, as in the metadata object
    parent TEXT NOT NULL,         -- the directory it is in ('' at the top)
    kind TEXT NOT NULL,           -- file | dir | symlink | special | link
    key BLOB,                     -- its S3 key (UTF-8), NULL when it is no S3 object
    marked INTEGER NOT NULL DEFAULT 0, -- a directory that is an S3 folder object
    fid TEXT,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    etag TEXT,
    target TEXT,                  -- a hard link's file
    foreign_object INTEGER NOT NULL DEFAULT 0, -- on the chain, named by no metadata object
    seq INTEGER NOT NULL,         -- the index's change counter when it last changed (order)
    entry TEXT NOT NULL,          -- the metadata object's entry (JSON), published as it is
    PRIMARY KEY (bucket, path)
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_by_key ON entries (bucket, key);
CREATE INDEX IF NOT EXISTS entries_by_parent ON entries (bucket, parent);
CREATE INDEX IF NOT EXISTS entries_by_fid ON entries (bucket, fid);
CREATE INDEX IF NOT EXISTS entries_by_target ON entries (bucket, target);
-- names removed through this catalog lately, published in the metadata object
CREATE TABLE IF NOT EXISTS removed (
    bucket TEXT NOT NULL, path TEXT NOT NULL, at_ns INTEGER NOT NULL,
    PRIMARY KEY (bucket, path)
);
-- what the chain says of a FID in a bucket: its file_name and size (they never change)
CREATE TABLE IF NOT EXISTS chain_files (
    bucket TEXT NOT NULL, fid TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (bucket, fid)
);
-- FIDs to delete from the chain once nothing names them (done_at: deleted, kept a while
-- so that a listing made before the delete does not bring them back as foreign objects)
CREATE TABLE IF NOT EXISTS chain_deletes (
    fid TEXT PRIMARY KEY, bucket TEXT NOT NULL, queued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, done_at REAL
);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    dirty INTEGER NOT NULL DEFAULT 0,  -- changed since the last save of its metadata object
    meta_fid TEXT,                     -- the metadata object last loaded or saved
    created_ns INTEGER                 -- when this index first saw it (created it, or listed it)
);
"""

_COLUMNS = ("bucket", "path", "kind", "key", "marked", "fid", "size", "mtime_ns", "ctime_ns",
            "etag", "target", "foreign_object", "seq", "entry")


@dataclass(frozen=True)
class Entry:
    bucket: str
    path: str
    kind: str
    key: str | None
    marked: bool
    fid: str | None
    size: int
    mtime_ns: int
    ctime_ns: int
    etag: str | None
    target: str | None
    foreign_object: bool
    seq: int
    entry: dict

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def _after(prefix: bytes) -> bytes | None:
    """The least byte string above every string that starts with `prefix` (None: none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class CatalogIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # a record_put answered to a client must survive a crash of the gateway
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.executescript(SCHEMA)
        if "created_ns" not in {row[1] for row in self.conn.execute("PRAGMA table_info(buckets)")}:
            self.conn.execute("ALTER TABLE buckets ADD COLUMN created_ns INTEGER")  # older indexes
        self.seq = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM entries").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    # ---- entries --------------------------------------------------------------------

    def _entry(self, row: tuple | None) -> Entry | None:
        if row is None:
            return None
        values = dict(zip(_COLUMNS, row, strict=True))
        values["key"] = values["key"].decode() if values["key"] is not None else None
        values["marked"] = bool(values["marked"])
        values["foreign_object"] = bool(values["foreign_object"])
        values["entry"] = json.loads(values["entry"])
        return Entry(**values)

    def _select(self, where: str, args: tuple) -> list[Entry]:
        rows = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE {where}", args)
        return [self._entry(r) for r in rows.fetchall()]  # type: ignore[misc]

    def get(self, bucket: str, path: str) -> Entry | None:
        found = self._select("bucket=? AND path=?", (bucket, path))
        return found[0] if found else None

    def by_key(self, bucket: str, key: str) -> Entry | None:
        found = self._select("bucket=? AND key=?", (bucket, key.encode()))
        return found[0] if found else None

    def all(self, bucket: str) -> list[Entry]:
        """Every entry of a bucket, a directory before what it holds (path order)."""
        return self._select("bucket=? ORDER BY path", (bucket,))

    def children(self, bucket: str, path: str) -> list[Entry]:
        return self._select("bucket=? AND parent=?", (bucket, path))

    def has_children(self, bucket: str, path: str) -> bool:
        return self.conn.execute("SELECT 1 FROM entries WHERE bucket=? AND parent=? LIMIT 1",
                                 (bucket, path)).fetchone() is not None

    def links_to(self, bucket: str, path: str) -> list[Entry]:
        return self._select("bucket=? AND kind='link' AND target=? ORDER BY seq", (bucket, path))

    def with_hashed_names(self, bucket: str) -> list[Entry]:
        """The files whose path has the form of a hashed chain name (names.is_hashed_name:
        the caller checks the digits); a range scan, not the whole bucket."""
        return self._select("bucket=? AND path >= '~k' AND path < '~l' AND length(path) = 50"
                            " AND kind = 'file'", (bucket,))

    def with_fid(self, bucket: str, fid: str) -> list[Entry]:
        return self._select("bucket=? AND fid=?", (bucket, fid))

    def fids(self, bucket: str) -> set[str]:
        return {r[0] for r in self.conn.execute(
            "SELECT DISTINCT fid FROM entries WHERE bucket=? AND fid IS NOT NULL", (bucket,))}

    def stored_files(self, bucket: str) -> list[tuple[str, str]]:
        """(path, FID) of the files with content."""
        return self.conn.execute("SELECT path, fid FROM entries WHERE bucket=? AND "
                                 "kind='file' AND fid IS NOT NULL", (bucket,)).fetchall()

    def named(self, fid: str) -> bool:
        """Does any entry of any bucket name this FID?"""
        return self.conn.execute("SELECT 1 FROM entries WHERE fid=? LIMIT 1", (fid,)).fetchone() is not None

    def put(self, bucket: str, entry: dict, *, foreign: bool = False) -> Entry:
        """Insert or replace the entry at entry["p"]."""
        path, kind = entry["p"], entry["k"]
        key = None
        if kind in ("file", "link"):
            key = path_key(path)
        elif kind == "dir":
            key = path_key(path, is_dir=True)
        fid = entry.get("f") if kind == "file" else None
        self.seq += 1
        values = {
            "bucket": bucket, "path": path, "kind": kind,
            "key": key.encode() if key is not None else None,
            "marked": int(kind == "dir" and has_s3_attributes(entry)),
            "fid": fid, "size": entry.get("s", 0) if kind == "file" else 0,
            "mtime_ns": entry.get("t", 0), "ctime_ns": entry.get("c", 0),
            "etag": etag_for(fid, decode_xattrs(entry)) if kind == "file" else None,
            "target": entry.get("i") if kind == "link" else None,
            "foreign_object": int(foreign), "seq": self.seq,
            "entry": json.dumps(entry, separators=(",", ":")),
        }
        self.conn.execute(
            f"INSERT OR REPLACE INTO entries (parent, {', '.join(_COLUMNS)}) "
            f"VALUES (?, {', '.join('?' * len(_COLUMNS))})",
            (parent_of(path), *(values[c] for c in _COLUMNS)))
        values["key"] = key
        values["entry"] = entry
        return Entry(**values)  # type: ignore[arg-type]

    def remove(self, bucket: str, path: str) -> None:
        self.conn.execute("DELETE FROM entries WHERE bucket=? AND path=?", (bucket, path))

    def drop_bucket(self, bucket: str) -> None:
        for table in ("entries", "removed", "chain_files"):
            self.conn.execute(f"DELETE FROM {table} WHERE bucket=?", (bucket,))
        self.conn.execute("DELETE FROM buckets WHERE name=?", (bucket,))

    def entries_json(self, bucket: str) -> Iterator[str]:
        """The published form of every entry, directories before their contents."""
        for (text,) in self.conn.execute("SELECT entry FROM entries WHERE bucket=? ORDER BY path",
                                         (bucket,)):
            yield text

    # ---- listing -----------------------------------------------------------------------

    _LISTED = (
        "SELECT e.key, COALESCE(t.size, e.size), COALESCE(t.etag, e.etag), "
        "COALESCE(t.mtime_ns, e.mtime_ns), e.kind FROM entries e "
        "LEFT JOIN entries t ON e.kind = 'link' AND t.bucket = e.bucket AND t.path = e.target "
        "WHERE e.bucket = ? AND e.key {op} ? {bounds} "
        # a directory is an object (`dir/`) when it is an S3 folder or empty
        "AND (e.kind != 'dir' OR e.marked OR NOT EXISTS "
        "(SELECT 1 FROM entries c WHERE c.bucket = e.bucket AND c.parent = e.path)) "
        "ORDER BY e.key LIMIT ?"
    )

    def _listed(self, bucket: str, lower: bytes, prefix: bytes, limit: int,
                inclusive: bool = False) -> list[ListedObject]:
        """Up to `limit` objects with keys above `lower` (or from it: `inclusive`) that start
        with `prefix`, in key order."""
        bounds, args = "", [bucket, lower]
        if prefix:
            bounds = "AND e.key >= ?"
            args.append(prefix)
            end = _after(prefix)
            if end is not None:
                bounds += " AND e.key < ?"
                args.append(end)
        args.append(limit)
        query = self._LISTED.format(op=">=" if inclusive else ">", bounds=bounds)
        rows = self.conn.execute(query, args).fetchall()
        return [ListedObject(key.decode(), size, etag or EMPTY_MD5, mtime)  # a folder: no bytes
                for key, size, etag, mtime, _kind in rows]

    def totals(self, bucket: str) -> tuple[int, int]:
        """(objects, bytes) of a bucket, counted as its listing counts them."""
        row = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(COALESCE(t.size, e.size)), 0) FROM entries e "
            "LEFT JOIN entries t ON e.kind = 'link' AND t.bucket = e.bucket AND t.path = e.target "
            "WHERE e.bucket = ? AND e.key IS NOT NULL "
            "AND (e.kind != 'dir' OR e.marked OR NOT EXISTS "
            "(SELECT 1 FROM entries c WHERE c.bucket = e.bucket AND c.parent = e.path))",
            (bucket,)).fetchone()
        return int(row[0]), int(row[1])

    def list_page(self, bucket: str, prefix: str, start_after: str, limit: int,
                  delimiter: str) -> tuple[list[ListedObject], list[str], bool, str | None]:
        """Objects and common prefixes after `start_after`, at most `limit` in all."""
        raw_prefix, delim = prefix.encode(), delimiter.encode()
        after = start_after.encode()
        cursor, inclusive = after, False
        objects: list[ListedObject] = []
        prefixes: list[str] = []
        last: str | None = None
        while len(objects) + len(prefixes) < limit:
            wanted = limit - len(objects) - len(prefixes) + 1
            batch = self._listed(bucket, cursor, raw_prefix, wanted, inclusive)
            if not batch:
                return objects, prefixes, False, last
            for item in batch:
                key = item.key.encode()
                cut = key.find(delim, len(raw_prefix)) if delim else -1
                if cut >= 0:
                    common = key[: cut + len(delim)]
                    # a prefix the caller started within or after was on an earlier page
                    if common > after:
                        prefixes.append(common.decode())
                        last = prefixes[-1]
                    following = _after(common)
                    if following is None:
                        return objects, prefixes, False, last
                    # everything below the prefix rolls up into it: go on after it
                    cursor, inclusive = following, True
                    break
                objects.append(item)
                last = item.key
                cursor, inclusive = key, False
                if len(objects) + len(prefixes) >= limit:
                    break
        more = self._listed(bucket, cursor, raw_prefix, 1, inclusive)
        return objects, prefixes, bool(more), last

    # ---- removals, chain files, deletes, bucket state ------------------------------------

    def record_removal(self, bucket: str, path: str, at_ns: int) -> None:
        self.conn.execute("INSERT OR REPLACE INTO removed (bucket, path, at_ns) VALUES (?, ?, ?)",
                          (bucket, path, at_ns))

    def removals(self, bucket: str, now_ns: int) -> dict[str, int]:
        self.conn.execute("DELETE FROM removed WHERE at_ns < ?", (now_ns - REMOVALS_KEPT_NS,))
        return dict(self.conn.execute("SELECT path, at_ns FROM removed WHERE bucket=?", (bucket,)))

    def chain_files(self, bucket: str) -> dict[str, tuple[str, int]]:
        return {fid: (name, size) for fid, name, size in self.conn.execute(
            "SELECT fid, name, size FROM chain_files WHERE bucket=?", (bucket,))}

    def set_chain_files(self, bucket: str, files: dict[str, tuple[str, int]],
                        listed: set[str]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO chain_files VALUES (?, ?, ?, ?)",
                              [(bucket, fid, name, size) for fid, (name, size) in files.items()])
        known = self.chain_files(bucket)
        self.conn.executemany("DELETE FROM chain_files WHERE bucket=? AND fid=?",
                              [(bucket, fid) for fid in known if fid not in listed])

    def queue_delete(self, bucket: str, fid: str, now: float) -> None:
        self.conn.execute("INSERT OR REPLACE INTO chain_deletes (fid, bucket, queued_at) "
                          "VALUES (?, ?, ?)", (fid, bucket, now))

    def unqueue_delete(self, fid: str) -> None:
        self.conn.execute("DELETE FROM chain_deletes WHERE fid=? AND done_at IS NULL", (fid,))

    def pending_deletes(self) -> list[tuple[str, str, int]]:
        return self.conn.execute("SELECT fid, bucket, attempts FROM chain_deletes "
                                 "WHERE done_at IS NULL ORDER BY queued_at").fetchall()

    def deleting(self, bucket: str) -> set[str]:
        """FIDs deleted lately or still to delete: not foreign objects when listed."""
        return {r[0] for r in self.conn.execute("SELECT fid FROM chain_deletes WHERE bucket=?", (bucket,))}

    def delete_done(self, fid: str, now: float, keep_seconds: float) -> None:
        self.conn.execute("UPDATE chain_deletes SET done_at=? WHERE fid=?", (now, fid))
        self.conn.execute("DELETE FROM chain_deletes WHERE done_at < ?", (now - keep_seconds,))

    def delete_failed(self, fid: str) -> None:
        self.conn.execute("UPDATE chain_deletes SET attempts = attempts + 1 WHERE fid=?", (fid,))

    def bucket_state(self, bucket: str) -> tuple[bool, str | None]:
        row = self.conn.execute("SELECT dirty, meta_fid FROM buckets WHERE name=?", (bucket,)).fetchone()
        return (bool(row[0]), row[1]) if row else (False, None)

    def set_bucket_state(self, bucket: str, *, dirty: bool | None = None,
                         meta_fid: str | None = None) -> None:
        self.conn.execute("INSERT OR IGNORE INTO buckets (name) VALUES (?)", (bucket,))
        if dirty is not None:
            self.conn.execute("UPDATE buckets SET dirty=? WHERE name=?", (int(dirty), bucket))
        if meta_fid is not None:
            self.conn.execute("UPDATE buckets SET meta_fid=? WHERE name=?", (meta_fid, bucket))

    def bucket_created(self, bucket: str, at_ns: int) -> None:
        """`bucket` was created just now (by this index's owner, through it)."""
        self.conn.execute("INSERT INTO buckets (name, created_ns) VALUES (?, ?) ON CONFLICT(name) "
                          "DO UPDATE SET created_ns=excluded.created_ns", (bucket, at_ns))

    def bucket_dates(self, buckets: list[str], now_ns: int) -> dict[str, int]:
        """When this index first saw each of `buckets`, the owner's buckets as listed now
        (the chain keeps no creation time): those seen for the first time are dated now,
        and buckets no longer listed forget their date, so one created again elsewhere
        is dated again. Writes (and syncs) only when a date changes."""
        known = dict(self.conn.execute("SELECT name, created_ns FROM buckets").fetchall())
        listed = set(buckets)
        gone = [name for name, created in known.items() if created is not None and name not in listed]
        new = [name for name in listed if known.get(name) is None]
        if gone or new:
            with self.transaction():
                for name in gone:
                    self.conn.execute("UPDATE buckets SET created_ns=NULL WHERE name=?", (name,))
                for name in new:
                    self.bucket_created(name, now_ns)
                    known[name] = now_ns
        return {name: known[name] for name in buckets}

    def dirty_buckets(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM buckets WHERE dirty=1")]


class _Transaction:
    """BEGIN ... COMMIT around a group of changes (one fsync, and all or nothing)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
