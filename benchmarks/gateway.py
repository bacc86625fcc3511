"""The gateway against the CLI on the same devnet: 1 GiB up and down, and its memory.

    .venv/bin/python benchmarks/gateway.py [--size-mib 1024] [--runs 2]

On a fresh devnet (segment cache and peers off, so every read reaches the nodes):
- `deossfs put` of a random file, then PUT /file of the same bytes through the gateway
  (answered once durable, as put returns), best of --runs each, interleaved;
- `deossfs get` of it, then GET /file/download through the gateway;
- the gateway's peak RSS during a 1 GiB upload, and during 8 concurrent 256 MiB uploads
  from 8 accounts (a fresh gateway process for each figure).
Prints one table with the ratios (goal: >= 0.9x the CLI; RSS <= 400 MB) and the load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
COLD = ["-o", "cache.enabled=false", "-o", "peers.enabled=false"]


def cli(config: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deossfs", "--config", str(config), *COLD, *args],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


class Gateway:
    """A `deossfs gateway` process for a benchmark (its cache and peers off unless `cold`
    is False), on a free port."""

    def __init__(self, config: Path, directory: Path, cold: bool = True,
                 tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: a certificate and its key; the gateway serves HTTPS."""
        url_file = directory / "url"
        url_file.unlink(missing_ok=True)
        https = ["-o", f"gateway.tls_cert={tls[0]}", "-o", f"gateway.tls_key={tls[1]}"] if tls else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deossfs", "--config", str(config), *(COLD if cold else []), *https,
             "-o", "gateway.max_uploads_per_account=16", "gateway", "--listen", "127.0.0.1:0",
             "--url-file", str(url_file)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(directory / "gateway.log", "ab"))  # noqa: SIM115
        while not url_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway exited: see {directory / 'gateway.log'}")
            time.sleep(0.05)
        self.url = url_file.read_text().strip()

    @staticmethod
    def create_key(config: Path) -> dict[str, str]:
        """An S3 access key of the config's account (for this gateway and any other of it)."""
        import json

        out = subprocess.run([sys.executable, "-m", "deossfs", "--config", str(config), "gateway",
                              "key", "create", "--json"], check=True, cwd=ROOT, capture_output=True,
                             text=True).stdout
        created = json.loads(out)
        return {"id": created["access_key_id"], "secret": created["secret_access_key"]}

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()

    from deossfs.chain.ledger import EmbeddedLedger
    from deossfs.devnet import devnet_down, devnet_up
    from deossfs.gateway_client import GatewayClient
    from deossfs.keys import account_from_secret, load_key_file

    work = Path(tempfile.mkdtemp(prefix="deossfs-gwbench-"))
    try:
        devnet_up(work / "net")
        config = work / "net" / "deossfs.toml"
        owner = load_key_file(work / "net" / "account.key")
        subprocess.run([sys.executable, "-m", "deossfs", "--config", str(config), "bucket", "create",
                        "bench"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        size = args.size_mib * MIB
        source = work / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
        gateway = Gateway(config, work)
        client = GatewayClient(gateway.url, owner, timeout=3600)
        put_times, gw_put_times, get_times, gw_get_times = [], [], [], []
        fid = ""
        for run in range(args.runs):
            put_times.append(cli(config, "put", "-q", str(source), f"bench/cli-{run}.bin"))
            start = time.perf_counter()
            fid = client.upload(source, f"gw-{run}.bin", bucket="bench")
            gw_put_times.append(time.perf_counter() - start)
        for run in range(args.runs):
            get_times.append(cli(config, "get", "-q", f"bench/cli-{run}.bin", str(work / "back.bin")))
            start = time.perf_counter()
            client.download(fid, work / "gw-back.bin")
            gw_get_times.append(time.perf_counter() - start)
        assert (work / "gw-back.bin").stat().st_size == size
        client.close()
        gateway.stop()

        # peak RSS: one 1 GiB upload on a fresh gateway
        gateway = Gateway(config, work)
        with GatewayClient(gateway.url, owner, timeout=3600) as one:
            one.upload(source, "rss-1.bin", bucket="bench")
        rss_one = gateway.peak_rss()
        gateway.stop()

        # peak RSS: 8 concurrent 256 MiB uploads, from 8 accounts that authorized it
        part = work / "part.bin"
        with open(source, "rb") as src, open(part, "wb") as dst:
            dst.write(src.read(min(size, 256 * MIB)))
        users = [account_from_secret(f"//BenchUser{i}") for i in range(8)]
        admin = EmbeddedLedger(work / "net" / "ledger.sqlite", owner)
        for user in users:
            admin.fund(user.address, 10**24)
            chain = EmbeddedLedger(work / "net" / "ledger.sqlite", user)
            chain.mint_territory("default", 8, 30)
            chain.authorize(owner.address)
            chain.close()
        admin.close()
        gateway = Gateway(config, work)
        errors: list[BaseException] = []

        def upload(user: object, index: int) -> None:
            try:
                with GatewayClient(gateway.url, user, timeout=3600) as c:  # type: ignore[arg-type]
                    c.upload(part, f"concurrent-{index}.bin")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(u, i)) for i, u in enumerate(users)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        concurrent_seconds = time.perf_counter() - start
        rss_eight = gateway.peak_rss()
        gateway.stop()
        if errors:
            raise SystemExit(f"concurrent uploads failed: {errors[0]!r}")

        mb = size / 1e6
        best = {name: min(times) for name, times in (("put", put_times), ("gw_put", gw_put_times),
                                                     ("get", get_times), ("gw_get", gw_get_times))}
        load = os.getloadavg()
        print(f"\ngateway vs CLI, {args.size_mib} MiB, best of {args.runs}; load {load[0]:.2f} {load[1]:.2f}")
        print(f"{'figure':<44} {'measured':>12} {'against':>12} {'ratio':>7} {'goal':>8}")
        print(f"{'upload through the gateway (MB/s)':<44} {mb / best['gw_put']:>12.1f} "
              f"{mb / best['put']:>12.1f} {best['put'] / best['gw_put']:>7.2f} {'>= 0.9':>8}")
        print(f"{'download through the gateway (MB/s)':<44} {mb / best['gw_get']:>12.1f} "
              f"{mb / best['get']:>12.1f} {best['get'] / best['gw_get']:>7.2f} {'>= 0.9':>8}")
        print(f"{'gateway peak RSS, one 1 GiB upload (MB)':<44} {rss_one / 1e6:>12.0f} {400:>12} "
              f"{rss_one / 400e6:>7.2f} {'<= 1':>8}")
        print(f"{'gateway peak RSS, 8 x 256 MiB at once (MB)':<44} {rss_eight / 1e6:>12.0f} {400:>12} "
              f"{rss_eight / 400e6:>7.2f} {'<= 1':>8}")
        print(f"(8 x 256 MiB from 8 accounts stored in {concurrent_seconds:.1f} s: "
              f"{8 * part.stat().st_size / 1e6 / concurrent_seconds:.1f} MB/s)")
        print(f"runs (s): put {put_times}, gateway put {gw_put_times}, get {get_times}, "
              f"gateway get {gw_get_times}")
    finally:
        devnet_down(work / "net")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
