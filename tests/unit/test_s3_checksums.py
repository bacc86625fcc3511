"""Kept S3 checksums, below the HTTP layer: combining CRCs, the record's binding to its
content, and the multipart journal of an earlier version taking part checksums."""

from __future__ import annotations

import base64
import os
import random
import sqlite3
import zlib
from pathlib import Path

import pytest
from awscrt import checksums as crt

from deossfs.catalog.protocol import encode_xattrs
from deossfs.catalog.records import ObjectRecord, record_of, s3_xattrs
from deossfs.gateway.s3.checksums import crc_combine, object_checksum, upload_checksum
from deossfs.gateway.s3.context import S3Error
from deossfs.gateway.s3.multipart import MultipartStore

CRCS = {"crc32": (zlib.crc32, 4), "crc32c": (crt.crc32c, 4), "crc64nvme": (crt.crc64nvme, 8)}


@pytest.mark.parametrize("algorithm", sorted(CRCS))
def test_combined_crcs_are_the_crc_of_the_joined_bytes(algorithm: str) -> None:
    crc, size = CRCS[algorithm]
    rng = random.Random(algorithm)
    for first, second in [(0, 5), (5, 0), (1, 1), (1000, 3), (7, 1 << 20), (12345, 99999)]:
        a, b = rng.randbytes(first), rng.randbytes(second)
        assert crc_combine(algorithm, crc(a), crc(b), len(b)) == crc(a + b)
    # and over many parts, as a Complete combines them
    parts = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(20)]
    listed = [(base64.b64encode(crc(p).to_bytes(size, "big")).decode(), len(p)) for p in parts]
    whole = base64.b64encode(crc(b"".join(parts)).to_bytes(size, "big")).decode()
    assert object_checksum(algorithm, "FULL_OBJECT", listed) == whole


def test_the_combinations_s3_offers_and_their_defaults() -> None:
    assert upload_checksum(None, None) is None
    assert upload_checksum("CRC32", None) == ("crc32", "COMPOSITE")
    assert upload_checksum("crc32c", "full_object") == ("crc32c", "FULL_OBJECT")
    assert upload_checksum("CRC64NVME", None) == ("crc64nvme", "FULL_OBJECT")
    for algorithm, kind in [("SHA1", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE"), ("MD5", None),
                            (None, "COMPOSITE")]:
        with pytest.raises(S3Error):
            upload_checksum(algorithm, kind)


def test_a_kept_checksum_holds_only_for_the_content_it_was_computed_for() -> None:
    record = ObjectRecord(key="k", size=3, etag="e" * 32, fid="a" * 64,
                          checksum=("crc32", "FULL_OBJECT", "AAAAAA=="))
    entry = {"k": "file", "f": "a" * 64, "s": 3, "t": 1, "x": encode_xattrs(s3_xattrs(record))}
    assert record_of("k", entry).checksum == ("crc32", "FULL_OBJECT", "AAAAAA==")
    rewritten = dict(entry, f="b" * 64)  # the mount wrote other bytes: another FID
    assert record_of("k", rewritten).checksum is None


def test_parts_checksums_are_kept_while_they_are_few() -> None:
    def stored(count: int) -> ObjectRecord:
        record = ObjectRecord(key="k", size=count, etag="e" * 32 + f"-{count}", fid="a" * 64,
                              parts=tuple((n, 1) for n in range(1, count + 1)),
                              checksum=("crc32", "COMPOSITE", "AAAAAA==-1"),
                              part_checksums=tuple(f"{n:06d}AA" for n in range(count)))
        entry = {"k": "file", "f": "a" * 64, "s": count, "t": 1,
                 "x": encode_xattrs(s3_xattrs(record))}
        return record_of("k", entry)

    assert stored(3).part_checksums == ("000000AA", "000001AA", "000002AA")
    assert len(stored(900).part_checksums) == 900
    assert stored(1000).part_checksums == ()  # past PART_CHECKSUMS_MAX: the object's only
    assert stored(1000).checksum == ("crc32", "COMPOSITE", "AAAAAA==-1")


def test_a_journal_of_an_earlier_version_keeps_its_parts_and_takes_checksums(tmp_path: Path) -> None:
    directory = tmp_path / "multipart"
    directory.mkdir()
    old = sqlite3.connect(directory / "multipart.sqlite3")
    old.executescript("""
        CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL,
            key BLOB NOT NULL, attributes TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE parts (upload TEXT NOT NULL, number INTEGER NOT NULL, size INTEGER NOT NULL,
            etag TEXT NOT NULL, file TEXT NOT NULL, modified REAL NOT NULL,
            PRIMARY KEY (upload, number));
        CREATE TABLE completed (id TEXT PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL,
            key BLOB NOT NULL, etag TEXT NOT NULL, at REAL NOT NULL);
        INSERT INTO uploads VALUES ('u1', 'me', 'b', X'6b', '{}', 1.0);
        INSERT INTO parts VALUES ('u1', 1, 10, 'ee', 'part-00001-x', 2.0);
    """)
    old.commit()
    old.close()
    store = MultipartStore(directory)
    upload = store.get("u1", "me", "b", "k")
    assert [(p.number, p.checksum) for p in store.parts(upload)] == [(1, None)]
    (directory / "u1").mkdir()
    received = directory / "u1" / "incoming"
    received.write_bytes(os.urandom(10))
    store.record_part(upload, 2, received, 10, "ff", "AAAAAA==")
    assert [(p.number, p.checksum) for p in store.parts(upload)] == [(1, None), (2, "AAAAAA==")]
    store.finish(upload, "abc-2", ("crc32", "COMPOSITE", "AAAAAA==-2"))
    assert store.completed("u1", "me") == ("b", "k", "abc-2", ("crc32", "COMPOSITE", "AAAAAA==-2"))
