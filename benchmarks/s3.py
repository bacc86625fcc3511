"""The gateway's S3 API against the CLI on the same devnet, with boto3's transfer manager.

    .venv/bin/python benchmarks/s3.py [--size-mib 1024] [--objects 10000] [--https]

- boto3 `upload_file` (multipart, 8 MiB parts, 10 threads) against `deossfs put` of the
  same random file, both with the segment cache on, the default (goal >= 0.8x);
- boto3 `download_file` (ranged GETs, 10 threads) against a cold `deossfs get` (segment
  cache and peers off), each read from the storage nodes: the download goes through a
  second gateway, cold as well (goal >= 0.8x); then both again with their output in
  tmpfs (/dev/shm), so that both write their output the same way; then both with the
  segment cache on but empty (the default: each keeps what it reads), output in tmpfs,
  the download through a third gateway;
- ListObjectsV2 of a bucket of --objects keys, page by page of 1,000 (goal <= 0.5 s each);
- the gateways' peak RSS (goal <= 400 MB): the writer's (uploads, listing) and the
  reader's (downloads).

Each transfer runs twice, interleaved with the CLI's, on objects of its own; the best of
each is compared. With --https the gateways serve HTTPS (a self-signed certificate, as
the tests make one), where boto3 sends its bodies aws-chunked with a CRC32 trailer instead of
signing a SHA-256 of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway import Gateway  # noqa: E402 - benchmarks/gateway.py

MIB = 1024 * 1024
COLD = ["-o", "cache.enabled=false", "-o", "peers.enabled=false"]


#: runs of each transfer; the best is compared (the machine is shared and noisy)
RUNS = 2


def fmt(runs: list[float]) -> str:
    return " ".join(f"{r:.2f}" for r in runs)


def cli(config: Path, *args: str, cold: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "deossfs", "--config", str(config), *(COLD if cold else []),
                    *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def config_of_its_own(config: Path, work: Path, name: str) -> Path:
    """A config of the same account as `config`, with a workspace and a 4 GiB cache of its
    own and peers off (every read comes from the storage nodes, none from the writer's
    cache), at work/NAME.toml (and work/NAME, a directory for its gateway)."""
    from deossfs.config import load_config, write_config

    other = load_config(config)
    other.workspace = work / f"{name}-workspace"
    other.cache.dir = other.workspace / "cache"
    other.cache.size = 4 * 1024**3
    other.peers.enabled = False
    path = work / f"{name}.toml"
    write_config(other, path)
    (work / name).mkdir()
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--https", action="store_true", help="the gateways serve HTTPS")
    args = parser.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from deossfs.devnet import devnet_down, devnet_up

    work = Path(tempfile.mkdtemp(prefix="deossfs-s3bench-"))
    gateways: list[Gateway] = []
    try:
        devnet_up(work / "net")
        config = work / "net" / "deossfs.toml"
        # a second config of the same account with a workspace (and cache) of its own (its
        # gateway runs cold), and a third, whose cache is on: gateway and CLI keep what they read
        reader_config = config_of_its_own(config, work, "reader")
        cacher_config = config_of_its_own(config, work, "cacher")
        source = work / "source.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
        size = args.size_mib * MIB
        subprocess.run([sys.executable, "-m", "deossfs", "--config", str(config), "bucket", "create",
                        "bench"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        tls = None
        if args.https:
            from tests.harness import self_signed  # the tests' certificate for 127.0.0.1

            tls = self_signed(work)
        writer = Gateway(config, work, cold=False, tls=tls)
        gateways.append(writer)
        # cold, as the CLI's get it is compared with (an empty cache on would add writing
        # every segment read into the cache: the third gateway's rows)
        reading = Gateway(reader_config, work / "reader", cold=True, tls=tls)
        gateways.append(reading)
        caching = Gateway(cacher_config, work / "cacher", cold=False, tls=tls)
        gateways.append(caching)

        def client(url: str, keys: dict[str, str]):  # noqa: ANN202
            return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                                aws_access_key_id=keys["id"], aws_secret_access_key=keys["secret"],
                                verify=str(tls[0]) if tls else None,
                                config=Config(s3={"addressing_style": "path"}, max_pool_connections=20))

        keys = writer.create_key(config)
        transfer = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                                  max_concurrency=10)
        s3 = client(writer.url, keys)
        # best of two, interleaved: each run stores its own object (a second put of the
        # same bytes under one name is a no-op) and reads another one cold
        put_runs, upload_runs = [], []
        for run in range(RUNS):
            # the same configuration as the gateway's (segment cache on: both keep what
            # they store); the gets below are cold
            put_runs.append(cli(config, "put", "-q", str(source), f"bench/cli-{run}.bin", cold=False))
            start = time.perf_counter()
            s3.upload_file(str(source), "bench", f"boto3-{run}.bin", Config=transfer)
            upload_runs.append(time.perf_counter() - start)
        writer_rss = writer.peak_rss()
        s3_reader = client(reading.url, reading.create_key(reader_config))
        # the second gateway learns the objects' S3 attributes (their multipart ETags) from
        # the writer's metadata object, saved 5-30 s after the upload (docs/semantics.md);
        # until then it names an object by its FID's ETag, and download_file's If-Match
        # would see the ETag change under it. Not part of the download's time.
        deadline = time.monotonic() + 120
        for run in range(RUNS):
            etag = s3.head_object(Bucket="bench", Key=f"boto3-{run}.bin")["ETag"]
            while s3_reader.head_object(Bucket="bench", Key=f"boto3-{run}.bin")["ETag"] != etag:
                if time.monotonic() > deadline:
                    raise SystemExit("the reader gateway never saw the writer's metadata object")
                time.sleep(1)
        get_runs, download_runs = [], []
        for run in range(RUNS):
            get_runs.append(cli(config, "get", "-q", f"bench/cli-{run}.bin", str(work / "back.bin")))
            (work / "back.bin").unlink()
            start = time.perf_counter()
            s3_reader.download_file("bench", f"boto3-{run}.bin", str(work / "boto3-back.bin"), Config=transfer)
            download_runs.append(time.perf_counter() - start)
            assert (work / "boto3-back.bin").stat().st_size == size
            (work / "boto3-back.bin").unlink()
        # again with both outputs in memory (tmpfs), each read still cold: the gets take
        # the boto3 objects, the downloads the CLI's. On disk, boto3 writes through the
        # page cache (costly on this VM, and the previous run's pages are still being
        # written back), the CLI with O_DIRECT; in tmpfs both pay the same
        shm = Path("/dev/shm")
        in_memory = shm.is_dir() and shutil.disk_usage(shm).free > 3 * size

        def gets_into_tmpfs(cli_config: Path, s3_client: Any, cold: bool) -> tuple[list[float], list[float]]:
            """Interleaved runs of a CLI get (a boto3 object) and a download (a CLI one)."""
            get_runs, download_runs = [], []
            for run in range(RUNS if in_memory else 0):
                get_runs.append(cli(cli_config, "get", "-q", f"bench/boto3-{run}.bin",
                                    str(shm / "deossfs-back.bin"), cold=cold))
                (shm / "deossfs-back.bin").unlink()
                start = time.perf_counter()
                s3_client.download_file("bench", f"cli-{run}.bin", str(shm / "deossfs-boto3-back.bin"),
                                        Config=transfer)
                download_runs.append(time.perf_counter() - start)
                (shm / "deossfs-boto3-back.bin").unlink()
            return get_runs, download_runs

        shm_get_runs, shm_download_runs = gets_into_tmpfs(config, s3_reader, cold=True)
        # with the segment cache on (empty): each object is read once through this cache
        cached_get_runs, cached_download_runs = gets_into_tmpfs(
            cacher_config, client(caching.url, caching.create_key(cacher_config)), cold=False)
        reader_rss = max(reading.peak_rss(), caching.peak_rss())
        put_seconds, upload_seconds = min(put_runs), min(upload_runs)
        get_seconds, download_seconds = min(get_runs), min(download_runs)

        s3.create_bucket(Bucket="listing")

        def put(index: int) -> None:
            s3.put_object(Bucket="listing", Key=f"dir{index % 100:03d}/object-{index:06d}", Body=b"")

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(args.objects)))
        create_seconds = time.perf_counter() - start
        page_times = []
        token = None
        listed = 0
        while True:
            extra = {"ContinuationToken": token} if token else {}
            start = time.perf_counter()
            page = s3.list_objects_v2(Bucket="listing", MaxKeys=1000, **extra)
            page_times.append(time.perf_counter() - start)
            listed += page.get("KeyCount", 0)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                break
        assert listed == args.objects, listed
        writer_rss = max(writer_rss, writer.peak_rss())

        mb = size / 1e6
        load = os.getloadavg()
        print(f"\nS3 through the gateway ({'HTTPS' if tls else 'HTTP'}) vs the CLI, {args.size_mib} MiB; "
              f"load {load[0]:.2f} {load[1]:.2f}")
        print(f"{'figure':<52} {'measured':>10} {'against':>10} {'ratio':>7} {'goal':>8}")
        print(f"{'boto3 upload_file (MB/s) vs deossfs put':<52} {mb / upload_seconds:>10.1f} "
              f"{mb / put_seconds:>10.1f} {put_seconds / upload_seconds:>7.2f} {'>= 0.8':>8}")
        print(f"{'boto3 download_file (MB/s) vs cold deossfs get':<52} {mb / download_seconds:>10.1f} "
              f"{mb / get_seconds:>10.1f} {get_seconds / download_seconds:>7.2f} {'>= 0.8':>8}")
        if shm_get_runs:
            shm_get, shm_download = min(shm_get_runs), min(shm_download_runs)
            print(f"{'  ... both writing into tmpfs':<52} {mb / shm_download:>10.1f} "
                  f"{mb / shm_get:>10.1f} {shm_get / shm_download:>7.2f} {'>= 0.8':>8}")
        if cached_get_runs:
            cached_get, cached_download = min(cached_get_runs), min(cached_download_runs)
            print(f"{'  ... both caching what they read, into tmpfs':<52} {mb / cached_download:>10.1f} "
                  f"{mb / cached_get:>10.1f} {cached_get / cached_download:>7.2f} {'>= 0.8':>8}")
        print(f"{'ListObjectsV2 page of 1,000, slowest (s)':<52} {max(page_times):>10.3f} "
              f"{0.5:>10} {max(page_times) / 0.5:>7.2f} {'<= 1':>8}")
        for name, rss in (("uploads, listing", writer_rss), ("downloads", reader_rss)):
            print(f"{'gateway peak RSS (MB), ' + name:<52} {rss / 1e6:>10.0f} {400:>10} "
                  f"{rss / 400e6:>7.2f} {'<= 1':>8}")
        print(f"(every run, s: put {fmt(put_runs)}, upload_file {fmt(upload_runs)}, "
              f"get {fmt(get_runs)}, download_file {fmt(download_runs)}; into tmpfs: "
              f"get {fmt(shm_get_runs)}, download_file {fmt(shm_download_runs)}; caching, into "
              f"tmpfs: get {fmt(cached_get_runs)}, download_file {fmt(cached_download_runs)})")
        print(f"({args.objects} empty objects put in {create_seconds:.1f} s by 8 threads; "
              f"pages {len(page_times)}, median {sorted(page_times)[len(page_times) // 2]:.3f} s)")
    finally:
        for gateway in gateways:  # also when a step failed: no gateway outlives the run
            gateway.stop()
        devnet_down(work / "net")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
