"""Storage nodes that die, lie or hang, during reads and uploads.

Every read is checked byte for byte; every node fault is injected into real node
processes (SIGKILL) or real sockets (a bad node on a real node's port and account).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from deossfs.chain.factory import open_chain
from deossfs.config import load_config
from deossfs.errors import NodeUnavailable
from deossfs.keys import load_key_file
from deossfs.processing.encryption import PLAINTEXT_CAPACITY
from deossfs.store import ObjectStore

from ..conftest import Devnet, deossfs
from ..harness import config_for, fids_on, kill, node_account, nodes_by_account
from .badnode import MODES, BadNode


@contextlib.asynccontextmanager
async def open_store(config_path: Path) -> AsyncIterator[ObjectStore]:
    config = load_config(config_path)
    account = load_key_file(config.require_key_file())
    chain = open_chain(config, account)
    try:
        async with ObjectStore(config, account, chain) as store:
            yield store
    finally:
        chain.close()


def put(config: Path, data: bytes, key: str, tmp_path: Path) -> dict:
    """`deossfs put` of `data` as faults/KEY; returns `deossfs stat --json` of it."""
    src = tmp_path / (key.replace("/", "_") + ".src")
    src.write_bytes(data)
    deossfs("put", "-q", str(src), f"faults/{key}", config=config)
    return json.loads(deossfs("stat", "--json", f"faults/{key}", config=config).stdout)


def get(config: Path, key: str, dest: Path) -> bytes:
    deossfs("get", "-q", f"faults/{key}", str(dest), config=config)
    return dest.read_bytes()


# ---- reads ---------------------------------------------------------------------------------


async def test_a_healthy_read_asks_the_nodes_for_the_data_fragments_only(
        healthy: Devnet, plain_config: Path, tmp_path: Path) -> None:
    """With every node answering, a cold read of N segments makes 4 x N fragment requests:
    parity is fetched only for a fragment that failed or straggles (a reader that fetched
    parity as soon as one of its four fetches was done read ~75% more than it needed)."""
    data = os.urandom(4 * PLAINTEXT_CAPACITY - 12_345)  # 4 segments, no zero fragment
    put(plain_config, data, "data-only.bin", tmp_path)

    def fragment_gets() -> float:
        return sum(sample.value for metric in REGISTRY.collect()
                   if metric.name == "deossfs_node_request_seconds"
                   for sample in metric.samples
                   if sample.name.endswith("_count") and sample.labels.get("op") == "get")

    before = fragment_gets()
    async with open_store(plain_config) as store:
        out = tmp_path / "out.bin"
        await store.get_file("faults", "data-only.bin", out)
    assert out.read_bytes() == data
    assert fragment_gets() - before == 4 * 4


@pytest.mark.parametrize("which", ["4 data + 4 parity", "random 8"])
async def test_read_survives_8_of_12_nodes_killed_mid_read(
        healthy: Devnet, plain_config: Path, tmp_path: Path, which: str) -> None:
    data = os.urandom(4 * PLAINTEXT_CAPACITY - 12_345)  # 4 segments, encrypted
    key = f"kill8-{which.replace(' ', '')}.bin"
    stat = put(plain_config, data, key, tmp_path)
    holders = [f["miner"] for f in stat["segments"][0]["fragments"]]
    if which == "random 8":
        seed = random.SystemRandom().randrange(2**32)
        columns = sorted(random.Random(seed).sample(range(12), 8))
    else:
        seed, columns = None, [0, 1, 2, 3, 4, 6, 8, 10]
    by_account = nodes_by_account(healthy)
    victims = [by_account[holders[c]] for c in columns]
    killed: list[int] = []

    def progress(_n: int) -> None:
        # after the first segment is written: the other three are read with 8 nodes dead
        if not killed:
            for node in victims:
                kill(node)
            killed.extend(node.index for node in victims)

    out = tmp_path / "out.bin"
    async with open_store(plain_config) as store:
        entry = await store.lookup("faults", key)
        assert entry is not None
        info = await store.file_info(entry.fid)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            await store.read_into_fd(info, fd, progress)
        finally:
            os.close(fd)
    assert killed, "the read finished before any node was killed"
    assert not any(node.alive for node in healthy.nodes() if node.index in killed)
    assert out.read_bytes() == data, f"columns {columns} killed (seed {seed})"


async def test_upload_completes_when_nodes_die_mid_upload(healthy: Devnet, plain_config: Path,
                                                         tmp_path: Path) -> None:
    data = os.urandom(3 * PLAINTEXT_CAPACITY + 1000)  # 4 segments
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    before = {n.index: fids_on(n) for n in healthy.nodes()}
    killed: list = []

    def progress(_n: int) -> None:
        # fragments of the new file on nodes: the order is on the chain, pass 2 is running
        if killed:
            return
        receiving = [n for n in healthy.nodes() if fids_on(n) - before[n.index]]
        if receiving:
            for node in receiving[:2]:
                kill(node)
                killed.append(node)

    async with open_store(plain_config) as store:
        plan = await store.put_file(src, "faults", "dies-mid-upload.bin", progress=progress)
        info = await store.file_info(plan.fid)
    assert len(killed) == 2, "no node was killed during the upload"
    dead = {node_account(n) for n in killed}
    for segment in info.segments:
        miners = [f.miner for f in segment.fragments]
        assert len(set(miners)) == 12
        assert not set(miners) & dead, "a killed node still holds a column"
    # read back while the two nodes are still dead
    assert get(plain_config, "dies-mid-upload.bin", tmp_path / "back.bin") == data


async def test_a_column_stored_and_reported_whose_answer_is_lost_stays(
        healthy: Devnet, plain_config: Path, tmp_path: Path) -> None:
    """A node stores its last fragment and reports the column, but the answer never
    reaches the uploader (a reset after the body went out). The column is held: the
    upload must not give it to another node, which the completed order would refuse."""
    data = os.urandom(2 * PLAINTEXT_CAPACITY)  # 2 segments, no zero fragments
    src = tmp_path / "lost-answer.bin"
    src.write_bytes(data)
    puts: dict[str, int] = {}
    victim: list[str] = []

    async with open_store(plain_config) as store:
        real_put = store.client.put_fragment

        async def answer_lost(endpoint: str, *args: object) -> None:
            await real_put(endpoint, *args)  # type: ignore[arg-type]
            victim[:] = victim or [endpoint]
            puts[endpoint] = puts.get(endpoint, 0) + 1
            if endpoint == victim[0] and puts[endpoint] >= 2:  # its second segment, and retries
                raise NodeUnavailable(f"connection to {endpoint} reset before its answer")

        store.client.put_fragment = answer_lost  # type: ignore[method-assign]
        plan = await store.put_file(src, "faults", "lost-answer.bin")
        info = await store.file_info(plan.fid)
        holder = {n.endpoint: n.account for n in store.chain.storage_nodes()}[victim[0]]
    assert puts[victim[0]] >= 2, "no answer was lost: the test proves nothing"
    for segment in info.segments:
        assert holder in {f.miner for f in segment.fragments}, "the held column was given away"
    assert get(plain_config, "lost-answer.bin", tmp_path / "back.bin") == data


# ---- nodes that lie or hang ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_node_file(fault_devnet: Devnet, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict]:
    """A 2-segment file the bad-node tests read; its column 0 holder becomes the bad node."""
    directory = tmp_path_factory.mktemp("bad-node-file")
    config = config_for(fault_devnet, directory / "client")
    data = os.urandom(PLAINTEXT_CAPACITY + 777_777)
    return data, put(config, data, "bad-node.bin", directory)


@pytest.mark.parametrize("mode", MODES)
def test_reader_falls_back_when_a_node_misbehaves(healthy: Devnet, bad_node_file: tuple[bytes, dict],
                                                  tmp_path: Path, mode: str) -> None:
    data, stat = bad_node_file
    holder = stat["segments"][0]["fragments"][0]["miner"]  # data column 0: asked first
    node = nodes_by_account(healthy)[holder]
    config = config_for(healthy, tmp_path / "client", storage={"request_timeout": 2.0})
    kill(node)
    with BadNode(node.port, mode) as bad:  # type: ignore[arg-type]
        got = get(config, "bad-node.bin", tmp_path / "out.bin")
        asked = [r for r in bad.requests if r[0] == "GET"]
    assert asked, "the bad node was never asked: the test proves nothing"
    assert got == data


def test_upload_times_out_on_a_hung_node_then_uses_another(healthy: Devnet, tmp_path: Path) -> None:
    victim = healthy.nodes()[0]
    hung = node_account(victim)
    # the hung node is preferred, so it is chosen; a 2 s timeout makes the wait short
    config = config_for(healthy, tmp_path / "client",
                        storage={"request_timeout": 2.0, "preferred_nodes": [hung]})
    data = os.urandom(2 * PLAINTEXT_CAPACITY)
    src = tmp_path / "hung.bin"
    src.write_bytes(data)
    kill(victim)
    with BadNode(victim.port, "hang") as bad:  # type: ignore[arg-type]
        result = deossfs("-v", "put", "-q", str(src), "faults/hung.bin", config=config)
        puts = [r for r in bad.requests if r[0] == "PUT"]
    assert puts, "the hung node was not chosen: the test proves nothing"
    assert "Timeout" in result.stderr, result.stderr[-2000:]
    stat = json.loads(deossfs("stat", "--json", "faults/hung.bin", config=config).stdout)
    for segment in stat["segments"]:
        assert hung not in {f["miner"] for f in segment["fragments"]}
    assert get(config, "hung.bin", tmp_path / "back.bin") == data
