"""The CLI's and the library's part in the namespace they share with the mount and the
gateway: keys the chain declares under a hash, objects of zero bytes, and deleting a
bucket.

The chain names an object by its key when the key is 3 to 63 bytes long
(`names.chain_file_name`). Any other key (`a`, a deep path) is declared under a hash,
and only the bucket's metadata object - which the mount and the gateway's catalog keep
(catalog/protocol.py) - says which key a hashed name stands for. So:

- `put` of such a key publishes the key in the metadata object before it returns, as the
  gateway does for an S3 PUT; without it the mount, S3 and `ls` showed the object under
  its hash for ever (`put_object`). Every `put` is checked against the namespace first:
  no key can be an object and the folder of another (`abc` and `abc/d.txt`), which the
  chain alone would take;
- in a bucket with a metadata object, `ls`, `get`, `stat` and `rm` see what the mount
  and S3 see (`list_objects`, `resolve`, `delete`): such keys under their names, files
  the mount renamed under their new ones (the chain keeps the name a file was uploaded
  with), and objects of zero bytes - CESS refuses empty files, so they live in the
  metadata object only, and `put` of an empty file records one there (`put_empty`);
  `rm` publishes the removal, with the folders it leaves empty, as an S3 DELETE does;
- deleting a bucket deletes its metadata objects first, once nothing else is in it (the
  chain refuses to delete a bucket that holds any object, and the metadata object is
  one the user never sees).

All of it goes through a catalog of their own (workspace/names/<account>.sqlite, kept
between runs so a bucket's chain names are read once), used by one process at a time
(a file lock; the gateway's catalogs are its own). Its merge rules are the gateway's,
so a mount, a gateway and the CLI changing one bucket at once lose nothing. Objects
with bytes under keys the chain takes as they are need no metadata: their puts stay
chain-only, and so do listings of buckets without a metadata object.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .catalog.catalog import Catalog
from .catalog.names import path_key
from .catalog.protocol import META_DIR, META_KEY
from .catalog.records import EMPTY_MD5, ObjectRecord, etag_for
from .errors import DeossError, InvalidInput, NoSuchBucket, NoSuchKey, NotFound
from .names import chain_file_name
from .processing.pipeline import FilePlan
from .store import ObjectEntry, ObjectStore

if TYPE_CHECKING:
    from .chain.interface import FileInfo


def catalog_path(store: ObjectStore) -> Path:
    return store.config.workspace_dir(store.owner) / "names" / f"{store.owner}.sqlite"


@asynccontextmanager
async def own_catalog(store: ObjectStore, *, publish: bool) -> AsyncIterator[Catalog]:
    """The account's own catalog, held against other processes. With `publish`, the
    buckets changed inside the block have their metadata object saved before it ends
    (a failed save raises, and the next `publish` saves it)."""
    path = catalog_path(store)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await trio.to_thread.run_sync(fcntl.flock, lock, fcntl.LOCK_EX)
        catalog = Catalog(store, path)
        try:
            yield catalog
            if publish:
                await catalog.tick(everything=True)
        finally:
            catalog.index.close()
    finally:
        os.close(lock)  # releases the lock


def needs_metadata(key: str) -> bool:
    """Is `key` declared under a hashed name (only the metadata object can name it)?"""
    return chain_file_name(key) != key


def _has_metadata(files: list[tuple[str, FileInfo]]) -> bool:
    """Has a mount, a gateway or a put kept a metadata object in the bucket listed so?"""
    return any(name == META_KEY for name, _ in files)


async def put_object(store: ObjectStore, bucket: str, key: str,
                     upload: Callable[[], Awaitable[FilePlan]]) -> FilePlan:
    """Store bytes under `key` (`upload()` stores them on the chain under `key`), and keep
    the namespace right where the chain's name alone would not: a key the chain hashes is
    published in the metadata object, as is one the metadata object names already (an
    object of zero bytes, a file the mount renamed to this name: the metadata's word
    beats a chain name, so the new bytes would stay hidden behind it). In any bucket, a
    key that would make an object the folder of another (`abc` and `abc/d.txt`) is
    refused before a byte is sent, as the mount and S3 refuse it."""
    s3_key = path_key(key)
    if s3_key is None:
        return await upload()  # a `~~+` piece's path: nothing but the chain to mind
    hashed = needs_metadata(key)
    async with own_catalog(store, publish=False) as catalog:
        try:
            await catalog.prepare_put(bucket, s3_key)
        except NoSuchBucket as exc:  # the library's word for it, as before (docs/library.md)
            raise NotFound(str(exc), hint=exc.hint) from None
        entry = catalog.index.get(bucket, key)
    named_there = entry is not None and not entry.foreign_object
    plan = await upload()
    if not (hashed or named_there):
        return plan
    record = ObjectRecord(key=s3_key, size=plan.size, etag=etag_for(plan.fid, {}), fid=plan.fid,
                          modified_ns=time.time_ns(), encrypted=plan.encrypted)
    try:
        async with own_catalog(store, publish=True) as catalog:
            await catalog.record_put(bucket, record)
    except DeossError as exc:
        if exc.temporary:
            raise  # stored; the name is published by the next `put` or `ls`
        # no room for it after all (the mount made a folder there meanwhile): no orphan
        await store.delete_fid(plan.fid)
        raise
    return plan


def _s3_key(key: str) -> str:
    s3_key = path_key(key)
    if s3_key is None:
        raise InvalidInput(f"{key!r} is a name the namespace keeps for pieces of long keys "
                           "(a component starting with '~~+'): choose another")
    return s3_key


async def put_empty(store: ObjectStore, bucket: str, key: str) -> None:
    """Record an object of zero bytes (CESS stores no empty file) in the bucket's metadata
    object; the version it replaces, if any, is deleted from the chain."""
    s3_key = _s3_key(key)
    record = ObjectRecord(key=s3_key, size=0, etag=EMPTY_MD5, modified_ns=time.time_ns())
    async with own_catalog(store, publish=True) as catalog:
        await catalog.prepare_put(bucket, s3_key)
        await catalog.record_put(bucket, record)


def _missing(bucket: str, key: str) -> NotFound:
    return NotFound(f"no object {bucket}/{key}", hint=f"list them with `deossfs ls {bucket}`")


async def resolve(store: ObjectStore, bucket: str, key: str) -> ObjectEntry | None:
    """The object `key` names, as the mount and S3 see it; None for one of zero bytes
    (NotFound: none). In a bucket with a metadata object that is the catalog's answer,
    which the chain's name alone cannot give: a file the mount renamed keeps the name it
    was uploaded with on the chain, and one of zero bytes has none there."""
    s3_key = path_key(key)
    files = await store.files_in_bucket(bucket)
    if s3_key is None or not _has_metadata(files):
        return await store.lookup(bucket, key, files=files)
    async with own_catalog(store, publish=False) as catalog:
        try:
            record = await catalog.get(bucket, s3_key)
        except NoSuchKey:
            raise _missing(bucket, key) from None
    if record.is_folder:
        raise _missing(bucket, key)
    return None if record.fid is None else ObjectEntry(bucket, key, record.fid, record.size)


async def delete(store: ObjectStore, bucket: str, key: str) -> str:
    """Delete `key`; the FID it named ("" for an object of zero bytes). In a bucket with a
    metadata object the removal is published there (with the folders it leaves empty, as
    an S3 DELETE does), and the file leaves the chain unless another key names it."""
    s3_key = path_key(key)
    files = await store.files_in_bucket(bucket)
    if s3_key is None or not _has_metadata(files):
        entry = await store.lookup(bucket, key, files=files)
        assert entry is not None
        await store.delete_fid(entry.fid)
        return entry.fid
    async with own_catalog(store, publish=True) as catalog:
        record = await catalog.delete(bucket, s3_key)
    if record is None:
        raise _missing(bucket, key)
    return record.fid or ""


async def list_objects(store: ObjectStore, bucket: str, prefix: str = "") -> list[ObjectEntry]:
    """The objects of `bucket` whose keys start with `prefix`, in key order. In a bucket
    with a metadata object, as the mount and S3 see them: the files it names (under the
    keys it gives them, FID "" for zero bytes) and the chain's objects it does not name;
    else the chain's objects under their names, and of several under one name (DeOSS
    keeps every upload of a name) the one stored last, as `resolve` takes. deossfs' own
    (`.deossfs/...`) are not shown."""
    chained = await store.list(bucket)
    if not any(e.key == META_KEY for e in chained):
        latest: dict[str, ObjectEntry] = {}
        for entry in chained:  # in the bucket's object list's order within a name
            latest[entry.key] = entry
        found = list(latest.values())
    else:
        async with own_catalog(store, publish=False) as catalog:
            await catalog.refresh(bucket, force=True)
            found = []
            for entry in catalog.index.all(bucket):
                file = entry
                if entry.kind == "link":  # a hard link of the mount: the file it names
                    file = catalog.index.get(bucket, entry.target or "") or entry
                if file.kind == "file":
                    found.append(ObjectEntry(bucket, entry.path, file.fid or "", file.size))
    return sorted((e for e in found if e.key.startswith(prefix)
                   and not e.key.startswith(META_DIR + "/")), key=lambda e: e.key.encode())


class Names:
    """`resolve` and `list_objects` as `repair.ObjectNames`: `deossfs verify` finds and
    labels objects under the keys their users see."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def resolve(self, bucket: str, key: str) -> str | None:
        entry = await resolve(self.store, bucket, key)
        return None if entry is None else entry.fid

    async def keys(self, bucket: str) -> dict[str, str]:
        named: dict[str, str] = {}
        for entry in await list_objects(self.store, bucket):
            if entry.fid:
                named.setdefault(entry.fid, entry.key)
        return named


async def delete_bucket(store: ObjectStore, bucket: str) -> None:
    """Delete `bucket` once it holds nothing (NotEmpty while anything is in it: objects,
    or what the mount keeps there, such as empty files and directories); its metadata
    objects go first."""
    async with own_catalog(store, publish=False) as catalog:
        await catalog.delete_bucket(bucket)
