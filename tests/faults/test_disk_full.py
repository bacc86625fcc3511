"""The mount's disk full (staging, journal and segment cache on one small tmpfs): the
writer gets ENOSPC, the mount keeps serving, and nothing staged is lost.

The disk is a real 96 MiB tmpfs mounted over the mount's workspace; the segment cache
(on, with its default cap far above the disk) lives there too, so it hits the full disk
as well. Space comes back the way an admin would make it: a file outside the mount goes.
Uploads are held back (every storage node stopped) while the disk fills, so the files
written before are still only staged when it does.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Devnet, deossfs
from ..harness import Mounted, config_for, restart_dead

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
                       reason="needs /dev/fuse and fusermount3"),
]

DISK_MIB = 96


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "small-disk"
    directory.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs",
                             str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def test_a_full_disk_is_enospc_and_loses_nothing_staged(fault_devnet: Devnet, small_disk: Path,
                                                        tmp_path: Path) -> None:
    config = config_for(fault_devnet, tmp_path / "machine", cache=True, workspace=small_disk,
                        storage={"node_penalty_seconds": 2.0})
    m = Mounted(config, tmp_path / "mnt")
    try:
        log = tmp_path / "mount.log"  # off the small disk: it must stay writable
        m.mount("--log-file", str(log))
        bucket = f"full-{secrets.token_hex(3)}"
        m.path(bucket).mkdir()
        m.path(bucket, "first.txt").write_bytes(b"before the nodes went away")
        m.wait_durable()
        # something else on the disk, freed later to make room again (as an admin would)
        ballast = small_disk / "ballast"
        ballast.write_bytes(bytes(16 << 20))
        deossfs("devnet", "down", "--dir", str(fault_devnet.dir))
        staged = {f"staged-{i}.bin": os.urandom(6_000_000) for i in range(4)}
        for name, data in staged.items():
            m.path(bucket, name).write_bytes(data)

        # fill the disk: the writer is told ENOSPC, cleanly, and so is its close
        write_error = close_error = None
        handle = open(m.path(bucket, "huge.bin"), "wb", buffering=0)  # noqa: SIM115
        try:
            for _ in range(2 * DISK_MIB):
                handle.write(os.urandom(1 << 20))
        except OSError as exc:
            write_error = exc
        try:
            handle.close()
        except OSError as exc:
            close_error = exc
        assert write_error is not None and write_error.errno == errno.ENOSPC, (
            write_error, log.read_text()[-3000:])
        assert close_error is None or close_error.errno == errno.ENOSPC, (
            close_error, log.read_text()[-3000:])
        # the mount still serves: the staged files read back exactly, the journal has them
        assert os.path.ismount(m.mountpoint)
        for name, data in staged.items():
            assert m.path(bucket, name).read_bytes() == data, name
        # `deossfs status` on the full disk: its report, or one line saying the disk is full
        status = m.cli("status", check=False)
        assert status.returncode == 0 or (
            "disk is full" in status.stderr and len(status.stderr.strip().splitlines()) == 1), status
        assert "Traceback" not in status.stderr
        # room again: the journal still has every staged file; the partial file can go
        ballast.unlink()
        m.path(bucket, "huge.bin").unlink()
        pending = {p["path"] for p in m.pending()}
        assert {f"{bucket}/{n}" for n in staged} <= pending
        # the nodes come back: everything uploads
        restart_dead(fault_devnet)
        m.wait_durable(timeout=300)
        reader = config_for(fault_devnet, tmp_path / "reader")
        for name, data in staged.items():
            out = tmp_path / f"{name}.out"
            deossfs("get", "-q", f"{bucket}/{name}", str(out), config=reader)
            assert out.read_bytes() == data, name
        m.umount()
    finally:
        m.cleanup()
        restart_dead(fault_devnet)
