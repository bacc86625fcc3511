"""The embedded chain's restoral orders beyond what the runtime does (tests/conformance has
the shared rules): an owner may open the order, naming the holder that lost the fragment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deossfs.chain.interface import SegmentSpec
from deossfs.chain.ledger import EmbeddedLedger
from deossfs.errors import KeyFileError
from deossfs.processing.layout import FRAGMENT_SIZE

from .test_ledger import Net, _h, acct, make_order, refused


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Net, str, list[SegmentSpec]]]:
    net = Net(tmp_path / "ledger.sqlite", acct("//Alice"), acct("//Bob"),
              [acct(f"//node{i}") for i in range(1, 14)])
    net.chain.mint_territory("main", 4, 30)
    fid, specs = make_order("restore", 2)
    net.chain.upload_declaration(fid, specs, net.brief(), 40 * 1024 * 1024)
    net.report(fid)
    try:
        yield net, fid, specs
    finally:
        net.close()


def test_an_owner_opens_the_order_and_the_claimant_becomes_the_holder(stored: tuple) -> None:
    net, fid, specs = stored
    fragment = specs[1].fragment_hashes[3]
    origin, spare = net.nodes[3], net.nodes[12]  # node 13 holds nothing of this file
    refused("SpecError", net.bob.generate_restoral_order, fid, fragment)  # not an owner
    net.chain.generate_restoral_order(fid, fragment)
    order = net.chain.restoral_order(fragment)
    assert order is not None and (order.origin_miner, order.miner, order.count) == (
        origin.account, origin.account, 0)
    spare.claim_restoral_order(fragment)
    before = {n.account: n for n in net.chain.storage_nodes()}
    spare.restoral_order_complete(fragment)
    after = {n.account: n for n in net.chain.storage_nodes()}
    entry = net.chain.file(fid).segments[1].fragments[3]  # type: ignore[union-attr]
    assert (entry.miner, entry.avail) == (spare.account, True)
    # other segments' fragments of that column stay where they are
    assert net.chain.file(fid).segments[0].fragments[3].miner == origin.account  # type: ignore[union-attr]
    # the 8 MiB of service moves with the fragment
    assert after[spare.account].service_space == before[spare.account].service_space + FRAGMENT_SIZE
    assert after[origin.account].service_space == before[origin.account].service_space - FRAGMENT_SIZE
    assert net.chain.replay_check() > 0  # the new calls replay like every other


def test_a_shared_hash_needs_the_holder_named(tmp_path: Path) -> None:
    alice, nodes = acct("//Alice"), [acct(f"//node{i}") for i in range(1, 13)]
    net = Net(tmp_path / "ledger.sqlite", alice, acct("//Bob"), nodes)
    try:
        net.chain.mint_territory("main", 4, 30)
        same = _h("repeated")  # columns 0 and 1 hold identical bytes (a repetitive file)
        spec = SegmentSpec(_h("seg"), (same, same, *(_h(f"p{j}") for j in range(10))))
        fid = _h("file")
        net.chain.upload_declaration(fid, [spec], net.brief(), 1000)
        net.report(fid)
        refused("SpecError", net.chain.generate_restoral_order, fid, same)
        refused("SpecError", net.chain.generate_restoral_order, fid, same, net.nodes[5].account)
        net.chain.generate_restoral_order(fid, same, net.nodes[1].account)
        net.nodes[6].claim_restoral_order(same)
        net.nodes[6].restoral_order_complete(same)
        fragments = net.chain.file(fid).segments[0].fragments  # type: ignore[union-attr]
        assert [f.miner for f in fragments[:2]] == [net.nodes[0].account, net.nodes[6].account]
    finally:
        net.close()


def test_an_order_of_a_deleted_file_just_ends(stored: tuple) -> None:
    net, fid, specs = stored
    fragment = specs[0].fragment_hashes[0]
    net.chain.generate_restoral_order(fid, fragment)
    net.nodes[12].claim_restoral_order(fragment)
    net.chain.delete_file(net.alice_addr, fid)
    net.nodes[12].restoral_order_complete(fragment)
    assert net.chain.restoral_order(fragment) is None


def test_the_calls_are_signed_and_logged(stored: tuple, tmp_path: Path) -> None:
    net, fid, specs = stored
    fragment = specs[0].fragment_hashes[2]
    net.chain.generate_restoral_order(fid, fragment)
    net.nodes[12].claim_restoral_order(fragment)
    net.nodes[12].restoral_order_complete(fragment)
    assert net.chain.verify_log() > 0
    reader = EmbeddedLedger(net.path)  # a client without a key only queries
    try:
        with pytest.raises(KeyFileError):
            reader.claim_restoral_order(fragment)
    finally:
        reader.close()
