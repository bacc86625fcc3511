"""The chain unavailable during uploads: they wait and retry with backoff, nothing is lost,
and `deossfs status` shows it.

The outage is real: another process holds the embedded chain's write lock (as a stuck
process or a backup holding the SQLite file would), so every transaction - the user's
storage orders, the nodes' transfer reports - waits out the ledger's busy timeout (30 s)
and fails as `ChainUnavailable`; queries still work. It ends when the lock is let go.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Devnet, deossfs
from ..harness import Mounted, config_for, wait_for

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                       reason="needs /dev/fuse and fusermount3"),
]


@pytest.fixture
def mounted(fault_devnet: Devnet, tmp_path: Path) -> Iterator[Mounted]:
    m = Mounted(config_for(fault_devnet, tmp_path / "machine"), tmp_path / "mnt")
    try:
        yield m.mount()
    finally:
        m.cleanup()


def test_uploads_wait_out_a_chain_outage(fault_devnet: Devnet, mounted: Mounted,
                                         tmp_path: Path) -> None:
    m = mounted
    bucket = f"outage-{secrets.token_hex(3)}"
    m.path(bucket).mkdir()
    m.path(bucket, "before.txt").write_bytes(b"written while the chain was up")
    m.wait_durable()
    files = {"one.bin": os.urandom(1_000_000), "two.bin": os.urandom(3_000_000),
             "big.bin": os.urandom(40_000_000)}
    lock = sqlite3.connect(fault_devnet.dir / "ledger.sqlite", timeout=60, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the chain takes no transaction from now on
        for name, data in files.items():
            m.path(bucket, name).write_bytes(data)
        failing = wait_for(
            lambda: [p for p in m.pending() if p["error"]] if len(m.pending()) >= 3 else [],
            240, "status to show the uploads waiting for the chain", interval=1.0)
        assert {p["path"] for p in m.pending()} >= {f"{bucket}/{n}" for n in files}
        assert all("chain" in p["error"] for p in failing), failing
        text = m.cli("status").stdout
        assert "retry in" in text and "chain" in text, text
        # meanwhile the files stay readable from their staged copies
        for name, data in files.items():
            assert m.path(bucket, name).read_bytes() == data, name
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    m.wait_durable(timeout=300)
    # nothing lost: the chain has every file, byte for byte (read by another machine)
    reader = config_for(fault_devnet, tmp_path / "reader")
    listed = deossfs("ls", bucket, config=reader).stdout
    for name, data in files.items():
        assert name in listed, listed
        out = tmp_path / f"{name}.out"
        deossfs("get", "-q", f"{bucket}/{name}", str(out), config=reader)
        assert out.read_bytes() == data, name
    m.umount()
