"""`deossfs verify [--repair]`: finds every bad fragment, rebuilds it on a healthy node,
and the chain's record follows (restoral orders)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deossfs.errors import NodeRefused
from deossfs.keys import load_key_file
from deossfs.p2p.nodeclient import NodeClient
from deossfs.processing.encryption import PLAINTEXT_CAPACITY
from deossfs.processing.layout import FRAGMENT_SIZE

from ..conftest import Devnet, deossfs
from ..harness import Mounted, config_for, fragment_path, kill, ledger, nodes_by_account, wait_for


def _stat(config: Path, key: str) -> dict:
    return json.loads(deossfs("stat", "--json", f"faults/{key}", config=config).stdout)


def _verify(config: Path, *args: str) -> tuple[int, dict]:
    result = deossfs("verify", "--json", *args, config=config, check=False)
    return result.returncode, json.loads(result.stdout)


def test_verify_finds_and_repair_rebuilds_every_kind_of_bad_fragment(
        healthy: Devnet, plain_config: Path, tmp_path: Path) -> None:
    data = os.urandom(PLAINTEXT_CAPACITY + 5_000_000)  # 2 segments
    src = tmp_path / "repair.bin"
    src.write_bytes(data)
    deossfs("put", "-q", str(src), "faults/repair.bin", config=plain_config)
    stat = _stat(plain_config, "repair.bin")
    fid = stat["fid"]
    nodes = nodes_by_account(healthy)

    def where(s: int, j: int) -> Path:
        fragment = stat["segments"][s]["fragments"][j]
        return fragment_path(nodes[fragment["miner"]], fid, fragment["hash"])

    # the damage: flipped bytes, a truncated file, a deleted file, a dead node
    with open(where(0, 0), "r+b") as handle:
        handle.seek(FRAGMENT_SIZE // 2)
        handle.write(b"\xff" * 64)
    os.truncate(where(0, 5), FRAGMENT_SIZE // 2)
    # a parity fragment: segment 1 holds 5 MB, so its data columns 1-3 are the zero
    # fragment, which no node stores
    where(1, 9).unlink()
    dead_miner = stat["segments"][0]["fragments"][7]["miner"]
    kill(nodes[dead_miner])
    expected = {(0, 0, "corrupt"), (0, 5, "corrupt"), (1, 9, "missing"),
                (0, 7, "unreachable"), (1, 7, "unreachable")}

    code, report = _verify(plain_config, "faults/repair.bin")
    assert code != 0
    found = {(p["segment"], p["column"], p["kind"]) for f in report["files"] for p in f["problems"]}
    assert found == expected
    assert report["fragments"] == 24 - 3  # segment 1's zero fragments are held by no node

    # an order left open by an interrupted repair is picked up again
    lost = stat["segments"][1]["fragments"][9]
    chain = ledger(healthy)
    try:
        chain.generate_restoral_order(fid, lost["hash"], lost["miner"])
    finally:
        chain.close()

    result = deossfs("verify", "--repair", "faults/repair.bin", config=plain_config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 bad, 5 repaired" in result.stdout, result.stdout
    after = _stat(plain_config, "repair.bin")
    for s, j, _ in expected:
        before_miner = stat["segments"][s]["fragments"][j]["miner"]
        now = after["segments"][s]["fragments"][j]
        assert now["miner"] != before_miner, (s, j)
        assert now["avail"] is True
        assert now["hash"] == stat["segments"][s]["fragments"][j]["hash"]
    for segment in after["segments"]:
        assert len({f["miner"] for f in segment["fragments"]}) == 12  # still 12 distinct nodes

    # the new holders serve the right bytes (verified again, node still dead), reads are exact
    code, report = _verify(plain_config, "faults/repair.bin")
    assert code == 0 and report["problems"] == 0, report
    back = tmp_path / "back.bin"
    deossfs("get", "-q", "faults/repair.bin", str(back), config=plain_config)
    assert back.read_bytes() == data
    events = [e for e in ledger(healthy).events(0) if e.name == "RecoveryCompleted"]
    assert len(events) >= 5
    deossfs("chain", "verify", config=plain_config)


async def test_a_node_takes_a_fragment_only_under_a_restoral_order(healthy: Devnet,
                                                                  plain_config: Path,
                                                                  tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    src = tmp_path / "orders.bin"
    src.write_bytes(data)
    deossfs("put", "-q", str(src), "faults/orders.bin", config=plain_config)
    stat = _stat(plain_config, "orders.bin")
    fid, fragment = stat["fid"], stat["segments"][0]["fragments"][0]
    payload = fragment_path(nodes_by_account(healthy)[fragment["miner"]], fid,
                            fragment["hash"]).read_bytes()
    holders = {f["miner"] for f in stat["segments"][0]["fragments"]}
    outsiders = [(a, n) for a, n in nodes_by_account(healthy).items() if a not in holders]
    owner = load_key_file(healthy.dir / "account.key")
    async with NodeClient(owner, timeout=30) as client:
        # the file is stored (no deal) and no order names this fragment: refused
        try:
            await client.put_fragment(outsiders[0][1].endpoint, fid, fragment["hash"], payload)
        except NodeRefused as exc:
            assert exc.status == 404
        else:
            raise AssertionError("a node took a fragment nobody ordered")
        chain = ledger(healthy)
        try:
            chain.generate_restoral_order(fid, fragment["hash"])
            await client.put_fragment(outsiders[0][1].endpoint, fid, fragment["hash"], payload)
            # the first node claimed and completed it; a second copy elsewhere is refused
            assert chain.restoral_order(fragment["hash"]) is None
            moved = chain.file(fid).segments[0].fragments[0]  # type: ignore[union-attr]
            assert (moved.miner, moved.avail) == (outsiders[0][0], True)
            try:
                await client.put_fragment(outsiders[1][1].endpoint, fid, fragment["hash"], payload)
            except NodeRefused as exc:
                assert exc.status == 404
            else:
                raise AssertionError("a second node took a fragment with no open order")
        finally:
            chain.close()


def test_background_check_repairs_a_lost_fragment(healthy: Devnet, plain_config: Path,
                                                  tmp_path: Path) -> None:
    """A mount with `[storage] verify_interval` set finds a lost fragment and rebuilds it."""
    data = os.urandom(2_000_000)
    src = tmp_path / "background.bin"
    src.write_bytes(data)
    deossfs("put", "-q", str(src), "faults/background.bin", config=plain_config)
    stat = _stat(plain_config, "background.bin")
    fid, fragment = stat["fid"], stat["segments"][0]["fragments"][0]
    fragment_path(nodes_by_account(healthy)[fragment["miner"]], fid, fragment["hash"]).unlink()
    chain = ledger(healthy)
    mounted = Mounted(config_for(healthy, tmp_path / "mounter", storage={"verify_interval": 1.0}),
                      tmp_path / "mnt")
    try:
        mounted.mount()
        wait_for(lambda: chain.file(fid).segments[0].fragments[0].miner != fragment["miner"],  # type: ignore[union-attr]
                 300, "the mount's background check to move the lost fragment")
        mounted.umount()
        assert "rebuilt on" in mounted.log()  # the mount's own background repair did it
    finally:
        mounted.cleanup()
        chain.close()
    code, report = _verify(plain_config, "faults/background.bin")
    assert code == 0 and report["problems"] == 0, report
