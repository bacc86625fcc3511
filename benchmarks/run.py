"""Put and get a 1 GiB random file on a fresh devnet; compare with the kernel floor.

    make bench            # or: .venv/bin/python benchmarks/run.py [--size-mib 1024]

Prints MB/s, the client's CPU-seconds per GiB and peak resident memory, next to
the floor measured in the same run: SHA-256 over 3 GiB (the 12 fragments of every
segment) + AES-256-GCM over 1 GiB + RS 4+8 encode of 1 GiB, single-threaded CPU
time. Also the "mandatory floor", which adds the SHA-256 of every 32 MiB segment
that CESS's layout requires too (4 GiB of hashing in all).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024


def cpu_floor(gib: float) -> dict[str, float]:
    """Single-thread CPU seconds of the mandatory kernels for `gib` GiB of user data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from deossfs.processing.erasure import ErasureCoder

    segment = bytearray(os.urandom(32 * MIB))
    parity = [bytearray(8 * MIB) for _ in range(8)]
    coder = ErasureCoder()
    segments = max(1, round(gib * 32))
    aes = AESGCM(os.urandom(32))
    chunk = bytes(MIB)

    def timed(fn) -> float:  # noqa: ANN001
        start = time.process_time()
        fn()
        return time.process_time() - start

    def sha_fragments() -> None:
        view = memoryview(segment)
        for _ in range(segments):
            for i in range(4):
                hashlib.sha256(view[i * 8 * MIB : (i + 1) * 8 * MIB]).digest()
            for p in parity:
                hashlib.sha256(p).digest()

    def sha_segments() -> None:
        for _ in range(segments):
            hashlib.sha256(segment).digest()

    def aes_all() -> None:
        for i in range(segments * 32):
            aes.encrypt(i.to_bytes(12, "big"), chunk, None)

    def rs_all() -> None:
        for _ in range(segments):
            coder.encode(segment, parity)

    figures = {"sha256_3x": timed(sha_fragments), "sha256_segments": timed(sha_segments),
               "aes": timed(aes_all), "rs": timed(rs_all)}
    figures["floor"] = figures["sha256_3x"] + figures["aes"] + figures["rs"]
    figures["mandatory_floor"] = figures["floor"] + figures["sha256_segments"]
    # a get verifies the 4 data fragments (1x the data) and decrypts it
    figures["get_floor"] = figures["sha256_segments"] + figures["aes"]
    return figures


def run_measured(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out}\n{err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def plain_disk_copy(src: Path, dst: Path) -> float:
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as handle:
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--no-encrypt", action="store_true")
    options = parser.parse_args()
    size = options.size_mib * MIB
    gib = size / 1024**3
    work = Path(tempfile.mkdtemp(prefix="deossfs-bench-"))
    deossfs = [sys.executable, "-m", "deossfs"]
    env = dict(os.environ, DEOSSFS_CONFIG=str(work / "net" / "deossfs.toml"))
    try:
        subprocess.run([*deossfs, "devnet", "up", "--dir", str(work / "net")], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*deossfs, "bucket", "create", "bench"], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        src = work / "data.bin"
        with open(src, "wb") as handle:
            for _ in range(options.size_mib):
                handle.write(os.urandom(MIB))
        floor = cpu_floor(gib)
        disk = plain_disk_copy(src, work / "copy.bin")
        (work / "copy.bin").unlink()
        put_args = [*deossfs, "put", "-q", str(src), "bench/data.bin"]
        if options.no_encrypt:
            put_args.insert(3, "--no-encrypt")
        put = run_measured(put_args, env)
        get = run_measured([*deossfs, "get", "-q", "bench/data.bin", str(work / "back.bin")], env)
        same = hashlib.sha256(src.read_bytes()).digest() == hashlib.sha256((work / "back.bin").read_bytes()).digest()
    finally:
        subprocess.run([*deossfs, "devnet", "down", "--dir", str(work / "net")], cwd=ROOT,
                       stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(work, ignore_errors=True)
    mb = size / 1e6
    print(f"deossfs benchmark: {options.size_mib} MiB, encryption {'off' if options.no_encrypt else 'on'}, "
          f"12 nodes on this machine ({os.cpu_count()} cores)")
    print(f"  kernel floor (1 thread): SHA-256 3x {floor['sha256_3x']:.2f}s + AES {floor['aes']:.2f}s + "
          f"RS {floor['rs']:.2f}s = {floor['floor']:.2f} CPU-s; with segment hashes "
          f"{floor['mandatory_floor']:.2f} CPU-s")
    print(f"  plain disk copy + fsync: {mb / disk:8.0f} MB/s")
    wall, cpu, rss = put
    print(f"  put: {mb / wall:8.0f} MB/s   client {cpu / gib:6.2f} CPU-s/GiB "
          f"({cpu / floor['floor']:.2f}x floor, {cpu / floor['mandatory_floor']:.2f}x mandatory floor)"
          f"   peak RSS {rss / 1e6:.0f} MB")
    wall, cpu, rss = get
    print(f"  get: {mb / wall:8.0f} MB/s   client {cpu / gib:6.2f} CPU-s/GiB "
          f"({cpu / floor['get_floor']:.2f}x get floor: SHA-256 1x + AES {floor['get_floor']:.2f} CPU-s)"
          f"   peak RSS {rss / 1e6:.0f} MB")
    print(f"  round trip identical: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
