"""The mount against plain disk, in one run: cp in, time to durable, reads, memory.

    .venv/bin/python benchmarks/mount.py [--size-mib 1024] [--memory-gib 5]
        [--only speed|memory] [--workdir DIR]

Figures: `cp` of a random file into the mount (returns) and until `deossfs status`
shows it durable, next to a plain local `cp` of the same file; cold (node caches
and page cache dropped) and warm sequential reads with dd bs=1M, next to dd from
local disk; a 4 KiB read at a random offset of a cold file; and the mount
process's peak resident memory (VmHWM, and VmRSS sampled every half second) while a
`--memory-gib` file is copied in, compared, made durable, and read back from the
storage nodes by a fresh mount. `--only memory --memory-gib 5` runs that last
scenario alone. Each figure is printed as soon as it is measured, so a run that is
cut short still reports what it got. Needs root (drop_caches) and /dev/fuse.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
CLI = [sys.executable, "-m", "deossfs"]
#: seconds between RSS samples, and between the lines that print them
SAMPLE_SECONDS = 0.5
PRINT_SECONDS = 10.0


def report(name: str, value: str) -> None:
    print(f"  {name:<38} {value}", flush=True)


def timed(args: list[str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[arg-type]
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def dd_read(path: Path) -> float:
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"], stderr=subprocess.DEVNULL)


def wait_durable(env: dict[str, str], timeout: float = 3600) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        out = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, cwd=ROOT).stdout
        if "no pending uploads" in out:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise SystemExit("uploads did not finish")


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status figure in bytes (VmHWM: peak resident, VmRSS: resident now)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss(pid: int) -> int:
    return proc_status(pid, "VmHWM")


def random_file(path: Path, mib: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(MIB))


def mount(mnt: Path, env: dict[str, str]) -> int:
    """Mount in the background; the mount process's pid."""
    out = subprocess.run([*CLI, "mount", str(mnt)], check=True, env=env, cwd=ROOT,
                         capture_output=True, text=True).stdout
    match = re.search(r"pid (\d+)", out)
    if not match:
        raise SystemExit(f"no pid in `deossfs mount` output: {out!r}")
    return int(match.group(1))


def umount(mnt: Path, env: dict[str, str]) -> None:
    subprocess.run([*CLI, "umount", str(mnt)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


class RssSampler:
    """VmRSS of the mount process every SAMPLE_SECONDS, in a thread; prints a line
    every PRINT_SECONDS (current, highest sampled, the kernel's VmHWM) as it goes."""

    def __init__(self, pid: int, label: str) -> None:
        self.pid = pid
        self.label = label
        self.phase = "start"
        self.samples: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        last_print = 0.0
        while not self._stop.wait(SAMPLE_SECONDS):
            now = time.perf_counter() - self._start
            rss = proc_status(self.pid, "VmRSS")
            if not rss:
                return  # the process is gone
            self.samples.append((now, self.phase, rss))
            if now - last_print >= PRINT_SECONDS:
                last_print = now
                print(f"    [{self.label} t={now:6.1f} s {self.phase:<10}] RSS {rss / 1e6:6.0f} MB, "
                      f"highest sampled {self.highest() / 1e6:6.0f} MB, VmHWM {peak_rss(self.pid) / 1e6:6.0f} MB",
                      flush=True)

    def highest(self, phase: str | None = None) -> int:
        return max((rss for _, p, rss in self.samples if phase in (None, p)), default=0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def speed(work: Path, net: Path, mnt: Path, env: dict[str, str], size_mib: int) -> None:
    mb = size_mib * MIB / 1e6
    pid = mount(mnt, env)
    (mnt / "bench").mkdir(exist_ok=True)
    src = work / "src.bin"
    random_file(src, size_mib)
    local = timed(["cp", str(src), str(work / "local.bin")])
    os.sync()
    cp_in = timed(["cp", str(src), str(mnt / "bench" / "data.bin")])
    report("cp into mount (returns)", f"{cp_in:6.2f} s  {mb / cp_in:7.0f} MB/s   plain local cp {local:6.2f} s "
           f"({cp_in / local:.2f}x)")
    durable = wait_durable(env)
    report("  ... until durable", f"{cp_in + durable:6.2f} s  {mb / (cp_in + durable):7.0f} MB/s")
    report("mount peak RSS, cp in", f"{peak_rss(pid) / 1e6:7.0f} MB")
    drop_caches()
    disk_cold = dd_read(work / "local.bin")
    disk_warm = dd_read(work / "local.bin")
    # a fresh mount: nothing of the file is staged or cached locally
    umount(mnt, env)
    shutil.rmtree(net / "workspace", ignore_errors=True)
    time.sleep(1)
    pid = mount(mnt, env)
    target = mnt / "bench" / "data.bin"
    drop_caches()
    offset = random.randrange(size_mib * 256) * 4096
    start = time.perf_counter()
    with open(target, "rb") as handle:
        handle.seek(offset)
        handle.read(4096)
    random_4k = time.perf_counter() - start
    report("4 KiB random read, cold file", f"{random_4k * 1000:7.0f} ms")
    drop_caches()
    cold = dd_read(target)
    report("cold sequential read", f"{mb / cold:7.0f} MB/s   local disk cold {mb / disk_cold:7.0f} MB/s")
    warm = dd_read(target)
    report("warm sequential read", f"{mb / warm:7.0f} MB/s   local disk warm {mb / disk_warm:7.0f} MB/s")
    report("mount peak RSS, reads", f"{peak_rss(pid) / 1e6:7.0f} MB")
    umount(mnt, env)
    (work / "src.bin").unlink()
    (work / "local.bin").unlink()


def memory(work: Path, net: Path, mnt: Path, env: dict[str, str], gib: float) -> None:
    """Copy a `gib` GiB file in, compare it (staged), wait until durable; then a fresh
    mount reads it back from the storage nodes. The mount's memory throughout."""
    mib = round(gib * 1024)
    label = f"{gib:g} GiB"
    big = work / "big.bin"
    start = time.perf_counter()
    random_file(big, mib)
    report(f"memory: {label} random file written", f"{time.perf_counter() - start:6.1f} s")
    pid = mount(mnt, env)
    (mnt / "bench").mkdir(exist_ok=True)
    target = mnt / "bench" / "big.bin"
    with RssSampler(pid, "write mount") as sampler:
        report("  mount RSS at start", f"{proc_status(pid, 'VmRSS') / 1e6:7.0f} MB")
        sampler.phase = "cp in"
        took = timed(["cp", str(big), str(target)])
        report("  cp in (returns)", f"{took:6.1f} s   VmHWM so far {peak_rss(pid) / 1e6:6.0f} MB")
        sampler.phase = "cmp staged"
        took = timed(["cmp", str(big), str(target)])
        report("  cmp with the staged copy", f"{took:6.1f} s   VmHWM so far {peak_rss(pid) / 1e6:6.0f} MB")
        sampler.phase = "durable"
        took = wait_durable(env)
        report("  ... until durable", f"{took:6.1f} s   VmHWM so far {peak_rss(pid) / 1e6:6.0f} MB")
        write_hwm = peak_rss(pid)
        report("  RSS now (idle after upload)", f"{proc_status(pid, 'VmRSS') / 1e6:7.0f} MB")
    report(f"mount peak RSS, {label} in (VmHWM)", f"{write_hwm / 1e6:7.0f} MB   highest sampled "
           f"{sampler.highest() / 1e6:.0f} MB")
    umount(mnt, env)
    # read back from the nodes: no staged copy, no local segment cache
    shutil.rmtree(net / "workspace", ignore_errors=True)
    shutil.rmtree(net / "cache", ignore_errors=True)
    time.sleep(1)
    pid = mount(mnt, env)
    drop_caches()
    with RssSampler(pid, "read mount") as sampler:
        sampler.phase = "cmp nodes"
        took = timed(["cmp", str(big), str(target)])
        report("  cmp, read back from the nodes", f"{took:6.1f} s  {mib * MIB / 1e6 / took:5.0f} MB/s")
        read_hwm = peak_rss(pid)
    report(f"mount peak RSS, {label} back (VmHWM)", f"{read_hwm / 1e6:7.0f} MB   highest sampled "
           f"{sampler.highest() / 1e6:.0f} MB")
    report(f"mount peak RSS, {label} in + back", f"{max(write_hwm, read_hwm) / 1e6:7.0f} MB")
    umount(mnt, env)
    big.unlink()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--memory-gib", type=float, default=5,
                        help="file size of the memory scenario (0: skip it)")
    parser.add_argument("--only", choices=["speed", "memory"],
                        help="run one scenario: the speed figures, or the memory one")
    parser.add_argument("--workdir", type=Path,
                        help="an empty or missing directory for the devnet and the mount point "
                             "(default: a fresh temporary one); removed at the end")
    options = parser.parse_args()
    if options.workdir:
        options.workdir.mkdir(parents=True, exist_ok=True)
        if any(options.workdir.iterdir()):
            raise SystemExit(f"{options.workdir} is not empty")
        work = options.workdir
    else:
        work = Path(tempfile.mkdtemp(prefix="deossfs-mbench-"))
    net, mnt = work / "net", work / "mnt"
    mnt.mkdir()
    env = dict(os.environ, DEOSSFS_CONFIG=str(net / "deossfs.toml"))
    print(f"deossfs mount benchmark: {options.size_mib} MiB file, memory scenario {options.memory_gib:g} GiB, "
          f"12 nodes on this machine "
          f"({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}", flush=True)
    try:
        subprocess.run([*CLI, "devnet", "up", "--dir", str(net)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        if options.only in (None, "speed"):
            speed(work, net, mnt, env, options.size_mib)
        if options.only in (None, "memory") and options.memory_gib:
            memory(work, net, mnt, env, options.memory_gib)
    finally:
        subprocess.run([*CLI, "umount", str(mnt)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if os.path.ismount(mnt):  # never let rmtree below walk into a live mount
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        subprocess.run([*CLI, "devnet", "down", "--dir", str(net)], cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)
        print(f"  (load average at the end {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
