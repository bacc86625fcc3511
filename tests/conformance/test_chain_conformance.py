"""The chain interface's rules, held to the real CESS runtime.

Every test runs twice: on the embedded ledger and on the real runtime (spec 100 under
chopsticks). A difference is a bug in the ledger (or in CessChain's mapping); the
alignments this suite forced are listed in docs/cess.md. About 70 extrinsics in all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from deossfs.chain.interface import (
    FileState,
    MinerState,
    SegmentSpec,
    TerritoryState,
    UserBrief,
    UserFileSlice,
)
from deossfs.chain.ledger import BLOCKS_PER_DAY, DEDUP_SEGMENT_SPACE, GIB
from deossfs.errors import AlreadyExists, ChainError, NoSpace, NotFound
from deossfs.processing.layout import FRAGMENT_SIZE, SEGMENT_SPACE

from .conftest import (
    MINERS,
    NETWORK_SPACE,
    CessRuntime,
    Net,
    drop_network_idle_space,
    miner_endpoint,
)

pytestmark = pytest.mark.cess


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def order(seed: str, segments: int = 1) -> tuple[str, list[SegmentSpec]]:
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


def brief(net: Net, name: str = "photo.jpg", bucket: str = "photos", territory: str = "main",
          user: str | None = None) -> UserBrief:
    return UserBrief(user or net.alice.account, name, bucket, territory)


# ---- territories ---------------------------------------------------------------------


def test_territory_rules(net: Net) -> None:
    alice = net.alice
    alice.mint_territory("main", 4, 30)
    t = alice.territory(alice.account, "main")
    assert t is not None
    assert (t.owner, t.name, t.total_space, t.used_space, t.locked_space, t.remaining_space) == (
        alice.account, "main", 4 * GIB, 0, 0, 4 * GIB)
    assert t.state is TerritoryState.ACTIVE
    assert t.deadline - t.start == 30 * BLOCKS_PER_DAY
    error = refused("PurchasedSpace", alice.mint_territory, "main", 1, 30)
    assert isinstance(error, AlreadyExists)
    refused("PurchasedSpace", alice.mint_territory, "main", 1, 29)  # the name is checked first
    refused("BoundariesNotMet", alice.mint_territory, "short", 1, 29)
    too_big = NETWORK_SPACE // GIB + 1
    assert isinstance(refused("InsufficientAvailableSpace", alice.mint_territory, "big", too_big, 30),
                      NoSpace)
    refused("NotHaveTerritory", alice.expand_territory, "nope", 1)
    refused("NotHaveTerritory", alice.renew_territory, "nope", 30)
    alice.expand_territory("main", 1)
    alice.renew_territory("main", 10)
    t2 = alice.territory(alice.account, "main")
    assert t2 is not None and t2.total_space == 5 * GIB and t2.remaining_space == 5 * GIB
    assert t2.deadline == t.deadline + 10 * BLOCKS_PER_DAY
    assert [x.name for x in alice.territories(alice.account)] == ["main"]
    assert alice.territory(alice.account, "nope") is None
    assert alice.territories(net.bob.account) == []


def test_mint_needs_network_idle_space(net: Net, request: pytest.FixtureRequest) -> None:
    runtime: CessRuntime | None = (
        request.getfixturevalue("cess_runtime") if net.kind == "cess" else None)
    drop_network_idle_space(net, runtime)
    refused("InsufficientAvailableSpace", net.alice.mint_territory, "main", 1, 30)
    assert net.alice.territory(net.alice.account, "main") is None


# ---- buckets ----------------------------------------------------------------------------


def test_bucket_rules(net: Net) -> None:
    alice, me = net.alice, net.alice.account
    alice.create_bucket(me, "photos")
    assert refused("Existed", alice.create_bucket, me, "photos")
    refused("LessMinLength", alice.create_bucket, me, "ab")
    refused("SpecError", alice.create_bucket, me, "jobs")  # spec 100 has no 'j'
    refused("SpecError", alice.create_bucket, me, "a.b.c.d")
    refused("SpecError", alice.create_bucket, me, "a..b")
    refused("SpecError", alice.create_bucket, me, "spa ce")
    refused("NoPermission", net.bob.create_bucket, me, "bobs")
    alice.create_bucket(me, "Odd_Name-")  # the chain takes it (deossfs would not create it)
    assert alice.buckets(me) == ["Odd_Name-", "photos"]
    info = alice.bucket(me, "photos")
    assert info is not None and (info.owner, info.name, info.object_list, info.authority) == (
        me, "photos", (), (me,))
    assert alice.bucket(me, "nope") is None
    assert isinstance(refused("NonExistent", alice.delete_bucket, me, "nope"), NotFound)
    refused("NoPermission", net.bob.delete_bucket, me, "photos")
    alice.delete_bucket(me, "Odd_Name-")
    assert alice.buckets(me) == ["photos"]


# ---- storage orders ------------------------------------------------------------------------


def test_storage_order_space_completion_dedup_and_delete(net: Net) -> None:
    alice, bob, me = net.alice, net.bob, net.alice.account
    alice.mint_territory("main", 1, 30)
    fid, specs = order("lifecycle")
    start = alice.block_number()
    alice.upload_declaration(fid, specs, brief(net), 1234)

    # declared: the space is locked, the order pending; the bucket comes at completion
    t = alice.territory(me, "main")
    assert t is not None
    assert (t.used_space, t.locked_space, t.remaining_space) == (0, SEGMENT_SPACE, GIB - SEGMENT_SPACE)
    deal = alice.deal(fid)
    assert deal is not None
    assert (deal.fid, deal.file_size, deal.segments, deal.user, deal.complete_list) == (
        fid, 1234, tuple(specs), brief(net), ())
    assert alice.file(fid) is None and alice.bucket(me, "photos") is None

    # reports: who may send them, and 11 are not enough
    refused("NotMiner", alice.transfer_report, 1, fid)
    refused("SpecError", net.miners[0].transfer_report, 13, fid)
    refused("NonExistent", net.miners[0].transfer_report, 1, _h("no such order"))
    net.report(fid, range(1, 12))
    refused("Existed", net.miners[11].transfer_report, 1, fid)  # column 1 is taken
    refused("Existed", net.miners[0].transfer_report, 12, fid)  # miner 0 reported already
    deal = alice.deal(fid)
    assert deal is not None and [c.index for c in deal.complete_list] == list(range(1, 12))
    assert deal.complete_list[0].miner == MINERS[0].address
    assert alice.file(fid) is None
    assert not [e for e in alice.events(start) if e.name == "StorageCompleted"]

    # the 12th report completes the order
    net.miners[11].transfer_report(12, fid)
    assert alice.deal(fid) is None
    info = alice.file(fid)
    assert info is not None
    assert (info.fid, info.file_size, info.state, info.owners) == (fid, 1234, FileState.ACTIVE,
                                                                   (brief(net),))
    assert [s.hash for s in info.segments] == [specs[0].hash]
    fragments = info.segments[0].fragments
    assert tuple(f.hash for f in fragments) == specs[0].fragment_hashes
    assert [f.miner for f in fragments] == [m.address for m in MINERS]
    assert all(f.avail for f in fragments)
    completed = [e for e in alice.events(start) if (e.pallet, e.name) == ("FileBank", "StorageCompleted")]
    assert len(completed) == 1 and fid in completed[0].attributes.values()
    t = alice.territory(me, "main")
    assert t is not None
    assert (t.used_space, t.locked_space, t.remaining_space) == (SEGMENT_SPACE, 0, GIB - SEGMENT_SPACE)
    bucket = alice.bucket(me, "photos")
    assert bucket is not None and bucket.object_list == (fid,)
    assert alice.user_files(me) == [UserFileSlice("main", fid, SEGMENT_SPACE)]
    node = alice.storage_node(MINERS[0].address)
    assert node is not None and node.idle_space == 2**40 - FRAGMENT_SIZE
    refused("NotEmpty", alice.delete_bucket, me, "photos")

    # dedup: Bob declares the same FID and only becomes an owner (48 MiB per segment)
    bob.mint_territory("bobs", 1, 30)
    bob_brief = UserBrief(bob.account, "copy.jpg", "bob-b", "bobs")
    bob.upload_declaration(fid, specs, bob_brief, 1234)
    assert alice.deal(fid) is None
    info = alice.file(fid)
    assert info is not None and info.owners == (brief(net), bob_brief)
    # many at once, in order (on CESS in batched queries: 150 FIDs span three)
    missing = [_h(f"absent {i}") for i in range(150)]
    assert alice.files([fid, *missing, fid]) == [info, *[None] * 150, info]
    bobs = alice.territory(bob.account, "bobs")
    assert bobs is not None and (bobs.used_space, bobs.locked_space) == (DEDUP_SEGMENT_SPACE, 0)
    assert alice.user_files(bob.account) == [UserFileSlice("bobs", fid, DEDUP_SEGMENT_SPACE)]
    bob_bucket = alice.bucket(bob.account, "bob-b")
    assert bob_bucket is not None and bob_bucket.object_list == (fid,)
    refused("Existed", bob.upload_declaration, fid, specs, bob_brief, 1234)

    # delete: Alice's copy goes, the file stays for Bob
    refused("NoPermission", bob.delete_file, me, fid)
    refused("NonExistent", alice.delete_file, me, _h("nothing"))
    alice.delete_file(me, fid)
    info = alice.file(fid)
    assert info is not None and info.owners == (bob_brief,)
    t = alice.territory(me, "main")
    assert t is not None and (t.used_space, t.locked_space) == (0, 0)
    bucket = alice.bucket(me, "photos")
    assert bucket is not None and bucket.object_list == ()
    assert alice.user_files(me) == []
    alice.delete_file(me, fid)  # no longer an owner: accepted, nothing changes
    assert alice.file(fid) is not None
    # Bob was charged 48 MiB and a delete takes back 96 MiB: the runtime says Overflow
    refused("Overflow", bob.delete_file, bob.account, fid)
    alice.delete_bucket(me, "photos")


def test_declaration_rules(net: Net) -> None:
    alice = net.alice
    alice.mint_territory("main", 1, 30)
    fid, specs = order("rules")
    declare = alice.upload_declaration
    refused("SpecError", declare, fid, specs, brief(net, name="ab"), 10)
    refused("SpecError", declare, fid, specs, brief(net, bucket="ab"), 10)
    refused("NotHaveTerritory", declare, fid, specs, brief(net, territory="other"), 10)
    refused("NoPermission", net.bob.upload_declaration, fid, specs, brief(net), 10)
    big_fid, big = order("eleven", 11)  # 11 x 96 MiB > 1 GiB
    refused("InsufficientAvailableSpace", declare, big_fid, big, brief(net), 10)
    # the runtime takes any 64 ASCII bytes as a hash, and a 0-byte size
    upper_fid, upper = order("upper")
    declare(upper_fid.upper(), upper, brief(net), 0)
    # declaring a pending order again overwrites it and locks its space a second time
    declare(fid, specs, brief(net), 10)
    net.miners[0].transfer_report(1, fid)
    declare(fid, specs, brief(net, name="renamed.jpg"), 10)
    deal = alice.deal(fid)
    assert deal is not None and deal.user.file_name == "renamed.jpg" and deal.complete_list == ()
    t = alice.territory(alice.account, "main")
    assert t is not None and t.locked_space == 3 * SEGMENT_SPACE
    # a pending order cannot be deleted
    refused("NonExistent", alice.delete_file, alice.account, fid)
    assert alice.deal(fid) is not None


# ---- gateways --------------------------------------------------------------------------------


def test_gateway_acts_for_the_user_it_is_authorized_by(net: Net) -> None:
    alice, gw, me = net.alice, net.gateway, net.alice.account
    refused("NoAuthorization", alice.cancel_authorize, gw.account)
    refused("NoPermission", gw.create_bucket, me, "via-gw")
    alice.authorize(gw.account)
    alice.authorize(gw.account)  # twice is fine
    assert alice.authorized_gateways(me) == [gw.account]
    gw.create_bucket(me, "via-gw")
    alice.mint_territory("main", 1, 30)
    fid, specs = order("gateway")
    gw.upload_declaration(fid, specs, brief(net, bucket="via-gw"), 10)
    deal = alice.deal(fid)
    assert deal is not None and deal.user.user == me
    alice.cancel_authorize(gw.account)
    assert alice.authorized_gateways(me) == []
    refused("NoPermission", gw.delete_bucket, me, "via-gw")
    gw.register_gateway("http://127.0.0.1:7000", "gw.example")
    gw.register_gateway("http://127.0.0.1:7001", "gw.example")  # an update
    listed = {g.account: g for g in alice.gateways()}
    assert listed[gw.account].endpoint == "http://127.0.0.1:7001"
    assert listed[gw.account].domain == "gw.example"
    refused("LengthExceedsLimit", gw.register_gateway, "http://" + "x" * 40, "")


# ---- storage nodes -------------------------------------------------------------------------------


def test_storage_nodes_and_endpoints(net: Net) -> None:
    nodes = net.alice.storage_nodes()
    assert [n.account for n in nodes] == sorted(m.address for m in MINERS)
    by_account = {n.account: n for n in nodes}
    for index, miner in enumerate(MINERS):
        node = by_account[miner.address]
        assert node.endpoint == miner_endpoint(index)
        assert node.state is MinerState.POSITIVE and node.idle_space == 2**40
    first = net.miners[0]
    first.register_storage_node("http://127.0.0.1:16000", 2**40)
    node = net.alice.storage_node(first.account)
    assert node is not None and node.endpoint == "http://127.0.0.1:16000"
    refused("LengthExceedsLimit", first.register_storage_node, "http://" + "x" * 40, 2**40)
    assert net.alice.storage_node(net.alice.account) is None


# ---- concurrency ------------------------------------------------------------------------------


def test_concurrent_calls_from_threads_share_one_client(net: Net) -> None:
    """Four threads sign through one client at once: nonces must not collide."""
    import threading

    me = net.alice.account
    names = [f"thread-{i}" for i in range(4)]
    errors: list[BaseException] = []

    def create(name: str) -> None:
        try:
            net.alice.create_bucket(me, name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert net.alice.buckets(me) == names
