"""The example plug-ins of contrib/plugins, installed into the venv with pip and used
through real devnets: zstd compresses what compresses and leaves the rest byte-identical,
a second instance reads the files back, one without the plug-in names it; the region
policy keeps fragments on nodes inside a box (configured, or DeOSS's Latitude/Longitude
headers through the gateway) and refuses a box with too few nodes before any byte moves.
Each plug-in's own tests run here too."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import deossfs
from deossfs.gateway_client import GatewayClient
from deossfs.processing.hashes import merkle_root

from ..conftest import Devnet
from ..conftest import deossfs as cli
from ..gateway.conftest import GatewayProcess
from ..harness import account, fids_on, node_account, scratch_devnet
from .conftest import PLUGINS, install_plugin, plugin_config, uninstall_plugin

MIB = 1024 * 1024
TEXT = b"".join(b"%08d a line of a log that compresses well, as logs do\n" % i
                for i in range(1_000_000))  # ~57 MiB: two segments
NOISE = os.urandom(5 * MIB)


@pytest.fixture(scope="module")
def plugins_installed() -> Iterator[None]:
    install_plugin("deossfs-zstd")
    install_plugin("deossfs-region")
    try:
        yield
    finally:
        uninstall_plugin("deossfs-zstd")
        uninstall_plugin("deossfs-region")


@pytest.mark.parametrize("plugin", ["deossfs-zstd", "deossfs-region"])
def test_the_plugins_own_tests_pass(plugins_installed: None, plugin: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(PLUGINS / plugin / "tests")], capture_output=True, text=True,
                            timeout=600, cwd=PLUGINS / plugin)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_zstd_stores_compressed_and_a_second_instance_reads_it_back(
        plugins_installed: None, devnet: Devnet, tmp_path: Path) -> None:
    bucket = f"zstd-{uuid.uuid4().hex[:10]}"
    writer_config = plugin_config(devnet, tmp_path / "writer", processing={"stage": "zstd"})
    with deossfs.Client(config=writer_config) as writer:
        writer.create_bucket(bucket)
        text = writer.put(TEXT, f"{bucket}/log.txt")
        noise = writer.put(NOISE, f"{bucket}/noise.bin", encrypt=False)
        stat = writer.stat(f"{bucket}/log.txt")
        assert stat.stage == "zstd" and stat.stage_params == {"format": "zstd", "level": 3}
        assert stat.size == len(TEXT) == text.size and stat.stored_size < len(TEXT) // 5
        assert len(stat.segments) == 1  # 57 MiB of text took one segment, not two
        # CESS's layout holds for the stored bytes: FID = Merkle root of the segment hashes
        assert stat.fid == merkle_root(s.hash for s in stat.segments)
        # incompressible: declined, stored as it is - the FID of the same bytes put plainly
        assert writer.stat(f"{bucket}/noise.bin").stage is None
    with deossfs.Client(config=devnet.config) as plain:
        same = plain.put(NOISE, f"{bucket}/noise-plain.bin", encrypt=False, stage="")
        assert same.fid == noise.fid

    # another instance: no stage configured, its own workspace, no cache: reads by the record
    reader_config = plugin_config(devnet, tmp_path / "reader")
    with deossfs.Client(config=reader_config) as reader:
        assert reader.get(f"{bucket}/log.txt") == TEXT
        assert reader.get(f"{bucket}/log.txt", start=40 * MIB, end=40 * MIB + 100) == \
            TEXT[40 * MIB:40 * MIB + 100]
        with reader.stream(f"{bucket}/log.txt") as pieces:
            assert b"".join(pieces) == TEXT
    out = tmp_path / "via-cli.txt"
    cli("get", f"{bucket}/log.txt", str(out), config=reader_config)
    assert out.read_bytes() == TEXT

    # the gateway serves the file's own bytes, its own length too
    gateway = GatewayProcess(reader_config, tmp_path / "gateway").start()
    try:
        with GatewayClient(gateway.url, account(devnet)) as client:
            assert client.download(text.fid, byte_range=(100, 199)) == TEXT[100:200]
    finally:
        gateway.stop()

    # without the plug-in: a clear error naming it, and no file written
    uninstall_plugin("deossfs-zstd")
    try:
        out = tmp_path / "without" / "log.txt"
        out.parent.mkdir()
        result = cli("get", f"{bucket}/log.txt", str(out), config=reader_config, check=False)
        assert result.returncode == 1
        assert "processing stage 'zstd', which is not installed here" in result.stderr
        assert "deossfs.processing:zstd" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert list(out.parent.iterdir()) == []
        # stat still says what the file needs
        stat_out = cli("stat", "--json", f"{bucket}/log.txt", config=reader_config)
        assert '"fid"' in stat_out.stdout
        # the library and a gateway started now say the same, the gateway before any byte
        with deossfs.Client(config=reader_config) as reader:
            with pytest.raises(deossfs.MissingPlugin, match="processing stage 'zstd'"):
                reader.get(f"{bucket}/log.txt")
            assert reader.stat(f"{bucket}/log.txt").stage == "zstd"
        gateway = GatewayProcess(reader_config, tmp_path / "gateway-without").start()
        try:
            with GatewayClient(gateway.url, account(devnet)) as client:
                with pytest.raises(deossfs.MissingPlugin, match="processing stage 'zstd'") as caught:
                    client.download(text.fid)
                assert caught.value.http_status == 501
        finally:
            gateway.stop()
    finally:
        install_plugin("deossfs-zstd")


GERMANY = [47.0, 5.5, 55.0, 15.0]
JAPAN = [30.0, 129.0, 46.0, 146.0]


def _places(accounts: list[str]) -> dict[str, list[float]]:
    """12 nodes in German cities, the others in Japan."""
    german = [[52.52, 13.40], [48.14, 11.58], [50.94, 6.96], [53.55, 9.99], [50.11, 8.68],
              [51.34, 12.37], [49.45, 11.08], [51.05, 13.74], [48.78, 9.18], [52.38, 9.73],
              [51.51, 7.47], [54.32, 10.14]]
    japanese = [[35.68, 139.69], [34.69, 135.50], [43.06, 141.35]]
    spots = german + japanese
    return {acc: spots[i] for i, acc in enumerate(accounts)}


def test_region_keeps_fragments_inside_the_box(plugins_installed: None,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = tmp_path_factory.mktemp("region-devnet")
    with scratch_devnet(directory, nodes=14) as net:
        accounts = [node_account(n) for n in net.nodes()]
        places = _places(accounts)
        german = set(accounts[:12])
        work = tmp_path_factory.mktemp("region")
        config = plugin_config(net, work / "de", scheduling={
            "policies": ["blacklist", "region", "nearby", "pinned"],
            "options": {"region": {"box": GERMANY, "nodes": places}}})
        bucket = "regions"
        with deossfs.Client(config=config) as client:
            client.create_bucket(bucket)
            for i in range(3):  # the random part of the choice never leaves the box
                client.put(os.urandom(MIB), f"{bucket}/de-{i}")
                stat = client.stat(f"{bucket}/de-{i}")
                assert {f.node for f in stat.segments[0].fragments} == german

        # a box with 11 nodes in it: refused before any byte is sent
        fewer = dict(places)
        fewer[accounts[0]] = [48.86, 2.35]  # Berlin's node moves to Paris
        held = [fids_on(n) for n in net.nodes()]
        narrow = plugin_config(net, work / "narrow", scheduling={
            "policies": ["blacklist", "region", "nearby"],
            "options": {"region": {"box": GERMANY, "nodes": fewer}}})
        with deossfs.Client(config=narrow) as client:
            locked = client.territory().locked_space
            with pytest.raises(deossfs.NotEnoughNodes,
                               match="scheduling policy 'region' left 11 of 14 usable storage nodes"):
                client.put(os.urandom(MIB), f"{bucket}/refused")
            assert client.territory().locked_space == locked
            assert [o.key for o in client.ls(bucket)] == ["de-0", "de-1", "de-2"]
        assert [fids_on(n) for n in net.nodes()] == held

        # through the gateway: the upload's own points (DeOSS's Latitude/Longitude headers)
        # name the region, over a configured box (Japan) that could not take the file
        japan = plugin_config(net, work / "gw", scheduling={
            "policies": ["blacklist", "region", "nearby"],
            "options": {"region": {"box": JAPAN, "nodes": places}}})
        gateway = GatewayProcess(japan, work / "gateway").start()
        try:
            with GatewayClient(gateway.url, account(net)) as client:
                with pytest.raises(deossfs.DeossError, match="region"):
                    client.upload(os.urandom(MIB), "nowhere.bin", bucket=bucket)
                fid = client.upload(os.urandom(MIB), "from-gateway.bin", bucket=bucket,
                                    location=[(47.5, 6.0), (54.5, 6.0), (51.0, 14.5)])
                held_by = {client.location(fid)[f"{j} batch fragments"]["account"] for j in range(12)}
                assert held_by == german
        finally:
            gateway.stop()


def test_zstd_behind_the_s3_api(plugins_installed: None, devnet: Devnet, tmp_path: Path) -> None:
    """A gateway whose stage is zstd: S3 objects go through it and come back whole, with
    their own length; the bucket's metadata object, which the mount reads too, never does."""
    from deossfs.catalog.protocol import META_KEY

    from ..gateway.conftest import create_key
    from ..harness import wait_for

    config = plugin_config(devnet, tmp_path / "gw", processing={"stage": "zstd"})
    gateway = GatewayProcess(config, tmp_path / "gw").start()
    try:
        s3 = create_key(gateway).client()
        bucket = f"s3zstd-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        body = TEXT[:3 * MIB]
        s3.put_object(Bucket=bucket, Key="logs/app.log", Body=body)
        got = s3.get_object(Bucket=bucket, Key="logs/app.log")
        assert got["ContentLength"] == len(body) and got["Body"].read() == body
        part = s3.get_object(Bucket=bucket, Key="logs/app.log", Range="bytes=1000-1999")
        assert part["Body"].read() == body[1000:2000]
        with deossfs.Client(config=devnet.config) as client:
            stat = client.stat(f"{bucket}/logs/app.log")
            assert stat.stage == "zstd" and stat.stored_size < len(body) // 5

            def metadata_saved() -> deossfs.ObjectStat | None:
                try:
                    return client.stat(f"{bucket}/{META_KEY}")
                except deossfs.NotFound:
                    return None

            meta = wait_for(metadata_saved, 120, "the bucket's metadata object", interval=1)
            assert meta.stage is None
    finally:
        gateway.stop()
