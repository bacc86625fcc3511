"""The bucket metadata object's name and format (fs/metadata.py keeps it up to date).

One object per bucket, `.deossfs/metadata.json`: zlib-compressed JSON, stored like any
file (encrypted by default). Kept apart from fs/metadata.py so that readers other than
the mount (`deossfs verify`, which looks for chain files no metadata object names) need
neither pyfuse3 nor the mount's database.
"""

from __future__ import annotations

import json
import zlib

#: the directory below a bucket reserved for deossfs (not shown in the mount)
META_DIR = ".deossfs"
META_KEY = f"{META_DIR}/metadata.json"
FORMAT = 1


def encode(snapshot: dict) -> bytes:
    return zlib.compress(json.dumps(snapshot, separators=(",", ":")).encode(), 6)


def decode(blob: bytes) -> dict:
    """The metadata object's content; ValueError if it is not one deossfs can read."""
    try:
        meta = json.loads(zlib.decompress(blob))
    except zlib.error as exc:
        raise ValueError(f"not a metadata object: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"unknown metadata format {meta.get('format') if isinstance(meta, dict) else None}")
    return meta


def file_versions(meta: dict) -> dict[str, str]:
    """path -> FID of every file the metadata object names with content."""
    return {e["p"]: e["f"] for e in meta.get("entries", []) if e.get("k") == "file" and e.get("f")}
