"""The bucket metadata object: its format and merge rules, one implementation for the
mount (fs/metadata.py) and the gateway's catalog (catalog/catalog.py).

A bucket's metadata object is the CESS object `.deossfs/metadata.json`: zlib-compressed
JSON, stored encrypted like any file, saved by whoever changed the bucket (a mount, a
gateway). It holds

- `format`: FORMAT;
- `saved_ns`: when it was saved;
- `entries`: one dict per name below the bucket: `p` path (`dir/file`), `k` kind (file,
  dir, symlink, special, link), `m` mode (with the type bits), `u`/`g` owner, `a`/`t`/`c`
  atime/mtime/ctime in ns; files add `s` size, `f` FID (None for an empty file), `e`
  encrypted (1/0); symlinks `l` (base64 target); special files `r` (device number); any
  entry `x` (xattrs, base64 name -> base64 value); a hard link is `{p, k: "link", i}`,
  `i` the path of the file it names;
- `removed`: names removed by that writer in the last REMOVALS_KEPT_NS, `{p, c}`, so a
  merge of two objects saved at once does not bring them back.

Merge rules: of two versions of an entry the later change (ctime) wins, the FID breaking a
tie so every reader picks the same one; a removal beats a change older than itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib

META_DIR = ".deossfs"
META_KEY = f"{META_DIR}/metadata.json"
FORMAT = 1
#: how long a removed name is published in the metadata object (a merge of two objects
#: saved at once must not restore it); merges happen within minutes of the saves
REMOVALS_KEPT_NS = 3600 * 10**9
#: the ctime of an entry made for an object found on the chain and named in no metadata
#: object (another tool's, or one whose writer has not saved its metadata yet): older than
#: any change a writer made, so that whoever knows the object's real attributes wins every
#: merge, rather than the one that merely listed it later
FOREIGN_CTIME_NS = 1
#: a changed bucket's metadata object is saved once the bucket has had no change for
#: SAVE_QUIET seconds, or SAVE_MAX_DELAY after its first unsaved change: each save is a
#: whole CESS object (12 fragments of 8 MiB and a storage order), not to be made for every
#: file of a copy under way
SAVE_QUIET = 5.0
SAVE_MAX_DELAY = 30.0
SAVE_TICK = 1.0


def save_due(first_change: float | None, last_change: float | None, now: float) -> bool:
    """Is a save of a bucket with unsaved changes due (monotonic times; no first change
    known: left unsaved by an earlier run, due now)?"""
    if first_change is None:
        return True
    last = first_change if last_change is None else last_change
    return now - last >= SAVE_QUIET or now - first_change >= SAVE_MAX_DELAY


def entry_is_newer(entry: dict, ctime_ns: int, fid: str | None) -> bool:
    """Does another writer's entry supersede a local version (its ctime and FID)? The later
    change (ctime) wins; the FID breaks a tie, so two writers comparing the same pair
    always pick the same one."""
    return (entry["c"], entry.get("f") or "") > (ctime_ns, fid or "")


def local_is_newer(ctime_ns: int, fid: str | None, entry: dict) -> bool:
    """The converse of entry_is_newer (both false when they are the same change)."""
    return (ctime_ns, fid or "") > (entry["c"], entry.get("f") or "")


def removed_at(removed: dict[str, int], parts: list[str]) -> int:
    """When this path or one of its directories was last removed here (0: never)."""
    return max((removed.get("/".join(parts[:n]), 0) for n in range(1, len(parts) + 1)), default=0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode_xattrs(xattrs: dict[bytes, bytes]) -> dict[str, str]:
    """An entry's `x`."""
    return {b64(name): b64(value) for name, value in xattrs.items()}


def decode_xattrs(entry: dict) -> dict[bytes, bytes]:
    return {base64.b64decode(name): base64.b64decode(value)
            for name, value in entry.get("x", {}).items()}


def removals_list(removed: dict[str, int], named: set[str]) -> list[dict]:
    """The object's `removed`: names removed here (path -> when), but not those named again."""
    return [{"p": path, "c": at} for path, at in sorted(removed.items()) if path not in named]


def snapshot_object(entries: list[dict], removed: list[dict]) -> dict:
    return {"format": FORMAT, "saved_ns": time.time_ns(), "entries": entries, "removed": removed}


def entries_digest(entries: list[dict]) -> str:
    """Equal for two snapshots with the same entries (a save that changes nothing is skipped)."""
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def encode_object(snapshot: dict) -> bytes:
    return zlib.compress(json.dumps(snapshot, separators=(",", ":")).encode(), 6)


def decode_object(blob: bytes) -> dict:
    """A metadata object's content; ValueError when it is not one deossfs can read."""
    try:
        meta = json.loads(zlib.decompress(blob))
    except zlib.error as exc:
        raise ValueError(f"not a metadata object: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"unknown metadata format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def file_versions(meta: dict) -> dict[str, str]:
    """path -> FID of every file a metadata object names with content."""
    return {e["p"]: e["f"] for e in meta.get("entries", []) if e.get("k") == "file" and e.get("f")}


def only_listed(entry: dict) -> bool:
    """Is `entry` another tool's object its writer only listed (ctime FOREIGN_CTIME_NS)?
    Such an entry replaces no version anyone wrote: DeOSS keeps every upload of a name."""
    return entry.get("c") == FOREIGN_CTIME_NS


def written_versions(meta: dict) -> dict[str, str]:
    """file_versions less the entries only listed: the versions a deossfs writer stored
    or changed."""
    return {e["p"]: e["f"] for e in meta.get("entries", [])
            if e.get("k") == "file" and e.get("f") and not only_listed(e)}
