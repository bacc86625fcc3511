"""Bucket listings from the chain, and each bucket's metadata object on CESS.

What POSIX needs beyond object names — modes, owners, times, symlinks, xattrs,
empty files and empty directories — is kept per bucket in one object,
`.deossfs/metadata.json` (zlib-compressed JSON, stored encrypted like any file),
so another machine with the same key sees the same tree. It is saved a few
seconds after a change and at unmount.

Reconciling (on lookup/readdir, at most every REFRESH_SECONDS per bucket):
- the metadata object, when its FID changed (another mount saved it), is applied
  to every entry without local unsaved changes (while the bucket has some, an entry
  changed here later than in the object - by ctime - keeps the local state);
- chain objects unknown locally appear with defaults (objects stored by other
  CESS tools: mode 0644, the mounting user, discovery time);
- stored files whose FID left the chain (deleted elsewhere) disappear.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import stat
import time

import trio

from ..catalog.protocol import (
    FOREIGN_CTIME_NS,
    META_DIR,
    META_KEY,
    REMOVALS_KEPT_NS,
    SAVE_QUIET,  # noqa: F401 - the mount's tests read it from here
    SAVE_TICK,
    b64,
    decode_object,
    decode_xattrs,
    encode_object,
    encode_xattrs,
    entries_digest,
    entry_is_newer,
    local_is_newer,
    only_listed,
    removals_list,
    removed_at,
    save_due,
    snapshot_object,
)
from ..errors import DeossError, cli_message
from ..names import chain_file_name, is_hashed_name
from ..processing.pipeline import bytes_reader
from .db import ROOT_INODE, Row, now_ns
from .operations import REFRESH_SECONDS, Operations

log = logging.getLogger(__name__)


class BucketSync:
    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.db = ops.db
        self.store = ops.store
        self._refreshed: dict[str, float] = {}
        self._buckets_refreshed = 0.0
        self._locks: dict[str, trio.Lock] = {}
        self._saving: set[str] = set()
        #: other mounts' metadata objects merged into this mount's view since its last
        #: save, per bucket: that save replaces them (see refresh_bucket)
        self._merged: dict[str, set[str]] = {}
        #: per bucket, when its first and its latest unsaved change were made (monotonic)
        self._first_change: dict[str, float] = {}
        self._last_change: dict[str, float] = {}
        #: per bucket, the metadata object this mount saved last and a digest of its
        #: entries: a save that would store the same entries again is skipped
        self._saved: dict[str, tuple[str, str]] = {}
        ops.hooks.refresh_bucket = self.refresh_bucket
        ops.hooks.refresh_buckets = self.refresh_buckets
        ops.hooks.bucket_changed = self.mark_dirty

    def mark_dirty(self, bucket: str) -> None:
        self.db.set_bucket_state(bucket, dirty=1)
        now = time.monotonic()
        self._first_change.setdefault(bucket, now)
        self._last_change[bucket] = now

    def _save_due(self, bucket: str) -> bool:
        return save_due(self._first_change.get(bucket), self._last_change.get(bucket), time.monotonic())

    def _lock(self, bucket: str) -> trio.Lock:
        return self._locks.setdefault(bucket, trio.Lock())

    # ---- the bucket list ------------------------------------------------------

    async def refresh_buckets(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._buckets_refreshed < REFRESH_SECONDS:
            return
        self._buckets_refreshed = time.monotonic()
        try:
            names = await self.store._chain(self.store.chain.buckets, self.store.owner)
        except DeossError as exc:
            log.warning("cannot list buckets: %s", exc)
            return
        local = {row.name.decode(): row for row in self.db.children(ROOT_INODE)}
        for name in names:  # type: ignore[union-attr]
            if name not in local:
                self.db.insert(ROOT_INODE, name.encode(), "dir", stat.S_IFDIR | 0o755,
                               self.ops.uid, self.ops.gid)
        for name, row in local.items():
            if name not in names and not self.ops.trash.is_root(row) \
                    and not self._has_pending(row.id):  # type: ignore[operator]
                self._remove_tree(row)

    def _has_pending(self, ino: int) -> bool:
        pending = {u[0] for u in self.db.pending_uploads()}
        return any(r.id in pending for r in self.db.descendants(ino))

    def _remove_tree(self, row: Row) -> None:
        for item in self.db.descendants(row.id):
            self.ops._remove_inode(item.id)
        self.ops._remove_inode(row.id)

    # ---- one bucket -----------------------------------------------------------

    def _ensure_path(self, bucket_ino: int, parts: list[str]) -> int:
        """The inode of directory `parts` below the bucket, creating missing ones."""
        ino = bucket_ino
        for part in parts:
            row = self.db.child(ino, part.encode())
            if row is None:
                row = self.db.insert(ino, part.encode(), "dir", stat.S_IFDIR | 0o755, self.ops.uid, self.ops.gid)
            elif not row.is_dir:
                raise ValueError(f"{part} is a file and a directory")
            ino = row.id
        return ino

    def _find(self, bucket_ino: int, path: str) -> Row | None:
        ino = bucket_ino
        row = None
        for part in path.split("/"):
            row = self.db.child(ino, part.encode())
            if row is None:
                return None
            ino = row.id
        return row

    async def refresh_bucket(self, bucket: str, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed.get(bucket, 0.0) < REFRESH_SECONDS:
            return
        if not force and bucket in self._saving:
            # the save holds the bucket's lock while it uploads the metadata object (seconds):
            # a lookup or listing answers from the local view rather than wait for it
            return
        async with self._lock(bucket):
            if not force and time.monotonic() - self._refreshed.get(bucket, 0.0) < REFRESH_SECONDS:
                return
            bucket_row = self.db.child(ROOT_INODE, bucket.encode())
            if bucket_row is None:
                return
            # FIDs being deleted now: one the uploader deletes while the listing is under
            # way is in the listing but no longer in the queue afterwards, and would come
            # back as a foreign object
            deleting = set(self.db.chain_deletes())
            # an upload that ends while the listing is under way sets a FID the listing
            # cannot hold: judged by it, the file looked deleted elsewhere and went away
            fids_before = self.db.file_fids()
            try:
                objects = await self.store.files_in_bucket(bucket)
            except DeossError as exc:
                log.warning("cannot list bucket %s: %s", bucket, exc)
                return
            self._refreshed[bucket] = time.monotonic()
            dirty, meta_fid, _ = self.db.bucket_state(bucket)
            chain_fids = {info.fid for key, info in objects if key != META_KEY}
            metas = [info.fid for key, info in objects if key == META_KEY]
            await self._load_metadata(bucket, bucket_row.id, metas, meta_fid, dirty)
            pending = {u[0] for u in self.db.pending_uploads()}
            rows = self.db.descendants(bucket_row.id)
            known = {r.fid for r in rows if r.fid}
            # files whose version left the chain, by the hashed chain name a new version of
            # theirs is listed under (`a` is listed as `~k…`): another writer replaced it
            replaced = {name: row for row in rows
                        if row.kind == "file" and row.fid and row.fid not in chain_fids
                        and fids_before.get(row.id) == row.fid
                        and is_hashed_name(name := chain_file_name(self.ops.key_of(row.id)[1]))}
            # unlinked or replaced here, deleted from the chain soon: not a foreign object
            known.update(self.db.chain_deletes())
            known.update(deleting)
            # several unnamed objects under one name (DeOSS keeps every upload of a name):
            # the one stored last, latest in the bucket's object list, is the file
            order = {info.fid: position for position, (_, info) in enumerate(objects)}
            latest = {key: info for key, info in objects
                      if key != META_KEY and not key.startswith(META_DIR + "/") and info.fid not in known}
            for key, info in latest.items():
                parts = key.split("/")
                try:
                    parent = self._ensure_path(bucket_row.id, parts[:-1])
                except ValueError:
                    continue
                existing = self.db.child(parent, parts[-1].encode())
                if existing is None and key in replaced:
                    existing = self.db.get(replaced.pop(key).id)
                if existing is None:
                    self.db.insert(parent, parts[-1].encode(), "file", stat.S_IFREG | 0o644,
                                   self.ops.uid, self.ops.gid, fid=info.fid, size=info.file_size,
                                   foreign_object=1, durable_generation=0,
                                   ctime_ns=FOREIGN_CTIME_NS)
                elif existing.kind == "file" and existing.id not in pending \
                        and existing.id not in self.ops.open_states \
                        and fids_before.get(existing.id) == existing.fid \
                        and ((existing.foreign_object and not existing.staged
                              and order.get(existing.fid or "", -1) < order[info.fid])
                             or (existing.fid and existing.fid not in chain_fids)):
                    # a new version replaced this one under its name (this one is gone
                    # from the chain, or both are another tool's and it was stored later).
                    # While both are on the chain and one is deossfs's (two mounts wrote
                    # the file) the listing does not choose: the metadata objects do
                    # (_apply). The entry's own attributes stay: a change made here later
                    # than that version (a chmod) still wins.
                    self.ops.reader.forget(existing.fid or "")
                    if existing.staged:  # a copy of the version that is gone
                        self.ops.staging_path(existing.id).unlink(missing_ok=True)
                    self.db.update(existing.id, fid=info.fid, size=info.file_size, staged=0)
            self._drop_placeholders(bucket_row.id, pending, {info.fid: key for key, info in objects})
            # stored files deleted elsewhere
            for row in self.db.descendants(bucket_row.id):
                if (row.kind == "file" and row.fid and row.fid not in chain_fids
                        and fids_before.get(row.id) == row.fid
                        and row.id not in pending and row.id not in self.ops.open_states
                        and not self.db.conn.execute("SELECT 1 FROM declares WHERE ino=?", (row.id,)).fetchone()):
                    self.ops._remove_inode(row.id)

    def _drop_placeholders(self, bucket_ino: int, pending: set[int], chain_names: dict[str, str]) -> None:
        """A file listed under its hashed chain name (another writer's upload, listed
        before its metadata object) goes once another entry names its FID: the real name
        arrived. Whether or not this mount has unsaved changes, as the entry is not one.
        (An S3 copy of an object under a key of that form shares its FID, but not its
        chain name: it stays.)"""
        for row in self.db.files_with_hashed_names(bucket_ino):
            name = row.name.decode(errors="replace")
            if row.fid and is_hashed_name(name) and chain_names.get(row.fid) == name \
                    and row.id not in pending and row.id not in self.ops.open_states \
                    and len(self.db.files_with_fid(row.fid)) > 1:
                log.debug("bucket entry %s: its real name is known now", name)
                self.ops._remove_inode(row.id)

    async def _load_metadata(self, bucket: str, bucket_ino: int, metas: list[str],
                             meta_fid: str | None, dirty: int) -> None:
        """Apply the bucket's metadata objects that this mount has not seen.

        One object: another mount's save, applied as it is. More than one: two mounts
        saved without seeing each other's (each deletes only the object it last loaded).
        Then each entry keeps the newer side (_entry_is_newer), nothing is removed, and
        this mount's next save, which merges them, deletes them all."""
        merged = self._merged.setdefault(bucket, set())
        unseen = [fid for fid in metas if fid != meta_fid and fid not in merged]
        if not unseen:
            return
        conflict = len(metas) > 1
        for fid in unseen:
            try:
                meta = decode_object(await self.store.read_object(fid))
                self._apply(bucket_ino, meta, allow_deletes=not dirty and not conflict)
            except (DeossError, ValueError) as exc:
                log.warning("metadata object of bucket %s unreadable: %s", bucket, exc)
                continue
            if conflict:
                merged.add(fid)
            else:
                self.db.set_bucket_state(bucket, meta_fid=fid)
        if conflict and merged:
            log.info("bucket %s has %d metadata objects (saved by two mounts at once): merging them",
                     bucket, len(metas))
            self.mark_dirty(bucket)

    def _apply(self, bucket_ino: int, meta: dict, allow_deletes: bool) -> None:
        pending = {u[0] for u in self.db.pending_uploads()}
        named_fids = {e.get("f") for e in meta["entries"] if e["k"] == "file" and e.get("f")}
        superseded: set[str] = set()
        seen: set[int] = set()
        links = [e for e in meta["entries"] if e["k"] == "link"]
        republish = False
        bucket = self.db.get(bucket_ino).name.decode()  # type: ignore[union-attr]
        removed_here = self.db.removals(bucket, now_ns() - REMOVALS_KEPT_NS)
        for entry in meta["entries"]:
            if entry["k"] == "link":
                continue
            parts = entry["p"].split("/")
            if removed_at(removed_here, parts) > entry["c"] and self._find(bucket_ino, entry["p"]) is None:
                continue  # removed here after the other mount's last change to it
            parent = self._ensure_path(bucket_ino, parts[:-1])
            seen.update(self._ancestors(parent, bucket_ino))
            row = self.db.child(parent, parts[-1].encode())
            if row is not None and row.link_id:
                # the other mount's own name of a file is a hard link here: swap them, so
                # both upload under the same name; the old own name is a link now, kept
                # if the metadata names it
                self.db.swap_with_link(row.link_id)
                row = self.db.get(row.id)
                assert row is not None
                self.ops._names_changed([row])
            values = {"mode": entry["m"], "uid": entry["u"], "gid": entry["g"],
                      "atime_ns": entry["a"], "mtime_ns": entry["t"], "ctime_ns": entry["c"]}
            if entry["k"] == "file":
                values.update(fid=entry.get("f"), size=entry["s"], encrypted=entry.get("e", 1),
                              foreign_object=0, durable_generation=0, inline=int("i" in entry))
            if entry["k"] == "symlink":
                values["target"] = base64.b64decode(entry["l"])
            if entry["k"] == "special":
                values["rdev"] = entry.get("r", 0)
            if row is None:
                row = self.db.insert(parent, parts[-1].encode(), entry["k"], **values)  # type: ignore[arg-type]
            elif row.id in pending or row.id in self.ops.open_states or row.kind != entry["k"] \
                    or not entry_is_newer(entry, row.ctime_ns, row.fid):
                # a change made here later than the other mount's entry (saved or not: the
                # other mount may have saved without seeing it) stays, and this mount's
                # next save publishes it
                if local_is_newer(row.ctime_ns, row.fid, entry) and row.id not in pending and row.id not in self.ops.open_states:
                    republish = True
                seen.add(row.id)
                continue
            else:
                if entry["k"] == "file":
                    # what the metadata names is durable: no upload of this row is pending
                    values.update(durable_generation=row.generation, state="stored", error=None)
                    if row.fid != values["fid"]:
                        # another machine stored a newer version: a local copy is stale
                        if row.fid:
                            self.ops.reader.forget(row.fid)
                            if entry_is_newer(entry, row.ctime_ns, row.fid) and not only_listed(entry):
                                superseded.add(row.fid)
                        if row.staged:
                            self.ops.staging_path(row.id).unlink(missing_ok=True)
                            values["staged"] = 0
                self.db.update(row.id, **values)
            if "i" in entry:  # content kept in the metadata object (fs/trash.py)
                self._write_inline(row.id, base64.b64decode(entry["i"]))
            seen.add(row.id)
            self.db.conn.execute("DELETE FROM xattrs WHERE ino=?", (row.id,))
            for name, value in decode_xattrs(entry).items():
                self.db.set_xattr(row.id, name, value)
        named_links = self._apply_links(bucket_ino, links, seen)
        if republish:
            self.mark_dirty(bucket)
        superseded |= self._apply_removals(bucket_ino, meta.get("removed", []), pending)
        # Two mounts wrote the same path without seeing each other's version: both are
        # on the chain. The later close wins everywhere (_entry_is_newer); the mount whose
        # version lost deletes it, unless something still names it. Only a version older
        # than a durable one is ever deleted, so racing metadata saves can leak, not lose.
        for fid in superseded - named_fids:
            if not self.db.files_with_fid(fid):
                log.info("version %s was replaced by another mount's newer one: deleting it", fid[:16])
                self.db.queue_chain_delete(fid)
        if allow_deletes:
            # nothing unsaved here: a row the metadata does not name is gone elsewhere if
            # it has no content of its own (empty file, symlink, directory), or if its FID
            # lives on under another name (renamed elsewhere, or first listed here under its
            # hashed chain name). Deepest first, so emptied directories go in the same pass.
            for row in reversed(self.db.descendants(bucket_ino)):
                if row.id in seen or row.id in pending or row.id in self.ops.open_states:
                    continue
                if (not row.fid and not self.db.has_children(row.id)) or \
                        (row.kind == "file" and row.fid in named_fids):
                    self.ops._remove_inode(row.id)
            # hard links removed elsewhere
            for directory in [bucket_ino] + [r.id for r in self.db.descendants(bucket_ino) if r.is_dir]:
                for row in self.db.link_children(directory):
                    if row.link_id not in named_links:
                        self.db.remove_link(row.link_id)

    def _write_inline(self, ino: int, content: bytes) -> None:
        path = self.ops.staging_path(ino)
        tmp = path.with_suffix(".inline")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        self.db.update(ino, staged=1, size=len(content), state="stored")

    def _apply_removals(self, bucket_ino: int, removals: list[dict], pending: set[int]) -> set[str]:
        """Names the other mount removed after this mount's last change to them go here
        too (deepest first, a directory only once empty); the FIDs whose row went."""
        gone: set[str] = set()
        for removal in sorted(removals, key=lambda r: -r["p"].count("/")):
            row = self._find(bucket_ino, removal["p"])
            if row is None or row.ctime_ns >= removal["c"] or row.id in pending \
                    or row.id in self.ops.open_states or (row.is_dir and self.db.has_children(row.id)):
                continue
            if row.link_id:
                self.db.remove_link(row.link_id)
                continue
            if self.db.promote_link(row.id):  # the file lives on under its other names
                self.ops._names_changed([self.db.get(row.id)])  # type: ignore[list-item]
                continue
            if row.fid:
                gone.add(row.fid)
            self.ops._remove_inode(row.id)
        return gone

    def _apply_links(self, bucket_ino: int, links: list[dict], seen: set[int]) -> set[int]:
        """Create the hard links the metadata names; the ids of the links it names."""
        named: set[int] = set()
        for entry in links:
            parts = entry["p"].split("/")
            parent = self._ensure_path(bucket_ino, parts[:-1])
            seen.update(self._ancestors(parent, bucket_ino))
            target = self._find(bucket_ino, entry["i"])
            if target is None or target.is_dir:
                continue
            existing = self.db.child(parent, parts[-1].encode())
            if existing is None:
                self.db.add_link(target.id, parent, parts[-1].encode())
                existing = self.db.child(parent, parts[-1].encode())
            if existing is not None and existing.id == target.id and existing.link_id:
                named.add(existing.link_id)
        return named

    def _ancestors(self, ino: int, stop: int) -> list[int]:
        out = []
        while ino != stop and ino != ROOT_INODE:
            out.append(ino)
            ino = self.db.get(ino).parent  # type: ignore[union-attr]
        return out

    def snapshot(self, bucket: str) -> dict | None:
        bucket_row = self.db.child(ROOT_INODE, bucket.encode())
        if bucket_row is None:
            return None
        entries = []
        stack = [(bucket_row.id, "")]
        while stack:
            ino, prefix = stack.pop()
            for row in self.db.children(ino):
                path = f"{prefix}{row.name.decode()}"
                if row.foreign_object and row.ctime_ns == FOREIGN_CTIME_NS and is_hashed_name(path):
                    # a placeholder, untouched here: the writer's metadata names it
                    # (is_hashed_name); one changed here (a chmod) is published, and goes
                    # everywhere once the real name is known (_drop_placeholders)
                    continue
                entry: dict = {"p": path, "k": row.kind, "m": row.mode, "u": row.uid, "g": row.gid,
                               "a": row.atime_ns, "t": row.mtime_ns, "c": row.ctime_ns}
                if row.kind == "file" and row.inline:
                    try:  # kept here, not on CESS: its content travels in the metadata object
                        content = self.ops.staging_path(row.id).read_bytes()[: row.size]
                    except FileNotFoundError:
                        content = b""
                    entry.update(s=len(content), i=b64(content))
                elif row.kind == "file":
                    if row.size and not row.fid:
                        continue  # content not durable yet: published by the save after its upload
                    size = row.size
                    if row.durable_generation < row.generation and row.fid:
                        # the durable content is an older version; publish what is durable
                        info = self.ops.reader._infos.get(row.fid)
                        size = info.file_size if info else row.size
                    entry.update(s=size if row.fid else 0, f=row.fid, e=row.encrypted)
                elif row.kind == "symlink":
                    entry["l"] = b64(row.target or b"")
                elif row.kind == "special":
                    entry["r"] = row.rdev
                xattrs = self.db.xattrs(row.id)
                if xattrs:
                    entry["x"] = encode_xattrs(xattrs)
                entries.append(entry)
                if row.is_dir:
                    stack.append((row.id, path + "/"))
            for row in self.db.link_children(ino):
                # a hard link names the inode's own path; the file's entry carries the rest
                entries.append({"p": f"{prefix}{row.name.decode()}", "k": "link",
                                "i": self.ops.key_of(row.id)[1]})
        named = {e["p"] for e in entries}
        removed = removals_list(self.db.removals(bucket, now_ns() - REMOVALS_KEPT_NS), named)
        return snapshot_object(entries, removed)

    async def save(self, bucket: str) -> None:
        """Store the bucket's metadata object (replacing the previous one)."""
        self._saving.add(bucket)
        try:
            await self._save(bucket)
        finally:
            self._saving.discard(bucket)

    async def _save(self, bucket: str) -> None:
        async with self._lock(bucket):
            dirty, old_fid, _ = self.db.bucket_state(bucket)
            if not dirty:
                return
            snapshot = self.snapshot(bucket)
            if snapshot is None:
                return
            self.db.set_bucket_state(bucket, dirty=0)
            self._first_change.pop(bucket, None)
            self._last_change.pop(bucket, None)
            digest = entries_digest(snapshot["entries"])
            if old_fid and self._saved.get(bucket) == (old_fid, digest) and not self._merged.get(bucket):
                log.debug("bucket %s: metadata unchanged since its last save", bucket)
                return
            # merged into this snapshot: replaced by it (a merge after this point waits
            # for the next save)
            replaced = set(self._merged.get(bucket, ()))
            blob = encode_object(snapshot)
            try:
                plan = await self.store.put(bytes_reader(blob), len(blob), bucket, META_KEY,
                                            encrypt=True, replace_existing=False)
            except BaseException as exc:
                # failed or cancelled (unmount): still unsaved; save_all or the next round saves it
                self.mark_dirty(bucket)
                if isinstance(exc, DeossError):
                    log.warning("saving the metadata of bucket %s failed: %s", bucket, exc)
                raise
            self.db.set_bucket_state(bucket, meta_fid=plan.fid)
            self._saved[bucket] = (plan.fid, digest)
            self._merged[bucket] = self._merged.get(bucket, set()) - replaced
            for fid in sorted(f for f in {old_fid, *replaced} if f and f != plan.fid):
                try:
                    await self.store.delete_fid(fid)
                except DeossError as exc:
                    log.warning("deleting old metadata %s failed: %s", fid[:16], exc)

    async def save_all(self, only_due: bool = False) -> None:
        """Save every changed bucket (at unmount), or with `only_due` those whose save is
        due (SAVE_QUIET, SAVE_MAX_DELAY)."""
        # a save under way has cleared its bucket's dirty flag: wait for it too (unmount)
        for bucket in sorted(set(self.db.dirty_buckets()) | (set() if only_due else self._saving)):
            if self.db.child(ROOT_INODE, bucket.encode()) is None:
                self.db.conn.execute("DELETE FROM buckets WHERE name=?", (bucket,))
                continue
            if only_due and (bucket in self._saving or not self._save_due(bucket)):
                continue
            with contextlib.suppress(DeossError):
                await self.save(bucket)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(SAVE_TICK)
            try:
                await self.save_all(only_due=True)
            except Exception as exc:  # e.g. the local disk is full: the next round saves
                log.warning("saving bucket metadata: %s", cli_message(exc))
