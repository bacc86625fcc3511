"""The transfer path against this machine's limits, measured in one run.

    make bench     # or: .venv/bin/python benchmarks/run.py [--size-mib 1024] [--runs 3]

On a fresh devnet (12 storage-node processes on this machine), with SIZE random
bytes, encryption on:

- the floors, measured first: SHA-256, AES-256-GCM, RS 4+8 encode and decode on
  one core; the fsync'd write rate of the disk under the devnet (and the CPU that
  writing costs); loopback TCP (its rate, and the CPU both ends spend per GiB);
- a durable put (returns when the file is Active): the client's CPU per GiB against
  its floor (SHA-256 of 4 GiB per GiB - segment + 12 fragments -, AES and RS of
  1 GiB), the 12 nodes' CPU per GiB of fragments they receive against theirs
  (SHA-256 verify + fsync'd write of that GiB), and the rate against the devnet's
  ceiling: min(disk / 3 - 3 GiB of fragments are written per GiB stored -, what
  2 cores allow at the client's and the nodes' floors);
- a cold get (segment cache off, peers off) and a cold sequential read through a
  fresh mount of the same file: the client's CPU against the get floor (SHA-256 of
  the 4 data fragments read, AES), and the rate against what the network and the
  get floor allow on 2 cores (the loopback copies at both ends use them too; a CLI
  get also writes and fsyncs its output);
- peak resident memory of the put and get clients and of the mount.

The clients' CPU is given whole and less what any CLI command costs before it moves
a byte (imports, the key, chain look-ups: `deossfs ls` of the bucket, measured in the
same run), since the goals are per GiB moved. (`deossfs stat` was used until
2026-12-08, but it reads the file's first segment for its processing header: ~0.1
CPU-s more, which made the start-up look larger and the ratios less start-up smaller.)

Each figure is the best of --runs (rates: highest; CPU, memory: lowest), since the
machine is shared; the load average is printed. One table: figure, measured, floor
or ceiling, ratio, goal. `--profile DIR` instead samples the client and one storage
node with py-spy during one put and prints their top frames.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
GIB = 1024 * MIB
CORES = os.cpu_count() or 1
CLI = [sys.executable, "-m", "deossfs"]
#: a cold read: nothing from the local segment cache, nothing from peers
COLD = {"DEOSSFS_CACHE_ENABLED": "false", "DEOSSFS_PEERS_ENABLED": "false"}
TICKS = os.sysconf("SC_CLK_TCK")


# ---- floors ------------------------------------------------------------------------


def best_rate(fn: Callable[[], int], rounds: int = 3) -> float:
    """Bytes per CPU-second of `fn` (which returns the bytes it processed), best of rounds."""
    rates = []
    for _ in range(rounds):
        start = time.process_time()
        done = fn()
        rates.append(done / max(time.process_time() - start, 1e-9))
    return max(rates)


def kernel_rates() -> dict[str, float]:
    """One core's rates in bytes per CPU-second: SHA-256, AES-256-GCM (the segment
    cipher), RS 4+8 encode, RS decode from 4 parity fragments."""
    from deossfs.processing.encryption import PLAINTEXT_CAPACITY, SegmentCipher
    from deossfs.processing.erasure import ErasureCoder
    from deossfs.processing.layout import FRAGMENT_SIZE, SEGMENT_SIZE

    rounds = 8  # segments per measurement: 256 MiB
    segment = bytearray(os.urandom(SEGMENT_SIZE))
    view = memoryview(segment)
    parity = [bytearray(FRAGMENT_SIZE) for _ in range(8)]
    coder = ErasureCoder()
    cipher = SegmentCipher(os.urandom(32))
    out = bytearray(SEGMENT_SIZE)
    salt = os.urandom(32)
    coder.encode(segment, parity)

    def sha() -> int:
        for _ in range(rounds):
            for i in range(4):
                hashlib.sha256(view[i * FRAGMENT_SIZE : (i + 1) * FRAGMENT_SIZE]).digest()
        return rounds * SEGMENT_SIZE

    def aes() -> int:
        for index in range(rounds):
            cipher.encrypt_into(view[:PLAINTEXT_CAPACITY], out, index, salt)
        return rounds * SEGMENT_SIZE

    def encode() -> int:
        for _ in range(rounds):
            coder.encode(segment, parity)
        return rounds * SEGMENT_SIZE

    def decode() -> int:
        fragments = {4 + i: parity[i] for i in range(4)}
        for _ in range(rounds):
            coder.decode(fragments, out)
        return rounds * SEGMENT_SIZE

    return {"sha256": best_rate(sha), "aes": best_rate(aes), "rs_encode": best_rate(encode),
            "rs_decode": best_rate(decode)}


def disk_rate(directory: Path, total: int = GIB, writers: int = 12) -> tuple[float, float]:
    """(bytes/s, CPU-s per GiB) of fsync'd sequential writes under `directory`, as the
    nodes write: 8 MiB files, each fdatasync'd, `writers` at a time; through the page
    cache and with O_DIRECT (where the file system has it), the best of 3 of each."""
    directory.mkdir(parents=True, exist_ok=True)
    block = mmap.mmap(-1, 8 * MIB)  # page-aligned, as O_DIRECT wants
    block.write(os.urandom(8 * MIB))
    count = total // len(block)

    def write(index: int, flags: int) -> None:
        path = directory / f"f{index}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o600)
        try:
            os.write(fd, block)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    rates, cpus = [], []
    for flags in (0, os.O_DIRECT):
        for _ in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                with ThreadPoolExecutor(writers) as pool:
                    list(pool.map(lambda i, f=flags: write(i, f), range(count)))
            except OSError:
                break  # no O_DIRECT here
            rates.append(count * len(block) / (time.perf_counter() - start))
            cpus.append((time.process_time() - cpu) / (count * len(block) / GIB))
            for index in range(count):
                os.unlink(directory / f"f{index}")
    shutil.rmtree(directory, ignore_errors=True)
    return max(rates), min(cpus)


def _loopback_receiver(port_out: multiprocessing.connection.Connection, streams: int, total: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port_out.send(listener.getsockname()[1])
    connections = [listener.accept()[0] for _ in range(streams)]
    start = time.process_time()

    def drain(conn: socket.socket) -> None:
        buffer = memoryview(bytearray(8 * MIB))
        left = total // streams
        while left:
            got = conn.recv_into(buffer[: min(len(buffer), left)])
            if not got:
                break
            left -= got

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(drain, connections))
    port_out.send(time.process_time() - start)


def network_rate(total: int = GIB, streams: int = 4) -> tuple[float, float]:
    """(bytes/s, CPU-s per GiB at both ends) of loopback TCP: `streams` connections from
    one process to another, sent from and received into 8 MiB buffers. Best of 3."""
    rates, cpus = [], []
    context = multiprocessing.get_context("fork")
    block = memoryview(os.urandom(8 * MIB))
    for _ in range(3):
        parent, child = context.Pipe()
        receiver = context.Process(target=_loopback_receiver, args=(child, streams, total))
        receiver.start()
        port = parent.recv()
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]

        def pump(conn: socket.socket) -> None:
            left = total // streams
            while left:
                piece = block[: min(len(block), left)]
                conn.sendall(piece)
                left -= len(piece)

        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(pump, sockets))
        receiver_cpu = parent.recv()
        wall = time.perf_counter() - start
        sender_cpu = time.process_time() - cpu
        receiver.join()
        for conn in sockets:
            conn.close()
        rates.append(total / wall)
        cpus.append((sender_cpu + receiver_cpu) / (total / GIB))
    return max(rates), min(cpus)


@dataclass
class Floors:
    rates: dict[str, float]  # bytes per CPU-second, one core
    disk: float  # bytes/s, fsync'd
    disk_cpu: float  # CPU-s per GiB written
    network: float  # bytes/s, loopback
    network_cpu: float  # CPU-s per GiB, both ends

    def seconds(self, kernel: str, gib: float = 1.0) -> float:
        return gib * GIB / self.rates[kernel]

    @property
    def put_client(self) -> float:
        """CPU-s per GiB: SHA-256 of the segment and its 12 fragments (4 GiB), AES, RS."""
        return self.seconds("sha256", 4) + self.seconds("aes") + self.seconds("rs_encode")

    @property
    def get_client(self) -> float:
        """CPU-s per GiB: SHA-256 of the 4 data fragments read, AES."""
        return self.seconds("sha256") + self.seconds("aes")

    @property
    def node(self) -> float:
        """CPU-s per GiB of fragments received: SHA-256 verify + fsync'd write."""
        return self.seconds("sha256") + self.disk_cpu

    @property
    def put_ceiling(self) -> float:
        """Bytes/s of a durable put: the disk takes 3 GiB per GiB stored; 2 cores run
        the client's floor and the nodes' floor for 3 GiB of fragments."""
        return min(self.disk / 3, CORES * GIB / (self.put_client + 3 * self.node))

    @property
    def read_ceiling(self) -> float:
        """Bytes/s of a cold read (mount): the network, or the cores running the get
        floor and the loopback copies."""
        return min(self.network, CORES * GIB / (self.get_client + self.network_cpu))

    @property
    def get_ceiling(self) -> float:
        """A CLI get also writes its output and fsyncs it."""
        return min(self.read_ceiling, self.disk,
                   CORES * GIB / (self.get_client + self.network_cpu + self.disk_cpu))


# ---- the devnet --------------------------------------------------------------------


def node_pids(net: Path) -> list[int]:
    pids = []
    for state in sorted((net / "nodes").glob("node*/process.json")):
        pids.append(json.loads(state.read_text())["pid"])
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Run:
    wall: float
    cpu: float
    rss: int
    others_cpu: float = 0.0  # the storage nodes' (put) or the mount's (read)


def run_measured(args: list[str], env: dict[str, str], watch: Sequence[int] = ()) -> Run:
    """Wall seconds, CPU seconds and peak RSS of a child; CPU the `watch` pids spent meanwhile."""
    before = sum(cpu_seconds(pid) for pid in watch)
    # output to files, not pipes: a child blocked on a full pipe would never be reaped
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        others = sum(cpu_seconds(pid) for pid in watch) - before
        if os.waitstatus_to_exitcode(status) != 0:
            out.seek(0)
            err.seek(0)
            raise SystemExit(f"{' '.join(args)} failed:\n{out.read().decode()}\n{err.read().decode()}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, others)


def mount(mnt: Path, env: dict[str, str]) -> int:
    out = subprocess.run([*CLI, "mount", str(mnt)], check=True, env=env, cwd=ROOT,
                         capture_output=True, text=True).stdout
    match = re.search(r"pid (\d+)", out)
    if not match:
        raise SystemExit(f"no pid in `deossfs mount` output: {out!r}")
    return int(match.group(1))


def umount(mnt: Path, env: dict[str, str]) -> None:
    subprocess.run([*CLI, "umount", str(mnt)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def mount_read(mnt: Path, env: dict[str, str], key: str) -> Run:
    """A fresh mount (cache and peers off) reads the file sequentially, 1 MiB at a time."""
    pid = mount(mnt, env)
    try:
        path = mnt / "bench" / key
        before = cpu_seconds(pid)
        start = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            buffer = bytearray(MIB)
            while os.readv(fd, [buffer]):
                pass
        finally:
            os.close(fd)
        wall = time.perf_counter() - start
        cpu = cpu_seconds(pid) - before
        rss = int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
    finally:
        umount(mnt, env)
    return Run(wall, cpu, rss)



@contextlib.contextmanager
def devnet(work: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    net = work / "net"
    env = dict(os.environ, DEOSSFS_CONFIG=str(net / "deossfs.toml"))
    try:
        subprocess.run([*CLI, "devnet", "up", "--dir", str(net)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        subprocess.run([*CLI, "bucket", "create", "bench"], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        yield net, env
    finally:
        subprocess.run([*CLI, "devnet", "down", "--dir", str(net)], cwd=ROOT,
                       stdout=subprocess.DEVNULL, check=False)


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // MIB):
            handle.write(os.urandom(MIB))
        handle.write(os.urandom(size % MIB))


# ---- profile -----------------------------------------------------------------------


def top_frames(raw: Path, count: int = 15) -> list[str]:
    """The frames of a py-spy raw (collapsed) profile with the most samples: own
    samples (the frame was running) and total (it was on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        weight = int(number)
        samples += weight
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        frames = [frame for frame in frames if not frame.startswith("process ")]
        if frames:
            own[frames[-1]] += weight
        for frame in set(frames):
            total[frame] += weight
    lines = [f"{samples} samples; own (running) / total (on the stack):"]
    for frame, weight in own.most_common(count):
        lines.append(f"  own {100 * weight / samples:5.1f}%  total {100 * total[frame] / samples:5.1f}%  {frame}")
    lines.append("  ... highest totals:")
    for frame, weight in total.most_common(count):
        lines.append(f"  total {100 * weight / samples:5.1f}%  {frame}")
    return lines


def profile(out: Path, src: Path, net: Path, env: dict[str, str]) -> None:
    """py-spy on the put client and on storage node 1 during one put."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    node = subprocess.Popen([spy, "record", "--format", "raw", "--rate", "200", "--pid",
                             str(node_pids(net)[0]), "-o", str(out / "node.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    subprocess.run([spy, "record", "--format", "raw", "--rate", "200", "--subprocesses", "-o",
                    str(out / "client.txt"), "--", *CLI, "put", "-q", str(src), "bench/profiled"],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node.send_signal(signal.SIGINT)
    node.wait(timeout=60)
    for name in ("client", "node"):
        print(f"{name} ({out / (name + '.txt')}):")
        print("\n".join(top_frames(out / f"{name}.txt")))


# ---- the table -----------------------------------------------------------------------


def mbs(rate: float) -> str:
    return f"{rate / 1e6:,.0f} MB/s"


def table(rows: list[tuple[str, str, str, str, str]]) -> None:
    header = ("figure", "measured", "floor or ceiling", "ratio", "goal")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3, help="best of this many of each measurement")
    parser.add_argument("--no-mount", action="store_true", help="skip the reads through a mount")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="only profile one put with py-spy (client and node 1), raw profiles in DIR")
    options = parser.parse_args()
    size = options.size_mib * MIB
    gib = size / GIB
    print(f"deossfs benchmark: {options.size_mib} MiB, encryption on, 12 nodes on this machine "
          f"({CORES} cores), best of {options.runs}; load average {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="deossfs-bench-"))
    try:
        src = work / "data.bin"
        random_file(src, size)
        with devnet(work) as (net, env):
            if options.profile:
                profile(options.profile.resolve(), src, net, env)
                return
            floors = Floors(kernel_rates(), *disk_rate(work / "disk"), *network_rate())
            print("  floors measured", flush=True)
            nodes = node_pids(net)
            puts = []
            for run in range(options.runs):
                os.sync()
                puts.append(run_measured([*CLI, "put", "-q", str(src), f"bench/data-{run}"], env, nodes))
                print(f"  put {run + 1}: {mbs(size / puts[-1].wall)}, client {puts[-1].cpu / gib:.2f} CPU-s/GiB, "
                      f"nodes {puts[-1].others_cpu / (3 * gib):.2f} CPU-s/GiB received", flush=True)
            # what any command costs before it moves a byte (imports, keys, chain look-ups)
            startup = min(run_measured([*CLI, "ls", "bench/"], env).cpu
                          for _ in range(options.runs))
            cold = dict(env, **COLD)
            gets = []
            back = work / "back.bin"
            for run in range(options.runs):
                gets.append(run_measured([*CLI, "get", "-q", "bench/data-0", str(back)], cold))
                print(f"  get {run + 1}: {mbs(size / gets[-1].wall)}, client {gets[-1].cpu / gib:.2f} CPU-s/GiB",
                      flush=True)
                if run == 0 and not same_bytes(src, back):
                    raise SystemExit("the file read back differs from the one stored")
                back.unlink()
            reads = []
            if not options.no_mount:
                mnt = work / "mnt"
                mnt.mkdir()
                for run in range(options.runs):
                    reads.append(mount_read(mnt, cold, "data-0"))
                    print(f"  mount read {run + 1}: {mbs(size / reads[-1].wall)}, mount "
                          f"{reads[-1].cpu / gib:.2f} CPU-s/GiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"  load average at the end {os.getloadavg()[0]:.1f}")
    report(floors, size, puts, gets, reads, startup)


def same_bytes(a: Path, b: Path) -> bool:
    def digest(path: Path) -> bytes:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").digest()
    return digest(a) == digest(b)


def report(floors: Floors, size: int, puts: list[Run], gets: list[Run], reads: list[Run],
           startup: float) -> None:
    gib = size / GIB
    put_rate = max(size / r.wall for r in puts)
    get_rate = max(size / r.wall for r in gets)
    put_cpu = min(r.cpu for r in puts) / gib
    get_cpu = min(r.cpu for r in gets) / gib
    node_cpu = min(r.others_cpu for r in puts) / (3 * gib)
    rows = [
        ("SHA-256, 1 core", mbs(floors.rates["sha256"]), "", "", ""),
        ("AES-256-GCM, 1 core", mbs(floors.rates["aes"]), "", "", ""),
        ("RS 4+8 encode / decode, 1 core",
         f"{mbs(floors.rates['rs_encode'])} / {mbs(floors.rates['rs_decode'])}", "", "", ""),
        ("disk, fsync'd 8 MiB files (12 writers, best of buffered/O_DIRECT)", f"{mbs(floors.disk)}, {floors.disk_cpu:.2f} CPU-s/GiB",
         "", "", ""),
        ("loopback TCP, 4 streams", f"{mbs(floors.network)}, {floors.network_cpu:.2f} CPU-s/GiB", "", "", ""),
        ("CLI start-up CPU (`ls`: imports, key, chain)", f"{startup:.2f} s", "", "", ""),
        ("put client CPU per GiB", f"{put_cpu:.2f} s", f"floor {floors.put_client:.2f} s",
         f"{put_cpu / floors.put_client:.2f}x", ""),
        ("  ... less start-up", f"{put_cpu - startup / gib:.2f} s", f"floor {floors.put_client:.2f} s",
         f"{(put_cpu - startup / gib) / floors.put_client:.2f}x", "<= 1.5x"),
        ("get client CPU per GiB (cold)", f"{get_cpu:.2f} s", f"floor {floors.get_client:.2f} s",
         f"{get_cpu / floors.get_client:.2f}x", ""),
        ("  ... less start-up", f"{get_cpu - startup / gib:.2f} s", f"floor {floors.get_client:.2f} s",
         f"{(get_cpu - startup / gib) / floors.get_client:.2f}x", "<= 2x"),
        ("nodes' CPU per GiB received (12 procs)", f"{node_cpu:.2f} s", f"floor {floors.node:.2f} s",
         f"{node_cpu / floors.node:.2f}x", "<= 2x"),
        ("durable put", mbs(put_rate), f"ceiling {mbs(floors.put_ceiling)}",
         f"{put_rate / floors.put_ceiling:.2f}x", ">= 0.8x"),
        ("cold get (cache, peers off)", mbs(get_rate), f"ceiling {mbs(floors.get_ceiling)}",
         f"{get_rate / floors.get_ceiling:.2f}x", ">= 0.8x"),
    ]
    if reads:
        read_rate = max(size / r.wall for r in reads)
        rows += [
            ("cold sequential read, mount", mbs(read_rate), f"ceiling {mbs(floors.read_ceiling)}",
             f"{read_rate / floors.read_ceiling:.2f}x", ">= 0.8x"),
            ("mount read / CLI get", "", "", f"{read_rate / get_rate:.2f}x", ">= 0.9x"),
            ("mount CPU per GiB read", f"{min(r.cpu for r in reads) / gib:.2f} s",
             f"floor {floors.get_client:.2f} s", f"{min(r.cpu for r in reads) / gib / floors.get_client:.2f}x", ""),
        ]
    rows += [
        ("client peak RSS, put", f"{min(r.rss for r in puts) / 1e6:.0f} MB", "", "", "~300 MB"),
        ("client peak RSS, get", f"{min(r.rss for r in gets) / 1e6:.0f} MB", "", "", "~300 MB"),
    ]
    if reads:
        rows.append(("mount peak RSS, cold read", f"{min(r.rss for r in reads) / 1e6:.0f} MB", "", "",
                     "~500 MB (5 GiB: benchmarks/mount.py)"))
    table(rows)


if __name__ == "__main__":
    main()
