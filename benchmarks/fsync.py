"""What one fsync costs on the mount, with mount.fsync = "network" (the default) and "local".

    .venv/bin/python benchmarks/fsync.py [--calls 20] [--size-kib 256] [--workdir DIR]

A fresh devnet; for each mode a mount of its own. On a file of --size-kib (written and
made durable first), each call changes 4 KiB at a random offset and then syncs: through
write(2) + fsync(2), and through a shared mapping + msync(MS_SYNC) (what fsx's mapped
writes do). Three calls of each kind warm up first. Printed per mode and kind: the
median and the 90th percentile of the sync call alone, and the calls per second of
the whole change-and-sync step.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from mount import CLI, mount, report, umount, wait_durable  # noqa: E402

WARM_UP = 3
CHANGE = 4096


def measure(path: Path, size: int, calls: int, mapped: bool) -> tuple[list[float], float]:
    """Sync latencies of `calls` change-and-sync steps, and the steps per second."""
    fd = os.open(path, os.O_RDWR)
    view = mmap.mmap(fd, size) if mapped else None
    try:
        def step() -> float:
            offset = random.randrange(0, size - CHANGE)
            data = os.urandom(CHANGE)
            if view is not None:
                view[offset : offset + CHANGE] = data
                started = time.perf_counter()
                view.flush()  # msync(MS_SYNC)
            else:
                os.pwrite(fd, data, offset)
                started = time.perf_counter()
                os.fsync(fd)
            return time.perf_counter() - started

        for _ in range(WARM_UP):
            step()
        began = time.perf_counter()
        latencies = [step() for _ in range(calls)]
        return latencies, calls / (time.perf_counter() - began)
    finally:
        if view is not None:
            view.close()
        os.close(fd)


def one_mode(mode: str, net: Path, work: Path, calls: int, size: int) -> None:
    config = work / f"{mode}.toml"
    data = tomllib.loads((net / "deossfs.toml").read_text())
    data["workspace"] = str(work / f"ws-{mode}")  # a mount of its own
    data["mount"] = {"fsync": mode}
    config.write_text(tomli_w.dumps(data))
    env = dict(os.environ, DEOSSFS_CONFIG=str(config))
    mnt = work / f"mnt-{mode}"
    mnt.mkdir()
    mount(mnt, env)
    try:
        bucket = mnt / f"fsync-{mode}"
        bucket.mkdir()
        path = bucket / "file.bin"
        path.write_bytes(os.urandom(size))
        wait_durable(env)
        for mapped, kind in ((False, "write + fsync"), (True, "mmap + msync")):
            latencies, rate = measure(path, size, calls, mapped)
            latencies.sort()
            report(f"{mode:<8} {kind}", f"median {statistics.median(latencies) * 1000:7.1f} ms, "
                   f"p90 {latencies[int(0.9 * (len(latencies) - 1))] * 1000:7.1f} ms, "
                   f"{rate:6.1f} calls/s")
        wait_durable(env)
    finally:
        umount(mnt, env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--size-kib", type=int, default=256)
    parser.add_argument("--workdir", type=Path, help="an empty or missing directory (default: a temporary one)")
    options = parser.parse_args()
    work = options.workdir or Path(tempfile.mkdtemp(prefix="deossfs-fsync-"))
    work.mkdir(parents=True, exist_ok=True)
    net = work / "net"
    print(f"deossfs fsync benchmark: {options.size_kib} KiB file, {options.calls} calls per figure, "
          f"12 nodes on this machine ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}",
          flush=True)
    run: Callable[..., object] = subprocess.run
    try:
        run([*CLI, "devnet", "up", "--dir", str(net)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        for mode in ("network", "local"):
            one_mode(mode, net, work, options.calls, options.size_kib * 1024)
    finally:
        for mnt in work.glob("mnt-*"):
            if os.path.ismount(mnt):
                run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        run([*CLI, "devnet", "down", "--dir", str(net)], cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)
        print(f"  (load average at the end {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
