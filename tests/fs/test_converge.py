"""Two mounts changing one bucket at random, saving and listing at random: once both have
saved and listed in turn, they show the same tree.

Operations called directly (no kernel), real store, SQLite and nodes. A seeded random
sequence; a failure prints the seed and the steps.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

import pyfuse3

from ..conftest import Devnet
from .test_operations import CTX, FS, Fields, _attrs, two_machines
from .test_operations import fake_readdir_reply as fake_readdir_reply  # the autouse fixture  # noqa: F401

SEEDS = [int(s) for s in os.environ.get("DEOSSFS_CONVERGE_SEEDS", "1,10").split(",")]
STEPS = int(os.environ.get("DEOSSFS_CONVERGE_STEPS", "80"))
NAMES = ["a", "b", "c", "d/e", "d/f", "g/h"]


async def outcome(call: object) -> int:
    """0 if the call succeeds, else its errno."""
    try:
        await call  # type: ignore[misc]
    except pyfuse3.FUSEError as exc:
        return exc.errno
    return 0


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


async def test_two_mounts_converge(devnet: Devnet, tmp_path: Path) -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        log: list[str] = []
        directory = tmp_path / str(seed)
        directory.mkdir()
        async with two_machines(devnet, directory) as (a, b, bucket):
            await b.sync.refresh_buckets(force=True)
            mounts = {"a": a, "b": b}
            for _ in range(STEPS):
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
            seen_a, seen_b = await tree(a, bucket), await tree(b, bucket)
            assert seen_a == seen_b, f"seed {seed} diverged after:\n" + "\n".join(log) + \
                f"\na: {seen_a}\nb: {seen_b}"
