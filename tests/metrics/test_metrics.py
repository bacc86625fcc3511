"""Each metrics endpoint scraped during a put, showing the counters move: a storage node
taking fragments, the gateway taking an upload, the mount taking a copy. Real processes
on 127.0.0.1; the scrape is the Prometheus text format, parsed by prometheus_client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import deossfs
from deossfs.devnet import NODE_IDLE_SPACE, NodeProcess, listen_socket_for, stop_node, wait_ready
from deossfs.gateway_client import GatewayClient

from ..conftest import ROOT, Devnet
from ..fs.conftest import NEEDS_MOUNT
from ..gateway.conftest import GatewayProcess
from ..harness import Mounted, account, config_for, node_account, restart_dead, wait_for

MIB = 1024 * 1024
Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int) -> Sample:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(sample: Sample, name: str, **labels: str) -> float:
    return sample.get((name, tuple(sorted(labels.items()))), 0.0)


def total(sample: Sample, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in sample.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def during(work: Callable[[], object], port: int, moved: Callable[[Sample], bool]) -> tuple[Sample, Sample]:
    """Run `work` in a thread; scrape until `moved` says a counter moved while the work
    still ran. Returns (that scrape, a scrape after the work)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # raised below, in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    seen: list[Sample] = []

    def probe() -> bool:
        if not thread.is_alive():
            raise AssertionError("the work ended before a scrape saw it under way"
                                 + (f": {failure[0]!r}" if failure else ""))
        sample = scrape(port)
        if moved(sample):
            seen.append(sample)
            return True
        return False

    try:
        wait_for(probe, 120, "a counter to move during the work", interval=0.05)
    finally:
        thread.join()
    if failure:
        raise failure[0]
    return seen[0], scrape(port)


def test_a_storage_node(devnet: Devnet, tmp_path: Path) -> None:
    node = devnet.nodes()[0]
    stop_node(node)
    port = free_port()
    # as the devnet restarts a node: its port bound here and handed over, a new one if an
    # outgoing connection took the old one as its ephemeral port meanwhile
    listener = listen_socket_for(node)
    node_port = listener.getsockname()[1]
    log = open(node.dir / "node.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deossfs", "--config", str(devnet.config),
             "-o", f"metrics.listen=127.0.0.1:{port}", "node", "--dir", str(node.dir),
             "--host", "127.0.0.1", "--port", str(node_port), "--listen-fd", str(listener.fileno()),
             "--idle-space", str(NODE_IDLE_SPACE)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
            pass_fds=(listener.fileno(),))
    finally:
        log.close()
        listener.close()
    (node.dir / "process.json").write_text(json.dumps({"pid": proc.pid, "port": node_port}))
    try:
        wait_ready([NodeProcess(node.index, node.dir, proc.pid, node_port)], timeout=60)
        before = scrape(port)
        # this node first, so that it takes a column of the file
        config = config_for(devnet, tmp_path, storage={"preferred_nodes": [node_account(node)]})
        data = os.urandom(160 * MIB)
        with deossfs.Client(config=config) as client:
            client.create_bucket("metrics-node")
            base = value(before, "deossfs_bytes_in_total", via="http")
            mid, after = during(lambda: client.put(data, "metrics-node/file"), port,
                                lambda s: value(s, "deossfs_bytes_in_total", via="http") > base)
            assert base < value(mid, "deossfs_bytes_in_total", via="http") \
                < value(after, "deossfs_bytes_in_total", via="http")
            # a column: fragment j of each of the 5 segments, 8 MiB each, and more
            assert value(after, "deossfs_bytes_in_total", via="http") - base >= 5 * 8 * MIB
            assert value(after, "deossfs_requests_total", interface="http", method="PUT", status="200") \
                >= value(before, "deossfs_requests_total", interface="http", method="PUT", status="200") + 5
            assert total(after, "deossfs_chain_call_seconds_count", call="transfer_report") >= 1
            client.get("metrics-node/file", start=0, end=10)  # read: fragments go out
            assert value(scrape(port), "deossfs_bytes_out_total", via="http") > \
                value(after, "deossfs_bytes_out_total", via="http")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        restart_dead(devnet)


def test_the_gateway(devnet: Devnet, tmp_path: Path) -> None:
    port = free_port()
    config = config_for(devnet, tmp_path / "gw", cache=True)
    gateway = GatewayProcess(config, tmp_path / "gw", f"metrics.listen=127.0.0.1:{port}").start()
    try:
        before = scrape(port)
        data = os.urandom(160 * MIB)
        with GatewayClient(gateway.url, account(devnet)) as client:
            base = value(before, "deossfs_bytes_in_total", via="http")
            fids: list[str] = []
            mid, after = during(lambda: fids.append(client.upload(data, "metrics.bin")), port,
                                lambda s: value(s, "deossfs_bytes_in_total", via="http") > base)
            assert value(after, "deossfs_bytes_in_total", via="http") >= base + len(data)
            assert value(after, "deossfs_requests_total", interface="http", method="PUT", status="200") == \
                value(before, "deossfs_requests_total", interface="http", method="PUT", status="200") + 1
            assert value(after, "deossfs_uploads_total", result="stored") == \
                value(before, "deossfs_uploads_total", result="stored") + 1
            assert value(after, "deossfs_uploads_pending") == 0
            assert value(after, "deossfs_bytes_out_total", via="nodes") >= 12 * 6 * 8 * MIB * 0.5
            assert total(after, "deossfs_node_request_seconds_count", op="put") >= 12 * 5
            assert total(after, "deossfs_chain_call_seconds_count", call="upload_declaration") >= 1
            # a download: bytes out, segments by tier
            assert client.download(fids[0], byte_range=(0, 99)) == data[:100]
            later = scrape(port)
            assert value(later, "deossfs_bytes_out_total", via="http") > value(after, "deossfs_bytes_out_total", via="http")
            assert total(later, "deossfs_segment_reads_total") > total(after, "deossfs_segment_reads_total")
            assert value(later, "deossfs_requests_total", interface="http", method="GET", status="206") >= 1
            with pytest.raises(deossfs.NotFound):
                client.download("0" * 64)
            assert value(scrape(port), "deossfs_requests_total", interface="http", method="GET", status="404") >= 1
    finally:
        gateway.stop()


def needs_mount(test: Callable) -> Callable:
    for mark in NEEDS_MOUNT:
        test = mark(test)
    return test


@needs_mount
def test_the_mount(devnet: Devnet, tmp_path: Path) -> None:
    port = free_port()
    config = config_for(devnet, tmp_path / "m")
    data = tmp_path / "source.bin"
    data.write_bytes(os.urandom(120 * MIB))
    with deossfs.Client(config=devnet.config) as client:
        client.create_bucket("metrics-mount")
        client.put(b"stored before the mount", "metrics-mount/old.txt")
    mounted = Mounted(config, tmp_path / "mnt")
    try:
        mounted.cli("-o", f"metrics.listen=127.0.0.1:{port}", "mount", str(mounted.mountpoint))
        before = scrape(port)
        base = value(before, "deossfs_bytes_in_total", via="fuse")
        target = mounted.path("metrics-mount", "copied.bin")
        mid, after = during(lambda: shutil.copyfile(data, target), port,
                            lambda s: value(s, "deossfs_bytes_in_total", via="fuse") > base)
        assert value(after, "deossfs_bytes_in_total", via="fuse") >= base + 120 * MIB
        assert value(after, "deossfs_requests_total", interface="fuse", method="write", status="ok") > \
            value(before, "deossfs_requests_total", interface="fuse", method="write", status="ok")
        assert value(after, "deossfs_uploads_pending") >= 1  # closed, not yet durable
        wait_for(lambda: value(scrape(port), "deossfs_uploads_pending") == 0, 300,
                 "the copy to be durable")
        final = scrape(port)
        assert value(final, "deossfs_uploads_total", result="stored") >= 1
        assert total(final, "deossfs_node_request_seconds_count", op="put") >= 12 * 4
        assert mounted.path("metrics-mount", "old.txt").read_bytes() == b"stored before the mount"
        read = scrape(port)
        assert total(read, "deossfs_segment_reads_total") > total(final, "deossfs_segment_reads_total")
        assert value(read, "deossfs_bytes_out_total", via="fuse") >= 23
        with pytest.raises(FileNotFoundError):
            mounted.path("metrics-mount", "nothing").read_bytes()
        assert value(scrape(port), "deossfs_requests_total", interface="fuse", method="lookup",
                     status="ENOENT") >= 1
        mounted.umount()
    finally:
        mounted.cleanup()


def test_the_operations_guide_lists_every_metric_and_its_scrapes_parse() -> None:
    """docs/operations.md names each metric metrics.py defines, and its sample scrapes are
    Prometheus text of those metrics (taken from real processes, not made up)."""
    from deossfs import metrics

    doc = (ROOT / "docs" / "operations.md").read_text()
    defined = {m._name for m in vars(metrics).values()
               if isinstance(m, metrics.Counter | metrics.Gauge | metrics.Histogram)}
    assert len(defined) >= 11
    for name in defined:
        assert f"`{name}" in doc, f"docs/operations.md does not list {name}"
    scrapes = doc.split("## A scrape", 1)[1]
    blocks = [block for block in scrapes.split("\n\n") if block.startswith("    ")]
    assert len(blocks) >= 2, "the gateway's and a node's scrapes"
    seen: set[str] = set()
    for block in blocks:
        text = "\n".join(line[4:] for line in block.splitlines()) + "\n"
        for family in text_string_to_metric_families(text):
            assert family.name in defined, f"the sample has {family.name}, which metrics.py lacks"
            assert family.samples
            seen.add(family.name)
    assert {"deossfs_bytes_in", "deossfs_bytes_out", "deossfs_requests"} <= seen
