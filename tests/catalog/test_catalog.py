"""The catalog on a real devnet: objects stored through a real ObjectStore (12 node
processes, the embedded ledger), recorded, listed, copied, deleted, and read back by a
second catalog from the bucket's metadata object alone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deossfs.catalog.names import key_path
from deossfs.catalog.protocol import META_KEY
from deossfs.catalog.records import EMPTY_MD5, ObjectRecord
from deossfs.chain.names import bucket_to_chain
from deossfs.errors import (
    InvalidName,
    KeyConflict,
    KeyTooLongError,
    NoSuchBucket,
    NoSuchKey,
    NotEmpty,
)

from ..conftest import Devnet
from ..harness import config_for, ledger
from .conftest import bucket_name, on_chain, open_catalog, read_all

HEADERS = {"cache-control": "max-age=60", "content-disposition": 'attachment; filename="a b.txt"',
           "content-encoding": "gzip", "content-language": "de",
           "expires": "Thu, 01 Dec 2044 16:00:00 GMT"}

#: keys S3 allows that no mount path is, beside ordinary ones (docs/s3-names.md)
ODD_KEYS = ["/leading", "a//b", "a/./b", "../up", "~~", "~~+x", ".deossfs/metadata.json",
            "sp ace/+plus%25", "日本/ファイル", "x" * 300, "trailing//"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def record(key: str, data: bytes, **kw: object) -> ObjectRecord:
    return ObjectRecord(key=key, size=len(data), etag=md5(data), **kw)  # type: ignore[arg-type]


async def test_objects_round_trip(devnet: Devnet, tmp_path: Path) -> None:
    async with open_catalog(config_for(devnet, tmp_path / "gw"), tmp_path / "index.sqlite") as cat:
        bucket = bucket_name()
        await cat.create_bucket(bucket)
        assert bucket in await cat.buckets()
        owner = cat.owner
        assert bucket_to_chain(bucket) in ledger(devnet).buckets(owner)  # `Q` for `j` on the chain

        data = os.urandom(150_000)
        key = "photos/2026/cat one+%.jpg"
        await cat.put(bucket, record(key, data, content_type="image/jpeg",
                                     metadata={"camera": "nikon ü", "x-y": "1"}, headers=HEADERS), data)
        got = await cat.get(bucket, key)
        assert (got.size, got.etag, got.content_type) == (len(data), md5(data), "image/jpeg")
        assert got.metadata == {"camera": "nikon ü", "x-y": "1"} and got.headers == HEADERS
        assert got.fid and await read_all(cat.store, got.fid) == data

        # zero bytes and folders live in the metadata object only
        await cat.put(bucket, record("empty.txt", b"", content_type="text/plain"), b"")
        empty = await cat.get(bucket, "empty.txt")
        assert (empty.size, empty.fid, empty.etag, empty.content_type) == (0, None, EMPTY_MD5, "text/plain")
        await cat.put(bucket, record("folder/", b"", content_type="application/x-directory"), b"")
        folder = await cat.get(bucket, "folder/")
        assert folder.is_folder and folder.content_type == "application/x-directory"

        for odd in ODD_KEYS:
            payload = odd.encode() * 3 if not odd.endswith("/") else b""
            await cat.put(bucket, record(odd, payload), payload)
            odd_record = await cat.get(bucket, odd)
            assert odd_record.key == odd and odd_record.size == len(payload)
            if payload:
                assert await read_all(cat.store, odd_record.fid or "") == payload

        everything = [key, "empty.txt", "folder/", *ODD_KEYS]
        page = await cat.list(bucket)
        assert [o.key for o in page.objects] == sorted(everything, key=str.encode)
        assert not page.truncated and not page.prefixes

        # pages of two, each after the last key of the one before
        seen, marker = [], ""
        while True:
            page = await cat.list(bucket, start_after=marker, limit=2)
            seen += [o.key for o in page.objects]
            if not page.truncated:
                break
            marker = page.next_marker or ""
        assert seen == sorted(everything, key=str.encode)

        # a delimiter rolls keys up into common prefixes, in order with the objects
        page = await cat.list(bucket, delimiter="/")
        assert page.prefixes == sorted({k[: k.index("/") + 1] for k in everything if "/" in k},
                                       key=str.encode)
        assert [o.key for o in page.objects] == sorted((k for k in everything if "/" not in k),
                                                       key=str.encode)
        page = await cat.list(bucket, prefix="photos/", delimiter="/")
        assert page.prefixes == ["photos/2026/"] and page.objects == []
        page = await cat.list(bucket, delimiter="/", limit=1, start_after="/")
        assert page.truncated and len(page.objects) + len(page.prefixes) == 1

        # what cannot be stored, and a clear error before any byte is sent
        with pytest.raises(KeyConflict):  # an object cannot be the folder of another
            await cat.prepare_put(bucket, key + "/below")
        with pytest.raises(KeyConflict):  # nor a folder holding keys an object
            await cat.prepare_put(bucket, "photos")
        with pytest.raises(KeyTooLongError):
            await cat.prepare_put(bucket, "k" * 1025)
        with pytest.raises(InvalidName):
            await cat.prepare_put(bucket, "nul\0byte")
        await cat.put(bucket, record("folder/inside.txt", b"in"), b"in")
        assert (await cat.get(bucket, "folder/")).is_folder  # still a folder object
        with pytest.raises(NoSuchKey):
            await cat.get(bucket, "photos/")  # a prefix, not a folder object
        with pytest.raises(NoSuchBucket):
            await cat.get(bucket_name("gone"), "x")
        with pytest.raises(NotEmpty):
            await cat.delete_bucket(bucket)


async def test_copy_delete_overwrite_and_a_second_catalog(devnet: Devnet, tmp_path: Path) -> None:
    config = config_for(devnet, tmp_path / "gw")
    async with open_catalog(config, tmp_path / "index.sqlite") as cat:
        bucket, other = bucket_name(), bucket_name()
        await cat.create_bucket(bucket)
        await cat.create_bucket(other)
        store = cat.store

        async def chain_objects() -> int:
            info = await store._chain(store.chain.bucket, store.owner, bucket)
            return len(info.object_list)  # type: ignore[attr-defined]

        data = os.urandom(90_000)
        await cat.put(bucket, record("src.bin", data, metadata={"k": "v"}), data)
        src = await cat.get(bucket, "src.bin")
        before = await chain_objects()

        # a copy within the bucket names the same FID: nothing is uploaded
        copied = await cat.copy(bucket, "src.bin", bucket, "dir/copy.bin")
        assert copied is not None and copied.fid == src.fid and copied.etag == src.etag
        assert copied.metadata == {"k": "v"}
        assert await chain_objects() == before
        replaced = await cat.copy(bucket, "src.bin", bucket, "meta.bin", replace_attributes=True,
                                  content_type="text/csv", metadata={"n": "1"})
        assert replaced is not None and replaced.metadata == {"n": "1"} and replaced.content_type == "text/csv"
        # across buckets the bytes must be stored again (a FID belongs to one bucket) ...
        assert await cat.copy(bucket, "src.bin", other, "src.bin") is None
        # ... but zero bytes are metadata
        await cat.put(bucket, record("zero", b""), b"")
        assert (await cat.copy(bucket, "zero", other, "zero-copy")) is not None

        # deleting one name keeps the content the others name; the last takes it away
        assert (await cat.delete(bucket, "src.bin")) is not None
        await cat.tick()
        assert await on_chain(store, src.fid or "")
        assert await read_all(store, (await cat.get(bucket, "dir/copy.bin")).fid or "") == data
        await cat.delete(bucket, "dir/copy.bin")
        await cat.tick()
        assert await on_chain(store, src.fid or "")  # meta.bin still names it
        assert (await cat.list(bucket, prefix="dir/")).objects == []  # the emptied directory went
        await cat.delete(bucket, "meta.bin")
        await cat.tick()
        assert not await on_chain(store, src.fid or "")
        assert await cat.delete(bucket, "meta.bin") is None

        # an overwrite returns what it replaced and deletes its content
        v1, v2 = os.urandom(70_000), os.urandom(80_000)
        await cat.put(bucket, record("doc", v1), v1)
        first = await cat.get(bucket, "doc")
        old = await cat.put(bucket, record("doc", v2, content_type="text/x"), v2)
        assert old is not None and old.fid == first.fid and old.etag == md5(v1)
        await cat.tick()
        assert not await on_chain(store, first.fid or "")
        assert (await cat.get(bucket, "doc")).etag == md5(v2)

        await cat.put(bucket, record("a//b", b"odd"), b"odd")
        await cat.put(bucket, record("keep/", b""), b"")
        expected = {o.key: o for o in (await cat.list(bucket)).objects}
        await cat.tick(everything=True)  # the metadata object is saved
        meta_fid = cat.index.bucket_state(bucket)[1]
        assert meta_fid and cat.index.chain_files(bucket) is not None

    # a second catalog with an empty index (another gateway, or this one after losing its
    # disk) rebuilds the same objects from the chain and the metadata object
    async with open_catalog(config, tmp_path / "other-index.sqlite") as again:
        listed = {o.key: o for o in (await again.list(bucket)).objects}
        assert listed == expected
        doc = await again.get(bucket, "doc")
        assert (doc.etag, doc.content_type) == (md5(v2), "text/x")
        assert await read_all(again.store, doc.fid or "") == v2
        for key in list(listed):
            await again.delete(bucket, key)
        await again.delete(other, "zero-copy")
        await again.tick(everything=True)
        await again.delete_bucket(bucket)
        await again.delete_bucket(other)
        assert bucket not in await again.buckets()


async def test_key_paths_are_what_the_chain_names(devnet: Devnet, tmp_path: Path) -> None:
    """An object's bytes are declared under its mount path: other CESS tools and a mount
    without the metadata object see the escaped name, never a changed one."""
    async with open_catalog(config_for(devnet, tmp_path / "gw"), tmp_path / "index.sqlite") as cat:
        bucket = bucket_name()
        await cat.create_bucket(bucket)
        for key in ("a//b", "/lead"):
            await cat.put(bucket, record(key, b"bytes"), b"bytes")
        names = {k for k, _ in await cat.store.files_in_bucket(bucket)}
        assert names == {key_path("a//b")[0], key_path("/lead")[0]} == {"a/~~/b", "~~/lead"}
        await cat.tick(everything=True)
        assert META_KEY in {k for k, _ in await cat.store.files_in_bucket(bucket)}
