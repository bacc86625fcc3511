"""The mount against plain disk, in one run: cp in, time to durable, reads, memory.

    .venv/bin/python benchmarks/mount.py [--size-mib 1024] [--memory-gib 5]

Figures: `cp` of a random file into the mount (returns) and until `deossfs status`
shows it durable, next to a plain local `cp` of the same file; cold (node caches
and page cache dropped) and warm sequential reads with dd bs=1M, next to dd from
local disk; a 4 KiB read at a random offset of a cold file; and the mount
process's peak resident memory while a `--memory-gib` file is copied in and read
back. Needs root (drop_caches) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CLI = [sys.executable, "-m", "deossfs"]


def timed(args: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dd_read(path: Path) -> float:
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], stderr=subprocess.DEVNULL)


def wait_durable(env: dict[str, str], timeout: float = 900) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        out = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, cwd=ROOT).stdout
        if "no pending uploads" in out:
            return time.perf_counter() - start
        time.sleep(0.2)
    raise SystemExit("uploads did not finish")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(MIB))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--memory-gib", type=int, default=5)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="deossfs-mbench-"))
    net, mnt = work / "net", work / "mnt"
    mnt.mkdir()
    env = dict(os.environ, DEOSSFS_CONFIG=str(net / "deossfs.toml"))
    mb = options.size_mib * MIB / 1e6
    rows: list[tuple[str, str]] = []
    try:
        subprocess.run([*CLI, "devnet", "up", "--dir", str(net)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run([*CLI, "mount", str(mnt)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        pid = int(subprocess.run(["pgrep", "-f", f"mount --foreground {mnt}"], capture_output=True,
                                 text=True).stdout.split()[0])
        os.mkdir(mnt / "bench")
        src = work / "src.bin"
        random_file(src, options.size_mib)
        local = timed(["cp", str(src), str(work / "local.bin")])
        os.sync()
        cp_in = timed(["cp", str(src), str(mnt / "bench" / "data.bin")])
        durable = wait_durable(env)
        rows.append(("cp into mount (returns)", f"{cp_in:6.2f} s  {mb / cp_in:7.0f} MB/s   plain local cp {local:6.2f} s ({cp_in / local:.2f}x)"))
        rows.append(("  ... until durable", f"{cp_in + durable:6.2f} s  {mb / (cp_in + durable):7.0f} MB/s"))
        drop_caches()
        disk_cold = dd_read(work / "local.bin")
        disk_warm = dd_read(work / "local.bin")
        # a fresh mount: nothing of the file is staged or cached locally
        subprocess.run([*CLI, "umount", str(mnt)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        shutil.rmtree(net / "workspace", ignore_errors=True)
        time.sleep(1)
        subprocess.run([*CLI, "mount", str(mnt)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        pid = int(subprocess.run(["pgrep", "-f", f"mount --foreground {mnt}"], capture_output=True,
                                 text=True).stdout.split()[0])
        target = mnt / "bench" / "data.bin"
        drop_caches()
        offset = random.randrange(options.size_mib * 256) * 4096
        start = time.perf_counter()
        with open(target, "rb") as handle:
            handle.seek(offset)
            handle.read(4096)
        random_4k = time.perf_counter() - start
        drop_caches()
        cold = dd_read(target)
        warm = dd_read(target)
        rows.append(("cold sequential read", f"{mb / cold:7.0f} MB/s   local disk cold {mb / disk_cold:7.0f} MB/s"))
        rows.append(("warm sequential read", f"{mb / warm:7.0f} MB/s   local disk warm {mb / disk_warm:7.0f} MB/s"))
        rows.append(("4 KiB random read, cold file", f"{random_4k * 1000:7.0f} ms"))
        if options.memory_gib:
            big = work / "big.bin"
            random_file(big, options.memory_gib * 1024)
            subprocess.run(["cp", str(big), str(mnt / "bench" / "big.bin")], check=True)
            subprocess.run(["cmp", str(big), str(mnt / "bench" / "big.bin")], check=True)
            wait_durable(env)
            rows.append((f"mount peak RSS, {options.memory_gib} GiB in + back", f"{peak_rss(pid) / 1e6:7.0f} MB"))
        else:
            rows.append(("mount peak RSS", f"{peak_rss(pid) / 1e6:7.0f} MB"))
    finally:
        subprocess.run([*CLI, "umount", str(mnt)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        subprocess.run([*CLI, "devnet", "down", "--dir", str(net)], cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(f"deossfs mount benchmark: {options.size_mib} MiB file, 12 nodes on this machine "
          f"({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}")
    for name, value in rows:
        print(f"  {name:<34} {value}")


if __name__ == "__main__":
    main()
