"""The CLI's and the library's part in the namespace they share with the mount and the
gateway: keys the chain declares under a hash, and deleting a bucket.

The chain names an object by its key when the key is 3 to 63 bytes long
(`names.chain_file_name`). Any other key (`a`, a deep path) is declared under a hash,
and only the bucket's metadata object - which the mount and the gateway's catalog keep
(catalog/protocol.py) - says which key a hashed name stands for. So:

- `put` of such a key publishes the key in the metadata object before it returns, as the
  gateway does for an S3 PUT; without it the mount, S3 and `ls` showed the object under
  its hash for ever;
- `ls` shows such objects under the key the metadata object gives them;
- `rm` of such a key removes it there too (and the folders it leaves empty, as an S3
  DELETE does), or the mount and S3 showed those folders after it;
- deleting a bucket deletes its metadata objects first, once nothing else is in it (the
  chain refuses to delete a bucket that holds any object, and the metadata object is
  one the user never sees).

Both go through a catalog of their own (workspace/names/<account>.sqlite, kept between
runs so a bucket's chain names are read once), used by one process at a time (a file
lock; the gateway's catalogs are its own). Its merge rules are the gateway's, so a
mount, a gateway and the CLI changing one bucket at once lose nothing. Keys the chain takes as they are need no
metadata: their puts and listings stay chain-only, as fast as before.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from .catalog.catalog import Catalog
from .catalog.names import path_key
from .catalog.protocol import META_DIR
from .catalog.records import ObjectRecord, etag_for
from .errors import DeossError
from .names import HASHED_NAME_PREFIX, chain_file_name
from .processing.pipeline import FilePlan
from .store import ObjectEntry, ObjectStore


def catalog_path(store: ObjectStore) -> Path:
    return store.config.workspace_dir(store.owner) / "names" / f"{store.owner}.sqlite"


@asynccontextmanager
async def own_catalog(store: ObjectStore, *, publish: bool) -> AsyncIterator[Catalog]:
    """The account's catalog of hashed keys, held against other processes. With `publish`, the
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


async def put_named(store: ObjectStore, bucket: str, key: str,
                    upload: Callable[[], object]) -> FilePlan:
    """Store a key the chain names by its hash (`upload()` stores the bytes under `key`)
    and publish the key in the bucket's metadata object. A key the namespace has no room
    for (a folder of the mount is there) is refused before a byte is sent."""
    s3_key = path_key(key)
    if s3_key is None:  # a path no S3 key maps to (a `~~+` piece): the chain's name only
        return await upload()  # type: ignore[misc]
    async with own_catalog(store, publish=False) as catalog:
        await catalog.prepare_put(bucket, s3_key)
    plan: FilePlan = await upload()  # type: ignore[misc]
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


async def delete_named(store: ObjectStore, bucket: str, key: str) -> str:
    """Delete `key` (the chain declares it under its hash) and publish its removal in the
    bucket's metadata object; its FID."""
    s3_key = path_key(key)
    if s3_key is not None:
        async with own_catalog(store, publish=True) as catalog:
            record = await catalog.delete(bucket, s3_key)
        if record is not None:
            return record.fid or ""  # "": an object of zero bytes, kept as metadata only
    return await store.delete(bucket, key)  # named nowhere but on the chain


async def named_entries(store: ObjectStore, bucket: str, entries: list[ObjectEntry],
                        prefix: str = "") -> list[ObjectEntry]:
    """`entries` (the chain's listing of `bucket`) with each hashed name replaced by the
    key the bucket's metadata object gives its file, those under `prefix`, sorted. The
    metadata objects themselves are deossfs' own, not shown (as in the mount and S3)."""
    entries = [e for e in entries if not e.key.startswith(META_DIR + "/")]
    if any(e.key.startswith(HASHED_NAME_PREFIX) for e in entries):
        async with own_catalog(store, publish=False) as catalog:
            await catalog.refresh(bucket, force=True)
            named = []
            for entry in entries:
                if entry.key.startswith(HASHED_NAME_PREFIX):
                    paths = sorted(e.path for e in catalog.index.with_fid(bucket, entry.fid)
                                   if e.kind == "file" and not e.foreign_object)
                    if paths:
                        entry = replace(entry, key=paths[0])
                named.append(entry)
        entries = named
    return sorted((e for e in entries if e.key.startswith(prefix)), key=lambda e: e.key.encode())


async def delete_bucket(store: ObjectStore, bucket: str) -> None:
    """Delete `bucket` once it holds nothing (NotEmpty while anything is in it: objects,
    or what the mount keeps there, such as empty files and directories); its metadata
    objects go first."""
    async with own_catalog(store, publish=False) as catalog:
        await catalog.delete_bucket(bucket)
