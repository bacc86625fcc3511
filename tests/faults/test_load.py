"""Load through a real mount: a 1,000-file rsync, 8 concurrent readers of one large file
with writers at the same time. No errors, exact bytes, the mount's peak memory bounded.

Every small file is a whole CESS segment on the network (12 fragments, 9 of them
stored: ~72 MiB of node disk), and this machine uploads about two a second, so letting
1,000 drain would write ~70 GB. The rsync therefore runs while the storage nodes are
down (uploads wait in the journal, as in any outage); then the nodes come back and the
test checks that the queue drains, error-free, for `DRAINED` files before it stops.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deossfs.processing.encryption import PLAINTEXT_CAPACITY

from ..conftest import Devnet, deossfs
from ..harness import Mounted, config_for, ledger, restart_dead, wait_for

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                       reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is missing"),
]

FILES = 1000
DRAINED = 12
#: bounds on the mount's peak resident memory (its buffers are bounded: two uploads of two
#: 96 MiB workspaces each, the metadata saver's, the readers'); measured peaks are in
#: docs/reliability.md. The rsync measured 405-414 MiB in 8 runs once workspaces came
#: from the store's pool (0.9-2.5 GiB before: failed uploads' workspaces waited for the GC)
UPLOADS_PEAK_RSS = 1024 * 1024**2
READERS_PEAK_RSS = 1024 * 1024**2
READERS = 8


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
def mounted(fault_devnet: Devnet, tmp_path: Path) -> Iterator[Mounted]:
    m = Mounted(config_for(fault_devnet, tmp_path / "machine"), tmp_path / "mnt")
    try:
        yield m.mount()
    finally:
        m.cleanup()


def test_rsync_of_1000_files(fault_devnet: Devnet, tmp_path: Path) -> None:
    territory = f"load{secrets.token_hex(3)}"  # the waiting uploads' orders lock its space
    chain = ledger(fault_devnet)
    try:
        chain.mint_territory(territory, 256, 30)
    finally:
        chain.close()
    # a short penalty: once the nodes are back the waiting uploads go at once
    m = Mounted(config_for(fault_devnet, tmp_path / "machine",
                           storage={"territory": territory, "node_penalty_seconds": 2.0}),
                tmp_path / "mnt")
    rng = random.Random(secrets.randbits(32))
    src = tmp_path / "tree"
    for i in range(FILES):
        path = src / f"dir{i % 20:02d}" / f"file-{i:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(1, 64 * 1024)))
    try:
        m.mount()
        bucket = f"load-{secrets.token_hex(3)}"
        m.path(bucket).mkdir()
        deossfs("devnet", "down", "--dir", str(fault_devnet.dir))
        dest = m.path(bucket, "tree")
        result = subprocess.run(["rsync", "-a", "--stats", f"{src}/", f"{dest}/"],
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stderr == "", result.stderr[-3000:]
        transferred = re.search(r"Number of regular files transferred: ([\d,]+)", result.stdout)
        assert transferred and int(transferred.group(1).replace(",", "")) == FILES, result.stdout
        copied = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
        assert copied == sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
        for relative in copied:
            assert (dest / relative).read_bytes() == (src / relative).read_bytes(), relative
            assert (dest / relative).stat().st_mtime_ns == (src / relative).stat().st_mtime_ns
        # all journaled (status names each by the path it was closed under: rsync's temp name)
        assert len(m.pending()) >= FILES
        # the nodes come back: the queue drains, and nothing fails for another reason
        restart_dead(fault_devnet)
        wait_for(lambda: FILES + 1 - len(m.pending()) >= DRAINED, 600,
                 f"{DRAINED} of the rsynced files to become durable", interval=1.0)
        # errors left from the outage name the nodes; any other kind would be a failure
        unexpected = [p for p in m.pending() if p["error"] and "node" not in p["error"]]
        assert not unexpected, unexpected[:3]
        assert " ERROR " not in m.log(), m.log()[-3000:]
        peak = m.peak_rss()
        print(f"rsync of {FILES} files: mount peak RSS {peak / 2**20:.0f} MiB")
        assert peak < UPLOADS_PEAK_RSS, f"mount peak RSS {peak / 2**20:.0f} MiB"
    finally:
        m.cleanup()  # SIGKILL: the rest stays journaled
        restart_dead(fault_devnet)


def test_8_readers_of_one_large_file_while_writers_write(fault_devnet: Devnet, mounted: Mounted,
                                                         tmp_path: Path) -> None:
    m = mounted
    bucket = f"readers-{secrets.token_hex(3)}"
    m.path(bucket).mkdir()
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(5 * PLAINTEXT_CAPACITY // (1 << 20) + 3):
            handle.write(os.urandom(1 << 20))
    expected = sha256_of(big)
    deossfs("put", "-q", str(big), f"{bucket}/big.bin", config=m.config)
    wait_for(lambda: m.path(bucket, "big.bin").exists(), 60, "the mount to list the file")
    sources = []
    for i in range(3):
        path = tmp_path / f"write-{i}.bin"
        path.write_bytes(os.urandom(20_000_000 + i))
        sources.append(path)

    readers = [subprocess.Popen(["sha256sum", str(m.path(bucket, "big.bin"))], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(READERS)]
    writers = [subprocess.Popen(["cp", str(path), str(m.path(bucket, path.name))],
                                stderr=subprocess.PIPE, text=True) for path in sources]
    for proc in readers:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        assert out.split()[0] == expected
    for proc in writers:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    for path in sources:
        assert sha256_of(m.path(bucket, path.name)) == sha256_of(path)
    m.wait_durable(timeout=600)
    reader = config_for(fault_devnet, tmp_path / "reader")
    for path in sources:
        out = tmp_path / f"{path.name}.back"
        deossfs("get", "-q", f"{bucket}/{path.name}", str(out), config=reader)
        assert out.read_bytes() == path.read_bytes()
    peak = m.peak_rss()
    print(f"{READERS} readers + {len(sources)} writers: mount peak RSS {peak / 2**20:.0f} MiB")
    assert peak < READERS_PEAK_RSS, f"mount peak RSS {peak / 2**20:.0f} MiB"
    m.umount()
