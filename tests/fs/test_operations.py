"""The mount's Operations called directly, without a kernel mount, on a real devnet.

Each test builds Operations as fs/mount.py does (real ObjectStore, SQLite inode DB and
journal in its own workspace) and runs the Uploader in a nursery, so "durable" means
what it means in a mount: fragments on 12 node processes and the FID on the chain.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import stat
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import pytest
import tomli_w
import trio

from deossfs.chain.factory import open_chain
from deossfs.config import load_config
from deossfs.errors import NotFound
from deossfs.fs.db import ROOT_INODE, Database
from deossfs.fs.metadata import META_KEY, SAVE_QUIET, BucketSync
from deossfs.fs.mount import DB_NAME, workspace_for
from deossfs.fs.operations import MAX_PATH_BYTES, REFRESH_SECONDS, Operations
from deossfs.fs.uploader import Uploader
from deossfs.keys import load_key_file
from deossfs.processing.encryption import LEGACY_SALT_CONTEXT, PLAINTEXT_CAPACITY, SegmentCipher
from deossfs.store import ObjectStore

from ..conftest import Devnet
from ..harness import ledger
from .conftest import bucket_name, config_for

DURABLE_TIMEOUT = 60.0


@dataclass
class Ctx:
    """What pyfuse3 passes as the request context."""

    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    pid: int = field(default_factory=os.getpid)
    umask: int = 0o022


@dataclass
class Fields:
    """pyfuse3.SetattrFields (its attributes are read-only, so a stand-in)."""

    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_size: bool = False


CTX = Ctx()


@pytest.fixture(autouse=True)
def fake_readdir_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """readdir_reply is the kernel's side: collect the entries into the token (a list)."""

    def reply(token: list, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if getattr(token, "limit", None) is not None and len(token) >= token.limit:  # type: ignore[attr-defined]
            return False
        token.append((name, attr, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)


class Token(list):
    limit: int | None = None


async def errno_of(call: object) -> int:
    """The errno a FUSE call raises (fails the test when it does not raise)."""
    try:
        await call  # type: ignore[misc]
    except pyfuse3.FUSEError as exc:
        return exc.errno
    raise AssertionError("the call succeeded; an error was expected")


class FS:
    """Operations + Uploader + BucketSync over a real ObjectStore, as a mount builds them."""

    def __init__(self, config_path: Path) -> None:
        self.config = load_config(config_path)
        account = load_key_file(self.config.require_key_file())
        self.chain = open_chain(self.config, account)
        self.store = ObjectStore(self.config, account, self.chain)
        self.workspace = workspace_for(self.config, account)
        self.db = Database(self.workspace / DB_NAME)
        self.ops = Operations(self.store, self.db, self.workspace, os.getuid(), os.getgid())
        self.uploader = Uploader(self.ops)
        self.sync = BucketSync(self.ops)

    async def close(self) -> None:
        await self.store.aclose()
        self.chain.close()
        self.db.close()

    # ---- paths ----------------------------------------------------------------

    async def ino(self, path: str) -> int:
        ino = ROOT_INODE
        for part in filter(None, path.strip("/").split("/")):
            ino = (await self.ops.lookup(ino, part.encode(), CTX)).st_ino
        return ino

    async def parent_and_name(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.strip("/").rpartition("/")
        return (await self.ino(head)) if head else ROOT_INODE, name.encode()

    async def attr(self, path: str) -> pyfuse3.EntryAttributes:
        return await self.ops.getattr(await self.ino(path), CTX)

    async def mkdir(self, path: str, mode: int = 0o755) -> int:
        parent, name = await self.parent_and_name(path)
        return (await self.ops.mkdir(parent, name, stat.S_IFDIR | mode, CTX)).st_ino

    async def bucket(self) -> str:
        name = bucket_name()
        await self.mkdir(name)
        return name

    async def listdir(self, path: str) -> list[str]:
        fh = await self.ops.opendir(await self.ino(path), CTX)
        token = Token()
        await self.ops.readdir(fh, 0, token)  # type: ignore[arg-type]
        await self.ops.releasedir(fh)
        return [name.decode() for name, _, _ in token]

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> int:
        parent, name = await self.parent_and_name(path)
        info, entry = await self.ops.create(parent, name, stat.S_IFREG | mode,
                                            os.O_WRONLY | os.O_CREAT, CTX)
        step = 128 * 1024
        for offset in range(0, len(data), step):
            assert await self.ops.write(info.fh, offset, data[offset : offset + step]) == \
                len(data[offset : offset + step])
        await self.ops.release(info.fh)
        return entry.st_ino

    async def read_file(self, path: str) -> bytes:
        info = await self.ops.open(await self.ino(path), os.O_RDONLY, CTX)
        out = bytearray()
        while True:
            chunk = await self.ops.read(info.fh, len(out), 1024 * 1024)
            if not chunk:
                break
            out += chunk
        await self.ops.release(info.fh)
        return bytes(out)

    async def xattr(self, path: str, name: str) -> bytes:
        return await self.ops.getxattr(await self.ino(path), name.encode(), CTX)

    async def state(self, path: str) -> str:
        return (await self.xattr(path, "user.deossfs.state")).decode()

    # ---- durability ------------------------------------------------------------

    async def wait_stored(self, path: str, timeout: float = DURABLE_TIMEOUT) -> str | None:
        """Until the file's state is `stored`; its FID (None for an empty file)."""
        ino = await self.ino(path)
        with trio.move_on_after(timeout):
            while (await self.ops.getxattr(ino, b"user.deossfs.state", CTX)) != b"stored":
                await trio.sleep(0.05)
            row = self.db.get(ino)
            assert row is not None
            return row.fid
        raise AssertionError(f"{path} not durable after {timeout:.0f}s: state "
                             f"{await self.state(path)}, journal {self.db.pending_uploads()}")

    def idle(self) -> bool:
        return not (self.db.pending_uploads() or self.uploader._active or self.db.chain_deletes()
                    or self.db.conn.execute("SELECT 1 FROM declares").fetchone())

    async def wait_idle(self, timeout: float = DURABLE_TIMEOUT) -> None:
        """Until the journal, pending declarations and pending chain deletes are empty."""
        with trio.move_on_after(timeout):
            while not self.idle():
                self.uploader.wake()
                await trio.sleep(0.05)
            return
        raise AssertionError(f"uploader not idle after {timeout:.0f}s: {self.db.pending_uploads()}, "
                             f"deletes {self.db.chain_deletes()}")

    async def chain_keys(self, bucket: str) -> dict[str, str]:
        """key -> FID of the bucket's objects on the chain."""
        return {e.key: e.fid for e in await self.store.list(bucket)}

    async def fid_on_chain(self, fid: str) -> bool:
        try:
            await self.store.file_info(fid)
        except NotFound:
            return False
        return True


@asynccontextmanager
async def open_fs(config_path: Path, *, uploads: bool = True) -> AsyncIterator[FS]:
    fs = FS(config_path)
    try:
        async with trio.open_nursery() as nursery:
            fs.ops.reader.nursery = nursery
            await fs.sync.refresh_buckets(force=True)
            if uploads:
                await nursery.start(fs.uploader.run)
            yield fs
            nursery.cancel_scope.cancel()
    finally:
        await fs.close()


@pytest.fixture
async def fs(devnet: Devnet, tmp_path: Path) -> AsyncIterator[FS]:
    async with open_fs(config_for(devnet, tmp_path)) as opened:
        yield opened


# ---- writes become durable --------------------------------------------------------


async def test_write_close_upload_read_back(fs: FS) -> None:
    bucket = await fs.bucket()
    await fs.mkdir(f"{bucket}/docs")
    data = os.urandom(700_000)
    await fs.write_file(f"{bucket}/docs/report.bin", data)
    # close queued it: staged (or already uploading), in the journal, not on the chain yet
    assert await fs.state(f"{bucket}/docs/report.bin") in ("staged", "uploading")
    assert [u[7] for u in fs.db.pending_uploads()] == [f"{bucket}/docs/report.bin"]
    fid = await fs.wait_stored(f"{bucket}/docs/report.bin")
    assert fid and (await fs.xattr(f"{bucket}/docs/report.bin", "user.deossfs.fid")).decode() == fid
    assert (await fs.chain_keys(bucket))["docs/report.bin"] == fid
    info = await fs.store.file_info(fid)
    assert info.file_size == len(data)
    locations = (await fs.xattr(f"{bucket}/docs/report.bin", "user.deossfs.locations")).decode()
    assert len(locations.splitlines()) == 12 and "http://127.0.0.1:" in locations
    assert await fs.read_file(f"{bucket}/docs/report.bin") == data
    # the content on the chain is the file (read back from the nodes, not the staging copy)
    assert await fs.store.read_object(fid) == data
    assert not fs.db.pending_uploads()


async def test_close_journals_the_file_at_flush(devnet: Devnet, tmp_path: Path) -> None:
    """close(2) waits for FLUSH only (RELEASE comes later): the journal must have the file then."""
    async with open_fs(config_for(devnet, tmp_path), uploads=False) as fs:
        bucket = await fs.bucket()
        parent = await fs.ino(bucket)
        info, entry = await fs.ops.create(parent, b"closed.bin", stat.S_IFREG | 0o644, os.O_WRONLY, CTX)
        await fs.ops.write(info.fh, 0, b"closed but not released")
        await fs.ops.flush(info.fh)
        info2, entry2 = await fs.ops.create(parent, b"closed-empty", stat.S_IFREG | 0o644, os.O_WRONLY, CTX)
        await fs.ops.flush(info2.fh)
        assert sorted(u[7] for u in fs.db.pending_uploads()) == [f"{bucket}/closed-empty",
                                                                  f"{bucket}/closed.bin"]
        # the process dies here, before RELEASE
    async with open_fs(config_for(devnet, tmp_path)) as fs:
        fid = await fs.wait_stored(f"{bucket}/closed.bin")
        assert await fs.store.read_object(fid) == b"closed but not released"  # type: ignore[arg-type]
        assert await fs.wait_stored(f"{bucket}/closed-empty") is None


async def test_directory_times_follow_its_entries(fs: FS) -> None:
    bucket = await fs.bucket()
    directory = await fs.mkdir(f"{bucket}/dir")
    other = await fs.mkdir(f"{bucket}/other")
    old = 1_000_000_000 * 10**9

    async def changes(call: object) -> None:
        for ino in (directory, other):
            await fs.ops.setattr(ino, _attrs(st_mtime_ns=old), Fields(update_mtime=True), None, CTX)
        await call  # type: ignore[misc]
        attr = await fs.ops.getattr(directory, CTX)
        assert attr.st_mtime_ns > old and attr.st_ctime_ns > old

    await changes(fs.write_file(f"{bucket}/dir/file.txt", b"x"))
    await changes(fs.ops.mkdir(directory, b"sub", stat.S_IFDIR | 0o755, CTX))
    await changes(fs.ops.symlink(directory, b"link", b"file.txt", CTX))
    await changes(fs.ops.unlink(directory, b"link", CTX))
    await changes(fs.ops.rmdir(directory, b"sub", CTX))
    await changes(fs.ops.rename(directory, b"file.txt", other, b"file.txt", 0, CTX))
    assert (await fs.ops.getattr(other, CTX)).st_mtime_ns > old
    await changes(fs.ops.rename(other, b"file.txt", directory, b"file.txt", 0, CTX))


async def test_fsync_returns_once_durable(fs: FS) -> None:
    bucket = await fs.bucket()
    parent = await fs.ino(bucket)
    info, entry = await fs.ops.create(parent, b"synced.bin", stat.S_IFREG | 0o600, os.O_WRONLY, CTX)
    data = os.urandom(300_000)
    await fs.ops.write(info.fh, 0, data)
    await fs.ops.fsync(info.fh, False)
    row = fs.db.get(entry.st_ino)
    assert row is not None and row.fid and row.durable_generation >= row.generation
    assert (await fs.chain_keys(bucket))["synced.bin"] == row.fid
    assert await fs.store.read_object(row.fid) == data
    await fs.ops.release(info.fh)
    assert await fs.state(f"{bucket}/synced.bin") == "stored"


async def test_fsyncs_during_an_upload_share_the_next_one(fs: FS) -> None:
    """Three fsyncs of new content that arrive while the file's upload is in flight all
    return after one following upload (which takes all their writes), not one each."""
    bucket = await fs.bucket()
    parent = await fs.ino(bucket)
    first, entry = await fs.ops.create(parent, b"db.bin", stat.S_IFREG | 0o600, os.O_RDWR, CTX)
    ino = entry.st_ino
    await fs.ops.write(first.fh, 0, os.urandom(2 * 1024 * 1024))
    before = fs.uploader.completed
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.ops.fsync, first.fh, False)
        with trio.fail_after(DURABLE_TIMEOUT):
            while not fs.uploader._uploading:  # the first upload is reading the file
                await trio.sleep(0.005)
        handles = [await fs.ops.open(ino, os.O_RDWR, CTX) for _ in range(3)]
        for i, handle in enumerate(handles):
            await fs.ops.write(handle.fh, i, b"abc"[i : i + 1])
            nursery.start_soon(fs.ops.fsync, handle.fh, False)
    assert fs.uploader.completed - before == 2
    row = fs.db.get(ino)
    assert row is not None and row.fid and row.durable_generation == row.generation
    assert (await fs.store.read_object(row.fid))[:3] == b"abc"
    for handle in [first, *handles]:
        await fs.ops.release(handle.fh)


async def test_fsync_local_returns_once_on_this_disk(devnet: Devnet, tmp_path: Path) -> None:
    """mount.fsync = "local": fsync journals the content and fsyncs it here, and returns
    before the upload (held back here by a long upload_delay); the upload follows, also
    after the process died right after the fsync."""
    config = config_for(devnet, tmp_path)
    data = tomllib.loads(config.read_text())
    data["mount"] = {"fsync": "local"}
    data.setdefault("storage", {})["upload_delay"] = 3600.0
    config.write_text(tomli_w.dumps(data))
    async with open_fs(config) as fs:
        bucket = await fs.bucket()
        parent = await fs.ino(bucket)
        info, entry = await fs.ops.create(parent, b"local.bin", stat.S_IFREG | 0o600, os.O_WRONLY, CTX)
        content = os.urandom(256 * 1024)
        await fs.ops.write(info.fh, 0, content)
        await fs.ops.fsync(info.fh, False)
        # journaled (not just open), not uploaded, the staged bytes complete on disk
        assert [u[0] for u in fs.db.pending_uploads()] == [entry.st_ino]
        assert fs.db.interrupted_writes() == []
        assert await fs.state(f"{bucket}/local.bin") == "staged"
        assert fs.ops.staging_path(entry.st_ino).read_bytes() == content
        # the process dies with the handle open (no release, no unmount)
    async with open_fs(config) as fs:
        fs.db.upload_now(entry.st_ino)  # the journal kept the hour's delay: no waiting for it
        fs.uploader.wake()
        fid = await fs.wait_stored(f"{bucket}/local.bin")
        assert fid and await fs.store.read_object(fid) == content


async def test_empty_files_live_in_metadata_only(fs: FS) -> None:
    bucket = await fs.bucket()
    await fs.write_file(f"{bucket}/empty.txt", b"")
    parent = await fs.ino(bucket)
    await fs.ops.mknod(parent, b"made-by-mknod", stat.S_IFREG | 0o640, 0, CTX)
    for name in ("empty.txt", "made-by-mknod"):
        assert await fs.wait_stored(f"{bucket}/{name}") is None
        assert await errno_of(fs.xattr(f"{bucket}/{name}", "user.deossfs.fid")) == pyfuse3.ENOATTR
        assert (await fs.attr(f"{bucket}/{name}")).st_size == 0
    assert stat.S_IMODE((await fs.attr(f"{bucket}/made-by-mknod")).st_mode) == 0o640
    await fs.sync.save_all()
    assert set(await fs.chain_keys(bucket)) == {META_KEY}  # CESS holds no empty object


async def test_open_for_write_overwrite_append_truncate(fs: FS) -> None:
    bucket = await fs.bucket()
    path = f"{bucket}/edit.bin"
    first = os.urandom(200_000)
    await fs.write_file(path, first)
    fid1 = await fs.wait_stored(path)
    ino = await fs.ino(path)
    # random writes into the middle of a stored file
    info = await fs.ops.open(ino, os.O_RDWR, CTX)
    await fs.ops.write(info.fh, 1000, b"X" * 500)
    await fs.ops.write(info.fh, 150_000, b"Y" * 10)
    await fs.ops.release(info.fh)
    model = bytearray(first)
    model[1000:1500] = b"X" * 500
    model[150_000:150_010] = b"Y" * 10
    # append
    info = await fs.ops.open(ino, os.O_WRONLY | os.O_APPEND, CTX)
    await fs.ops.write(info.fh, len(model), b"tail")
    await fs.ops.release(info.fh)
    model += b"tail"
    assert await fs.read_file(path) == bytes(model)
    fid2 = await fs.wait_stored(path)
    assert fid2 != fid1
    assert await fs.store.read_object(fid2) == bytes(model)
    # the replaced version leaves the chain
    await fs.wait_idle()
    assert not await fs.fid_on_chain(fid1)  # type: ignore[arg-type]
    # truncate (setattr) shrinking, then growing with zeros
    await fs.ops.setattr(ino, _attrs(st_size=5000), Fields(update_size=True), None, CTX)
    await fs.ops.setattr(ino, _attrs(st_size=9000), Fields(update_size=True), None, CTX)
    model = model[:5000] + bytes(4000)
    assert (await fs.attr(path)).st_size == 9000
    assert await fs.read_file(path) == bytes(model)
    fid3 = await fs.wait_stored(path)
    assert await fs.store.read_object(fid3) == bytes(model)  # type: ignore[arg-type]
    # O_TRUNC empties it: an empty file keeps no object on the chain
    info = await fs.ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
    await fs.ops.release(info.fh)
    assert await fs.wait_stored(path) is None
    await fs.wait_idle()
    assert "edit.bin" not in await fs.chain_keys(bucket)
    assert await fs.read_file(path) == b""


async def test_overwrite_while_uploading_wins_without_stall(fs: FS) -> None:
    """A new version closed while the old one uploads: the new one is durable promptly."""
    bucket = await fs.bucket()
    path = f"{bucket}/moving.bin"
    await fs.write_file(path, os.urandom(20_000_000))
    ino = await fs.ino(path)
    with trio.fail_after(30):
        while fs.db.get(ino).state != "uploading":  # type: ignore[union-attr]
            await trio.sleep(0.01)
    second = os.urandom(3_000_000)
    info = await fs.ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
    await fs.ops.write(info.fh, 0, second)
    await fs.ops.release(info.fh)
    fid = await fs.wait_stored(path, timeout=30)
    assert await fs.store.read_object(fid) == second  # type: ignore[arg-type]
    await fs.wait_idle()
    assert list((await fs.chain_keys(bucket)).values()) == [fid]


async def test_rewrite_while_uploading_copies_the_file_once(fs: FS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes to a file whose previous version uploads go to a private copy, made once."""
    copies: list[str] = []
    copyfile = shutil.copyfile

    def counting(src: str, dst: str) -> str:
        copies.append(str(src))
        return copyfile(src, dst)

    monkeypatch.setattr(shutil, "copyfile", counting)
    bucket = await fs.bucket()
    path = f"{bucket}/rewritten.bin"
    model = bytearray(os.urandom(24_000_000))
    ino = await fs.write_file(path, bytes(model))
    with trio.fail_after(30):
        while not fs.ops.hooks.uploading(ino):
            await trio.sleep(0.005)
    info = await fs.ops.open(ino, os.O_WRONLY, CTX)
    for i in range(40):
        offset = i * 500_000
        await fs.ops.write(info.fh, offset, b"%08d" % i)
        model[offset : offset + 8] = b"%08d" % i
    await fs.ops.release(info.fh)
    assert len(copies) <= 1, copies
    fid = await fs.wait_stored(path)
    assert await fs.store.read_object(fid) == bytes(model)  # type: ignore[arg-type]


def _attrs(**values: int) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    for name, value in values.items():
        setattr(entry, name, value)
    return entry


async def test_staged_copies_of_durable_files_are_trimmed(fs: FS) -> None:
    """cache.staged_keep bounds the staged copies of durable files (the workspace would
    otherwise grow with everything ever written); open files keep theirs, and a trimmed
    file reads back from the segment cache or the nodes."""
    fs.store.config.cache.staged_keep = 150_000
    bucket = await fs.bucket()
    files = {f"f{i}.bin": os.urandom(100_000) for i in range(3)}
    inodes = {}
    await fs.write_file(f"{bucket}/f0.bin", files["f0.bin"])
    held = await fs.ops.open(await fs.ino(f"{bucket}/f0.bin"), os.O_RDONLY, CTX)
    for name in ("f1.bin", "f2.bin"):
        await fs.write_file(f"{bucket}/{name}", files[name])
    for name in files:
        await fs.wait_stored(f"{bucket}/{name}")
        inodes[name] = await fs.ino(f"{bucket}/{name}")
    fs.ops.trim_staging(fs.store.config.cache.staged_keep)
    staged = {name: fs.ops.staging_path(ino).exists() for name, ino in inodes.items()}
    assert staged == {"f0.bin": True, "f1.bin": False, "f2.bin": True}  # newest kept, open kept
    assert fs.db.get(inodes["f1.bin"]).staged == 0  # type: ignore[union-attr]
    assert await fs.read_file(f"{bucket}/f1.bin") == files["f1.bin"]
    await fs.ops.release(held.fh)
    fs.ops.trim_staging(fs.store.config.cache.staged_keep)
    assert not fs.ops.staging_path(inodes["f0.bin"]).exists()
    for name, data in files.items():
        assert await fs.read_file(f"{bucket}/{name}") == data
        assert await fs.state(f"{bucket}/{name}") == "stored"


async def test_setattr_mode_owner_times(fs: FS) -> None:
    bucket = await fs.bucket()
    path = f"{bucket}/attrs.txt"
    ino = await fs.write_file(path, b"some bytes")
    await fs.ops.setattr(ino, _attrs(st_mode=stat.S_IFREG | 0o4751), Fields(update_mode=True), None, CTX)
    await fs.ops.setattr(ino, _attrs(st_uid=1234, st_gid=5678),
                         Fields(update_uid=True, update_gid=True), None, CTX)
    mtime = 1_500_000_000_123_456_789
    atime = 1_400_000_000_987_654_321
    await fs.ops.setattr(ino, _attrs(st_mtime_ns=mtime, st_atime_ns=atime),
                         Fields(update_mtime=True, update_atime=True), None, CTX)
    attr = await fs.attr(path)
    assert attr.st_mode == stat.S_IFREG | 0o4751
    assert (attr.st_uid, attr.st_gid) == (1234, 5678)
    assert (attr.st_mtime_ns, attr.st_atime_ns) == (mtime, atime)
    # metadata changes need no upload of the content
    fid = await fs.wait_stored(path)
    await fs.ops.setattr(ino, _attrs(st_mode=stat.S_IFREG | 0o600), Fields(update_mode=True), None, CTX)
    assert not fs.db.pending_uploads()
    assert fs.db.get(ino).fid == fid  # type: ignore[union-attr]
    # utimens on an open file survives its close (rsync and cp -a set times last)
    info = await fs.ops.open(ino, os.O_WRONLY, CTX)
    await fs.ops.write(info.fh, 0, b"SOME")
    await fs.ops.setattr(ino, _attrs(st_mtime_ns=mtime), Fields(update_mtime=True), info.fh, CTX)
    await fs.ops.release(info.fh)
    assert (await fs.attr(path)).st_mtime_ns == mtime


async def test_statfs_reports_the_territory(fs: FS) -> None:
    territory = await fs.store.territory()
    data = await fs.ops.statfs(CTX)
    assert data.f_bsize == data.f_frsize == 4096
    assert data.f_blocks == territory.total_space // 3 // 4096
    assert 0 < data.f_bavail <= data.f_blocks
    assert abs(data.f_bfree - territory.remaining_space // 3 // 4096) <= 96 * 2**20 // 4096 * 4
    assert data.f_namemax == 255


# ---- the namespace ------------------------------------------------------------------


async def test_lookup_readdir_getattr(fs: FS) -> None:
    bucket = await fs.bucket()
    assert bucket in await fs.listdir("")
    await fs.mkdir(f"{bucket}/dir")
    await fs.mkdir(f"{bucket}/dir/sub", 0o700)
    for name in ("one", "two", "three"):
        await fs.write_file(f"{bucket}/dir/{name}.txt", name.encode())
    parent = await fs.ino(f"{bucket}/dir")
    await fs.ops.symlink(parent, b"link", b"one.txt", CTX)
    assert await fs.listdir(f"{bucket}/dir") == ["sub", "one.txt", "two.txt", "three.txt", "link"]
    # readdir resumes from the id the kernel hands back
    fh = await fs.ops.opendir(parent, CTX)
    first = Token()
    first.limit = 2
    await fs.ops.readdir(fh, 0, first)  # type: ignore[arg-type]
    rest = Token()
    await fs.ops.readdir(fh, first[-1][2], rest)  # type: ignore[arg-type]
    assert [n for n, _, _ in first + rest] == [b"sub", b"one.txt", b"two.txt", b"three.txt", b"link"]
    kinds = {n: a.st_mode for n, a, _ in first + rest}
    assert stat.S_ISDIR(kinds[b"sub"]) and stat.S_IMODE(kinds[b"sub"]) == 0o700
    assert stat.S_ISREG(kinds[b"one.txt"]) and stat.S_ISLNK(kinds[b"link"])
    assert await fs.ops.readlink(await fs.ino(f"{bucket}/dir/link"), CTX) == b"one.txt"
    assert (await fs.attr(f"{bucket}/dir/three.txt")).st_size == 5
    assert await errno_of(fs.ops.lookup(parent, b"missing", CTX)) == errno.ENOENT
    assert await errno_of(fs.ops.opendir(await fs.ino(f"{bucket}/dir/one.txt"), CTX)) == errno.ENOTDIR
    assert await errno_of(fs.ops.open(parent, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await errno_of(fs.ops.readlink(parent, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.getattr(999_999, CTX)) == errno.ENOENT


async def test_unsupported_calls_return_the_right_errno(fs: FS) -> None:
    bucket = await fs.bucket()
    other = await fs.bucket()
    root = ROOT_INODE
    parent = await fs.ino(bucket)
    ino = await fs.write_file(f"{bucket}/file.txt", b"data")
    await fs.mkdir(f"{bucket}/dir")
    assert await errno_of(fs.ops.rename(parent, b"file.txt", parent, b"dir",
                                        pyfuse3.RENAME_EXCHANGE, CTX)) == errno.EINVAL
    # buckets cannot be renamed, nor files moved to the root or between buckets:
    # EXDEV makes mv copy and delete
    assert await errno_of(fs.ops.rename(root, bucket.encode(), root, b"renamed-bucket", 0, CTX)) == errno.EXDEV
    assert await errno_of(fs.ops.rename(parent, b"file.txt", root, b"file.txt", 0, CTX)) == errno.EXDEV
    other_ino = await fs.ino(other)
    assert await errno_of(fs.ops.rename(parent, b"file.txt", other_ino, b"file.txt", 0, CTX)) == errno.EXDEV
    assert await errno_of(fs.ops.rename(parent, b"dir", other_ino, b"dir", 0, CTX)) == errno.EXDEV
    assert await fs.listdir(other) == []
    # read-only xattrs and namespaces other than user.
    for name in (b"user.deossfs.fid", b"user.deossfs.state", b"user.deossfs.locations", b"user.deossfs.x"):
        assert await errno_of(fs.ops.setxattr(ino, name, b"v", CTX)) == errno.EPERM
        assert await errno_of(fs.ops.removexattr(ino, name, CTX)) == errno.EPERM
    for name in (b"trusted.foo", b"security.selinux", b"system.posix_acl_access", b"bogus"):
        assert await errno_of(fs.ops.setxattr(ino, name, b"v", CTX)) == errno.ENOTSUP
    # only buckets live at the root
    assert await errno_of(fs.ops.create(root, b"file-at-root", stat.S_IFREG | 0o644, os.O_WRONLY, CTX)) \
        == errno.EPERM
    assert await errno_of(fs.ops.symlink(root, b"link-at-root", b"x", CTX)) == errno.EPERM
    assert await errno_of(fs.ops.mknod(root, b"fifo-at-root", stat.S_IFIFO | 0o644, 0, CTX)) == errno.EPERM
    assert await errno_of(fs.ops.setattr(parent, _attrs(st_size=0), Fields(update_size=True), None, CTX)) \
        in (errno.EISDIR, errno.EINVAL)


async def test_names_the_mount_refuses(fs: FS) -> None:
    bucket = await fs.bucket()
    parent = await fs.ino(bucket)
    await fs.write_file(f"{bucket}/file.txt", b"data")
    # bucket names follow S3's rules (a `j`, which the chain refuses, is escaped: test_s3_names.py)
    for name in (b"Bad_Name", b"ab", b"x" * 64, b"has space", b"-leading", b"a..b"):
        assert await errno_of(fs.ops.mkdir(ROOT_INODE, name, 0o755, CTX)) == errno.EINVAL, name
    assert await errno_of(fs.ops.mkdir(ROOT_INODE, bucket.encode(), 0o755, CTX)) == errno.EEXIST
    # names must be UTF-8 (object keys are strings on the chain)
    bad = b"caf\xe9"
    assert await errno_of(fs.ops.create(parent, bad, stat.S_IFREG | 0o644, os.O_WRONLY, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.mkdir(parent, bad, 0o755, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.mkdir(ROOT_INODE, bad, 0o755, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.symlink(parent, bad, b"file.txt", CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.rename(parent, b"file.txt", parent, bad, 0, CTX)) == errno.EINVAL
    # .deossfs at the top of a bucket holds deossfs' metadata object
    reserved = b".deossfs"
    assert await errno_of(fs.ops.mkdir(parent, reserved, 0o755, CTX)) == errno.EPERM
    assert await errno_of(fs.ops.create(parent, reserved, stat.S_IFREG | 0o644, os.O_WRONLY, CTX)) == errno.EPERM
    assert await errno_of(fs.ops.symlink(parent, reserved, b"x", CTX)) == errno.EPERM
    assert await errno_of(fs.ops.rename(parent, b"file.txt", parent, reserved, 0, CTX)) == errno.EPERM
    assert await errno_of(fs.ops.lookup(parent, reserved, CTX)) == errno.ENOENT
    # deeper down it is an ordinary name
    await fs.mkdir(f"{bucket}/sub")
    await fs.mkdir(f"{bucket}/sub/.deossfs")
    # a key longer than the store accepts
    assert await errno_of(fs.ops.create(parent, b"k" * 1100, stat.S_IFREG | 0o644, os.O_WRONLY, CTX)) \
        == errno.ENAMETOOLONG
    assert await fs.listdir(bucket) == ["file.txt", "sub"]


async def test_paths_below_a_bucket_end_at_max_path_bytes(fs: FS) -> None:
    """Deep trees are taken up to MAX_PATH_BYTES below the bucket, in every call that makes
    a name; a rename that would push an entry of a moved directory past it is refused."""
    bucket = await fs.bucket()
    ino = await fs.ino(bucket)
    length = -1  # of the path below the bucket so far
    while length + 201 + 2 <= MAX_PATH_BYTES:
        ino = (await fs.ops.mkdir(ino, b"d" * 200, stat.S_IFDIR | 0o755, CTX)).st_ino
        length += 201
    room = MAX_PATH_BYTES - length - 1  # the longest name that still fits here
    assert 0 < room < 200
    for call in (fs.ops.mkdir(ino, b"n" * (room + 1), stat.S_IFDIR | 0o755, CTX),
                 fs.ops.create(ino, b"n" * (room + 1), stat.S_IFREG | 0o644, os.O_WRONLY, CTX),
                 fs.ops.symlink(ino, b"n" * (room + 1), b"x", CTX),
                 fs.ops.mknod(ino, b"n" * (room + 1), stat.S_IFIFO | 0o644, 0, CTX)):
        assert await errno_of(call) == errno.ENAMETOOLONG
    info, _ = await fs.ops.create(ino, b"f" * room, stat.S_IFREG | 0o644, os.O_WRONLY, CTX)
    await fs.ops.write(info.fh, 0, b"at the limit")
    await fs.ops.release(info.fh)
    assert await errno_of(fs.ops.rename(ino, b"f" * room, ino, b"n" * (room + 1), 0, CTX)) \
        == errno.ENAMETOOLONG
    assert fs.db.child(ino, b"f" * room) is not None
    # a directory holding the deep tree cannot move one byte deeper
    top = await fs.ino(f"{bucket}/{'d' * 200}")
    await fs.mkdir(f"{bucket}/x")
    assert await errno_of(fs.ops.rename(await fs.ino(bucket), b"d" * 200, await fs.ino(f"{bucket}/x"),
                                        b"d" * 200, 0, CTX)) == errno.ENAMETOOLONG
    assert fs.db.get(top).parent == await fs.ino(bucket)  # type: ignore[union-attr]
    key = f"{('d' * 200 + '/') * ((length + 1) // 201)}{'f' * room}"
    assert len(key.encode()) == MAX_PATH_BYTES
    fid = await fs.wait_stored(f"{bucket}/{key}")
    assert fid and await fs.store.read_object(fid) == b"at the limit"


async def test_rmdir_and_unlink_errnos(fs: FS) -> None:
    bucket = await fs.bucket()
    parent = await fs.ino(bucket)
    await fs.mkdir(f"{bucket}/full")
    await fs.write_file(f"{bucket}/full/inside.txt", b"x")
    await fs.mkdir(f"{bucket}/empty")
    assert await errno_of(fs.ops.rmdir(parent, b"full", CTX)) == errno.ENOTEMPTY
    assert await errno_of(fs.ops.rmdir(ROOT_INODE, bucket.encode(), CTX)) == errno.ENOTEMPTY
    assert await errno_of(fs.ops.rmdir(await fs.ino(f"{bucket}/full"), b"inside.txt", CTX)) == errno.ENOTDIR
    assert await errno_of(fs.ops.rmdir(parent, b"nothing", CTX)) == errno.ENOENT
    assert await errno_of(fs.ops.unlink(parent, b"empty", CTX)) == errno.EISDIR
    assert await errno_of(fs.ops.unlink(parent, b"nothing", CTX)) == errno.ENOENT
    await fs.ops.rmdir(parent, b"empty", CTX)
    assert await fs.listdir(bucket) == ["full"]


async def test_xattrs(fs: FS) -> None:
    bucket = await fs.bucket()
    ino = await fs.write_file(f"{bucket}/tagged.txt", b"data")
    dir_ino = await fs.mkdir(f"{bucket}/tagged-dir")
    await fs.ops.setxattr(ino, b"user.color", b"blue", CTX)
    await fs.ops.setxattr(ino, b"user.binary", bytes(range(256)), CTX)
    await fs.ops.setxattr(dir_ino, b"user.kind", b"folder", CTX)
    assert await fs.ops.getxattr(ino, b"user.color", CTX) == b"blue"
    assert await fs.ops.getxattr(ino, b"user.binary", CTX) == bytes(range(256))
    assert await fs.ops.getxattr(dir_ino, b"user.kind", CTX) == b"folder"
    names = set(await fs.ops.listxattr(ino, CTX))
    assert {b"user.color", b"user.binary"} <= names
    # the read-only user.deossfs.* are read by name, never listed (rsync -X would copy them)
    assert not any(n.startswith(b"user.deossfs.") for n in names)
    assert await fs.ops.getxattr(ino, b"user.deossfs.state", CTX) in (b"staged", b"uploading", b"stored")
    assert await errno_of(fs.ops.getxattr(ino, b"user.none", CTX)) == pyfuse3.ENOATTR
    assert await errno_of(fs.ops.getxattr(dir_ino, b"user.deossfs.state", CTX)) == pyfuse3.ENOATTR
    assert await errno_of(fs.ops.setxattr(ino, b"user.big", b"x" * (64 * 1024 + 1), CTX)) == errno.E2BIG
    await fs.ops.removexattr(ino, b"user.color", CTX)
    assert await errno_of(fs.ops.getxattr(ino, b"user.color", CTX)) == pyfuse3.ENOATTR
    assert await errno_of(fs.ops.removexattr(ino, b"user.color", CTX)) == pyfuse3.ENOATTR
    # an xattr is metadata: no new upload of the content
    await fs.wait_stored(f"{bucket}/tagged.txt")
    await fs.ops.setxattr(ino, b"user.after", b"1", CTX)
    assert not fs.db.pending_uploads()


async def test_rename_keeps_the_fid(fs: FS) -> None:
    bucket = await fs.bucket()
    data = os.urandom(150_000)
    await fs.mkdir(f"{bucket}/src")
    await fs.mkdir(f"{bucket}/dst")
    await fs.write_file(f"{bucket}/src/a.bin", data)
    await fs.write_file(f"{bucket}/src/b.bin", b"bee")
    fid_a = await fs.wait_stored(f"{bucket}/src/a.bin")
    fid_b = await fs.wait_stored(f"{bucket}/src/b.bin")
    uploads = fs.uploader.completed
    src, dst = await fs.ino(f"{bucket}/src"), await fs.ino(f"{bucket}/dst")
    await fs.ops.rename(src, b"a.bin", dst, b"moved.bin", 0, CTX)
    assert await errno_of(fs.ops.lookup(src, b"a.bin", CTX)) == errno.ENOENT
    assert await fs.xattr(f"{bucket}/dst/moved.bin", "user.deossfs.fid") == fid_a.encode()  # type: ignore[union-attr]
    assert await fs.state(f"{bucket}/dst/moved.bin") == "stored"
    assert not fs.db.pending_uploads()
    # a directory moves with everything below it
    bucket_ino = await fs.ino(bucket)
    await fs.ops.rename(bucket_ino, b"src", dst, b"inner", 0, CTX)
    assert await fs.xattr(f"{bucket}/dst/inner/b.bin", "user.deossfs.fid") == fid_b.encode()  # type: ignore[union-attr]
    assert await fs.read_file(f"{bucket}/dst/moved.bin") == data
    await fs.wait_idle()
    assert fs.uploader.completed == uploads  # nothing was uploaded again
    assert await fs.fid_on_chain(fid_a) and await fs.fid_on_chain(fid_b)  # type: ignore[arg-type]
    # the errnos of rename
    inner = await fs.ino(f"{bucket}/dst/inner")
    await fs.write_file(f"{bucket}/dst/other.txt", b"other")
    assert await errno_of(fs.ops.rename(dst, b"moved.bin", dst, b"other.txt",
                                        pyfuse3.RENAME_NOREPLACE, CTX)) == errno.EEXIST
    assert await errno_of(fs.ops.rename(dst, b"inner", inner, b"loop", 0, CTX)) == errno.EINVAL
    assert await errno_of(fs.ops.rename(dst, b"moved.bin", dst, b"inner", 0, CTX)) == errno.EISDIR
    await fs.mkdir(f"{bucket}/dst/newdir")
    assert await errno_of(fs.ops.rename(dst, b"newdir", dst, b"other.txt", 0, CTX)) == errno.ENOTDIR
    assert await errno_of(fs.ops.rename(dst, b"newdir", dst, b"inner", 0, CTX)) == errno.ENOTEMPTY
    assert await errno_of(fs.ops.rename(dst, b"missing", dst, b"x", 0, CTX)) == errno.ENOENT
    # rename over an existing file replaces it: the replaced version leaves the chain
    await fs.ops.rename(dst, b"moved.bin", inner, b"b.bin", 0, CTX)
    assert await fs.read_file(f"{bucket}/dst/inner/b.bin") == data
    await fs.wait_idle()
    assert not await fs.fid_on_chain(fid_b)  # type: ignore[arg-type]
    assert await fs.fid_on_chain(fid_a)  # type: ignore[arg-type]


async def test_hard_links(fs: FS) -> None:
    """Names of one inode: shared content and attributes, link counts, unlink of either
    name, rename of a link, listings, and what link refuses."""
    bucket, other = await fs.bucket(), await fs.bucket()
    parent = await fs.ino(bucket)
    sub = await fs.mkdir(f"{bucket}/sub")
    ino = await fs.write_file(f"{bucket}/first", b"shared content")
    entry = await fs.ops.link(ino, sub, b"second", CTX)
    assert entry.st_ino == ino and entry.st_nlink == 2
    assert (await fs.attr(f"{bucket}/sub/second")).st_ino == ino
    assert await fs.listdir(f"{bucket}/sub") == ["second"]
    # content and attributes are the inode's, whichever name is used
    info = await fs.ops.open(ino, os.O_WRONLY | os.O_APPEND, CTX)
    await fs.ops.write(info.fh, 14, b", appended")
    await fs.ops.release(info.fh)
    await fs.ops.setattr(ino, _attrs(st_mode=stat.S_IFREG | 0o600), Fields(update_mode=True), None, CTX)
    assert await fs.read_file(f"{bucket}/sub/second") == b"shared content, appended"
    assert stat.S_IMODE((await fs.attr(f"{bucket}/sub/second")).st_mode) == 0o600
    # what link refuses
    assert await errno_of(fs.ops.link(ino, sub, b"second", CTX)) == errno.EEXIST
    assert await errno_of(fs.ops.link(sub, parent, b"dirlink", CTX)) == errno.EPERM
    assert await errno_of(fs.ops.link(ino, ROOT_INODE, b"at-root", CTX)) == errno.EPERM
    assert await errno_of(fs.ops.link(ino, await fs.ino(other), b"elsewhere", CTX)) == errno.EXDEV
    # a directory holding only a link is not empty
    assert await errno_of(fs.ops.rmdir(parent, b"sub", CTX)) == errno.ENOTEMPTY
    # rename of a link, and a rename onto another name of the same inode (a no-op)
    await fs.ops.rename(sub, b"second", sub, b"renamed", 0, CTX)
    await fs.ops.rename(parent, b"first", sub, b"renamed", 0, CTX)
    assert sorted(await fs.listdir(f"{bucket}/sub")) == ["renamed"]
    assert "first" in await fs.listdir(bucket)
    # removing the file's own name leaves the link with the content; it is not deleted
    fid = await fs.wait_stored(f"{bucket}/first")
    await fs.ops.unlink(parent, b"first", CTX)
    assert (await fs.attr(f"{bucket}/sub/renamed")).st_nlink == 1
    assert await fs.read_file(f"{bucket}/sub/renamed") == b"shared content, appended"
    await fs.wait_idle()
    assert fid is not None and await fs.fid_on_chain(fid)
    # the last name goes with the content
    await fs.ops.unlink(sub, b"renamed", CTX)
    await fs.wait_idle()
    assert not await fs.fid_on_chain(fid)
    await fs.ops.rmdir(parent, b"sub", CTX)


async def test_hard_links_reach_another_machine(devnet: Devnet, tmp_path: Path) -> None:
    """Links travel in the metadata object: the other mount shows one inode under both
    names, and drops a link removed here."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        ino = await a.write_file(f"{bucket}/data.bin", b"linked")
        await a.mkdir(f"{bucket}/dir")
        await a.ops.link(ino, await a.ino(f"{bucket}/dir"), b"alias.bin", CTX)
        await a.ops.link(ino, await a.ino(bucket), b"alias-2.bin", CTX)
        await a.wait_stored(f"{bucket}/data.bin")
        await publish(a, b, bucket, {})
        first, second = await b.attr(f"{bucket}/data.bin"), await b.attr(f"{bucket}/dir/alias.bin")
        assert first.st_ino == second.st_ino and first.st_nlink == 3
        assert await b.read_file(f"{bucket}/dir/alias.bin") == b"linked"
        # a removes the file's own name and one link; b keeps the inode under the last one
        await a.ops.unlink(await a.ino(bucket), b"data.bin", CTX)
        await a.ops.unlink(await a.ino(bucket), b"alias-2.bin", CTX)
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(bucket)) == ["dir"]
        assert (await b.attr(f"{bucket}/dir/alias.bin")).st_nlink == 1
        assert await b.read_file(f"{bucket}/dir/alias.bin") == b"linked"


async def test_fifos_sockets_and_device_nodes(devnet: Devnet, tmp_path: Path) -> None:
    """Special files are names with a mode (and a device number): kept in the metadata
    object, so another mount shows them too; never uploaded, never opened here."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    kinds = {b"fifo": (stat.S_IFIFO, 0), b"socket": (stat.S_IFSOCK, 0),
             b"tty": (stat.S_IFCHR, os.makedev(4, 64)), b"disk": (stat.S_IFBLK, os.makedev(8, 1))}
    async with open_fs(config_for(devnet, tmp_path / "a")) as a, \
            open_fs(config_for(devnet, tmp_path / "b")) as b:
        bucket = await a.bucket()
        parent = await a.ino(bucket)
        for name, (kind, rdev) in kinds.items():
            entry = await a.ops.mknod(parent, name, kind | 0o640, rdev, CTX)
            assert stat.S_IFMT(entry.st_mode) == kind and entry.st_rdev == rdev
        assert await errno_of(a.ops.mknod(parent, b"fifo", stat.S_IFIFO | 0o640, 0, CTX)) == errno.EEXIST
        assert await errno_of(a.ops.open(await a.ino(f"{bucket}/fifo"), os.O_RDONLY, CTX)) == errno.ENXIO
        await a.wait_idle()
        assert a.db.pending_uploads() == []
        await publish(a, b, bucket, {})
        for name, (kind, rdev) in kinds.items():
            attr = await b.attr(f"{bucket}/{name.decode()}")
            assert (stat.S_IFMT(attr.st_mode), stat.S_IMODE(attr.st_mode), attr.st_rdev) == (kind, 0o640, rdev)
        await a.ops.unlink(parent, b"fifo", CTX)
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(bucket)) == ["disk", "socket", "tty"]


async def test_unlink_removes_from_the_chain(fs: FS) -> None:
    bucket = await fs.bucket()
    await fs.write_file(f"{bucket}/gone.bin", os.urandom(50_000))
    fid = await fs.wait_stored(f"{bucket}/gone.bin")
    assert "gone.bin" in await fs.chain_keys(bucket)
    await fs.ops.unlink(await fs.ino(bucket), b"gone.bin", CTX)
    assert await fs.listdir(bucket) == []
    await fs.wait_idle()
    assert "gone.bin" not in await fs.chain_keys(bucket)
    assert not await fs.fid_on_chain(fid)  # type: ignore[arg-type]


async def test_unlinked_file_is_not_resurrected_by_a_refresh(devnet: Devnet, tmp_path: Path) -> None:
    """Between unlink and the chain delete, reading the bucket's listing must not bring it back."""
    async with open_fs(config_for(devnet, tmp_path)) as fs:
        bucket = await fs.bucket()
        await fs.write_file(f"{bucket}/phoenix.bin", os.urandom(40_000))
        await fs.wait_stored(f"{bucket}/phoenix.bin")
    async with open_fs(config_for(devnet, tmp_path), uploads=False) as fs:
        parent = await fs.ino(bucket)
        await fs.ops.unlink(parent, b"phoenix.bin", CTX)
        await fs.sync.refresh_bucket(bucket, force=True)
        assert await errno_of(fs.ops.lookup(parent, b"phoenix.bin", CTX)) == errno.ENOENT
        assert await fs.listdir(bucket) == []
        # and an emptied bucket can be removed at once (rm -rf), before the uploader ran
        await fs.ops.rmdir(ROOT_INODE, bucket.encode(), CTX)
        assert bucket not in await fs.store._chain(fs.chain.buckets, fs.store.owner)  # type: ignore[operator]
        assert bucket not in await fs.listdir("")


async def test_unlink_of_an_open_journaled_file(fs: FS) -> None:
    """POSIX: an unlinked open file stays usable; nothing of it reaches the chain."""
    bucket = await fs.bucket()
    parent = await fs.ino(bucket)
    info, entry = await fs.ops.create(parent, b"scratch.tmp", stat.S_IFREG | 0o600, os.O_RDWR, CTX)
    await fs.ops.write(info.fh, 0, b"first")
    await fs.ops.unlink(parent, b"scratch.tmp", CTX)
    assert await fs.listdir(bucket) == []
    await fs.ops.write(info.fh, 5, b" second")
    await fs.ops.setattr(entry.st_ino, _attrs(st_mode=stat.S_IFREG | 0o644), Fields(update_mode=True),
                         info.fh, CTX)
    await fs.ops.fsync(info.fh, False)
    assert await fs.ops.read(info.fh, 0, 100) == b"first second"
    await fs.ops.release(info.fh)
    # a journaled (closed, not yet durable) file opened again, then unlinked while open
    ino = await fs.write_file(f"{bucket}/journaled.bin", os.urandom(30_000))
    info = await fs.ops.open(ino, os.O_RDONLY, CTX)
    await fs.ops.unlink(parent, b"journaled.bin", CTX)
    await fs.wait_idle()
    await fs.ops.release(info.fh)
    await fs.wait_idle()
    assert await fs.chain_keys(bucket) == {}
    assert fs.db.get(ino) is None and fs.db.get(entry.st_ino) is None


async def test_unlinked_or_replaced_open_file_stays_readable(devnet: Devnet, tmp_path: Path) -> None:
    """POSIX: a reader keeps its file after unlink or rename-over; the chain copy goes at close."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    data, other = os.urandom(90_000), os.urandom(70_000)
    async with open_fs(config_for(devnet, tmp_path / "a")) as a:
        bucket = await a.bucket()
        await a.write_file(f"{bucket}/read-me.bin", data)
        await a.write_file(f"{bucket}/replaced.bin", data)
        await a.write_file(f"{bucket}/new.bin", other)
        fid = await a.wait_stored(f"{bucket}/read-me.bin")
        replaced = await a.wait_stored(f"{bucket}/replaced.bin")
        await a.wait_stored(f"{bucket}/new.bin")
        await a.sync.save_all()
    # another machine: the content is on the chain only (no local copy)
    async with open_fs(config_for(devnet, tmp_path / "b")) as b:
        parent = await b.ino(bucket)
        reading = await b.ops.open(await b.ino(f"{bucket}/read-me.bin"), os.O_RDONLY, CTX)
        held = await b.ops.open(await b.ino(f"{bucket}/replaced.bin"), os.O_RDONLY, CTX)
        await b.ops.unlink(parent, b"read-me.bin", CTX)
        await b.ops.rename(parent, b"new.bin", parent, b"replaced.bin", 0, CTX)
        await b.wait_idle()
        assert await b.ops.read(reading.fh, 0, 200_000) == data
        assert await b.ops.read(held.fh, 0, 200_000) == data
        assert await b.read_file(f"{bucket}/replaced.bin") == other
        assert await b.fid_on_chain(fid) and await b.fid_on_chain(replaced)  # type: ignore[arg-type]
        await b.ops.release(reading.fh)
        await b.ops.release(held.fh)
        await b.wait_idle()
        assert not await b.fid_on_chain(fid)  # type: ignore[arg-type]
        assert not await b.fid_on_chain(replaced)  # type: ignore[arg-type]
        assert await b.listdir(bucket) == ["replaced.bin"]


# ---- space and territory ---------------------------------------------------------------


async def test_enospc_when_the_territory_cannot_hold_the_file(devnet: Devnet, tmp_path: Path) -> None:
    territory = bucket_name("tiny")
    chain = open_chain(load_config(devnet.config), load_key_file(load_config(devnet.config).require_key_file()))
    try:
        chain.mint_territory(territory, 1, 30)  # 1 GiB: ten segments of 12 x 8 MiB
    finally:
        chain.close()
    async with open_fs(config_for(devnet, tmp_path, territory=territory)) as fs:
        bucket = await fs.bucket()
        parent = await fs.ino(bucket)
        info, entry = await fs.ops.create(parent, b"big.bin", stat.S_IFREG | 0o644, os.O_WRONLY, CTX)
        assert await fs.ops.write(info.fh, 0, b"fits") == 4
        # eleven segments need 1056 MiB of a 1024 MiB territory
        assert await errno_of(fs.ops.write(info.fh, 10 * PLAINTEXT_CAPACITY, b"x")) == errno.ENOSPC
        assert await errno_of(fs.ops.setattr(entry.st_ino, _attrs(st_size=20 * PLAINTEXT_CAPACITY),
                                             Fields(update_size=True), info.fh, CTX)) == errno.ENOSPC
        assert await fs.ops.write(info.fh, 4, b" and more") == 9
        await fs.ops.release(info.fh)
        assert (await fs.attr(f"{bucket}/big.bin")).st_size == 13
        await fs.wait_stored(f"{bucket}/big.bin")
        assert await fs.read_file(f"{bucket}/big.bin") == b"fits and more"
        # statfs shows the small territory
        assert (await fs.ops.statfs(CTX)).f_blocks == 2**30 // 3 // 4096


async def test_erofs_on_an_expired_territory(scratch_devnet: Devnet, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(scratch_devnet.config)
    territory = bucket_name("short")
    chain = open_chain(config, load_key_file(config.require_key_file()))
    try:
        chain.mint_territory(territory, 1, 30)  # the chain's shortest lease
        async with open_fs(config_for(scratch_devnet, tmp_path, territory=territory)) as fs:
            bucket = await fs.bucket()
            parent = await fs.ino(bucket)
            ino = await fs.write_file(f"{bucket}/before.txt", b"written while active")
            await fs.wait_stored(f"{bucket}/before.txt")
            chain.advance_time(31 * 86400)  # the chain's clock only: the lease is over

            async def refused() -> bool:
                try:
                    info, _ = await fs.ops.create(parent, b"after.txt", stat.S_IFREG | 0o644,
                                                  os.O_WRONLY, CTX)
                except pyfuse3.FUSEError as exc:
                    assert exc.errno == errno.EROFS
                    return True
                await fs.ops.release(info.fh)
                await fs.ops.unlink(parent, b"after.txt", CTX)
                return False

            with caplog.at_level(logging.WARNING), trio.fail_after(10):
                while not await refused():
                    await trio.sleep(0.2)
            assert await errno_of(fs.ops.open(ino, os.O_WRONLY, CTX)) == errno.EROFS
            assert await errno_of(fs.ops.open(ino, os.O_RDONLY | os.O_TRUNC, CTX)) == errno.EROFS
            assert await errno_of(fs.ops.setattr(ino, _attrs(st_size=0), Fields(update_size=True),
                                                 None, CTX)) == errno.EROFS
            assert any("renew" in r.getMessage() and territory in r.getMessage() for r in caplog.records)
            # reading what is stored still works
            assert await fs.read_file(f"{bucket}/before.txt") == b"written while active"
    finally:
        chain.close()


# ---- restarts and other machines ---------------------------------------------------


async def test_journal_survives_a_restart(devnet: Devnet, tmp_path: Path) -> None:
    config = config_for(devnet, tmp_path)
    files = {"a.bin": os.urandom(100_000), "dir/b.bin": os.urandom(2_000_000), "c.txt": b"",
             "dir/d.txt": b"small"}
    async with open_fs(config, uploads=False) as fs:
        bucket = await fs.bucket()
        await fs.mkdir(f"{bucket}/dir")
        for name, data in files.items():
            await fs.write_file(f"{bucket}/{name}", data)
        assert len(fs.db.pending_uploads()) == len(files)
    # "the process died": a new one on the same workspace resumes the journal
    async with open_fs(config) as fs:
        assert len(fs.db.pending_uploads()) == len(files)
        for name, data in files.items():
            fid = await fs.wait_stored(f"{bucket}/{name}")
            if data:
                assert await fs.store.read_object(fid) == data  # type: ignore[arg-type]
            else:
                assert fid is None
        await fs.wait_idle()
        assert set(await fs.chain_keys(bucket)) == {k for k, v in files.items() if v}


async def test_upload_cancelled_midway_resumes(devnet: Devnet, tmp_path: Path) -> None:
    """An upload stopped after its storage order is on the chain resumes that same order
    (encrypted, too): a new order would lock the file's territory space a second time."""
    config = config_for(devnet, tmp_path)
    data = os.urandom(40_000_000)
    chain = ledger(devnet)
    start = len(chain.events(0))

    def declared(name: str) -> list[str]:
        fids = [e.attributes["fid"] for e in chain.events(0)[start:] if e.name == "UploadDeclaration"]
        return [f for f in fids if (deal := chain.deal(f)) is not None and deal.user.file_name == name
                or (info := chain.file(f)) is not None and any(o.file_name == name for o in info.owners)]

    try:
        async with open_fs(config) as fs:
            bucket = await fs.bucket()
            await fs.write_file(f"{bucket}/big.bin", data)
            with trio.fail_after(60):
                while not declared("big.bin"):
                    await trio.sleep(0.01)
            first = declared("big.bin")
        async with open_fs(config) as fs:
            fid = await fs.wait_stored(f"{bucket}/big.bin")
            assert await fs.store.read_object(fid) == data  # type: ignore[arg-type]
        assert first == [fid] and declared("big.bin") == [fid]
        assert chain.deal(fid) is None
    finally:
        chain.close()


async def test_an_upload_journaled_by_an_older_version_resumes_its_order(
        devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Salts hashed the plaintext with SHA-256 before GMAC: an upload a version before
    that declared, resumed by this one, keeps its FID (the journal's contexts are marked
    when the workspace is opened), so it is not declared - and its space locked - twice."""
    config = config_for(devnet, tmp_path)
    data = os.urandom(40_000_000)
    chain = ledger(devnet)
    start = len(chain.events(0))

    def declared() -> list[str]:
        return [e.attributes["fid"] for e in chain.events(0)[start:] if e.name == "UploadDeclaration"]

    current = SegmentCipher.salt_for
    try:
        # the older version: the scheme LEGACY_SALT_CONTEXT selects (pinned in
        # tests/unit/test_processing.py), on a workspace without the migration's mark
        with monkeypatch.context() as older:
            older.setattr(SegmentCipher, "salt_for", lambda cipher, context, index, plaintext:
                          current(cipher, LEGACY_SALT_CONTEXT + context, index, plaintext))
            async with open_fs(config) as fs:
                bucket = await fs.bucket()
                await fs.write_file(f"{bucket}/old.bin", data)
                with trio.fail_after(60):
                    while not declared():
                        await trio.sleep(0.01)
                workspace = fs.workspace
        assert chain.deal(declared()[0]) is not None  # stopped mid-upload: resumed below
        with sqlite3.connect(workspace / DB_NAME) as db:
            db.execute("PRAGMA user_version = 0")
        async with open_fs(config) as fs:
            fid = await fs.wait_stored(f"{bucket}/old.bin")
            assert await fs.store.read_object(fid) == data  # type: ignore[arg-type]
        assert declared() == [fid]
        assert chain.deal(fid) is None
    finally:
        chain.close()


async def test_another_machine_sees_the_same_tree(devnet: Devnet, tmp_path: Path) -> None:
    """Modes, owners, times, symlinks, xattrs, empty files and dirs live on CESS, not only locally."""
    data = os.urandom(400_000)
    mtime = 1_600_000_000_123_456_789
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with open_fs(config_for(devnet, tmp_path / "a")) as a:
        bucket = await a.bucket()
        await a.mkdir(f"{bucket}/tree", 0o750)
        await a.mkdir(f"{bucket}/tree/sub")
        await a.mkdir(f"{bucket}/tree/emptydir", 0o700)
        await a.write_file(f"{bucket}/tree/empty.txt", b"", mode=0o600)
        ino = await a.write_file(f"{bucket}/tree/sub/data.bin", data, mode=0o640)
        await a.ops.setattr(ino, _attrs(st_uid=1234, st_gid=5678, st_mtime_ns=mtime),
                            Fields(update_uid=True, update_gid=True, update_mtime=True), None, CTX)
        await a.ops.setxattr(ino, b"user.color", b"blue", CTX)
        await a.ops.setxattr(await a.ino(f"{bucket}/tree"), b"user.kind", b"folder", CTX)
        await a.ops.symlink(await a.ino(f"{bucket}/tree"), b"link", b"sub/data.bin", CTX)
        await a.ops.symlink(await a.ino(f"{bucket}/tree"), b"dangling", b"/nowhere/at/all", CTX)
        fid = await a.wait_stored(f"{bucket}/tree/sub/data.bin")
        await a.wait_idle()
        await a.sync.save_all()
        expected = {p: await a.attr(f"{bucket}/{p}") for p in
                    ("tree", "tree/sub", "tree/emptydir", "tree/empty.txt", "tree/sub/data.bin", "tree/link")}
    async with open_fs(config_for(devnet, tmp_path / "b")) as b:
        assert set(await b.listdir(f"{bucket}/tree")) == {"sub", "emptydir", "empty.txt", "link", "dangling"}
        for path, want in expected.items():
            got = await b.attr(f"{bucket}/{path}")
            assert (got.st_mode, got.st_uid, got.st_gid, got.st_size, got.st_mtime_ns) == \
                (want.st_mode, want.st_uid, want.st_gid, want.st_size, want.st_mtime_ns), path
        assert await b.listdir(f"{bucket}/tree/emptydir") == []
        assert (await b.attr(f"{bucket}/tree/sub/data.bin")).st_mtime_ns == mtime
        assert await b.ops.readlink(await b.ino(f"{bucket}/tree/link"), CTX) == b"sub/data.bin"
        assert await b.ops.readlink(await b.ino(f"{bucket}/tree/dangling"), CTX) == b"/nowhere/at/all"
        assert await b.xattr(f"{bucket}/tree/sub/data.bin", "user.color") == b"blue"
        assert await b.xattr(f"{bucket}/tree", "user.kind") == b"folder"
        assert await b.xattr(f"{bucket}/tree/sub/data.bin", "user.deossfs.fid") == fid.encode()  # type: ignore[union-attr]
        assert await b.state(f"{bucket}/tree/sub/data.bin") == "stored"
        # read lazily from the nodes: this workspace never held the bytes
        assert await b.read_file(f"{bucket}/tree/sub/data.bin") == data
        assert await b.read_file(f"{bucket}/tree/empty.txt") == b""


async def test_short_and_long_names_are_stored(fs: FS) -> None:
    """Any name a POSIX tool makes is stored, though CESS file names are 3..63 bytes."""
    bucket = await fs.bucket()
    await fs.mkdir(f"{bucket}/d")
    long_name = "a-rather-long-file-name-" * 4 + ".txt"
    files = {"a": b"one", "d/b": b"two", "ab": b"three", long_name: b"four"}
    for name, data in files.items():
        await fs.write_file(f"{bucket}/{name}", data)
    for name, data in files.items():
        fid = await fs.wait_stored(f"{bucket}/{name}", timeout=20)
        assert await fs.store.read_object(fid) == data  # type: ignore[arg-type]


async def test_metadata_saves_wait_for_a_quiet_bucket_and_skip_no_change(fs: FS) -> None:
    """Each save is a whole CESS object: the saver waits until the bucket has been quiet
    for SAVE_QUIET seconds, and a save that would store the same entries again stores
    nothing."""
    bucket = await fs.bucket()
    ino = await fs.write_file(f"{bucket}/a.txt", b"x")
    await fs.wait_stored(f"{bucket}/a.txt")
    await fs.sync.save_all()

    async def metadata_objects() -> list[str]:
        return [e.fid for e in await fs.store.list(bucket) if e.key == META_KEY]

    saved = await metadata_objects()
    assert len(saved) == 1
    fs.sync.mark_dirty(bucket)  # marked, but nothing in it changed
    await fs.sync.save_all()
    assert await metadata_objects() == saved and fs.db.bucket_state(bucket)[0] == 0
    await fs.ops.setattr(ino, _attrs(st_mode=stat.S_IFREG | 0o600), Fields(update_mode=True), None, CTX)
    await fs.sync.save_all(only_due=True)  # changed a moment ago: not yet
    assert await metadata_objects() == saved and fs.db.bucket_state(bucket)[0] == 1
    await trio.sleep(SAVE_QUIET)
    await fs.sync.save_all(only_due=True)
    after = await metadata_objects()
    assert len(after) == 1 and after != saved and fs.db.bucket_state(bucket)[0] == 0


async def test_metadata_save_under_way_is_not_lost_at_unmount(fs: FS) -> None:
    """Unmount saves the metadata: a periodic save in flight then must finish or be redone."""
    bucket = await fs.bucket()
    await fs.write_file(f"{bucket}/only-in-metadata.txt", b"")
    await fs.wait_stored(f"{bucket}/only-in-metadata.txt")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.sync.save, bucket)  # the periodic save
        with trio.fail_after(10):
            while fs.db.bucket_state(bucket)[0]:
                await trio.sleep(0)
        await fs.sync.save_all()  # the unmount's
        assert META_KEY in await fs.chain_keys(bucket)
    # a save cancelled midway (the mount's tasks are cancelled at exit) leaves it unsaved
    await fs.mkdir(f"{bucket}/later")
    with trio.move_on_after(0.01):
        await fs.sync.save(bucket)
    assert fs.db.bucket_state(bucket)[0] == 1
    await fs.sync.save_all()
    assert fs.db.bucket_state(bucket)[0] == 0


@asynccontextmanager
async def two_machines(devnet: Devnet, tmp_path: Path) -> AsyncIterator[tuple[FS, FS, str]]:
    """Two mounts of the devnet's account with their own workspaces, and a new bucket
    made by the first."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with open_fs(config_for(devnet, tmp_path / "a")) as a, \
            open_fs(config_for(devnet, tmp_path / "b")) as b:
        yield a, b, await a.bucket()


async def publish(a: FS, b: FS, bucket: str, files: dict[str, bytes]) -> None:
    """`a` writes the files, makes them durable and saves its metadata; `b` lists them."""
    for name, data in files.items():
        await a.write_file(f"{bucket}/{name}", data)
    for name in files:
        await a.wait_stored(f"{bucket}/{name}")
    await a.sync.save_all()
    await b.sync.refresh_buckets(force=True)
    await b.sync.refresh_bucket(bucket, force=True)


async def test_two_mounts_close_to_open(devnet: Devnet, tmp_path: Path) -> None:
    """A version closed (and made durable) on one machine is what the other opens next."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        first, second = os.urandom(60_000), os.urandom(80_000)
        await a.write_file(f"{bucket}/shared.bin", first)
        await a.wait_stored(f"{bucket}/shared.bin")
        await a.sync.save_all()
        await b.sync.refresh_buckets(force=True)
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(f"{bucket}/shared.bin") == first
        # b writes a new version of the same file
        ino_b = await b.ino(f"{bucket}/shared.bin")
        info = await b.ops.open(ino_b, os.O_WRONLY | os.O_TRUNC, CTX)
        await b.ops.write(info.fh, 0, second)
        await b.ops.release(info.fh)
        fid = await b.wait_stored(f"{bucket}/shared.bin")
        await b.sync.save_all()
        await a.sync.refresh_bucket(bucket, force=True)
        assert await a.xattr(f"{bucket}/shared.bin", "user.deossfs.fid") == fid.encode()  # type: ignore[union-attr]
        assert await a.state(f"{bucket}/shared.bin") == "stored"
        assert (await a.attr(f"{bucket}/shared.bin")).st_size == len(second)
        assert await a.read_file(f"{bucket}/shared.bin") == second


async def test_open_sees_another_mounts_closed_version(devnet: Devnet, tmp_path: Path) -> None:
    """Close-to-open: b opens a path it knows, without listing its directory, after a
    wrote a new version and published it: b reads the new version."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await publish(a, b, bucket, {"doc.txt": b"version one"})
        assert await b.read_file(f"{bucket}/doc.txt") == b"version one"
        ino = await a.ino(f"{bucket}/doc.txt")
        info = await a.ops.open(ino, os.O_WRONLY | os.O_TRUNC, CTX)
        await a.ops.write(info.fh, 0, b"version two, longer")
        await a.ops.release(info.fh)
        await a.wait_stored(f"{bucket}/doc.txt")
        await a.sync.save_all()
        await trio.sleep(REFRESH_SECONDS)  # b's last listing is older than its refresh interval
        assert await b.read_file(f"{bucket}/doc.txt") == b"version two, longer"
        # and a file deleted there is gone at the next open here
        await a.ops.unlink(await a.ino(bucket), b"doc.txt", CTX)
        await a.wait_idle()
        await a.sync.save_all()
        await trio.sleep(REFRESH_SECONDS)
        assert await errno_of(b.ops.open(await b.ino(f"{bucket}/doc.txt"), os.O_RDONLY, CTX)) == errno.ENOENT


async def test_two_mounts_writing_one_path_keep_the_later_version(devnet: Devnet, tmp_path: Path) -> None:
    """Both mounts write the same new file before either sees the other's version: the
    later close wins on both, and the earlier version is deleted from the chain, not left
    there using territory space under the same name."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await b.sync.refresh_buckets(force=True)
        path = f"{bucket}/both.bin"
        earlier, later = os.urandom(50_000), os.urandom(70_000)
        await a.write_file(path, earlier)
        await b.write_file(path, later)
        fid_a, fid_b = await a.wait_stored(path), await b.wait_stored(path)
        assert fid_a and fid_b and fid_a != fid_b
        # b lists the bucket while both versions are on the chain: it keeps its own
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(path) == later
        # a publishes its (earlier) version; b's unsaved one is newer and stays
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(path) == later
        await b.sync.save_all()
        # a takes b's version and deletes its own from the chain
        await a.sync.refresh_bucket(bucket, force=True)
        assert await a.xattr(path, "user.deossfs.fid") == fid_b.encode()
        assert await a.read_file(path) == later
        await a.wait_idle()
        assert not await a.fid_on_chain(fid_a)
        assert [e.fid for e in await a.store.list(bucket) if e.key == "both.bin"] == [fid_b]
        # and nothing flips back on either side
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(path) == later
        await b.wait_idle()
        assert await b.fid_on_chain(fid_b)


async def test_metadata_saved_by_two_mounts_at_once_is_merged(devnet: Devnet, tmp_path: Path) -> None:
    """A and B change different files and save without seeing each other's save: two
    metadata objects. The next listing merges them, the next save replaces both, and
    each mount ends with both changes."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await publish(a, b, bucket, {"one.txt": b"changed by a", "two.txt": b"changed by b"})

        async def metadata_objects() -> list[str]:
            return [e.fid for e in await a.store.list(bucket) if e.key == META_KEY]

        assert len(await metadata_objects()) == 1
        one, two = await a.ino(f"{bucket}/one.txt"), await b.ino(f"{bucket}/two.txt")
        await a.ops.setattr(one, _attrs(st_mode=stat.S_IFREG | 0o600), Fields(update_mode=True), None, CTX)
        await b.ops.setattr(two, _attrs(st_mode=stat.S_IFREG | 0o640), Fields(update_mode=True), None, CTX)
        await a.sync.save_all()
        await b.sync.save_all()  # b deletes the object it loaded, not a's new one
        assert len(await metadata_objects()) == 2
        await a.sync.refresh_bucket(bucket, force=True)
        assert stat.S_IMODE((await a.attr(f"{bucket}/one.txt")).st_mode) == 0o600
        assert stat.S_IMODE((await a.attr(f"{bucket}/two.txt")).st_mode) == 0o640
        await a.sync.save_all()
        assert len(await metadata_objects()) == 1
        await b.sync.refresh_bucket(bucket, force=True)
        assert stat.S_IMODE((await b.attr(f"{bucket}/one.txt")).st_mode) == 0o600
        assert stat.S_IMODE((await b.attr(f"{bucket}/two.txt")).st_mode) == 0o640
        assert len(await metadata_objects()) == 1


async def test_a_merge_does_not_bring_back_what_was_removed(devnet: Devnet, tmp_path: Path) -> None:
    """A removes names while B saves changes of its own at the same time (two metadata
    objects): the merge keeps A's removals on both mounts, unless B changed the entry
    after A removed it (an empty file here: a file with content is gone with its chain
    object, whatever B changes afterwards)."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await a.mkdir(f"{bucket}/old-dir")
        await a.ops.symlink(await a.ino(bucket), b"old-link", b"target", CTX)
        await publish(a, b, bucket, {"empty-file": b"", "kept.txt": b"kept", "changed-later": b""})
        # a removes three names; b then changes another file and one of those a removed
        root_a = await a.ino(bucket)
        for name in (b"empty-file", b"old-link", b"changed-later"):
            await a.ops.unlink(root_a, name, CTX)
        await a.ops.rmdir(root_a, b"old-dir", CTX)
        for name, mode in (("kept.txt", 0o600), ("changed-later", 0o640)):
            await b.ops.setattr(await b.ino(f"{bucket}/{name}"), _attrs(st_mode=stat.S_IFREG | mode),
                                Fields(update_mode=True), None, CTX)
        await a.wait_idle()
        await a.sync.save_all()
        await b.sync.save_all()  # without seeing a's save: two metadata objects
        await a.sync.refresh_bucket(bucket, force=True)  # a merges b's
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        for mount in (a, b):
            assert sorted(await mount.listdir(bucket)) == ["changed-later", "kept.txt"]
            assert stat.S_IMODE((await mount.attr(f"{bucket}/kept.txt")).st_mode) == 0o600
            assert stat.S_IMODE((await mount.attr(f"{bucket}/changed-later")).st_mode) == 0o640


async def test_a_rename_elsewhere_leaves_no_stale_name(devnet: Devnet, tmp_path: Path) -> None:
    """B listed a file (and a hashed-name file, first seen under its chain name) before A
    renamed it and saved: after B applies A's metadata only the new names are left."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await a.mkdir(f"{bucket}/dir")
        await a.write_file(f"{bucket}/dir/k1", b"renamed elsewhere")
        await a.write_file(f"{bucket}/zz", b"a key too short for the chain: hashed there")
        await a.wait_stored(f"{bucket}/dir/k1")
        await a.wait_stored(f"{bucket}/zz")
        # b sees the chain before a saves any metadata: zz only under its chain name
        await b.sync.refresh_buckets(force=True)
        await b.sync.refresh_bucket(bucket, force=True)
        assert "zz" not in await b.listdir(bucket)
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(bucket)) == ["dir", "zz"]
        assert await b.listdir(f"{bucket}/dir") == ["k1"]
        # a renames the file out of its directory and drops the directory
        directory = await a.ino(f"{bucket}/dir")
        await a.ops.rename(directory, b"k1", await a.ino(bucket), b"k1-renamed", 0, CTX)
        await a.ops.rmdir(await a.ino(bucket), b"dir", CTX)
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(bucket)) == ["k1-renamed", "zz"]
        assert await b.read_file(f"{bucket}/k1-renamed") == b"renamed elsewhere"


async def test_unsaved_local_change_survives_another_mounts_save(devnet: Devnet, tmp_path: Path) -> None:
    """A chmod made here but not saved yet (the mount died before its save) is newer than
    another mount's entry for the file: applying that mount's metadata keeps it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config_a = config_for(devnet, tmp_path / "a")
    async with open_fs(config_a) as a, open_fs(config_for(devnet, tmp_path / "b")) as b:
        bucket = await a.bucket()
        await publish(a, b, bucket, {"mine.txt": b"chmod here", "theirs.txt": b"chmod there"})
        mine = await a.ino(f"{bucket}/mine.txt")
        # a changes a file and stops without saving; b changes another one and saves
        await a.ops.setattr(mine, _attrs(st_mode=stat.S_IFREG | 0o604), Fields(update_mode=True), None, CTX)
        theirs = await b.ino(f"{bucket}/theirs.txt")
        await b.ops.setattr(theirs, _attrs(st_mode=stat.S_IFREG | 0o600), Fields(update_mode=True), None, CTX)
        await b.sync.save_all()
    async with open_fs(config_a) as a, open_fs(config_for(devnet, tmp_path / "b")) as b:
        await a.sync.refresh_bucket(bucket, force=True)
        assert stat.S_IMODE((await a.attr(f"{bucket}/mine.txt")).st_mode) == 0o604
        assert stat.S_IMODE((await a.attr(f"{bucket}/theirs.txt")).st_mode) == 0o600
        # a's next save publishes both
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert stat.S_IMODE((await b.attr(f"{bucket}/mine.txt")).st_mode) == 0o604
        assert stat.S_IMODE((await b.attr(f"{bucket}/theirs.txt")).st_mode) == 0o600


async def test_writes_open_at_a_crash_are_kept_and_uploaded(devnet: Devnet, tmp_path: Path) -> None:
    """The mount dies while a stored file is open with writes not closed: the next mount
    keeps what was written (as a local file system would) and uploads it, so the mount,
    the chain and other machines agree on the content."""
    config = config_for(devnet, tmp_path)
    async with open_fs(config) as fs:
        bucket = await fs.bucket()
        await fs.write_file(f"{bucket}/f.txt", b"version one, closed")
        old = await fs.wait_stored(f"{bucket}/f.txt")
        ino = await fs.ino(f"{bucket}/f.txt")
        info = await fs.ops.open(ino, os.O_WRONLY, CTX)
        await fs.ops.write(info.fh, 0, b"VERSION TWO")
        # the mount dies here: no flush, no release, nothing journaled
        assert not fs.db.pending_uploads()
    async with open_fs(config) as fs:
        assert [u[0] for u in fs.db.pending_uploads()] == [ino]
        fid = await fs.wait_stored(f"{bucket}/f.txt")
        assert fid != old
        assert await fs.read_file(f"{bucket}/f.txt") == b"VERSION TWO, closed"
        assert await fs.store.read_object(fid) == b"VERSION TWO, closed"  # type: ignore[arg-type]
        assert not fs.db.interrupted_writes()


async def test_a_metadata_save_does_not_hold_up_lookups(fs: FS) -> None:
    """The save uploads the metadata object (seconds) holding the bucket's lock; a lookup
    that would refresh the listing answers from the local view meanwhile."""
    bucket = await fs.bucket()
    await fs.write_file(f"{bucket}/some.txt", b"metadata to save")
    await fs.wait_stored(f"{bucket}/some.txt")
    fs.sync.mark_dirty(bucket)
    bucket_ino = await fs.ino(bucket)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.sync.save, bucket)
        with trio.fail_after(30):
            while bucket not in fs.sync._saving:
                await trio.sleep(0)
        fs.sync._refreshed[bucket] = 0.0  # a refresh is due
        assert await errno_of(fs.ops.lookup(bucket_ino, b"not-there", CTX)) == errno.ENOENT
        assert bucket in fs.sync._saving, "the lookup waited for the save"
    assert bucket not in fs.sync._saving


# ---- the trash ----------------------------------------------------------------------


async def gio_trash(fs: FS, path: str, info: bytes) -> None:
    """What GIO's g_file_trash does on the mount, call by call (fs/trash.py)."""
    uid = os.getuid()
    root_name = f".Trash-{uid}".encode()
    if await outcome(fs.ops.lookup(ROOT_INODE, root_name, CTX)) == errno.ENOENT:
        await fs.ops.mkdir(ROOT_INODE, root_name, stat.S_IFDIR | 0o700, CTX)
    root = await fs.ino(root_name.decode())
    for view in (b"info", b"files"):
        if await outcome(fs.ops.lookup(root, view, CTX)) == errno.ENOENT:
            await fs.ops.mkdir(root, view, stat.S_IFDIR | 0o700, CTX)
    info_dir, files_dir = await fs.ino(f"{root_name.decode()}/info"), await fs.ino(f"{root_name.decode()}/files")
    parent, name = await fs.parent_and_name(path)
    made, _ = await fs.ops.create(info_dir, name + b".trashinfo", stat.S_IFREG | 0o666,
                                  os.O_WRONLY | os.O_CREAT | os.O_EXCL, CTX)
    await fs.ops.release(made.fh)
    temp, _ = await fs.ops.create(info_dir, name + b".trashinfo.TMP123", stat.S_IFREG | 0o600, os.O_RDWR, CTX)
    await fs.ops.write(temp.fh, 0, info)
    await fs.ops.release(temp.fh)
    await fs.ops.rename(info_dir, name + b".trashinfo.TMP123", info_dir, name + b".trashinfo", 0, CTX)
    await fs.ops.rename(parent, name, files_dir, name, 0, CTX)


async def outcome(call: object) -> int:
    """0 if the call succeeds, else its errno."""
    try:
        await call  # type: ignore[misc]
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return 0


async def test_the_trash_is_kept_in_each_bucket_and_travels_with_its_metadata(devnet: Devnet,
                                                                              tmp_path: Path) -> None:
    """An item trashed on one machine stays in its bucket (same FID, nothing uploaded),
    hidden there; the trash directory at the root lists it with its info file. Another
    machine sees the same trash once it listed the bucket, restores the item by a rename,
    and deleting an item from the trash deletes it from the chain."""
    uid = os.getuid()
    trash = f".Trash-{uid}"
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await a.mkdir(f"{bucket}/dir")
        kept, gone = os.urandom(70_000), os.urandom(50_000)
        await a.write_file(f"{bucket}/dir/kept.bin", kept)
        await a.write_file(f"{bucket}/gone.bin", gone)
        kept_fid = await a.wait_stored(f"{bucket}/dir/kept.bin")
        gone_fid = await a.wait_stored(f"{bucket}/gone.bin")
        info = f"[Trash Info]\nPath={bucket}/dir/kept.bin\nDeletionDate=2024-01-02T03:04:05\n".encode()
        await gio_trash(a, f"{bucket}/dir/kept.bin", info)
        await gio_trash(a, f"{bucket}/gone.bin", b"[Trash Info]\nPath=x\n")
        assert await a.listdir(f"{bucket}/dir") == [] and await a.listdir(bucket) == ["dir"]
        assert await errno_of(a.ops.lookup(await a.ino(bucket), b".deossfs", CTX)) == errno.ENOENT
        assert sorted(await a.listdir(f"{trash}/files")) == ["gone.bin", "kept.bin"]
        assert sorted(await a.listdir(f"{trash}/info")) == ["gone.bin.trashinfo", "kept.bin.trashinfo"]
        assert await a.read_file(f"{trash}/info/kept.bin.trashinfo") == info
        row = a.db.get(await a.ino(f"{trash}/files/kept.bin"))
        assert row is not None and row.fid == kept_fid
        assert a.ops.key_of(row.id) == (bucket, f".deossfs/trash/{uid}/files/kept.bin")
        assert not a.db.pending_uploads()
        # files of the trash directory itself (info files) are never uploaded, and are small
        await a.wait_idle()
        await a.sync.save_all()
        assert set(await a.chain_keys(bucket)) == {"dir/kept.bin", "gone.bin", META_KEY}
        info_dir = await a.ino(f"{trash}/info")
        big, _ = await a.ops.create(info_dir, b"big", stat.S_IFREG | 0o600, os.O_WRONLY, CTX)
        assert await errno_of(a.ops.write(big.fh, 64 * 1024, b"x")) == errno.EFBIG
        await a.ops.release(big.fh)
        # nothing moves between the trash directory's own files and the buckets
        assert await errno_of(a.ops.rename(info_dir, b"big", await a.ino(bucket), b"big", 0, CTX)) \
            == errno.EXDEV
        # another user's trash directory is theirs to make
        assert await errno_of(a.ops.mkdir(ROOT_INODE, b".Trash-4321", stat.S_IFDIR | 0o700,
                                          Ctx(uid=1234, gid=1234))) == errno.EACCES
        # the bucket cannot go while its trash holds something
        assert await errno_of(a.ops.rmdir(ROOT_INODE, bucket.encode(), CTX)) == errno.ENOTEMPTY

        # the other machine: the trash appears with the bucket's metadata
        await b.sync.refresh_buckets(force=True)
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(f"{trash}/files")) == ["gone.bin", "kept.bin"]
        assert await b.read_file(f"{trash}/info/kept.bin.trashinfo") == info
        assert await b.read_file(f"{trash}/files/kept.bin") == kept
        assert stat.S_IMODE((await b.attr(trash)).st_mode) == 0o700
        # restore there: a rename back into the bucket, then GIO deletes the info file
        await b.ops.rename(await b.ino(f"{trash}/files"), b"kept.bin", await b.ino(f"{bucket}/dir"),
                           b"kept.bin", 0, CTX)
        await b.ops.unlink(await b.ino(f"{trash}/info"), b"kept.bin.trashinfo", CTX)
        assert await b.read_file(f"{bucket}/dir/kept.bin") == kept
        assert b.db.get(await b.ino(f"{bucket}/dir/kept.bin")).fid == kept_fid  # type: ignore[union-attr]
        # empty the trash (GIO's backend moves an item to expunged, then deletes it)
        trash_b = await b.ino(trash)
        await b.ops.mkdir(trash_b, b"expunged", stat.S_IFDIR | 0o700, CTX)
        await b.ops.rename(await b.ino(f"{trash}/files"), b"gone.bin", await b.ino(f"{trash}/expunged"),
                           b"123", 0, CTX)
        await b.ops.unlink(await b.ino(f"{trash}/info"), b"gone.bin.trashinfo", CTX)
        await b.ops.unlink(await b.ino(f"{trash}/expunged"), b"123", CTX)
        await b.wait_idle()
        assert not await b.fid_on_chain(gone_fid) and await b.fid_on_chain(kept_fid)
        assert await b.listdir(f"{trash}/files") == [] and await b.listdir(f"{trash}/info") == []
        await b.sync.save_all()
        await a.sync.refresh_bucket(bucket, force=True)
        assert await a.listdir(f"{trash}/files") == []
        assert await a.read_file(f"{bucket}/dir/kept.bin") == kept
        # an empty trash holds nothing back: the bucket can go
        await a.ops.unlink(await a.ino(f"{bucket}/dir"), b"kept.bin", CTX)
        await a.ops.rmdir(await a.ino(bucket), b"dir", CTX)
        await a.wait_idle()
        await a.ops.rmdir(ROOT_INODE, bucket.encode(), CTX)
        assert bucket not in await a.listdir("")
