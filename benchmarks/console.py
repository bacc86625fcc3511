"""The web console in headless Chromium against boto3 on the same gateway (issue 17).

    .venv/bin/python benchmarks/console.py [--size-mib 1024] [--objects 10000]

On a fresh devnet, one gateway process:
- boto3 `upload_file` of a random file (multipart, 8 MiB parts, 10 threads), then the same
  file dropped on the console's bucket page in headless Chromium (its script sends 16 MiB
  parts through presigned S3 URLs), timed until the page says "stored" - both end when
  CompleteMultipartUpload has answered, that is once the file is durable (goal >= 0.8x);
- the gateway's peak RSS during the console upload (its high-water mark reset just
  before through /proc/PID/clear_refs; goal <= 400 MB);
- the first page of a bucket of --objects keys rendered in the browser: from navigation
  start to the load event, after one warm-up, best and worst of 5 (goal <= 1 s); the same
  bucket sorted by size (the whole level read and sorted) for comparison.
Needs Debian's chromium and chromium-driver (`make install`). Prints one table and the load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gateway import Gateway  # noqa: E402 - benchmarks/gateway.py

MIB = 1024 * 1024


def rss_of(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def page_seconds(browser, address: str) -> float:  # noqa: ANN001 - tests/gateway/browser.Browser
    """Navigation start to the load event of one page, as the browser measured it."""
    browser.get(address)
    timing = browser.driver.execute_script(
        "const t = performance.getEntriesByType('navigation')[0]; return [t.startTime, t.loadEventEnd];")
    return (timing[1] - timing[0]) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()

    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    from deossfs.devnet import devnet_down, devnet_up
    from tests.gateway.browser import Browser

    work = Path(tempfile.mkdtemp(prefix="deossfs-consolebench-"))
    browser = None
    gateway = None
    try:
        devnet_up(work / "net")
        config = work / "net" / "deossfs.toml"
        source = work / "upload.bin"
        with open(source, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MIB))
        size = args.size_mib * MIB
        gateway = Gateway(config, work, cold=False)
        keys = gateway.create_key(config)
        s3 = boto3.client("s3", endpoint_url=gateway.url, region_name="us-east-1",
                          aws_access_key_id=keys["id"], aws_secret_access_key=keys["secret"],
                          config=Config(s3={"addressing_style": "path"}, max_pool_connections=20))
        s3.create_bucket(Bucket="bench")
        transfer = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB,
                                  max_concurrency=10)
        s3.put_object(Bucket="bench", Key="warm-up", Body=os.urandom(MIB))
        start = time.perf_counter()
        s3.upload_file(str(source), "bench", "boto3.bin", Config=transfer)
        boto3_seconds = time.perf_counter() - start

        browser = Browser()
        browser.get(gateway.url + "/console/signin")
        browser.fill("#access_key_id", keys["id"])
        browser.fill("#secret", keys["secret"])
        browser.find("#signin").click()
        browser.wait(lambda: browser.path == "/console/buckets", 30, "the buckets page")
        browser.get(gateway.url + "/console/b/bench")
        Path(f"/proc/{gateway.proc.pid}/clear_refs").write_text("5")  # reset the RSS high-water mark
        sampled = [0]
        uploading = threading.Event()
        uploading.set()

        def sample() -> None:
            while uploading.is_set():
                sampled[0] = max(sampled[0], rss_of(gateway.proc.pid, "VmRSS"))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        browser.drop_files("#dropzone", [source])
        row = '#uploads li[data-key="upload.bin"]'
        state = browser.wait(lambda: browser.find(row).get_attribute("data-state") in ("stored", "failed")
                             and browser.find(row).get_attribute("data-state"), 3600, "the console upload",
                             interval=0.1)
        console_seconds = time.perf_counter() - start
        uploading.clear()
        sampler.join()
        if state != "stored":
            raise SystemExit(f"the console upload failed: {browser.find(row).text}")
        console_rss = max(rss_of(gateway.proc.pid, "VmHWM"), sampled[0])
        assert s3.head_object(Bucket="bench", Key="upload.bin")["ContentLength"] == size

        s3.create_bucket(Bucket="listing")

        def put(index: int) -> None:
            s3.put_object(Bucket="listing", Key=f"object-{index:06d}", Body=b"")

        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(args.objects)))
        create_seconds = time.perf_counter() - start
        first_page = gateway.url + "/console/b/listing"
        by_size = first_page + "?sort=size&order=desc"
        page_seconds(browser, first_page)  # warm-up
        pages = [page_seconds(browser, first_page) for _ in range(5)]
        assert len(browser.find_all("#objects a.object")) == 100
        page_seconds(browser, by_size)
        sorted_pages = [page_seconds(browser, by_size) for _ in range(3)]

        mb = size / 1e6
        load = os.getloadavg()
        print(f"\nThe web console against boto3 on one gateway, {args.size_mib} MiB; "
              f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'figure':<56} {'measured':>10} {'against':>10} {'ratio':>7} {'goal':>8}")
        print(f"{'console upload in Chromium (MB/s) vs boto3 upload_file':<56} {mb / console_seconds:>10.1f} "
              f"{mb / boto3_seconds:>10.1f} {boto3_seconds / console_seconds:>7.2f} {'>= 0.8':>8}")
        print(f"{f'first page of {args.objects:,} objects, worst of 5 (s)':<56} {max(pages):>10.3f} "
              f"{1.0:>10} {max(pages) / 1.0:>7.2f} {'<= 1':>8}")
        print(f"{'gateway peak RSS during the console upload (MB)':<56} {console_rss / 1e6:>10.0f} "
              f"{400:>10} {console_rss / 400e6:>7.2f} {'<= 1':>8}")
        print(f"(console {console_seconds:.1f} s, boto3 {boto3_seconds:.1f} s; first page best "
              f"{min(pages):.3f} s; sorted by size, best {min(sorted_pages):.3f} s worst "
              f"{max(sorted_pages):.3f} s; {args.objects} objects put in {create_seconds:.1f} s)")
    finally:
        if browser is not None:
            browser.close()
        if gateway is not None:
            gateway.stop()
        devnet_down(work / "net")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
