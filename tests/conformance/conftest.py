"""One chain interface, two backends: the embedded ledger and the real CESS runtime.

The runtime is CESS testnet's spec 100 under chopsticks (the devchain script, docs/cess.md),
started once per session from the cached install (`make devchain`). Setup - 12 test
miners, the network's idle space, balances - is injected once with dev_setStorage;
each test then rewinds the chain to that block with dev_setHead (instant), so tests
are isolated and the session spends only the extrinsics the tests themselves send.

Without node/npm the CESS half is skipped with the reason; `make test` sets
DEOSSFS_REQUIRE_CESS=1, which turns that skip into a failure so CI always runs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deossfs.chain.interface import ChainClient
from deossfs.chain.ledger import TOKEN, EmbeddedLedger
from deossfs.keys import Account, account_from_secret

TIB = 1024**4
#: each of the 12 miners offers 1 TiB: 12 TiB for sale on both backends
MINER_IDLE = TIB
NETWORK_SPACE = 12 * TIB
FUNDS = 10**6 * TOKEN


def _acct(secret: str) -> Account:
    return account_from_secret(secret)


ALICE, BOB, GATEWAY = _acct("//Alice"), _acct("//Bob"), _acct("//Charlie")
MINERS = [_acct(f"//Miner{i}") for i in range(12)]


def miner_endpoint(index: int) -> str:
    return f"http://127.0.0.1:{15000 + index}"


@dataclass
class Net:
    """The accounts of a test, as clients of one backend."""

    kind: str
    alice: ChainClient
    bob: ChainClient
    gateway: ChainClient
    miners: list[ChainClient]
    extras: list[ChainClient] = field(default_factory=list)

    def report(self, fid: str, columns: range = range(1, 13)) -> None:
        for index in columns:
            self.miners[index - 1].transfer_report(index, fid)

    def close(self) -> None:
        for client in [self.alice, self.bob, self.gateway, *self.miners, *self.extras]:
            client.close()


# ---- the CESS runtime, once per session ---------------------------------------------------


@dataclass
class CessRuntime:
    url: str
    base_block: int
    chain: object  # a CessChain holding the session's one connection
    #: the injected storage (key, value): written again after each rewind, because a
    #: dev_setStorage made while the head is the base block changes that block itself
    setup: list[tuple[str, str | None]]


@pytest.fixture(scope="session")
def cess_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CessRuntime | None]:
    from deossfs import devnet_cess

    reason = devnet_cess.unavailable_reason()
    if reason is not None:
        if os.environ.get("DEOSSFS_REQUIRE_CESS") == "1":
            pytest.fail(f"the CESS runtime is required (DEOSSFS_REQUIRE_CESS=1): {reason}")
        yield None
        return
    from deossfs.chain.cess import CessChain

    instance = tmp_path_factory.mktemp("cess-chain")
    url = devnet_cess.start_chain(instance)
    chain = CessChain([url], ALICE)
    try:
        conn = chain.connection
        miners = {m.address: miner_endpoint(i) for i, m in enumerate(MINERS)}
        setup = [
            *devnet_cess.miner_entries(conn, miners),
            *devnet_cess.fund_entries(conn, [ALICE.address, BOB.address, GATEWAY.address,
                                             *miners]),
            devnet_cess.idle_space_entry(conn, NETWORK_SPACE),
        ]
        conn.set_storage(setup)
        yield CessRuntime(url, chain.block_number(), chain, setup)
    finally:
        chain.close()
        devnet_cess.stop_chain(instance)


def _ledger_net(path: Path) -> Net:
    alice = EmbeddedLedger(path, ALICE)
    miners = [alice.as_account(m) for m in MINERS]
    for index, miner in enumerate(miners):
        miner.register_storage_node(miner_endpoint(index), MINER_IDLE)
    for account in (ALICE, BOB, GATEWAY):
        alice.fund(account.address, FUNDS)
    return Net("ledger", alice, alice.as_account(BOB), alice.as_account(GATEWAY), miners)


def _cess_net(runtime: CessRuntime) -> Net:
    chain = runtime.chain
    chain.connection.set_head(runtime.base_block)  # type: ignore[attr-defined]
    chain.connection.set_storage(runtime.setup)  # type: ignore[attr-defined]
    alice = chain.as_account(ALICE)  # type: ignore[attr-defined]
    return Net("cess", alice, alice.as_account(BOB), alice.as_account(GATEWAY),
               [alice.as_account(m) for m in MINERS])


@pytest.fixture(params=["ledger", "cess"])
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    if request.param == "ledger":
        result = _ledger_net(tmp_path / "ledger.sqlite")
    else:
        runtime = request.getfixturevalue("cess_runtime")
        if runtime is None:
            from deossfs import devnet_cess

            pytest.skip(f"CESS runtime unavailable: {devnet_cess.unavailable_reason()}")
        result = _cess_net(runtime)
    try:
        yield result
    finally:
        result.close()


def drop_network_idle_space(net: Net, runtime: CessRuntime | None) -> None:
    """Make the network offer no space: before any miner certified idle space."""
    if net.kind == "ledger":
        for miner in net.miners:
            net.alice.set_node_state(miner.account, "frozen")  # type: ignore[attr-defined]
        return
    from deossfs import devnet_cess

    assert runtime is not None
    conn = runtime.chain.connection  # type: ignore[attr-defined]
    conn.set_storage([devnet_cess.idle_space_entry(conn, 0)])
