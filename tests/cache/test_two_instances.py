"""Two (and more) deossfs instances of one account on one devnet, over real HTTP.

- A file written through mount A is read through mount B from A's cache: B's counters
  show peer hits and no node traffic, and every storage node is stopped while B reads.
- With A blacklisting B's account (public mode), B reads from the storage nodes.
- With the cache off nothing is kept; the cache never exceeds its cap while a larger
  file is read; neither cache holds plaintext of an encrypted file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deossfs.cache import SegmentCache
from deossfs.processing.encryption import PLAINTEXT_CAPACITY
from deossfs.processing.layout import SEGMENT_SIZE

from ..conftest import ROOT, Devnet, deossfs
from .conftest import (
    bucket_name,
    disk_bytes,
    files_containing,
    instance,
    start_all_nodes,
    stop_all_nodes,
    wait_for,
)

pytestmark = pytest.mark.slow
MARKER = b"DEOSSFS-CACHE-PLAINTEXT-MARKER-" * 64


def plaintext(size: int) -> bytes:
    data = bytearray(os.urandom(size))
    data[:len(MARKER)] = MARKER
    data[size // 2 : size // 2 + len(MARKER)] = MARKER
    return bytes(data)


def counters(config: Path) -> dict:
    status = json.loads(deossfs("status", "--json", config=config).stdout)
    return status["cache"]


def log_of(config: Path) -> str:
    path = config.parent / "workspace" / "mount.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


@pytest.mark.mount
@pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                    reason="needs /dev/fuse and fusermount3")
def test_written_through_a_read_through_b_from_a_cache(cache_devnet: Devnet, tmp_path: Path) -> None:
    net = cache_devnet
    bucket = bucket_name()
    net.cli("bucket", "create", bucket)
    a = instance(net, tmp_path / "a")  # serving is switched on from the command line below
    # B is told of no peer: it finds A in the chain's gateway list
    b = instance(net, tmp_path / "b", peers__endpoints=[], peers__from_chain=True)
    mnt_a, mnt_b = tmp_path / "mnt-a", tmp_path / "mnt-b"
    mnt_a.mkdir()
    mnt_b.mkdir()
    data = plaintext(SEGMENT_SIZE + 5_000_000)  # two segments
    mounted: list[Path] = []
    try:
        deossfs("-o", "serve.enabled=true", "-o", "serve.port=0", "-o", "serve.register=true",
                "mount", str(mnt_a), config=a, timeout=60)
        mounted.append(mnt_a)
        (mnt_a / bucket / "shared.bin").write_bytes(data)
        wait_for(lambda: os.getxattr(mnt_a / bucket / "shared.bin", "user.deossfs.state") == b"stored",
                 90, "the file to be durable")
        served_before = counters(a)["counters"]["served_segments"]

        stop_all_nodes(net)
        deossfs("mount", str(mnt_b), config=b, timeout=60)
        mounted.append(mnt_b)
        read = (mnt_b / bucket / "shared.bin").read_bytes()
        assert read == data, log_of(b)

        seen = counters(b)["counters"]
        assert seen["peer_hits"] >= 2, (seen, log_of(b))
        assert seen["node_reads"] == 0 and seen["bytes_from_nodes"] == 0, seen
        assert seen["bytes_from_peers"] >= 2 * SEGMENT_SIZE
        assert counters(a)["counters"]["served_segments"] >= served_before + 2
        # what came from the peer entered B's cache too; neither cache holds plaintext
        assert counters(b)["segments"] >= 2
        for cache_dir in (tmp_path / "a" / "cache", tmp_path / "b" / "cache"):
            assert disk_bytes(cache_dir) >= 2 * SEGMENT_SIZE
            assert files_containing(cache_dir, MARKER) == []
    finally:
        start_all_nodes(net)
        for mountpoint in reversed(mounted):
            deossfs("umount", str(mountpoint), check=False, timeout=120)


def serve_cache(config: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`deossfs serve-cache` in the background; its endpoint."""
    env = dict(os.environ, DEOSSFS_CONFIG=str(config))
    with open(log, "wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "deossfs", *options, "serve-cache", "--port", "0"],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def endpoint() -> str | None:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("serving the cache at "):
                return line.split()[-1]
        assert proc.poll() is None, log.read_text()
        return None

    return proc, wait_for(endpoint, 30, "serve-cache to listen")


def test_a_blacklisted_account_reads_from_the_nodes(cache_devnet: Devnet, tmp_path: Path) -> None:
    net = cache_devnet
    bucket = bucket_name()
    net.cli("bucket", "create", bucket)
    a = instance(net, tmp_path / "a")
    b = instance(net, tmp_path / "b", peers__from_chain=False)
    source = tmp_path / "data.bin"
    source.write_bytes(plaintext(SEGMENT_SIZE + 1_000_000))
    deossfs("put", str(source), f"{bucket}/data.bin", config=a)  # the upload fills A's cache
    assert counters(a)["segments"] == 2
    account = net.cli("key", "show").stdout.strip()
    proc, endpoint = serve_cache(a, tmp_path / "serve.log", "-o", f"access.accounts={account}")
    try:
        out = tmp_path / "out.bin"
        deossfs("-o", f"peers.endpoints={endpoint}", "get", f"{bucket}/data.bin", str(out), config=b)
        assert out.read_bytes() == source.read_bytes()
        seen = counters(b)["counters"]
        assert seen["peer_hits"] == 0 and seen["bytes_from_peers"] == 0, seen
        assert seen["node_reads"] == 2 and seen["bytes_from_nodes"] > 0, seen
        served = counters(a)["counters"]
        assert served["served_segments"] == 0 and served["refused_requests"] >= 1, served
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "serve.log").read_text()
    assert "refused a peer request" in log and account in log and "blacklisted" in log, log


def test_with_the_cache_off_nothing_is_kept(cache_devnet: Devnet, tmp_path: Path) -> None:
    net = cache_devnet
    bucket = bucket_name()
    net.cli("bucket", "create", bucket)
    off = instance(net, tmp_path / "off", cache__enabled=False, peers__enabled=False)
    source = tmp_path / "data.bin"
    source.write_bytes(plaintext(SEGMENT_SIZE + 1_000_000))
    deossfs("put", str(source), f"{bucket}/data.bin", config=off)
    for name in ("one.bin", "two.bin"):
        deossfs("get", f"{bucket}/data.bin", str(tmp_path / name), config=off)
        assert (tmp_path / name).read_bytes() == source.read_bytes()
    assert not (tmp_path / "off" / "cache").exists()
    assert files_containing(tmp_path / "off" / "workspace", MARKER) == []
    status = counters(off)
    assert status["enabled"] is False and status["segments"] == 0
    seen = status["counters"]
    assert seen["hits"] == 0 and seen["node_reads"] == 4 and seen["segments_cached"] == 0, seen


def test_the_cache_never_exceeds_its_cap_while_a_larger_file_is_read(cache_devnet: Devnet,
                                                                      tmp_path: Path) -> None:
    net = cache_devnet
    bucket = bucket_name()
    net.cli("bucket", "create", bucket)
    writer = instance(net, tmp_path / "writer", cache__enabled=False, peers__enabled=False)
    cap = 3 * SEGMENT_SIZE + 5 * 2**20  # two segments at rest, a third arriving
    reader = instance(net, tmp_path / "reader", cache__size=cap, peers__enabled=False)
    source = tmp_path / "large.bin"
    source.write_bytes(plaintext(4 * PLAINTEXT_CAPACITY + 1_000_000))  # five segments
    deossfs("put", str(source), f"{bucket}/large.bin", config=writer)

    cache_dir = tmp_path / "reader" / "cache"
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, disk_bytes(cache_dir))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        deossfs("get", f"{bucket}/large.bin", str(tmp_path / "out.bin"), config=reader)
    finally:
        done.set()
        watcher.join()
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    assert 2 * SEGMENT_SIZE <= peak <= cap, peak
    assert disk_bytes(cache_dir) <= cap
    status = counters(reader)
    assert status["segments"] == 2 and status["counters"]["node_reads"] == 5, status
    # the two kept are the most recently read: the file's last two segments
    # (asked of the writer: stat reads segment 0 for its processing envelope, and through
    # the reader it would put segment 0 back into the cache under test)
    fid = json.loads(deossfs("stat", "--json", f"{bucket}/large.bin", config=writer).stdout)["fid"]
    cache = SegmentCache(cache_dir, cap)
    assert sorted(cache.keys()) == [(fid, 3), (fid, 4)]
    cache.close()
