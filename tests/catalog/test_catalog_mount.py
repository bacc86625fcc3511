"""The catalog and a real mount of the same account share one namespace: objects recorded
through the catalog appear in the mount (escaped names, S3 attributes as xattrs), files
written in the mount appear in the catalog, deletes go both ways. How long each takes to
see the other's change is printed (docs/semantics.md states the bounds)."""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from deossfs.catalog.records import EMPTY_MD5, ObjectRecord
from deossfs.chain.names import bucket_to_chain
from deossfs.errors import NoSuchKey

from .. import harness
from ..conftest import Devnet
from ..fs.conftest import NEEDS_MOUNT
from .conftest import bucket_name, open_catalog, read_all

pytestmark = NEEDS_MOUNT


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def until(probe: Callable[[], object], what: str, timeout: float = 120.0) -> float:
    """Poll `probe` (sync or async) until it is truthy; the seconds it took."""
    start = time.monotonic()
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await trio.sleep(0.2)


def xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def listed_gone(path: Path) -> bool:
    """Is `path` gone once its directory is listed (which makes the mount look again)?"""
    try:
        os.listdir(path.parent)
    except FileNotFoundError:
        return True
    return not path.exists()


def listed_xattr(path: Path, name: str) -> bytes | None:
    """An xattr read after listing the file's directory, as `ls` then `getfattr` do: the
    listing is what makes a mount read the bucket's listing and metadata again."""
    os.listdir(path.parent)
    return xattr(path, name)


async def test_a_gateway_and_a_mount_share_a_bucket(devnet: Devnet, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    timings: dict[str, float] = {}
    mounted = harness.Mounted(harness.config_for(devnet, tmp_path / "machine"), tmp_path / "mnt")
    async with open_catalog(harness.config_for(devnet, tmp_path / "gw"), tmp_path / "index.sqlite") as cat:
        try:
            bucket = bucket_name()
            await cat.create_bucket(bucket)
            mounted.mount()
            # the mount shows the bucket under its S3 name, not the chain's `Q...`
            await until(lambda: mounted.path(bucket).is_dir(), "the bucket in the mount")
            assert bucket_to_chain(bucket) != bucket and not mounted.path(bucket_to_chain(bucket)).exists()
            root = mounted.path(bucket)

            # ---- gateway -> mount -------------------------------------------------------
            report = os.urandom(200_000)
            await cat.put(bucket, ObjectRecord("docs/report.pdf", len(report), md5(report),
                                               content_type="application/pdf",
                                               metadata={"author": "Ada"}), report)
            timings["gateway object with bytes -> mount"] = await until(
                lambda: (root / "docs" / "report.pdf").exists(), "the object in the mount")
            assert (root / "docs" / "report.pdf").read_bytes() == report
            odd = b"key with an empty component"
            await cat.put(bucket, ObjectRecord("a//b", len(odd), md5(odd)), odd)
            await cat.put(bucket, ObjectRecord("docs/empty", 0, EMPTY_MD5), b"")
            await cat.put(bucket, ObjectRecord("albums/2026/", 0, EMPTY_MD5), b"")
            await cat.put(bucket, ObjectRecord("/lead", 0, EMPTY_MD5, content_type="text/x"), b"")
            saved = time.monotonic()
            await cat.tick(everything=True)  # what the background saver does 5 s after a change
            timings["catalog save of the metadata object"] = time.monotonic() - saved
            timings["gateway metadata -> mount, after the save"] = await until(
                lambda: listed_xattr(root / "docs" / "report.pdf", "user.s3.content-type"),
                "the S3 attributes in the mount")
            assert xattr(root / "docs" / "report.pdf", "user.s3.meta.author") == b"Ada"
            assert (xattr(root / "docs" / "report.pdf", "user.s3.etag") or b"").startswith(md5(report).encode())
            await until(lambda: (root / "docs" / "empty").exists(), "the empty object")
            assert (root / "docs" / "empty").stat().st_size == 0
            assert (root / "albums" / "2026").is_dir()
            assert (root / "a" / "~~" / "b").read_bytes() == odd  # `a//b`, escaped
            assert xattr(root / "~~" / "lead", "user.s3.content-type") == b"text/x"

            # ---- mount -> gateway -------------------------------------------------------
            (root / "from-mount").mkdir()
            hello = os.urandom(50_000)
            (root / "from-mount" / "hello.bin").write_bytes(hello)
            (root / "from-mount" / "zero").write_bytes(b"")
            (root / "from-mount" / "emptydir").mkdir()
            written = time.monotonic()

            async def catalog_has(key: str) -> bool:
                try:
                    await cat.get(bucket, key)
                except NoSuchKey:
                    return False
                return True

            await until(lambda: catalog_has("from-mount/hello.bin"), "the mount's file in the catalog")
            timings["mount file with bytes -> gateway (from close)"] = time.monotonic() - written
            got = await cat.get(bucket, "from-mount/hello.bin")
            assert got.size == len(hello) and got.etag.endswith("-1")  # no MD5 known: not one
            assert await read_all(cat.store, got.fid or "") == hello
            await until(lambda: catalog_has("from-mount/zero"), "the mount's empty file")
            timings["mount empty file -> gateway (from close)"] = time.monotonic() - written
            assert await catalog_has("from-mount/emptydir/")  # an empty directory is a folder
            assert (await cat.get(bucket, "from-mount/zero")).etag == EMPTY_MD5

            # an xattr set in the mount is an S3 attribute; a rewrite in the mount drops the
            # stored ETag (it was the old content's)
            os.setxattr(root / "from-mount" / "hello.bin", "user.s3.content-type", b"text/plain")
            new_report = os.urandom(120_000)
            (root / "docs" / "report.pdf").write_bytes(new_report)

            async def rewritten() -> bool:
                record = await cat.get(bucket, "docs/report.pdf")
                hello_type = (await cat.get(bucket, "from-mount/hello.bin")).content_type
                return record.size == len(new_report) and hello_type == "text/plain"

            await until(rewritten, "the mount's rewrite and xattr in the catalog")
            record = await cat.get(bucket, "docs/report.pdf")
            assert record.etag != md5(report) and record.etag.endswith("-1")
            assert record.content_type == "application/pdf"  # the other attributes stay
            assert await read_all(cat.store, record.fid or "") == new_report

            # ---- deletes, both ways -----------------------------------------------------
            await cat.delete(bucket, "a//b")
            deleted = time.monotonic()
            await cat.tick()  # the chain delete (the background task does it at once)
            await until(lambda: listed_gone(root / "a" / "~~" / "b"), "the delete in the mount")
            timings["gateway delete of an object with bytes -> mount"] = time.monotonic() - deleted
            await cat.delete(bucket, "docs/empty")
            await cat.tick(everything=True)
            await until(lambda: listed_gone(root / "docs" / "empty"), "the empty object's delete")
            (root / "from-mount" / "hello.bin").unlink()
            removed = time.monotonic()

            async def catalog_lacks(key: str) -> bool:
                return not await catalog_has(key)

            await until(lambda: catalog_lacks("from-mount/hello.bin"), "the mount's delete")
            timings["mount delete of a file with bytes -> gateway"] = time.monotonic() - removed
            (root / "from-mount" / "zero").unlink()
            removed = time.monotonic()
            await until(lambda: catalog_lacks("from-mount/zero"), "the mount's delete of an empty file")
            timings["mount delete of an empty file -> gateway"] = time.monotonic() - removed
        finally:
            mounted.cleanup()
    with capsys.disabled():
        print("\n  catalog <-> mount (seconds):")
        for what, seconds in timings.items():
            print(f"    {what:55s} {seconds:6.2f}")
