"""Other writers' changes into the catalog's index: their metadata objects (a mount's
saves) and the chain's listing of the bucket (objects stored by anyone).

The rules are the mount's (fs/metadata.py `BucketSync._apply` and `refresh_bucket`), with
the metadata object's merge rules from protocol.py, so that a mount and a gateway that
read each other's objects end with the same tree:

- an entry of the other object replaces the local one when it is newer (ctime, then FID);
  a local one that is newer stays and is published again. The version replaced is
  deleted from the chain once nothing names it, unless the entry is another tool's
  object the other writer only listed (ctime FOREIGN_CTIME_NS): that replaces nothing
  anyone wrote (DeOSS keeps every upload of a name);
- a removal in the other object removes a local entry changed before it (a directory only
  once empty); a name removed here after the other's last change to it stays removed;
- when the object is the only one and nothing here is unsaved, a local entry it does not
  name is gone elsewhere if it has no content of its own, or if its FID lives on under
  another name (a rename);
- a FID on the chain that no entry names is an object of another tool (or one whose
  metadata is not saved yet): it shows under its chain name with default attributes; an
  entry whose FID left the chain was deleted elsewhere. Several such objects under one
  name (DeOSS keeps every upload of a name): the one stored last shows, the one latest
  in the bucket's object list (the chain appends a file when it is stored);
- such an object under a hashed chain name (`~k…`) is a placeholder: it goes as soon as
  another entry names its FID, whether or not this side has unsaved changes (also one an
  earlier version published), and it is never published (names.is_hashed_name).

Two rules keep a writer that listed an object before it saw the object's metadata from
overwriting that metadata with defaults:
- what a writer merely discovers - an object on the chain, a directory above an entry -
  gets ctime FOREIGN_CTIME_NS, older than any real change (the mount does the same for
  objects);
- an entry of another writer for the same content (FID) that has none of the S3
  attributes this catalog recorded does not take them away: they stay, and are
  published again with a newer ctime (a writer without the first rule listed it first).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..names import chain_file_name, is_hashed_name
from .index import CatalogIndex, Entry, parent_of
from .protocol import (
    FOREIGN_CTIME_NS,
    META_DIR,
    META_KEY,
    decode_xattrs,
    entry_is_newer,
    local_is_newer,
    only_listed,
    removed_at,
)
from .records import DIR_MODE, FILE_MODE, S3_XATTR, has_s3_attributes, with_s3_xattrs

log = logging.getLogger(__name__)


def dir_entry(path: str, uid: int, gid: int, now_ns: int, ctime_ns: int | None = None) -> dict:
    return {"p": path, "k": "dir", "m": DIR_MODE, "u": uid, "g": gid, "a": now_ns, "t": now_ns,
            "c": now_ns if ctime_ns is None else ctime_ns}


def ensure_dirs(index: CatalogIndex, bucket: str, path: str, uid: int, gid: int,
                now_ns: int) -> bool:
    """Create the missing directories above `path` (implied: they claim no change time);
    False when one of them is not a directory here (the entry cannot be placed)."""
    parts = path.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        above = "/".join(parts[:depth])
        existing = index.get(bucket, above)
        if existing is None:
            index.put(bucket, dir_entry(above, uid, gid, now_ns, FOREIGN_CTIME_NS))
        elif not existing.is_dir:
            return False
    return True


def remove_entry(index: CatalogIndex, bucket: str, entry: Entry, now_ns: int) -> str | None:
    """Remove one name. A file that other names (hard links) share lives on under the
    first of them, as the mount does; otherwise the FID the name held is returned (the
    caller deletes it from the chain once nothing names it)."""
    index.remove(bucket, entry.path)
    if entry.kind != "file":
        return None
    links = index.links_to(bucket, entry.path)
    if links:
        heir, others = links[0], links[1:]
        promoted = dict(entry.entry, p=heir.path, c=max(now_ns, entry.ctime_ns + 1))
        index.put(bucket, promoted)
        for link in others:
            index.put(bucket, dict(link.entry, i=heir.path))
        return None
    return entry.fid


def apply_object(index: CatalogIndex, bucket: str, meta: dict, *, allow_deletes: bool,
                 uid: int, gid: int, now_ns: int) -> tuple[set[str], bool]:
    """Apply another writer's metadata object. Returns the FIDs whose local version lost
    (to delete from the chain when nothing names them any more) and whether a local entry
    is newer than the object's (the bucket must be saved again to publish it)."""
    entries = meta["entries"]
    named_fids = {e.get("f") for e in entries if e["k"] == "file" and e.get("f")}
    removed_here = index.removals(bucket, now_ns)
    seen: set[str] = set()
    superseded: set[str] = set()
    republish = False

    def place(entry: dict) -> bool:
        if not ensure_dirs(index, bucket, entry["p"], uid, gid, now_ns):
            log.warning("bucket %s: %s is a file here and a directory in a metadata object; "
                        "keeping the file", bucket, parent_of(entry["p"]))
            return False
        parts = entry["p"].split("/")
        seen.update("/".join(parts[:n]) for n in range(1, len(parts)))
        return True

    for entry in sorted((e for e in entries if e["k"] != "link"), key=lambda e: e["p"]):
        path = entry["p"]
        local = index.get(bucket, path)
        if local is None and removed_at(removed_here, path.split("/")) > entry["c"]:
            continue  # removed here after the other writer's last change to it
        if not place(entry):
            continue
        if local is None or (local.kind == "link" and entry["k"] == "file"):
            # (a name that is a hard link here is the other writer's own name of the file:
            # it takes the entry, and the link entries below name it)
            index.put(bucket, entry)
        elif local.kind != entry["k"] or not entry_is_newer(entry, local.ctime_ns, local.fid):
            # a change made here later than the other writer's entry stays, and this
            # catalog's next save publishes it
            if local_is_newer(local.ctime_ns, local.fid, entry):
                republish = True
        else:
            if local.fid and local.fid != entry.get("f"):
                if not only_listed(entry):
                    superseded.add(local.fid)
            elif local.kind == "file" and local.fid and has_s3_attributes(local.entry) \
                    and not has_s3_attributes(entry):
                # listed by the other writer before it saw this object's S3 attributes
                kept = {n: v for n, v in decode_xattrs(local.entry).items() if n.startswith(S3_XATTR)}
                entry = dict(with_s3_xattrs(entry, kept), c=max(now_ns, entry["c"] + 1))
                republish = True
            index.put(bucket, entry)
        seen.add(path)

    named_links: set[str] = set()
    for entry in (e for e in entries if e["k"] == "link"):
        target = index.get(bucket, entry["i"])
        if target is None or target.kind != "file" or not place(entry):
            continue
        local = index.get(bucket, entry["p"])
        if local is not None and local.kind == "file" and local.fid and local.fid == target.fid:
            local = None  # a file of its own here: the other writer's own name of it, swapped
        if local is None:
            index.put(bucket, entry)
        elif local.kind != "link" or local.target != entry["i"]:
            continue
        named_links.add(entry["p"])
        seen.add(entry["p"])

    for removal in sorted(meta.get("removed", []), key=lambda r: -r["p"].count("/")):
        local = index.get(bucket, removal["p"])
        if local is None or local.ctime_ns >= removal["c"] \
                or (local.is_dir and index.has_children(bucket, local.path)):
            continue
        gone = remove_entry(index, bucket, local, now_ns)
        if gone:
            superseded.add(gone)

    if allow_deletes:
        # deepest first, so that directories emptied here go in the same pass
        for local in reversed(index.all(bucket)):
            if local.path in seen:
                continue
            if local.kind == "link":
                if local.path not in named_links:
                    index.remove(bucket, local.path)
                continue
            if (not local.fid and not index.has_children(bucket, local.path)) \
                    or (local.kind == "file" and local.fid in named_fids):
                remove_entry(index, bucket, local, now_ns)
    return {fid for fid in superseded - named_fids if not index.named(fid)}, republish


def apply_listing(index: CatalogIndex, bucket: str, listed: Iterable[str],
                  chain_files: dict[str, tuple[str, int]], *, written: set[str], uid: int,
                  gid: int, now_ns: int) -> None:
    """Bring the index in line with the chain's listing of the bucket: `listed`, its FIDs
    in the bucket's order (stored earlier first). `written`: the paths written here since
    the listing was read, which are newer than it."""
    order = {fid: position for position, fid in enumerate(listed)}
    listed = set(order)
    named = index.fids(bucket)
    deleting = index.deleting(bucket)
    # files whose version left the chain, by the hashed chain name a new version of
    # theirs is listed under (`a` is listed as `~k…`): another writer replaced it
    replaced = {chain: path for path, fid in index.stored_files(bucket)
                if fid not in listed and path not in written
                and is_hashed_name(chain := chain_file_name(path))}
    # earlier first: of several objects under one name the last stored ends up there
    for fid in sorted(listed - named - deleting, key=order.__getitem__):
        name, size = chain_files.get(fid, ("", 0))
        if not name or name == META_KEY or name.startswith(META_DIR + "/"):
            continue
        parts = name.split("/")
        if any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts):
            log.info("bucket %s: object %s has a name no path can hold; not listed", bucket, name)
            continue
        if not ensure_dirs(index, bucket, name, uid, gid, now_ns):
            continue
        local = index.get(bucket, name)
        if local is None and name in replaced:
            local = index.get(bucket, replaced.pop(name))
        entry = {"p": name, "k": "file", "m": FILE_MODE, "u": uid, "g": gid, "a": now_ns,
                 "t": now_ns, "c": FOREIGN_CTIME_NS, "s": size, "f": fid, "e": 1}
        if local is None:
            index.put(bucket, entry, foreign=True)
        elif local.kind == "file" and local.path not in written \
                and ((local.foreign_object and order.get(local.fid or "", -1) < order[fid])
                     or (local.fid and local.fid not in listed)):
            # a new version replaced this one under its name: the entry's attributes stay.
            # An object stored later than this one stays (no flip between listings)
            index.put(bucket, dict(local.entry, s=size, f=fid), foreign=local.foreign_object)
    for path, fid in index.stored_files(bucket):
        if fid not in listed and path not in written:  # deleted elsewhere: it goes, and its links
            for link in index.links_to(bucket, path):
                index.remove(bucket, link.path)
            index.remove(bucket, path)
    for entry in hashed_name_files(index, bucket):
        # a placeholder is listed under its FID's chain name (a copy of an object under
        # a key of that form is not), and goes once something else names the FID
        if entry.path not in written and chain_files.get(entry.fid, ("", 0))[0] == entry.path \
                and len(index.with_fid(bucket, entry.fid)) > 1:  # type: ignore[arg-type]
            index.remove(bucket, entry.path)


def hashed_name_files(index: CatalogIndex, bucket: str) -> list[Entry]:
    """Files under a hashed chain name: placeholders of objects listed before the
    metadata that names them (foreign_object), or leaked into a metadata object."""
    return [e for e in index.with_hashed_names(bucket) if e.fid and is_hashed_name(e.path)]
