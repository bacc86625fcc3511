"""The embedded chain: CESS rules, space accounting, the signed log, concurrency.

Real SQLite files in tmp_path and real sr25519 keys throughout.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deossfs.chain.interface import (
    FileState,
    MinerState,
    SegmentSpec,
    TerritoryState,
    UserBrief,
    UserFileSlice,
)
from deossfs.chain.ledger import (
    BLOCKS_PER_DAY,
    DEDUP_SEGMENT_SPACE,
    GIB,
    TOKEN,
    EmbeddedLedger,
    territory_price,
)
from deossfs.chain.names import bucket_name_problem, check_bucket_name
from deossfs.errors import (
    AlreadyExists,
    ChainError,
    ChainUnavailable,
    IntegrityError,
    InvalidInput,
    KeyFileError,
    NoSpace,
)
from deossfs.keys import Account, account_from_secret
from deossfs.processing.layout import FRAGMENT_SIZE, SEGMENT_SPACE

NODE_IDLE = 16 * GIB  # 12 nodes: 192 GiB for sale
FUNDS = 10**6 * TOKEN
DAY = 86400


# ---- helpers ------------------------------------------------------------------


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_order(seed: str, segments: int = 1) -> tuple[str, list[SegmentSpec]]:
    specs = [
        SegmentSpec(_h(f"{seed}/{s}"), tuple(_h(f"{seed}/{s}/{j}") for j in range(12)))
        for s in range(segments)
    ]
    return _h(seed), specs


def refused(name: str, fn: Callable, *args: object) -> ChainError:
    with pytest.raises(ChainError) as info:
        fn(*args)
    assert info.value.name == name, f"expected {name}, got {info.value.name}: {info.value}"
    return info.value


_ACCOUNTS: dict[str, Account] = {}


def acct(secret: str) -> Account:
    if secret not in _ACCOUNTS:
        _ACCOUNTS[secret] = account_from_secret(secret)
    return _ACCOUNTS[secret]


@pytest.fixture(scope="module")
def alice() -> Account:
    return acct("//Alice")


@pytest.fixture(scope="module")
def bob() -> Account:
    return acct("//Bob")


@pytest.fixture(scope="module")
def gw() -> Account:
    return acct("//Gateway")


@pytest.fixture(scope="module")
def node_accounts() -> list[Account]:
    return [acct(f"//node{i}") for i in range(1, 13)]


class Net:
    """A ledger with 12 registered nodes, Alice and Bob funded."""

    def __init__(self, path: Path, alice: Account, bob: Account, nodes: list[Account]) -> None:
        self.path = path
        self.chain = EmbeddedLedger(path, alice)
        self.bob = self.chain.as_account(bob)
        self.nodes = [self.chain.as_account(n) for n in nodes]
        self.alice_addr = alice.address
        self.bob_addr = bob.address
        for i, node in enumerate(self.nodes):
            node.register_storage_node(f"http://127.0.0.1:{9000 + i}", NODE_IDLE)
        self.chain.fund(alice.address, FUNDS)
        self.chain.fund(bob.address, FUNDS)

    def report(self, fid: str, indexes: range = range(1, 13)) -> None:
        for index in indexes:
            self.nodes[index - 1].transfer_report(index, fid)

    def brief(self, user: str | None = None, name: str = "a.txt", bucket: str = "photos",
              territory: str = "main") -> UserBrief:
        return UserBrief(user or self.alice_addr, name, bucket, territory)

    def close(self) -> None:
        for client in [self.chain, self.bob, *self.nodes]:
            client.close()


@pytest.fixture
def net(
    tmp_path: Path, alice: Account, bob: Account, node_accounts: list[Account]
) -> Iterator[Net]:
    n = Net(tmp_path / "ledger.sqlite", alice, bob, node_accounts)
    yield n
    n.close()


@pytest.fixture
def stored(net: Net) -> tuple[Net, str]:
    """Alice holds a territory 'main' (4 GiB) and one completed 2-segment file."""
    net.chain.mint_territory("main", 4, 30)
    fid, specs = make_order("stored", 2)
    net.chain.upload_declaration(fid, specs, net.brief(), 40 * 1024 * 1024)
    net.report(fid)
    return net, fid


# ---- names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["abc", "my-bucket", "a.b.c", "0123456789", "x" * 63, "1.2.3"])
def test_valid_bucket_names(name: str) -> None:
    assert bucket_name_problem(name) is None
    check_bucket_name(name)


# the runtime (spec 100, checked in tests/conformance) takes these; deossfs' own policy
# for the buckets it creates (S3's rules) does not
@pytest.mark.parametrize("name", ["Upper", "under_score", "-start", "end.", "A_b-c.d"])
def test_chain_accepts_what_deossfs_does_not_create(name: str) -> None:
    check_bucket_name(name)
    assert bucket_name_problem(name)


# S3 names the runtime refuses: deossfs creates them under an escaped chain name
# (tests/unit/test_s3_names.py)
@pytest.mark.parametrize(("name", "error"), [("jobs", "SpecError"), ("a.b.c.d", "SpecError")])
def test_deossfs_creates_what_the_chain_refuses_as_it_is(name: str, error: str) -> None:
    assert bucket_name_problem(name) is None
    refused(error, check_bucket_name, name)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("ab", "LessMinLength"),
        ("", "LessMinLength"),
        ("x" * 64, "LengthExceedsLimit"),
        ("a..b", "SpecError"),
        ("192.168.1.1", "SpecError"),
        ("spa ce", "SpecError"),
        ("ünï", "SpecError"),
    ],
)
def test_invalid_bucket_names(name: str, error: str) -> None:
    assert bucket_name_problem(name)
    refused(error, check_bucket_name, name)


# ---- basics: accounts, time, balances ---------------------------------------------------


def test_queries_need_no_account_calls_do(tmp_path: Path) -> None:
    chain = EmbeddedLedger(tmp_path / "l.sqlite")
    assert chain.account == ""
    assert chain.territories(acct("//Alice").address) == []
    with pytest.raises(KeyFileError, match="no signing account"):
        chain.advance_time(1)
    chain.close()


def test_as_account_signs_as_the_other(net: Net, bob: Account) -> None:
    assert net.bob.account == bob.address
    net.bob.authorize(net.alice_addr)
    assert net.chain.authorized_gateways(bob.address) == [net.alice_addr]


def test_malformed_address_is_refused_before_signing(net: Net) -> None:
    with pytest.raises(InvalidInput):
        net.chain.fund("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", 1)  # prefix 42
    with pytest.raises(InvalidInput):
        net.chain.create_bucket("nobody", "abc")


def test_block_number_and_advance_time(net: Net) -> None:
    start = net.chain.block_number()
    assert 0 <= start < 5
    net.chain.advance_time(2 * DAY)
    assert net.chain.block_number() - start in (2 * BLOCKS_PER_DAY, 2 * BLOCKS_PER_DAY + 1)
    refused("ParamError", net.chain.advance_time, -1)
    refused("ParamError", net.chain.advance_time, float("inf"))


def test_schema_is_idempotent_and_genesis_kept(tmp_path: Path, alice: Account) -> None:
    first = EmbeddedLedger(tmp_path / "l.sqlite", alice)
    first.advance_time(DAY)
    block = first.block_number()
    second = EmbeddedLedger(tmp_path / "l.sqlite")
    assert second.block_number() in (block, block + 1)
    first.close()
    second.close()


def test_unusable_database_is_chain_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(ChainUnavailable):
        EmbeddedLedger(path)


def test_fund_and_balance(net: Net) -> None:
    assert net.chain.balance(net.alice_addr) == FUNDS
    net.chain.fund(net.alice_addr, 5)
    assert net.chain.balance(net.alice_addr) == FUNDS + 5
    assert net.chain.balance(acct("//Nobody").address) == 0
    refused("ParamError", net.chain.fund, net.alice_addr, 0)


# ---- territories ------------------------------------------------------------------------


def test_mint_territory(net: Net) -> None:
    block = net.chain.block_number()
    net.chain.mint_territory("main", 2, 60)
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None
    assert (t.owner, t.name, t.total_space) == (net.alice_addr, "main", 2 * GIB)
    assert (t.used_space, t.locked_space, t.remaining_space) == (0, 0, 2 * GIB)
    assert t.state is TerritoryState.ACTIVE
    assert t.start in (block, block + 1)
    assert t.deadline == t.start + 60 * BLOCKS_PER_DAY
    # 30 TCESS per GiB per 30 days: 2 GiB for 60 days = 120 TCESS
    assert territory_price(2, 60) == 120 * TOKEN
    assert net.chain.balance(net.alice_addr) == FUNDS - 120 * TOKEN
    assert [e.name for e in net.chain.events() if e.pallet == "StorageHandler"] == ["MintTerritory"]


def test_mint_refusals(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    assert isinstance(refused("PurchasedSpace", net.chain.mint_territory, "main", 1, 30),
                      AlreadyExists)
    refused("PurchasedSpace", net.chain.mint_territory, "main", 1, 29)  # name checked first
    refused("BoundariesNotMet", net.chain.mint_territory, "short", 1, 29)
    refused("LengthExceedsLimit", net.chain.mint_territory, "x" * 64, 1, 30)
    net.chain.mint_territory("zero", 0, 30)  # the runtime mints 0 GiB
    net.chain.mint_territory("", 1, 30)  # and takes an empty name
    poor = net.chain.as_account(acct("//Poor"))
    error = refused("InsufficientBalance", poor.mint_territory, "t", 1, 30)
    assert isinstance(error, NoSpace)
    poor.close()
    assert [t.name for t in net.chain.territories(net.alice_addr)] == ["", "main", "zero"]


def test_mint_needs_unsold_network_space(tmp_path: Path, alice: Account,
                                         node_accounts: list[Account]) -> None:
    chain = EmbeddedLedger(tmp_path / "l.sqlite", alice)
    chain.fund(alice.address, FUNDS)
    refused("InsufficientAvailableSpace", chain.mint_territory, "t", 1, 30)  # no nodes yet
    node = chain.as_account(node_accounts[0])
    node.register_storage_node("http://127.0.0.1:1", 10 * GIB)
    chain.mint_territory("a", 6, 30)
    refused("InsufficientAvailableSpace", chain.mint_territory, "b", 5, 30)  # 4 GiB unsold
    chain.mint_territory("b", 4, 30)
    # a node that is not positive offers nothing
    chain.set_node_state(node.account, MinerState.FROZEN)
    chain.advance_time(31 * DAY)  # both expire: their space returns to the network...
    refused("InsufficientAvailableSpace", chain.mint_territory, "c", 1, 30)  # ...but none offered
    chain.set_node_state(node.account, "positive")
    chain.mint_territory("c", 10, 30)
    node.close()
    chain.close()


def test_expand_territory(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    before = net.chain.balance(net.alice_addr)
    net.chain.advance_time(10 * DAY + 1)  # 19 days and a bit left: 20 days charged
    net.chain.expand_territory("main", 2)
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None and t.total_space == 3 * GIB and t.remaining_space == 3 * GIB
    assert before - net.chain.balance(net.alice_addr) == territory_price(2, 20)
    refused("NotHaveTerritory", net.chain.expand_territory, "nope", 1)
    net.chain.expand_territory("main", 0)  # accepted, changes nothing
    refused("InsufficientAvailableSpace", net.chain.expand_territory, "main", 190)
    net.chain.advance_time(21 * DAY)
    refused("LeaseExpired", net.chain.expand_territory, "main", 1)


def test_renew_and_reactivate_territory(net: Net) -> None:
    net.chain.mint_territory("main", 2, 30)
    t0 = net.chain.territory(net.alice_addr, "main")
    assert t0 is not None
    before = net.chain.balance(net.alice_addr)
    net.chain.renew_territory("main", 15)
    t1 = net.chain.territory(net.alice_addr, "main")
    assert t1 is not None and t1.deadline == t0.deadline + 15 * BLOCKS_PER_DAY
    assert before - net.chain.balance(net.alice_addr) == territory_price(2, 15)
    refused("NotHaveTerritory", net.chain.renew_territory, "nope", 30)
    net.chain.renew_territory("main", 0)  # accepted, changes nothing
    # expiry is computed: past the deadline the territory is Expired
    net.chain.advance_time(46 * DAY)
    expired = net.chain.territory(net.alice_addr, "main")
    assert expired is not None and expired.state is TerritoryState.EXPIRED
    net.chain.renew_territory("main", 30)
    again = net.chain.territory(net.alice_addr, "main")
    assert again is not None and again.state is TerritoryState.ACTIVE
    now = net.chain.block_number()
    assert now - 1 <= again.start <= now
    assert again.deadline == again.start + 30 * BLOCKS_PER_DAY
    names = [e.name for e in net.chain.events() if e.pallet == "StorageHandler"]
    assert names == ["MintTerritory", "RenewalTerritory", "RenewalTerritory",
                     "ReactivateTerritory"]


def test_territories_sorted(net: Net) -> None:
    for name in ["zeta", "alpha", "mid"]:
        net.chain.mint_territory(name, 1, 30)
    assert [t.name for t in net.chain.territories(net.alice_addr)] == ["alpha", "mid", "zeta"]
    assert net.chain.territories(net.bob_addr) == []


# ---- buckets --------------------------------------------------------------------------------


def test_buckets(net: Net) -> None:
    net.chain.create_bucket(net.alice_addr, "zeta")
    net.chain.create_bucket(net.alice_addr, "alpha")
    assert net.chain.buckets(net.alice_addr) == ["alpha", "zeta"]
    info = net.chain.bucket(net.alice_addr, "alpha")
    assert info is not None
    assert (info.owner, info.name, info.object_list, info.authority) == (
        net.alice_addr, "alpha", (), (net.alice_addr,))
    assert net.chain.bucket(net.alice_addr, "nope") is None
    refused("Existed", net.chain.create_bucket, net.alice_addr, "alpha")
    refused("SpecError", net.chain.create_bucket, net.alice_addr, "Bad Name")
    refused("LessMinLength", net.chain.create_bucket, net.alice_addr, "ab")
    refused("NoPermission", net.bob.create_bucket, net.alice_addr, "bobs")
    refused("NonExistent", net.chain.delete_bucket, net.alice_addr, "nope")
    refused("NoPermission", net.bob.delete_bucket, net.alice_addr, "alpha")
    net.chain.delete_bucket(net.alice_addr, "alpha")
    assert net.chain.buckets(net.alice_addr) == ["zeta"]
    names = [e.name for e in net.chain.events() if e.pallet == "FileBank"]
    assert names == ["CreateBucket", "CreateBucket", "DeleteBucket"]


def test_authorized_gateway_acts_for_owner(net: Net, gw: Account) -> None:
    gateway = net.chain.as_account(gw)
    refused("NoPermission", gateway.create_bucket, net.alice_addr, "viagw")
    net.chain.authorize(gw.address)
    gateway.create_bucket(net.alice_addr, "viagw")
    assert net.chain.buckets(net.alice_addr) == ["viagw"]
    net.chain.cancel_authorize(gw.address)
    refused("NoPermission", gateway.delete_bucket, net.alice_addr, "viagw")
    gateway.close()


def test_delete_bucket_must_be_empty(stored: tuple[Net, str]) -> None:
    net, fid = stored
    refused("NotEmpty", net.chain.delete_bucket, net.alice_addr, "photos")
    net.chain.delete_file(net.alice_addr, fid)
    net.chain.delete_bucket(net.alice_addr, "photos")


# ---- Oss and Sminer ---------------------------------------------------------------------------


def test_authorize_and_cancel(net: Net, gw: Account) -> None:
    refused("NoAuthorization", net.chain.cancel_authorize, gw.address)
    net.chain.authorize(gw.address)
    net.chain.authorize(gw.address)  # twice is fine, listed once
    net.chain.authorize(net.bob_addr)
    assert net.chain.authorized_gateways(net.alice_addr) == [gw.address, net.bob_addr]
    net.chain.cancel_authorize(gw.address)
    assert net.chain.authorized_gateways(net.alice_addr) == [net.bob_addr]
    names = [e.name for e in net.chain.events() if e.pallet == "Oss"]
    assert names == ["Authorize", "Authorize", "Authorize", "CancelAuthorize"]


def test_authorize_limit(net: Net) -> None:
    for i in range(20):
        net.chain.authorize(acct(f"//gw{i}").address)
    refused("BoundedVecError", net.chain.authorize, acct("//gw20").address)


def test_register_gateway(net: Net, gw: Account) -> None:
    gateway = net.chain.as_account(gw)
    gateway.register_gateway("http://127.0.0.1:8080", "gw.example")
    net.bob.register_gateway("http://127.0.0.1:8081")
    listed = {g.account: g for g in net.chain.gateways()}
    assert listed[gw.address].endpoint == "http://127.0.0.1:8080"
    assert listed[gw.address].domain == "gw.example"
    assert [g.account for g in net.chain.gateways()] == sorted(listed)
    gateway.register_gateway("http://127.0.0.1:9999", "new.example")  # an update
    assert {g.account: g.endpoint for g in net.chain.gateways()}[gw.address].endswith(":9999")
    refused("LengthExceedsLimit", gateway.register_gateway, "http://x", "d" * 51)
    refused("SpecError", gateway.register_gateway, "", "")
    gateway.close()


def test_storage_nodes(net: Net) -> None:
    nodes = net.chain.storage_nodes()
    assert len(nodes) == 12
    assert [n.account for n in nodes] == sorted(n.account for n in nodes)
    assert all(n.state is MinerState.POSITIVE and n.idle_space == NODE_IDLE for n in nodes)
    first = net.nodes[0]
    first.register_storage_node("http://127.0.0.1:7000", 8 * GIB)  # update
    net.chain.set_node_state(first.account, "frozen")
    first.register_storage_node("http://127.0.0.1:7001", 8 * GIB)  # keeps its state
    node = net.chain.storage_node(first.account)
    assert node is not None
    assert (node.endpoint, node.idle_space, node.state) == (
        "http://127.0.0.1:7001", 8 * GIB, MinerState.FROZEN)
    assert net.chain.storage_node(net.alice_addr) is None
    refused("NotMiner", net.chain.set_node_state, net.alice_addr, "frozen")
    refused("ParamError", net.chain.set_node_state, first.account, "sleepy")
    refused("LengthExceedsLimit", first.register_storage_node, "h" * 39, 1)
    refused("ParamError", first.register_storage_node, "http://x", -1)


# ---- storage orders: the full deal --------------------------------------------------------------


def test_full_deal_space_accounting(net: Net) -> None:
    net.chain.mint_territory("main", 4, 30)
    fid, specs = make_order("full", 3)
    charged = 3 * SEGMENT_SPACE
    net.chain.upload_declaration(fid, specs, net.brief(), 70 * 1024 * 1024)

    # declared: space locked, a deal, no file; the bucket is created at completion
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None
    assert (t.used_space, t.locked_space, t.remaining_space) == (0, charged, 4 * GIB - charged)
    deal = net.chain.deal(fid)
    assert deal is not None
    assert deal.segments == tuple(specs) and deal.user == net.brief()
    assert deal.file_size == 70 * 1024 * 1024 and deal.complete_list == ()
    assert net.chain.buckets(net.alice_addr) == []
    assert net.chain.file(fid) is None

    # 11 reports: still a deal
    net.report(fid, range(1, 12))
    deal = net.chain.deal(fid)
    assert deal is not None and len(deal.complete_list) == 11
    assert deal.complete_list[0].index == 1 and deal.complete_list[0].miner == net.nodes[0].account
    assert net.chain.file(fid) is None
    assert not [e for e in net.chain.events() if e.name == "StorageCompleted"]

    # the 12th completes it
    net.nodes[11].transfer_report(12, fid)
    assert net.chain.deal(fid) is None
    info = net.chain.file(fid)
    assert info is not None
    assert info.state is FileState.ACTIVE and info.file_size == 70 * 1024 * 1024
    assert info.owners == (net.brief(),)
    assert len(info.segments) == 3
    for spec, segment in zip(specs, info.segments, strict=True):
        assert segment.hash == spec.hash
        assert tuple(f.hash for f in segment.fragments) == spec.fragment_hashes
        assert [f.miner for f in segment.fragments] == [n.account for n in net.nodes]
        assert all(f.avail for f in segment.fragments)
    assert info.completion <= net.chain.block_number()
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None
    assert (t.used_space, t.locked_space, t.remaining_space) == (charged, 0, 4 * GIB - charged)
    bucket = net.chain.bucket(net.alice_addr, "photos")
    assert bucket is not None and bucket.object_list == (fid,)
    assert net.chain.user_files(net.alice_addr) == [UserFileSlice("main", fid, charged)]
    completed = [e for e in net.chain.events() if e.name == "StorageCompleted"]
    assert [e.attributes for e in completed] == [{"fid": fid}]
    node = net.chain.storage_node(net.nodes[0].account)
    assert node is not None
    assert node.service_space == 3 * FRAGMENT_SIZE
    assert node.idle_space == NODE_IDLE - 3 * FRAGMENT_SIZE

    # delete: everything freed
    net.chain.delete_file(net.alice_addr, fid)
    assert net.chain.file(fid) is None
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None and (t.used_space, t.locked_space, t.remaining_space) == (0, 0, 4 * GIB)
    bucket = net.chain.bucket(net.alice_addr, "photos")
    assert bucket is not None and bucket.object_list == ()
    assert net.chain.user_files(net.alice_addr) == []
    node = net.chain.storage_node(net.nodes[0].account)
    assert node is not None and (node.idle_space, node.service_space) == (NODE_IDLE, 0)
    assert net.chain.events()[-1].name == "DeleteFile"


def test_declaration_refusals(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("refusals", 1)
    declare = net.chain.upload_declaration
    refused("NoPermission", net.bob.upload_declaration, fid, specs, net.brief(), 10)
    refused("SpecError", declare, fid[:63], specs, net.brief(), 10)
    refused("SpecError", declare, fid, [], net.brief(), 10)
    short = [SegmentSpec(specs[0].hash, specs[0].fragment_hashes[:11])]
    refused("SpecError", declare, fid, short, net.brief(), 10)
    bad_fragment = [SegmentSpec(specs[0].hash, ("zz" * 33,) + specs[0].fragment_hashes[1:])]
    refused("SpecError", declare, fid, bad_fragment, net.brief(), 10)
    refused("LengthExceedsLimit", declare, fid, specs, net.brief(name="n" * 64), 10)
    refused("SpecError", declare, fid, specs, net.brief(name="ab"), 10)
    refused("SpecError", declare, fid, specs, net.brief(bucket="ab"), 10)
    refused("NotHaveTerritory", declare, fid, specs, net.brief(territory="other"), 10)
    # 1 GiB holds 10 segments of 96 MiB, not 11
    big_fid, big = make_order("big", 11)
    error = refused("InsufficientAvailableSpace", declare, big_fid, big, net.brief(), 10)
    assert isinstance(error, NoSpace)
    ten_fid, ten = make_order("ten", 10)
    declare(ten_fid, ten, net.brief(), 10)
    refused("InsufficientAvailableSpace", declare, fid, specs, net.brief(), 10)
    assert net.chain.deal(fid) is None


def test_declarations_the_runtime_accepts(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("lenient", 1)
    # any 64 ASCII characters as hashes, a 0-byte size: the runtime takes both
    net.chain.upload_declaration(fid.upper(), specs, net.brief(), 0)
    # a bucket name that breaks the character rules is taken at declaration...
    net.chain.upload_declaration(fid, specs, net.brief(bucket="bad bucket"), 10)
    assert net.chain.buckets(net.alice_addr) == []
    net.report(fid, range(1, 12))
    # ...and refused when the bucket is created: the 12th report fails, forever
    refused("SpecError", net.nodes[11].transfer_report, 12, fid)
    deal = net.chain.deal(fid)
    assert deal is not None and len(deal.complete_list) == 11


def test_expired_territory_refuses_declarations(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("late", 1)
    net.chain.advance_time(30 * DAY + 60)
    refused("NotActive", net.chain.upload_declaration, fid, specs, net.brief(), 10)
    net.chain.renew_territory("main", 30)
    net.chain.upload_declaration(fid, specs, net.brief(), 10)


def test_gateway_declares_for_user(net: Net, gw: Account) -> None:
    net.chain.mint_territory("main", 1, 30)
    gateway = net.chain.as_account(gw)
    fid, specs = make_order("via-gw", 1)
    refused("NoPermission", gateway.upload_declaration, fid, specs, net.brief(), 10)
    net.chain.authorize(gw.address)
    gateway.upload_declaration(fid, specs, net.brief(), 10)
    deal = net.chain.deal(fid)
    assert deal is not None and deal.user.user == net.alice_addr
    declared = [e for e in net.chain.events() if e.name == "UploadDeclaration"][-1]
    assert declared.attributes == {"operator": gw.address, "owner": net.alice_addr, "fid": fid}
    net.report(fid)
    gateway.delete_file(net.alice_addr, fid)
    assert net.chain.file(fid) is None
    gateway.close()


def test_dedup_adds_an_owner(stored: tuple[Net, str]) -> None:
    net, fid = stored
    charged = 2 * DEDUP_SEGMENT_SPACE  # a second owner is charged 48 MiB per segment
    net.bob.mint_territory("bobs", 1, 30)
    _, specs = make_order("stored", 2)
    bob_brief = net.brief(user=net.bob_addr, name="copy.bin", bucket="bob-bucket", territory="bobs")
    reports_before = len([e for e in net.chain.events() if e.name == "TransferReport"])
    net.bob.upload_declaration(fid, specs, bob_brief, 40 * 1024 * 1024)
    assert net.chain.deal(fid) is None  # no new storage order
    info = net.chain.file(fid)
    assert info is not None and info.owners == (net.brief(), bob_brief)
    bobs = net.chain.territory(net.bob_addr, "bobs")
    assert bobs is not None and (bobs.used_space, bobs.locked_space) == (charged, 0)
    bucket = net.chain.bucket(net.bob_addr, "bob-bucket")
    assert bucket is not None and bucket.object_list == (fid,)
    assert net.chain.user_files(net.bob_addr) == [UserFileSlice("bobs", fid, charged)]
    refused("Existed", net.bob.upload_declaration, fid, specs, bob_brief, 40 * 1024 * 1024)
    refused("Existed", net.bob.upload_declaration, fid, specs,
            net.brief(user=net.bob_addr, name="other", bucket="bob-bucket", territory="bobs"), 1)
    assert len([e for e in net.chain.events() if e.name == "TransferReport"]) == reports_before

    # Alice deletes: the file stays for Bob, Alice's space is freed
    net.chain.delete_file(net.alice_addr, fid)
    info = net.chain.file(fid)
    assert info is not None and info.owners == (bob_brief,)
    alices = net.chain.territory(net.alice_addr, "main")
    assert alices is not None and alices.used_space == 0
    net.chain.delete_file(net.alice_addr, fid)  # not an owner any more: nothing happens
    assert net.chain.file(fid) is not None
    # the runtime takes back 2 x 96 MiB from Bob's 96 MiB used: Overflow (a runtime bug)
    refused("Overflow", net.bob.delete_file, net.bob_addr, fid)
    net.bob.mint_territory("more", 1, 30)
    big_fid, big = make_order("bob-big", 2)
    net.bob.upload_declaration(big_fid, big, net.brief(user=net.bob_addr, bucket="bob-bucket",
                                                      territory="bobs"), 10)
    net.report(big_fid)
    net.bob.delete_file(net.bob_addr, fid)  # with enough used space it goes through
    assert net.chain.file(fid) is None
    bobs = net.chain.territory(net.bob_addr, "bobs")
    assert bobs is not None and bobs.used_space == charged


def test_same_user_second_territory(stored: tuple[Net, str]) -> None:
    net, fid = stored
    net.chain.mint_territory("backup", 1, 30)
    _, specs = make_order("stored", 2)
    net.chain.upload_declaration(fid, specs, net.brief(territory="backup"), 40 * 1024 * 1024)
    assert [s.territory_name for s in net.chain.user_files(net.alice_addr)] == ["main", "backup"]
    backup = net.chain.territory(net.alice_addr, "backup")
    assert backup is not None and backup.used_space == 2 * DEDUP_SEGMENT_SPACE
    # a delete takes back 2 x 96 MiB from each territory: "backup" holds less (Overflow)
    refused("Overflow", net.chain.delete_file, net.alice_addr, fid)
    assert net.chain.file(fid) is not None


def test_pending_deal_declared_again_is_overwritten(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("pending", 1)
    net.chain.upload_declaration(fid, specs, net.brief(), 10)
    net.nodes[0].transfer_report(1, fid)
    # as the runtime: the new brief replaces the old, the reports are forgotten and the
    # space is locked again (the first lock stays: a runtime quirk)
    net.chain.upload_declaration(fid, specs, net.brief(name="b.txt"), 10)
    deal = net.chain.deal(fid)
    assert deal is not None and deal.user.file_name == "b.txt" and deal.complete_list == ()
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None and t.locked_space == 2 * SEGMENT_SPACE
    net.report(fid)
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None and (t.used_space, t.locked_space) == (SEGMENT_SPACE, SEGMENT_SPACE)


def test_transfer_report_refusals(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("reports", 1)
    net.chain.upload_declaration(fid, specs, net.brief(), 10)
    refused("NotMiner", net.chain.transfer_report, 1, fid)
    refused("NonExistent", net.nodes[0].transfer_report, 1, _h("unknown"))
    refused("SpecError", net.nodes[0].transfer_report, 0, fid)
    refused("SpecError", net.nodes[0].transfer_report, 13, fid)
    net.nodes[0].transfer_report(1, fid)
    refused("Existed", net.nodes[1].transfer_report, 1, fid)  # column taken
    refused("Existed", net.nodes[0].transfer_report, 2, fid)  # miner reported
    net.chain.set_node_state(net.nodes[2].account, "frozen")
    refused("MinerStateError", net.nodes[2].transfer_report, 3, fid)
    deal = net.chain.deal(fid)
    assert deal is not None and len(deal.complete_list) == 1


def test_delete_file_refusals(net: Net) -> None:
    net.chain.mint_territory("main", 1, 30)
    fid, specs = make_order("cancel", 2)
    refused("NonExistent", net.chain.delete_file, net.alice_addr, fid)
    net.chain.upload_declaration(fid, specs, net.brief(), 10)
    net.report(fid, range(1, 4))
    refused("NoPermission", net.bob.delete_file, net.alice_addr, fid)
    # a pending order cannot be deleted (the runtime has no cancel)
    refused("NonExistent", net.chain.delete_file, net.alice_addr, fid)
    deal = net.chain.deal(fid)
    assert deal is not None and len(deal.complete_list) == 3
    net.report(fid, range(4, 13))
    net.bob.delete_file(net.bob_addr, fid)  # a non-owner's delete changes nothing
    assert net.chain.file(fid) is not None
    net.chain.delete_file(net.alice_addr, fid)
    t = net.chain.territory(net.alice_addr, "main")
    assert t is not None and (t.used_space, t.locked_space) == (0, 0)


def test_events_since_block(net: Net) -> None:
    net.chain.create_bucket(net.alice_addr, "early")
    net.chain.advance_time(600)
    cut = net.chain.block_number()
    net.chain.create_bucket(net.alice_addr, "later")
    recent = [e for e in net.chain.events(cut) if e.name == "CreateBucket"]
    assert [e.attributes["bucket_name"] for e in recent] == ["later"]
    assert all(e.block >= cut for e in net.chain.events(cut))


# ---- the signed log ----------------------------------------------------------------------------


def test_log_records_successful_calls_only(stored: tuple[Net, str]) -> None:
    net, fid = stored
    # 12 registrations, 2 funds, mint, declaration, 12 reports
    assert net.chain.verify_log() == 12 + 2 + 1 + 1 + 12
    refused("PurchasedSpace", net.chain.mint_territory, "main", 1, 30)
    assert net.chain.verify_log() == 28
    assert net.chain.replay_check() == 28
    with sqlite3.connect(net.path) as db:
        rows = db.execute(
            "SELECT signer, nonce, pallet, call FROM transactions ORDER BY seq"
        ).fetchall()
    alice_rows = [r for r in rows if r[0] == net.alice_addr]
    assert [r[1] for r in alice_rows] == list(range(len(alice_rows)))
    assert ("Balances", "fund") in {(r[2], r[3]) for r in rows}
    assert rows[-1][2:] == ("FileBank", "transfer_report")


def _tamper(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql)
    db.close()


def test_verify_log_detects_tampered_args(stored: tuple[Net, str]) -> None:
    net, _ = stored
    _tamper(net.path, "UPDATE transactions SET args = replace(args, '\"gib_count\":4',"
                      " '\"gib_count\":40') WHERE seq = 15")
    with pytest.raises(IntegrityError, match="seq 15"):
        net.chain.verify_log()


def test_verify_log_detects_tampered_signature_and_gap(stored: tuple[Net, str]) -> None:
    net, _ = stored
    row = sqlite3.connect(net.path).execute(
        "SELECT signature FROM transactions WHERE seq = 3").fetchone()[0]
    forged = ("0" if row[0] != "0" else "1") + row[1:]
    _tamper(net.path, f"UPDATE transactions SET signature = '{forged}' WHERE seq = 3")
    with pytest.raises(IntegrityError, match="seq 3"):
        net.chain.verify_log()
    _tamper(net.path, f"UPDATE transactions SET signature = '{row}' WHERE seq = 3")
    assert net.chain.verify_log() == 28
    _tamper(net.path, "DELETE FROM transactions WHERE seq = 7")
    with pytest.raises(IntegrityError, match="seq 8"):
        net.chain.verify_log()


def test_replay_check_detects_tampered_state(stored: tuple[Net, str]) -> None:
    net, _ = stored
    assert net.chain.replay_check() == 28
    _tamper(net.path, "UPDATE territories SET used_space = 0")
    with pytest.raises(IntegrityError, match="territories"):
        net.chain.replay_check()


def test_replay_after_a_busy_history(stored: tuple[Net, str], gw: Account) -> None:
    net, fid = stored
    net.chain.authorize(gw.address)
    net.chain.advance_time(40 * DAY)
    net.chain.renew_territory("main", 30)
    net.chain.expand_territory("main", 1)
    net.bob.mint_territory("bobs", 1, 30)
    _, specs = make_order("stored", 2)
    net.bob.upload_declaration(fid, specs, net.brief(user=net.bob_addr, territory="bobs"), 5)
    net.chain.delete_file(net.alice_addr, fid)
    net.chain.set_node_state(net.nodes[5].account, "offline")
    net.chain.cancel_authorize(gw.address)
    count = net.chain.verify_log()
    assert net.chain.replay_check() == count


# ---- concurrency -------------------------------------------------------------------------------


def _worker(path: str, secret: str, shared_fid_seed: str) -> int:
    """One process: mint, 4 buckets, 15 declarations (the last one contended): 20 calls."""
    chain = EmbeddedLedger(Path(path), account_from_secret(secret))
    ok = 0
    chain.mint_territory("t", 2, 30)
    ok += 1
    for b in range(4):
        chain.create_bucket(chain.account, f"bucket-{b}")
        ok += 1
    for i in range(14):
        fid, specs = make_order(f"{secret}/{i}", 1)
        brief = UserBrief(chain.account, f"file{i}", f"bucket-{i % 4}", "t")
        chain.upload_declaration(fid, specs, brief, 1)
        ok += 1
    # the same order from every process: each declaration overwrites the pending one
    fid, specs = make_order(shared_fid_seed, 1)
    chain.upload_declaration(fid, specs, UserBrief(chain.account, "shared", "bucket-0", "t"), 1)
    ok += 1
    chain.close()
    return ok


def test_four_processes_share_the_ledger(tmp_path: Path, alice: Account,
                                         node_accounts: list[Account]) -> None:
    path = tmp_path / "shared.sqlite"
    chain = EmbeddedLedger(path, alice)
    for node in node_accounts:
        client = chain.as_account(node)
        client.register_storage_node("http://127.0.0.1:1", NODE_IDLE)
        client.close()
    secrets = [f"//worker{i}" for i in range(4)]
    for secret in secrets:
        chain.fund(acct(secret).address, FUNDS)
    setup = chain.verify_log()
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(_worker, [(str(path), s, "contended") for s in secrets])
    assert sum(results) == 4 * 20
    assert chain.verify_log() == setup + sum(results)
    assert chain.replay_check() == setup + sum(results)
    shared_fid, _ = make_order("contended", 1)
    deal = chain.deal(shared_fid)
    assert deal is not None and deal.user.user in {acct(s).address for s in secrets}
    for secret in secrets:
        address = acct(secret).address
        t = chain.territory(address, "t")
        assert t is not None and t.locked_space == 15 * SEGMENT_SPACE
        assert chain.buckets(address) == [f"bucket-{b}" for b in range(4)]
    chain.close()


def test_threads_share_one_client(net: Net) -> None:
    target = acct("//Target").address
    errors: list[BaseException] = []

    def fund_many() -> None:
        try:
            for _ in range(15):
                net.chain.fund(target, 1)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=fund_many) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert net.chain.balance(target) == 90
    assert net.chain.replay_check() == 12 + 2 + 90


def _first_open(path: str, secret: str, barrier: object, results: object) -> None:
    """Wait for the others, then create-or-open the ledger and register a node."""
    barrier.wait()  # type: ignore[attr-defined]
    try:
        chain = EmbeddedLedger(Path(path), account_from_secret(secret))
        chain.register_storage_node("http://127.0.0.1:1", GIB)
        chain.close()
        results.put("ok")  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]


def test_processes_create_the_ledger_at_once(tmp_path: Path) -> None:
    # SQLite answers a concurrent switch to WAL with an immediate "database is locked"
    context = multiprocessing.get_context("spawn")
    count = 8
    barrier, results = context.Barrier(count), context.Queue()
    path = str(tmp_path / "fresh.sqlite")
    procs = [
        context.Process(target=_first_open, args=(path, f"//node{i}", barrier, results))
        for i in range(1, count + 1)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert outcomes == ["ok"] * count
    chain = EmbeddedLedger(Path(path))
    assert len(chain.storage_nodes()) == count
    assert chain.replay_check() == count
    chain.close()
