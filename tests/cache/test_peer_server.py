"""The peer cache server and client over real HTTP on 127.0.0.1 (no devnet: a stub chain).

Signed fresh requests, DeOSS's public (blacklist) and private (whitelist) modes, the
owner rule, and the client: parallel asks, only bytes matching the chain's hash used,
peers from the config and from the chain's gateway list.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from deossfs.cache import Counters, SegmentCache
from deossfs.chain.interface import FileInfo, FileState, Gateway, UserBrief
from deossfs.config import AccessConfig, PeersConfig, ServeConfig
from deossfs.keys import Account, account_from_secret
from deossfs.p2p.peers import REASON_HEADER, PeerNetwork, segment_tag, serve_peers
from deossfs.p2p.signing import sign_request
from deossfs.processing.layout import SEGMENT_SIZE

ALICE = account_from_secret("//Alice")
BOB = account_from_secret("//Bob")
CAROL = account_from_secret("//Carol")  # owns nothing, authorized by nobody
DAVE = account_from_secret("//Dave")  # a gateway Alice authorized


@dataclass
class StubChain:
    """The chain calls the peer code makes: files, authorizations, the gateway list."""

    owners: list[str]
    authorized: dict[str, list[str]] = field(default_factory=dict)
    listed: list[Gateway] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)

    def file(self, fid: str) -> FileInfo | None:
        if fid not in FILES:
            return None
        return FileInfo(fid, (), tuple(UserBrief(o, "f", "b", "t") for o in self.owners), 1, 1,
                        FileState.ACTIVE)

    def authorized_gateways(self, owner: str) -> list[str]:
        return self.authorized.get(owner, [])

    def gateways(self) -> list[Gateway]:
        return list(self.listed)

    def register_gateway(self, endpoint: str, domain: str = "") -> None:
        self.registered.append(endpoint)


SEGMENT = secrets.token_bytes(SEGMENT_SIZE)
SEGMENT_HASH = hashlib.sha256(SEGMENT).hexdigest()
FID = secrets.token_hex(32)
FILES = {FID}


def stub_chain() -> StubChain:
    return StubChain(owners=[ALICE.address, BOB.address], authorized={ALICE.address: [DAVE.address]})


@asynccontextmanager
async def peer(tmp_path: Path, name: str, *, chain: StubChain | None = None, mode: str = "public",
               accounts: tuple[str, ...] = (), data: bytes = SEGMENT,
               register: bool = False) -> AsyncIterator[tuple[str, Counters]]:
    """A serving instance (Alice's) whose cache holds segment 0 of FID as `data`."""
    counters = Counters(tmp_path / name / "counters")
    cache = SegmentCache(tmp_path / name / "cache", 3 * SEGMENT_SIZE, counters=counters)
    assert cache.put(FID, 0, data)
    async with trio.open_nursery() as nursery:
        endpoint = await nursery.start(partial(
            serve_peers, cache, ALICE, chain or stub_chain(),
            ServeConfig(host="127.0.0.1", port=0, register=register),
            AccessConfig(mode=mode, accounts=list(accounts)), tmp_path / name / "replay.sqlite3",
            counters=counters))
        try:
            yield endpoint, counters
        finally:
            nursery.cancel_scope.cancel()
    cache.close()


def network(account: Account, endpoints: list[str], chain: StubChain | None = None,
            from_chain: bool = False) -> PeerNetwork:
    config = PeersConfig(endpoints=endpoints, from_chain=from_chain, timeout=20)
    return PeerNetwork(config, account, chain or stub_chain())  # type: ignore[arg-type]


async def fetch(account: Account, endpoints: list[str], **kw: object) -> tuple[str | None, bytearray]:
    buffer = bytearray(SEGMENT_SIZE)
    net = network(account, endpoints, **kw)  # type: ignore[arg-type]
    try:
        return await net.fetch_segment(FID, 0, SEGMENT_HASH, memoryview(buffer)), buffer
    finally:
        await net.aclose()


async def raw(endpoint: str, method: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as client:
        return await client.request(method, endpoint + "/segment", headers=headers)


def signed(account: Account, method: str = "GET", fid: str = FID, index: int = 0,
           **kw: int) -> dict[str, str]:
    headers = sign_request(account, method, fid, segment_tag(index), **kw)
    return {**headers, "Fid": fid, "Index": str(index)}


async def test_an_owner_gets_the_segment_and_it_is_counted(tmp_path: Path) -> None:
    async with peer(tmp_path, "a") as (endpoint, counters):
        winner, data = await fetch(BOB, [endpoint])
        assert winner == endpoint
        assert data == SEGMENT
        # an authorized gateway of an owner may read too (the storage nodes' rule)
        winner, _ = await fetch(DAVE, [endpoint])
        assert winner == endpoint
        assert counters.snapshot()["served_segments"] == 2
        assert counters.snapshot()["served_bytes"] == 2 * SEGMENT_SIZE


async def test_public_mode_refuses_blacklisted_accounts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with peer(tmp_path, "a", accounts=(BOB.address,)) as (endpoint, counters):
        response = await raw(endpoint, "GET", signed(BOB))
        assert response.status_code == 403
        assert "blacklisted" in response.json()["msg"] and BOB.address in response.json()["msg"]
        head = await raw(endpoint, "HEAD", signed(BOB, "HEAD"))
        assert head.status_code == 403 and "blacklisted" in head.headers[REASON_HEADER]
        assert any("refused a peer request" in r.getMessage() and BOB.address in r.getMessage()
                   for r in caplog.records)
        winner, _ = await fetch(BOB, [endpoint])
        assert winner is None
        winner, data = await fetch(ALICE, [endpoint])  # not listed: served
        assert winner == endpoint and data == SEGMENT
        assert counters.snapshot()["refused_requests"] >= 3


async def test_private_mode_serves_only_the_whitelist(tmp_path: Path) -> None:
    async with peer(tmp_path, "a", mode="private", accounts=(ALICE.address,)) as (endpoint, _):
        assert (await fetch(ALICE, [endpoint]))[0] == endpoint
        response = await raw(endpoint, "GET", signed(BOB))
        assert response.status_code == 403 and "whitelist" in response.json()["msg"]
        assert (await fetch(BOB, [endpoint]))[0] is None


async def test_non_owners_are_refused(tmp_path: Path) -> None:
    async with peer(tmp_path, "a") as (endpoint, _):
        response = await raw(endpoint, "GET", signed(CAROL))
        assert response.status_code == 403
        assert "not an owner" in response.json()["msg"]


async def test_requests_must_be_signed_fresh_and_for_this_segment(tmp_path: Path) -> None:
    async with peer(tmp_path, "a") as (endpoint, _):
        response = await raw(endpoint, "GET", {"Fid": FID, "Index": "0"})
        assert response.status_code == 401
        headers = signed(ALICE)
        assert (await raw(endpoint, "GET", headers)).status_code == 200
        replay = await raw(endpoint, "GET", headers)
        assert replay.status_code == 401 and "replayed" in replay.json()["msg"]
        other = {**signed(ALICE, index=0), "Index": "1"}  # signed for segment 0, asks for 1
        assert (await raw(endpoint, "GET", other)).status_code == 401
        stale = signed(ALICE, timestamp_ms=1_000_000_000_000)
        response = await raw(endpoint, "GET", stale)
        assert response.status_code == 401 and "stale" in response.json()["msg"]
        forged = {**signed(ALICE), "Account": BOB.address}
        assert (await raw(endpoint, "GET", forged)).status_code == 401


async def test_missing_segments_and_bad_requests(tmp_path: Path) -> None:
    async with peer(tmp_path, "a") as (endpoint, _):
        assert (await raw(endpoint, "GET", signed(ALICE, index=5))).status_code == 404
        unknown = secrets.token_hex(32)
        assert (await raw(endpoint, "GET", signed(ALICE, fid=unknown))).status_code == 404
        bad = {**signed(ALICE), "Fid": "../../etc/passwd"}
        assert (await raw(endpoint, "GET", bad)).status_code == 400
        buffer = bytearray(SEGMENT_SIZE)
        net = network(ALICE, [endpoint])
        assert await net.fetch_segment(FID, 5, SEGMENT_HASH, memoryview(buffer)) is None
        assert await net.endpoints() == [endpoint]  # a miss is no fault: still asked
        await net.aclose()


async def test_only_bytes_matching_the_chain_hash_are_used(tmp_path: Path) -> None:
    wrong = bytearray(SEGMENT)
    wrong[1000:1010] = b"tampered!!"
    async with peer(tmp_path, "bad", data=bytes(wrong)) as (bad, _), \
            peer(tmp_path, "good") as (good, _):
        net = network(ALICE, [bad])
        buffer = bytearray(SEGMENT_SIZE)
        assert await net.fetch_segment(FID, 0, SEGMENT_HASH, memoryview(buffer)) is None
        assert await net.endpoints() == []  # the liar is not asked for a while
        await net.aclose()
        winner, data = await fetch(ALICE, [bad, good])
        assert winner == good and data == SEGMENT


async def test_peers_come_from_the_chain_gateway_list(tmp_path: Path) -> None:
    chain = stub_chain()
    async with peer(tmp_path, "a", chain=chain, register=True) as (endpoint, _):
        assert chain.registered == [endpoint]
        chain.listed = [Gateway(ALICE.address, endpoint)]
        winner, data = await fetch(BOB, [], chain=chain, from_chain=True)
        assert winner == endpoint and data == SEGMENT
        net = network(BOB, [], chain=chain, from_chain=True)
        net.own_endpoints.add(endpoint)  # an instance never asks itself
        assert await net.endpoints() == []
        await net.aclose()
    # a listed gateway that is gone costs one failed attempt, then is left out
    net = network(BOB, [], chain=chain, from_chain=True)
    buffer = bytearray(SEGMENT_SIZE)
    assert await net.fetch_segment(FID, 0, SEGMENT_HASH, memoryview(buffer)) is None
    assert await net.endpoints() == []
    await net.aclose()
