"""S3 multipart uploads: parts staged on local disk and journaled, composed at Complete.

Each part is a 0600 file under `<workspace>/gateway/multipart/<upload id>/`, recorded in
SQLite (synchronous=FULL) once its body is whole and verified, so a gateway restart loses
no uploaded part. A part uploaded again replaces the earlier one. Complete checks the
list it is given (InvalidPart, InvalidPartOrder, EntityTooSmall), then the caller stores
the parts as one file — read in place through `PartsReader`, never concatenated — and
the upload is removed. Uploads left incomplete are dropped after
`gateway.multipart_expiry_days`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..journal import DurableJournal
from .context import NoSuchUpload, S3Error

#: S3's bounds: part numbers, parts but the last at least 5 MiB, at most 10,000 parts
MAX_PART_NUMBER = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL, key BLOB NOT NULL,
    attributes TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_by_bucket ON uploads (owner, bucket, key, created);
CREATE TABLE IF NOT EXISTS parts (
    upload TEXT NOT NULL, number INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    file TEXT NOT NULL, modified REAL NOT NULL, checksum TEXT, PRIMARY KEY (upload, number));
-- completed uploads, kept a while: a client that retries its Complete (a timeout, a
-- dropped connection) gets the same answer, not NoSuchUpload
CREATE TABLE IF NOT EXISTS completed (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL, key BLOB NOT NULL,
    etag TEXT NOT NULL, at REAL NOT NULL, checksum TEXT);
"""
#: columns added since the first schema: (table, column, type)
_ADDED_COLUMNS = (("parts", "checksum", "TEXT"), ("completed", "checksum", "TEXT"))
#: how long a completed upload answers a repeated Complete
COMPLETED_KEPT = 24 * 3600.0


@dataclass(frozen=True)
class Upload:
    id: str
    owner: str
    bucket: str
    key: str
    #: content type, user metadata and stored headers given at CreateMultipartUpload
    attributes: dict[str, Any]
    created: float


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str  # hex MD5, unquoted
    file: str
    modified: float
    #: base64, of the algorithm the upload was created with (None: created without one)
    checksum: str | None = None


class MultipartStore(DurableJournal):
    """The journal and staging area of multipart uploads. Blocking (SQLite): call it from
    worker threads; safe from several."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().__init__(directory / "multipart.sqlite3", _SCHEMA)
        for table, column, kind in _ADDED_COLUMNS:  # a journal written by an earlier version
            if column not in {row[1] for row in self._run(f"PRAGMA table_info({table})")}:
                self._run(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # ---- uploads --------------------------------------------------------------------

    def create(self, owner: str, bucket: str, key: str, attributes: dict[str, Any]) -> Upload:
        upload = Upload(uuid.uuid4().hex + uuid.uuid4().hex[:8], owner, bucket, key, attributes,
                        time.time())
        (self.directory / upload.id).mkdir(mode=0o700)
        self._run("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                  (upload.id, owner, bucket, key.encode(), json.dumps(attributes), upload.created))
        return upload

    def get(self, upload_id: str, owner: str, bucket: str, key: str) -> Upload:
        """The upload, if it is this account's, of this bucket and key (NoSuchUpload)."""
        rows = self._run("SELECT id, owner, bucket, key, attributes, created FROM uploads WHERE id=?",
                         (upload_id,))
        if not rows or rows[0][1] != owner or rows[0][2] != bucket or rows[0][3] != key.encode():
            raise NoSuchUpload("The specified upload does not exist. The upload ID may be invalid, "
                               "or the upload may have been aborted or completed.")
        row = rows[0]
        return Upload(row[0], row[1], row[2], row[3].decode(), json.loads(row[4]), row[5])

    def uploads(self, owner: str, bucket: str, prefix: str = "", key_marker: str = "",
                upload_marker: str = "", limit: int = 1000) -> list[Upload]:
        """Uploads in progress, by key (UTF-8 order) then start time, after the markers."""
        rows = self._run(
            "SELECT id, owner, bucket, key, attributes, created FROM uploads WHERE owner=? AND "
            "bucket=? AND substr(key, 1, ?)=? ORDER BY key, created, id",
            (owner, bucket, len(prefix.encode()), prefix.encode()))
        out = []
        marker = key_marker.encode()
        passed_upload = not upload_marker
        for row in rows:
            if row[3] < marker:
                continue
            if row[3] == marker and key_marker:
                if not upload_marker:
                    continue
                if not passed_upload:
                    passed_upload = row[0] == upload_marker
                    continue
            out.append(Upload(row[0], row[1], row[2], row[3].decode(), json.loads(row[4]), row[5]))
            if len(out) > limit:
                break
        return out

    def completed(self, upload_id: str, owner: str
                  ) -> tuple[str, str, str, tuple[str, str, str] | None] | None:
        """(bucket, key, etag, checksum) of an upload completed lately, for a repeated
        Complete."""
        rows = self._run("SELECT bucket, key, etag, checksum FROM completed WHERE id=? AND owner=?",
                         (upload_id, owner))
        if not rows:
            return None
        words = (rows[0][3] or "").split(" ")
        checksum = (words[0], words[1], words[2]) if len(words) == 3 else None
        return rows[0][0], rows[0][1].decode(), rows[0][2], checksum

    def finish(self, upload: Upload, etag: str, checksum: tuple[str, str, str] | None = None) -> None:
        """The upload is stored: remember its answer, drop its parts."""
        self._run("INSERT OR REPLACE INTO completed VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (upload.id, upload.owner, upload.bucket, upload.key.encode(), etag, time.time(),
                   " ".join(checksum) if checksum else None))
        self._run("DELETE FROM completed WHERE at < ?", (time.time() - COMPLETED_KEPT,))
        self.remove(upload)

    def remove(self, upload: Upload) -> None:
        self._run("DELETE FROM parts WHERE upload=?", (upload.id,))
        self._run("DELETE FROM uploads WHERE id=?", (upload.id,))
        shutil.rmtree(self.directory / upload.id, ignore_errors=True)

    def expired(self, before: float) -> list[Upload]:
        rows = self._run("SELECT id, owner, bucket, key, attributes, created FROM uploads "
                         "WHERE created < ?", (before,))
        return [Upload(r[0], r[1], r[2], r[3].decode(), json.loads(r[4]), r[5]) for r in rows]

    # ---- parts ----------------------------------------------------------------------

    def part_path(self, upload: Upload) -> Path:
        """A fresh file for a part being received (renamed into place when recorded)."""
        return self.directory / upload.id / f"incoming-{uuid.uuid4().hex}"

    def record_part(self, upload: Upload, number: int, received: Path, size: int, etag: str,
                    checksum: str | None = None) -> Part:
        """A part whose body is whole and verified; replaces an earlier part `number`."""
        if self._run("SELECT 1 FROM uploads WHERE id=?", (upload.id,)) == []:
            received.unlink(missing_ok=True)
            raise NoSuchUpload("The upload was aborted or completed while this part arrived.")
        final = self.directory / upload.id / f"part-{number:05d}-{uuid.uuid4().hex[:8]}"
        os.replace(received, final)
        old = self._run("SELECT file FROM parts WHERE upload=? AND number=?", (upload.id, number))
        part = Part(number, size, etag, final.name, time.time(), checksum)
        self._run("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (upload.id, number, size, etag, final.name, part.modified, checksum))
        if old and old[0][0] != final.name:
            (self.directory / upload.id / old[0][0]).unlink(missing_ok=True)
        return part

    def parts(self, upload: Upload, after: int = 0, limit: int = MAX_PART_NUMBER) -> list[Part]:
        rows = self._run("SELECT number, size, etag, file, modified, checksum FROM parts WHERE upload=? AND "
                         "number > ? ORDER BY number LIMIT ?", (upload.id, after, limit))
        return [Part(*row) for row in rows]

    def check_complete(self, upload: Upload, listed: list[tuple[int, str]]) -> list[Part]:
        """The parts a CompleteMultipartUpload names, checked as S3 checks them."""
        if not listed:
            raise S3Error("MalformedXML", "You must specify at least one part.", 400)
        have = {p.number: p for p in self.parts(upload)}
        chosen = []
        previous = 0
        for number, etag in listed:
            if number <= previous:
                raise S3Error("InvalidPartOrder", "The list of parts was not in ascending order. "
                              "Parts must be ordered by part number.", 400)
            previous = number
            part = have.get(number)
            if part is None or etag.strip().strip('"').lower() != part.etag:
                raise S3Error("InvalidPart", f"Part {number} was not uploaded, or its ETag does "
                              "not match: upload it (again) or list the parts.", 400)
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < MIN_PART_SIZE:
                raise S3Error("EntityTooSmall", f"Part {part.number} is {part.size} bytes: every "
                              f"part but the last must be at least {MIN_PART_SIZE} bytes.", 400)
        return chosen

    def part_file(self, upload: Upload, part: Part) -> Path:
        return self.directory / upload.id / part.file

    def reader(self, upload: Upload, parts: list[Part]) -> PartsReader:
        return PartsReader([self.part_file(upload, p) for p in parts], [p.size for p in parts])


def multipart_etag(parts: list[Part]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, then -N."""
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in parts))
    return f"{digest.hexdigest()}-{len(parts)}"


class PartsReader:
    """A ReadInto over the part files in order, as if they were one file (pread, so
    worker threads may share it). `close` releases the files."""

    def __init__(self, files: list[Path], sizes: list[int]) -> None:
        self.fds: list[int] = []
        self.sizes: list[int] = []
        self.starts = [0]
        try:
            for file, size in zip(files, sizes, strict=True):
                self.append(file, size)
        except BaseException:
            self.close()
            raise

    def append(self, file: Path, size: int) -> None:
        """One more part at the end (its file is opened now: a part uploaded again later
        is a new file, so this one's bytes stay what they were)."""
        self.fds.append(os.open(file, os.O_RDONLY))
        self.sizes.append(size)
        self.starts.append(self.starts[-1] + size)

    @property
    def size(self) -> int:
        return self.starts[-1]

    def __call__(self, offset: int, view: memoryview) -> int:
        done = 0
        while done < len(view) and offset + done < self.size:
            position = offset + done
            index = bisect.bisect_right(self.starts, position) - 1
            within = position - self.starts[index]
            want = min(len(view) - done, self.sizes[index] - within)
            got = os.preadv(self.fds[index], [view[done:done + want]], within)
            if got <= 0:
                raise OSError(f"part file {index} is shorter than recorded")
            done += got
        return done

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

