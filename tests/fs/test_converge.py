"""Two mounts changing one bucket at random, saving and listing at random: once both have
saved and listed in turn, they show the same tree.

Operations called directly (no kernel), real store, SQLite and nodes. A seeded random
sequence; a failure prints the seed and the steps. What it found is pinned by the tests
after it.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from functools import partial
from pathlib import Path

import trio

from deossfs.catalog.protocol import META_KEY
from deossfs.names import chain_file_name
from deossfs.processing.pipeline import bytes_reader
from deossfs.repair import find_orphans, verify, verify_forever

from ..conftest import Devnet, devnet_at
from .conftest import config_for
from .test_operations import CTX, FS, Fields, _attrs, open_fs, outcome, two_machines
from .test_operations import fake_readdir_reply as fake_readdir_reply  # the autouse fixture  # noqa: F401

SEEDS = [int(s) for s in os.environ.get("DEOSSFS_CONVERGE_SEEDS", "1,10").split(",")]
STEPS = int(os.environ.get("DEOSSFS_CONVERGE_STEPS", "80"))
NAMES = ["a", "b", "c", "d/e", "d/f", "g/h"]


async def tree(fs: FS, bucket: str) -> dict[str, tuple]:
    """path -> (kind, mode, content digest) of everything below the bucket."""
    out: dict[str, tuple] = {}
    stack = [""]
    while stack:
        prefix = stack.pop()
        for name in await fs.listdir(f"{bucket}/{prefix}".rstrip("/")):
            path = f"{prefix}{name}"
            attr = await fs.attr(f"{bucket}/{path}")
            if stat.S_ISDIR(attr.st_mode):
                out[path] = ("dir", stat.S_IMODE(attr.st_mode), None)
                stack.append(path + "/")
            else:
                digest = hashlib.sha256(await fs.read_file(f"{bucket}/{path}")).hexdigest()[:12]
                out[path] = ("file", stat.S_IMODE(attr.st_mode), digest)
    return out


async def step(fs: FS, bucket: str, rng: random.Random) -> str:
    name = rng.choice(NAMES)
    head, _, leaf = name.rpartition("/")
    action = rng.choice(["write", "write", "chmod", "unlink", "rmdir"])
    try:
        if head:
            await fs.mkdir(f"{bucket}/{head}")
    except Exception:  # noqa: BLE001 - it exists already
        pass
    parent = await fs.ino(f"{bucket}/{head}".rstrip("/"))
    if action == "write":
        data = rng.randbytes(rng.choice([0, 10, 5000]))
        if await outcome(fs.ops.lookup(parent, leaf.encode(), CTX)) == 0:
            info = await fs.ops.open(await fs.ino(f"{bucket}/{name}"), os.O_WRONLY | os.O_TRUNC, CTX)
            await fs.ops.write(info.fh, 0, data)
            await fs.ops.release(info.fh)
        else:
            await fs.write_file(f"{bucket}/{name}", data)
        return f"write {name} {len(data)}"
    if action == "chmod" and await outcome(fs.ops.lookup(parent, leaf.encode(), CTX)) == 0:
        mode = rng.choice([0o600, 0o640, 0o644])
        await fs.ops.setattr(await fs.ino(f"{bucket}/{name}"), _attrs(st_mode=stat.S_IFREG | mode),
                             Fields(update_mode=True), None, CTX)
        return f"chmod {name} {mode:o}"
    if action == "unlink" and await outcome(fs.ops.lookup(parent, leaf.encode(), CTX)) == 0:
        await fs.ops.unlink(parent, leaf.encode(), CTX)
        return f"unlink {name}"
    if action == "rmdir" and head:
        grand = await fs.ino(bucket)
        result = await outcome(fs.ops.rmdir(grand, head.encode(), CTX))
        return f"rmdir {head} -> {result}"
    return "nothing"


async def play(a: FS, b: FS, bucket: str, seed: int, steps: int) -> list[str]:
    """The seeded random sequence on both mounts, then both settled; the steps taken."""
    rng = random.Random(seed)
    log: list[str] = []
    await b.sync.refresh_buckets(force=True)
    mounts = {"a": a, "b": b}
    for _ in range(steps):
        who = rng.choice("ab")
        fs = mounts[who]
        roll = rng.random()
        if roll < 0.15:
            await fs.wait_idle()
            await fs.sync.save_all()
            log.append(f"{who}: save")
        elif roll < 0.3:
            await fs.sync.refresh_bucket(bucket, force=True)
            log.append(f"{who}: refresh")
        else:
            log.append(f"{who}: {await step(fs, bucket, rng)}")
    # settle: each saves what it has and takes in the other's, and chain deletes
    # queued by either (superseded versions) are done before the last listings
    for first, second in (("a", "b"), ("b", "a"), ("a", "b")):
        await mounts[first].wait_idle()
        await mounts[first].sync.save_all()
        await mounts[second].sync.refresh_bucket(bucket, force=True)
    for fs in (a, b):
        await fs.wait_idle()
    for fs in (a, b):
        await fs.sync.refresh_bucket(bucket, force=True)
    return log


async def test_two_mounts_converge(devnet: Devnet, tmp_path: Path) -> None:
    for seed in SEEDS:
        directory = tmp_path / str(seed)
        directory.mkdir()
        async with two_machines(devnet, directory) as (a, b, bucket):
            log = await play(a, b, bucket, seed, STEPS)
            seen_a, seen_b = await tree(a, bucket), await tree(b, bucket)
            assert seen_a == seen_b, f"seed {seed} diverged after:\n" + "\n".join(log) + \
                f"\na: {seen_a}\nb: {seen_b}"
            # nothing but the names the mounts made: a file's hashed chain name (`~k…`)
            # is the metadata's to map back, never a file of its own
            made = set(NAMES) | {name.rpartition("/")[0] for name in NAMES}
            assert set(seen_a) <= made, f"seed {seed}: {sorted(set(seen_a) - made)} after:\n" + "\n".join(log)


async def test_an_upload_ending_while_a_listing_is_read_keeps_its_file(devnet: Devnet, tmp_path: Path) -> None:
    """The listing was read before the upload ended, so it lacks the new FID the file has
    by the time the listing is applied. The file once went away as "deleted elsewhere"."""
    data = os.urandom(100_000)
    async with open_fs(config_for(devnet, tmp_path)) as fs:
        bucket = await fs.bucket()
        path = f"{bucket}/late.bin"
        await fs.write_file(path, data)
        real_listing = fs.store.files_in_bucket

        async def listing_read_before_the_upload_ended(name: str) -> list:
            listed = await real_listing(name)
            assert all(key != "late.bin" for key, _ in listed), "the upload ended first"
            assert await fs.wait_stored(path)
            return listed

        fs.store.files_in_bucket = listing_read_before_the_upload_ended  # type: ignore[method-assign]
        try:
            await fs.sync.refresh_bucket(bucket, force=True)
        finally:
            del fs.store.files_in_bucket
        assert await fs.listdir(bucket) == ["late.bin"]
        assert await fs.read_file(path) == data


async def test_a_file_listed_before_its_metadata_takes_its_real_name(devnet: Devnet, tmp_path: Path) -> None:
    """A key the chain declares under a hash (`x`: under 3 bytes), listed by another mount
    before the writer's save, shows under its chain name until that save, which gives it
    its real name - also while the mount has unsaved changes of its own - and the
    placeholder is never published (it became a file of its own in every mount)."""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await b.sync.refresh_buckets(force=True)
        await a.write_file(f"{bucket}/x", b"a short key")
        await a.wait_stored(f"{bucket}/x")
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.listdir(bucket) == [chain_file_name("x")]
        await b.write_file(f"{bucket}/own.txt", b"unsaved here")
        await b.wait_idle()
        await b.sync.save_all()  # b's save while it holds the placeholder
        await a.sync.refresh_bucket(bucket, force=True)
        assert sorted(await a.listdir(bucket)) == ["own.txt", "x"]
        await b.write_file(f"{bucket}/own2.txt", b"unsaved here")  # b's bucket is dirty again
        await a.wait_idle()
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert sorted(await b.listdir(bucket)) == ["own.txt", "own2.txt", "x"]
        assert await b.read_file(f"{bucket}/x") == b"a short key"
        await b.wait_idle()
        await b.sync.save_all()
        await a.sync.refresh_bucket(bucket, force=True)
        assert sorted(await a.listdir(bucket)) == ["own.txt", "own2.txt", "x"]


async def test_a_hashed_key_rewritten_elsewhere_and_changed_here_keeps_its_name(
        devnet: Devnet, tmp_path: Path) -> None:
    """b rewrites `x` (declared under a hash) and deletes the version a holds, while a
    changed x's mode later than that: a keeps x, with b's bytes and its own mode. (a took
    x for deleted elsewhere and showed b's version under `~k…` only.)"""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        await b.sync.refresh_buckets(force=True)
        await a.write_file(f"{bucket}/x", b"first")
        await a.wait_idle()
        await a.sync.save_all()
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(f"{bucket}/x") == b"first"
        info = await b.ops.open(await b.ino(f"{bucket}/x"), os.O_WRONLY | os.O_TRUNC, CTX)
        await b.ops.write(info.fh, 0, b"second")
        await b.ops.release(info.fh)
        await a.ops.setattr(await a.ino(f"{bucket}/x"), _attrs(st_mode=stat.S_IFREG | 0o600),
                            Fields(update_mode=True), None, CTX)
        await b.wait_idle()  # b's upload is done and the first version deleted
        await b.sync.save_all()
        await a.sync.refresh_bucket(bucket, force=True)
        assert await a.listdir(bucket) == ["x"]
        assert await a.read_file(f"{bucket}/x") == b"second"
        assert stat.S_IMODE((await a.attr(f"{bucket}/x")).st_mode) == 0o600


async def test_another_tools_uploads_of_one_name_are_not_orphans(devnet: Devnet, tmp_path: Path) -> None:
    """DeOSS keeps every upload of a name. A mount shows the latest, the same at every
    listing, and publishes it as listed when it saves the bucket for a change of its own;
    the earlier upload is not an orphan of it (`verify --repair` kept deleting it)."""
    (tmp_path / "a").mkdir()
    async with open_fs(config_for(devnet, tmp_path / "a")) as a:
        bucket = await a.bucket()
        earlier = await a.store.put(bytes_reader(b"the first upload"), 16, bucket, "dup.txt",
                                    replace_existing=False)
        later = await a.store.put(bytes_reader(b"the second upload"), 17, bucket, "dup.txt",
                                  replace_existing=False)
        for _ in range(3):
            await a.sync.refresh_bucket(bucket, force=True)
            assert await a.listdir(bucket) == ["dup.txt"]
            assert await a.read_file(f"{bucket}/dup.txt") == b"the second upload"
        await a.write_file(f"{bucket}/own.txt", b"a change of the mount's own")
        await a.wait_stored(f"{bucket}/own.txt")
        await a.sync.save_all()
        assert META_KEY in {name for name, _ in await a.store.files_in_bucket(bucket)}
        assert await find_orphans(a.store, [bucket], grace=0) == []
        report = await verify(a.store, bucket, grace=0, repair=True)
        assert report.orphans == []
        assert await a.fid_on_chain(earlier.fid) and await a.fid_on_chain(later.fid)


async def test_a_listed_object_in_anothers_metadata_supersedes_nothing(devnet: Devnet, tmp_path: Path) -> None:
    """Mount a lists another tool's object; a later upload of its name is what mount b
    lists and publishes (as listed) when it saves the bucket. a takes the later one from
    b's metadata object and deletes neither: DeOSS keeps every upload of a name. (The
    merge breaks the tie of two listed entries' ctimes by FID, so the later upload's FID
    is made to sort after the first's: the order in which the old rule deleted.)"""
    async with two_machines(devnet, tmp_path) as (a, b, bucket):
        first = await a.store.put(bytes_reader(b"the first upload"), 16, bucket, "dup.txt",
                                  replace_existing=False)
        await a.sync.refresh_bucket(bucket, force=True)
        assert await a.read_file(f"{bucket}/dup.txt") == b"the first upload"
        while True:
            data = os.urandom(20)
            second = await b.store.put(bytes_reader(data), len(data), bucket, "dup.txt",
                                       replace_existing=False)
            if second.fid > first.fid:
                break
            await b.store.delete_fid(second.fid)
        await b.sync.refresh_buckets(force=True)
        await b.sync.refresh_bucket(bucket, force=True)
        assert await b.read_file(f"{bucket}/dup.txt") == data
        await b.write_file(f"{bucket}/own.txt", b"b's own change")
        await b.wait_stored(f"{bucket}/own.txt")
        await b.sync.save_all()
        await a.sync.refresh_bucket(bucket, force=True)  # takes in b's metadata object
        assert await a.read_file(f"{bucket}/dup.txt") == data
        await a.wait_idle()
        assert await a.fid_on_chain(first.fid) and await a.fid_on_chain(second.fid)


async def test_an_orphan_left_by_two_mounts_is_found_and_deleted(tmp_path: Path) -> None:
    """Two mounts write one file without seeing each other's version; the one whose
    version lost goes away before it learns so (a laptop that died), and the other's save
    replaces its metadata object: the losing version stays on the chain, named by nothing.
    `deossfs verify` reports it once it is older than --grace and `--repair` deletes it.
    The mount's background check deletes an orphan too, but not a version its own database
    refers to. (A devnet of its own: the background check verifies every file there.)"""
    with devnet_at(tmp_path / "net") as devnet:
        async with two_machines(devnet, tmp_path) as (a, b, bucket):
            await b.sync.refresh_buckets(force=True)
            await b.write_file(f"{bucket}/shared.txt", b"b's version")
            losing = await b.wait_stored(f"{bucket}/shared.txt")
            await b.sync.save_all()
            # a has not listed the bucket since: it makes the file anew, later
            await a.write_file(f"{bucket}/shared.txt", b"a's version, the later one")
            winning = await a.wait_stored(f"{bucket}/shared.txt")
            await a.sync.refresh_bucket(bucket, force=True)  # takes in b's metadata: its own is newer
            await a.sync.save_all()  # and replaces b's metadata object
            assert await a.read_file(f"{bucket}/shared.txt") == b"a's version, the later one"
            on_chain = {info.fid for name, info in await a.store.files_in_bucket(bucket) if name != META_KEY}
            assert on_chain == {losing, winning}
        # b is gone; nothing names its version any more
        async with open_fs(config_for(devnet, tmp_path / "a")) as a:
            # a young orphan is left alone (an upload in flight looks the same)
            assert await find_orphans(a.store, [bucket]) == []
            orphans = await find_orphans(a.store, [bucket], grace=0)
            assert [(o.fid, o.path, o.current) for o in orphans] == [(losing, "shared.txt", winning)]

            listed = devnet.cli("verify", bucket, "--grace", "0", check=False)
            assert listed.returncode == 1
            assert "1 orphaned files left" in listed.stderr
            assert losing[:16] in listed.stdout and winning[:16] in listed.stdout
            repaired = devnet.cli("verify", bucket, "--grace", "0", "--repair")
            assert "1 orphaned files, 1 deleted" in repaired.stdout
            assert not await a.fid_on_chain(losing)
            assert await find_orphans(a.store, [bucket], grace=0) == []
            await a.sync.refresh_bucket(bucket, force=True)
            assert await a.listdir(bucket) == ["shared.txt"]
            assert await a.read_file(f"{bucket}/shared.txt") == b"a's version, the later one"

            # the background check: a version of a named path that no metadata object
            # names (an upload whose mount died), left while a database refers to it
            lost = await a.store.put(bytes_reader(b"a lost version"), 14, bucket, "shared.txt",
                                     replace_existing=False)
            needed = {lost.fid}

            def keep(fid: str) -> bool:
                return fid in needed or bool(a.db.files_with_fid(fid))

            report = await verify(a.store, bucket, grace=0, repair=True, keep=keep)
            assert report.orphans == [] and await a.fid_on_chain(lost.fid)
            needed.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(verify_forever, a.store, 0.2, grace=0, keep=keep))
                with trio.fail_after(120):
                    while await a.fid_on_chain(lost.fid):
                        await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
            assert await a.fid_on_chain(winning)
