"""The core engine through the real CLI on a real devnet (12 node processes, HTTP, SQLite)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from deossfs.devnet import start_node, stop_node
from deossfs.processing.erasure import ErasureCoder
from deossfs.processing.hashes import merkle_root
from deossfs.processing.layout import SEGMENT_SIZE

from ..conftest import Devnet, deossfs


def independent_layout(data: bytes) -> tuple[str, list[list[str]]]:
    """The plain CESS layout computed from the spec, not through deossfs' pipeline."""
    coder = ErasureCoder()
    seg_hashes, frag_hashes = [], []
    for start in range(0, len(data), SEGMENT_SIZE):
        segment = bytearray(data[start : start + SEGMENT_SIZE].ljust(SEGMENT_SIZE, b"\0"))
        seg_hashes.append(hashlib.sha256(segment).hexdigest())
        frag_hashes.append([hashlib.sha256(f).hexdigest() for f in coder.encode_segment(segment)])
    return merkle_root(seg_hashes), frag_hashes


@pytest.fixture(scope="module")
def bucket(devnet: Devnet) -> str:
    devnet.cli("bucket", "create", "e2e")
    return "e2e"


def test_put_stat_get_plain_layout(devnet: Devnet, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(40_000_000)
    src = tmp_path / "forty.bin"
    src.write_bytes(data)
    out = devnet.cli("put", "--no-encrypt", str(src), f"{bucket}/dir/forty.bin")
    assert "stored" in out.stdout
    stat = json.loads(devnet.cli("stat", "--json", f"{bucket}/dir/forty.bin").stdout)
    fid, fragments = independent_layout(data)
    assert stat["fid"] == fid
    assert stat["state"] == "Active"
    assert stat["size"] == len(data)
    assert [[f["hash"] for f in s["fragments"]] for s in stat["segments"]] == fragments
    # 12 distinct nodes hold the 12 columns
    assert len({f["miner"] for f in stat["segments"][0]["fragments"]}) == 12
    dest = tmp_path / "back.bin"
    devnet.cli("get", f"{bucket}/dir/forty.bin", str(dest))
    assert dest.read_bytes() == data


def test_the_same_plain_file_stored_again_after_rm(devnet: Devnet, bucket: str, tmp_path: Path) -> None:
    """rm, then put the same bytes: the same FID is declared again while the nodes still
    hold its fragments from before, each maybe for another column this time. Every node
    must report the column it was sent now (it once reported the one it held from before,
    and the upload failed with 'stored its column but did not report it')."""
    data = os.urandom(3_000_000)  # one segment: 3 of its data columns are all-zero
    src = tmp_path / "again.bin"
    src.write_bytes(data)
    fids = set()
    for _ in range(4):
        devnet.cli("put", "-q", "--no-encrypt", str(src), f"{bucket}/again.bin")
        fids.add(json.loads(devnet.cli("stat", "--json", f"{bucket}/again.bin").stdout)["fid"])
        dest = tmp_path / "again.out"
        devnet.cli("get", f"{bucket}/again.bin", str(dest))
        assert dest.read_bytes() == data
        devnet.cli("rm", f"{bucket}/again.bin")
    assert len(fids) == 1


def test_encrypted_put_get_and_nodes_hold_no_plaintext(devnet: Devnet, bucket: str, tmp_path: Path) -> None:
    marker = b"DEOSSFS-PLAINTEXT-MARKER-" * 4000
    data = marker + os.urandom(5_000_000) + marker
    src = tmp_path / "secret.bin"
    src.write_bytes(data)
    devnet.cli("put", str(src), f"{bucket}/secret.bin")
    dest = tmp_path / "secret.out"
    devnet.cli("get", f"{bucket}/secret.bin", str(dest))
    assert dest.read_bytes() == data
    for node in devnet.nodes():
        for path in (node.dir / "fragments").rglob("*"):
            if path.is_file():
                assert b"DEOSSFS-PLAINTEXT-MARKER" not in path.read_bytes(), path


def test_clear_errors(devnet: Devnet, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    cases = [
        (["put", str(src), "nosuchbucket/a"], "does not exist"),
        (["bucket", "create", "Bad_Name"], "bucket name"),
        (["put", str(src), "e2e/../etc/passwd"], "'..'"),
        (["put", str(tmp_path / "missing.bin"), f"{bucket}/a"], "no such file"),
        (["get", f"{bucket}/nope", str(tmp_path / "x")], "no object"),
        (["territory", "mint", "default", "--gib", "1"], "PurchasedSpace"),
    ]
    for args, expected in cases:
        result = devnet.cli(*args, check=False)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deossfs: error:"), result.stderr
        assert expected in lines[0], (args, lines[0])
        assert "Traceback" not in result.stderr
    # a missing key file
    broken = tmp_path / "broken.toml"
    broken.write_text(devnet.config.read_text().replace(str(devnet.dir / "account.key"), str(tmp_path / "nokey")))
    result = deossfs("ls", config=broken, check=False)
    assert result.returncode != 0 and "key file" in result.stderr and "Traceback" not in result.stderr
    # CESS refuses empty files: an empty one is kept in the bucket's metadata object, as
    # the mount and S3 keep it, and every command finds it there
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert "0 bytes" in devnet.cli("put", str(empty), f"{bucket}/empty").stdout
    assert f"             0  {'-':<17}  empty" in devnet.cli("ls", bucket).stdout.splitlines()
    devnet.cli("get", f"{bucket}/empty", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == b""
    assert json.loads(devnet.cli("stat", "--json", f"{bucket}/empty").stdout)["state"] == "empty"
    devnet.cli("rm", f"{bucket}/empty")
    assert "empty" not in devnet.cli("ls", bucket).stdout
    result = devnet.cli("get", f"{bucket}/empty", str(tmp_path / "again"), check=False)
    assert result.returncode != 0 and "no object" in result.stderr
    # a name the namespace keeps for pieces of long S3 keys holds no empty object
    result = devnet.cli("put", str(empty), f"{bucket}/~~+piece", check=False)
    assert result.returncode != 0 and "'~~+'" in result.stderr and "Traceback" not in result.stderr


def test_no_key_is_an_object_and_the_folder_of_another(devnet: Devnet, tmp_path: Path) -> None:
    """The chain takes both `abc` and `abc/d.txt` as file names; the mount could show only
    one, and S3 refuses the second (KeyConflict). The CLI refuses it too, before a byte is
    sent, in a bucket that has no metadata object as well (it took both)."""
    devnet.cli("bucket", "create", "flat")
    src = tmp_path / "small.bin"
    src.write_bytes(b"x" * 1000)
    devnet.cli("put", str(src), "flat/abc")
    devnet.cli("put", str(src), "flat/xyz/e.txt")
    for key, expected in (("abc/d.txt", "'abc' is an object"), ("xyz", "is a folder")):
        result = devnet.cli("put", str(src), f"flat/{key}", check=False)
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert [line.split()[-1] for line in devnet.cli("ls", "flat").stdout.splitlines()] == [
        "abc", "xyz/e.txt"]
    devnet.cli("put", str(src), "flat/abc")  # the same key again replaces it, as before
    devnet.cli("put", str(src), "flat/xyz/f.txt")


def test_territory_full(devnet: Devnet, tmp_path: Path) -> None:
    devnet.cli("territory", "mint", "tiny", "--gib", "1", "--days", "30")
    devnet.cli("bucket", "create", "tinyb")
    config = devnet.config.read_text().replace('territory = "default"', 'territory = "tiny"')
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(config)
    big = tmp_path / "bigger.bin"
    with open(big, "wb") as handle:
        handle.truncate(12 * SEGMENT_SIZE)  # 12 segments x 96 MiB = 1152 MiB > 1 GiB
    result = deossfs("put", "--no-encrypt", str(big), "tinyb/big", config=tiny, check=False)
    assert result.returncode != 0
    assert "free" in result.stderr and "territory expand" in result.stderr, result.stderr


def test_survives_8_of_12_nodes_down_and_fails_cleanly_at_9(
    devnet: Devnet, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the nodes must answer: with the cache on, gets would be served locally
    monkeypatch.setenv("DEOSSFS_CACHE_ENABLED", "false")
    data = os.urandom(SEGMENT_SIZE + 3_000_000)
    src = tmp_path / "resilient.bin"
    src.write_bytes(data)
    devnet.cli("put", str(src), f"{bucket}/resilient.bin")
    stat = json.loads(devnet.cli("stat", "--json", f"{bucket}/resilient.bin").stdout)
    holders = [f["endpoint"] for f in stat["segments"][0]["fragments"]]
    nodes = {n.endpoint: n for n in devnet.nodes()}
    # kill the holders of the 4 data columns and 4 parity columns: only 4 parity remain
    victims = [nodes[holders[i]] for i in (0, 1, 2, 3, 4, 6, 8, 10)]
    try:
        for node in victims:
            stop_node(node, signal.SIGKILL)
        dest = tmp_path / "resilient.out"
        devnet.cli("get", f"{bucket}/resilient.bin", str(dest))
        assert dest.read_bytes() == data
        ninth = nodes[holders[5]]
        stop_node(ninth, signal.SIGKILL)
        victims.append(ninth)
        dest2 = tmp_path / "never.out"
        result = devnet.cli("get", f"{bucket}/resilient.bin", str(dest2), check=False)
        assert result.returncode != 0
        assert "fragments" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not dest2.exists()
        assert not list(tmp_path.glob(".never.out*"))
        # with 3 of 12 left no upload can find 12 nodes
        result = devnet.cli("put", str(src), f"{bucket}/more.bin", check=False)
        assert result.returncode != 0 and "usable storage nodes" in result.stderr
    finally:
        for node in victims:
            start_node(devnet.config, node)
        from deossfs.devnet import wait_ready
        wait_ready([n for n in devnet.nodes()])


def test_ledger_log_verifies(devnet: Devnet) -> None:
    out = devnet.cli("chain", "verify")
    assert "verified" in out.stdout
