"""Restoral orders (re-homing a lost fragment), held to the real CESS runtime.

The rules `deossfs verify --repair` relies on: the holding miner opens an order for its
fragment, another positive miner claims it for RESTORAL_ORDER_LIFE blocks, and its
completion makes the claimant the fragment's miner in `File[fid]`. The ledger's one
extension (an owner may open the order too) is tested in tests/unit/test_restoral.py.
"""

from __future__ import annotations

import pytest

from deossfs.chain.ledger import RESTORAL_ORDER_LIFE
from deossfs.errors import AlreadyExists, NotFound

from .conftest import Net
from .test_chain_conformance import brief, order, refused

pytestmark = pytest.mark.cess


def test_restoral_order_lifecycle(net: Net) -> None:
    alice = net.alice
    alice.mint_territory("main", 4, 30)
    fid, specs = order("restoral")
    alice.upload_declaration(fid, specs, brief(net), 1000)
    net.report(fid)
    fragment = specs[0].fragment_hashes[0]
    origin, claimant, other = net.miners[0], net.miners[1], net.miners[2]
    assert alice.file(fid).segments[0].fragments[0].miner == origin.account

    # only the miner holding the fragment opens an order for it (on the runtime)
    refused("SpecError", claimant.generate_restoral_order, fid, fragment)
    assert isinstance(refused("NonExistent", origin.generate_restoral_order, order("nope")[0],
                              fragment), NotFound)
    origin.generate_restoral_order(fid, fragment)
    opened = alice.restoral_order(fragment)
    assert opened is not None
    assert (opened.fid, opened.origin_miner, opened.miner, opened.count, opened.deadline) == (
        fid, origin.account, origin.account, 0, 0)
    assert alice.file(fid).segments[0].fragments[0].avail is False
    assert isinstance(refused("Existed", origin.generate_restoral_order, fid, fragment),
                      AlreadyExists)

    # claiming: positive miners only; a claim holds RESTORAL_ORDER_LIFE blocks
    refused("NotMiner", alice.claim_restoral_order, fragment)
    refused("Expired", origin.restoral_order_complete, fragment)  # never claimed
    claimant.claim_restoral_order(fragment)
    claimed = alice.restoral_order(fragment)
    assert claimed is not None and claimed.miner == claimant.account and claimed.count == 1
    claim_block = next(e.block for e in alice.events(0) if e.name == "ClaimRestoralOrder")
    assert claimed.deadline == claim_block + RESTORAL_ORDER_LIFE
    refused("SpecError", other.claim_restoral_order, fragment)
    refused("SpecError", other.restoral_order_complete, fragment)

    # completion: the claimant becomes the fragment's miner, the order is gone
    claimant.restoral_order_complete(fragment)
    assert alice.restoral_order(fragment) is None
    moved = alice.file(fid).segments[0].fragments[0]
    assert (moved.hash, moved.miner, moved.avail) == (fragment, claimant.account, True)
    names = [e.name for e in alice.events(0) if e.pallet == "FileBank"]
    assert {"GenerateRestoralOrder", "ClaimRestoralOrder", "RecoveryCompleted"} <= set(names)
