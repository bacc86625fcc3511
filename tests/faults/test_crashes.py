"""`deossfs put` killed with SIGKILL: nothing half-written blocks the retry.

(A mount killed with -9 is tests/fs/test_mount.py::test_kill_9_loses_no_closed_file.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deossfs.processing.layout import SEGMENT_SIZE
from deossfs.processing.pipeline import SegmentCodec, SegmentWorkspace, file_reader

from ..conftest import ROOT, Devnet, deossfs
from ..harness import fids_on, ledger, wait_for


def plain_fid(path: Path) -> str:
    """The FID of the plain CESS layout of `path` (deterministic, unlike encrypted puts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return SegmentCodec(None).plan(file_reader(fd), os.fstat(fd).st_size, SegmentWorkspace()).fid
    finally:
        os.close(fd)


def temporaries(devnet: Devnet) -> list[Path]:
    return [p for n in devnet.nodes() for p in (n.dir / "fragments").rglob("*.tmp")]


@pytest.mark.parametrize("phase", ["order declared", "fragments arriving"])
def test_put_killed_with_sigkill_then_retried(fault_devnet: Devnet, plain_config: Path,
                                              tmp_path: Path, phase: str) -> None:
    data = os.urandom(3 * SEGMENT_SIZE + 1000)
    src = tmp_path / "crash.bin"
    src.write_bytes(data)
    key = f"faults/crash-{phase.split()[0]}.bin"
    # encrypted, the FID is known only to the client (its salts are keyed), and it is the
    # same on the retry: the salts derive from the object's name and the plaintext
    encrypt = phase == "fragments arriving"
    args = ["put", "-q", str(src), key] if encrypt else ["put", "-q", "--no-encrypt", str(src), key]
    fid = None if encrypt else plain_fid(src)
    before = {n.index: fids_on(n) for n in fault_devnet.nodes()}
    chain = ledger(fault_devnet)
    declared_before = sum(1 for e in chain.events(0) if e.name == "UploadDeclaration")
    env = dict(os.environ, DEOSSFS_CONFIG=str(plain_config))
    proc = subprocess.Popen([sys.executable, "-m", "deossfs", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def reached() -> bool:
            if proc.poll() is not None:
                return True
            if fid is not None:
                return chain.deal(fid) is not None
            return any(fids_on(n) - before[n.index] for n in fault_devnet.nodes())

        wait_for(reached, 180, f"the put to reach '{phase}'", interval=0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the put finished before the kill"
        if fid is not None:
            assert chain.file(fid) is None and chain.deal(fid) is not None
        # the nodes drop what the dead client was sending: no temporary files stay
        wait_for(lambda: not temporaries(fault_devnet), 120, "nodes to drop partial fragments")

        deossfs(*args, config=plain_config)  # the retry
        back = tmp_path / "back.bin"
        deossfs("get", "-q", key, str(back), config=plain_config)
        assert back.read_bytes() == data
        stat = json.loads(deossfs("stat", "--json", key, config=plain_config).stdout)
        assert fid is None or stat["fid"] == fid
        fid = stat["fid"]
        assert chain.file(fid) is not None and chain.deal(fid) is None
        # the retry resumed the one storage order: a second declaration (of the same FID, or
        # of a new one) would lock the file's territory space twice
        declared = [e.attributes.get("fid") for e in chain.events(0) if e.name == "UploadDeclaration"]
        assert declared[declared_before:] == [fid]
    finally:
        if proc.poll() is None:
            proc.kill()
        chain.close()
