"""The embedded chain: a ledger in one SQLite file that applies CESS's rules.

Every call runs in one `BEGIN IMMEDIATE` transaction: it checks the rules of the
CESS pallet it imitates, changes the state tables, records its events and is
appended to a hash-chained transaction log signed (sr25519) by the calling
account. The log is the history, the state tables are its result:
`verify_log()` re-checks signatures and the hash chain, `replay_check()` replays
the log into a fresh in-memory ledger and compares the state.

Several processes (the CLI, a gateway, a dozen storage nodes) share the file:
WAL mode, a 30 s busy timeout and one connection per thread.

One file past 800 lines: it is one `ChainClient` whose calls share one schema, one
transaction discipline and one signed log, and whose rules cross pallets (a storage order
checks the territory, the bucket and the miners at once); split by pallet, every part
would reach into the same tables and the same transaction.

Time: block = floor((now + offset - genesis) / 6 s), as CESS has 6-second blocks;
the dev call `advance_time` moves the offset forward (expiry tests).

CESS error names and rules, per call. Names marked [checked] were measured on the
real runtime (spec 100 under chopsticks) by tests/conformance, which runs the same
tests against this ledger; [read] ones were read in the CESS sources only; [ours] are
deossfs' own (embedded-only calls or values the runtime cannot even encode).
docs/cess.md lists every alignment the conformance suite forced.
- StorageHandler.mint_territory: PurchasedSpace [checked] (checked first),
  BoundariesNotMet [checked] (days < 30), InsufficientAvailableSpace [checked] (network:
  idle+service space of positive nodes minus unexpired territories; on CESS
  TotalIdleSpace), InsufficientBalance [read], LengthExceedsLimit [ours] (name > 63
  bytes). 0 GiB and an empty name are accepted [checked].
- expanding_territory: NotHaveTerritory [checked], LeaseExpired [read],
  InsufficientAvailableSpace [read], InsufficientBalance [read], Overflow [read];
  0 GiB accepted [checked].
- renewal_territory: NotHaveTerritory [checked], InsufficientBalance [read]; 0 days
  accepted [checked]. On an expired territory CessChain sends `reactivate_territory`;
  here renew reactivates it (new start = now), needing InsufficientAvailableSpace.
- FileBank.create_bucket: NoPermission [checked], LessMinLength [checked] / SpecError
  [checked] (chain/names.py: the runtime's character table, no 'j'), Existed [checked]
  (a second bucket of the same name), LengthExceedsLimit [read] (> 1000 buckets).
- delete_bucket: NoPermission [checked], NonExistent [checked], NotEmpty [checked].
- upload_declaration: NoPermission [checked], SpecError (0 or > 1000 segments, not 12
  fragments, a hash not 64 bytes [read]; file name < 3 bytes [checked]; bucket name
  < 3 bytes [checked]), LengthExceedsLimit [ours] (names > 63 bytes), NotHaveTerritory
  [checked], NotActive [read] (expired), InsufficientAvailableSpace [checked] (remaining <
  12 x 8 MiB per segment), Existed [checked] (the user holds this stored fid already).
  A stored fid declared by another user only adds an owner, charged 48 MiB per segment
  [checked]. A pending order declared again is overwritten: new brief, reports
  forgotten, space locked once more [checked]. The bucket is created at completion.
- transfer_report: NotMiner [checked], MinerStateError [read] (node not positive),
  NonExistent [checked] (no deal), SpecError [checked] (index not 1..12; or the brief's
  bucket name breaks the bucket rules, at completion), Existed [checked] (column
  already reported, or this miner already reported).
- delete_file: NoPermission [checked], NonExistent [checked] (no stored file; a pending
  order cannot be deleted), Overflow [checked] (the territory's used space is below
  the 12 x 8 MiB per segment a delete takes back). A non-owner's delete is accepted and
  changes nothing [checked].
- Oss.authorize: BoundedVecError [read] (more than 20 gateways); authorizing twice is
  accepted [checked]. cancel_authorize: NoAuthorization [checked] (nothing authorized).
  register (register_gateway): LengthExceedsLimit [ours] (endpoint > 38 bytes, the
  spec-100 peer id; domain > 50 bytes); registering again updates (CessChain sends
  `Oss.update`).
- generate_restoral_order: NonExistent [checked] (no stored file), SpecError [checked]
  (the signer holds no such fragment of the file), Existed [checked] (an order for that
  fragment is open). [ours]: an owner of the file (or its gateway) may open the order
  too, for the holder that lost it (`origin_miner`, needed when several hold the hash).
- claim_restoral_order: NotMiner [checked], MinerStateError [read], NonExistent
  [checked], SpecError [checked] (claimed by a miner until its deadline, the claim's
  block + RESTORAL_ORDER_LIFE). restoral_order_complete: NotMiner [checked], SpecError
  [checked] (not the claimant), Expired [checked] (past the deadline, or never claimed);
  the claimant becomes the fragment's miner, avail again [checked]; 8 MiB of service
  space moves with it [ours].
- Sminer (register_storage_node, dev): LengthExceedsLimit [ours] (endpoint > 38 bytes),
  SpecError / ParamError [ours].
- dev calls: fund (Balances), advance_time and set_node_state (Sudo): ParamError,
  NotMiner [ours].
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ..errors import (
    ChainUnavailable,
    IntegrityError,
    InvalidInput,
    KeyFileError,
    chain_error,
)
from ..keys import Account, valid_address, verify_signature
from ..processing.layout import FRAGMENT_SIZE, MAX_SEGMENTS, TOTAL_SHARDS, charged_space
from .interface import (
    BLOCK_SECONDS,
    BucketInfo,
    ChainClient,
    ChainEvent,
    CompleteInfo,
    DealInfo,
    FileInfo,
    FileState,
    FragmentInfo,
    Gateway,
    MinerState,
    RestoralOrder,
    SegmentInfo,
    SegmentSpec,
    StorageNode,
    Territory,
    TerritoryState,
    UserBrief,
    UserFileSlice,
)
from .names import check_bucket_name, check_file_name, check_territory_name

T = TypeVar("T")

SCHEMA_VERSION = "1"
BLOCKS_PER_DAY = 14400  # 86400 s / 6 s
GIB = 1024**3
TOKEN = 10**18  # 1 TCESS in its smallest unit (18 decimals)
#: the price of 1 GiB for 30 days (StorageHandler UnitPrice)
UNIT_PRICE = 30 * TOKEN
MIN_TERRITORY_DAYS = 30
BUCKET_LIMIT = 1000  # runtime BucketLimit
AUTHOR_LIMIT = 20  # Oss AuthorLimit
#: spec 100 carries endpoints in a 38-byte peer id (Sminer.MinerItems, Oss.register)
NODE_ENDPOINT_MAX = 38
GATEWAY_ENDPOINT_MAX = 38
GATEWAY_DOMAIN_MAX = 50
MAX_SQL_INT = 2**63 - 1
#: what a second owner of an already stored file is charged per segment: the runtime
#: charges 1.5 x 32 MiB (checked), not the 12 x 8 MiB of a storage order
DEDUP_SEGMENT_SPACE = 48 * 1024 * 1024
BUSY_TIMEOUT_S = 30.0
#: blocks a claimed restoral order is reserved for its claimant (FileBank RestoralOrderLife,
#: read from spec 100's metadata)
RESTORAL_ORDER_LIFE = 250
GENESIS_HASH = "0" * 64


_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS transactions (
        seq INTEGER PRIMARY KEY, block INTEGER NOT NULL, signer TEXT NOT NULL,
        nonce INTEGER NOT NULL, pallet TEXT NOT NULL, call TEXT NOT NULL, args TEXT NOT NULL,
        signature TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, block INTEGER NOT NULL,
        pallet TEXT NOT NULL, name TEXT NOT NULL, attributes TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_block ON events(block)",
    # balance as decimal text: 18-decimal amounts overflow SQLite's 64-bit integers
    """CREATE TABLE IF NOT EXISTS accounts (
        address TEXT PRIMARY KEY, balance TEXT NOT NULL DEFAULT '0',
        nonce INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS territories (
        owner TEXT NOT NULL, name TEXT NOT NULL, total_space INTEGER NOT NULL,
        used_space INTEGER NOT NULL, locked_space INTEGER NOT NULL,
        start INTEGER NOT NULL, deadline INTEGER NOT NULL, PRIMARY KEY (owner, name))""",
    """CREATE TABLE IF NOT EXISTS buckets (
        owner TEXT NOT NULL, name TEXT NOT NULL, created INTEGER NOT NULL,
        PRIMARY KEY (owner, name))""",
    """CREATE TABLE IF NOT EXISTS bucket_objects (
        id INTEGER PRIMARY KEY, owner TEXT NOT NULL, bucket TEXT NOT NULL, fid TEXT NOT NULL,
        UNIQUE (owner, bucket, fid))""",
    """CREATE TABLE IF NOT EXISTS deals (
        fid TEXT PRIMARY KEY, file_size INTEGER NOT NULL, segments TEXT NOT NULL,
        user TEXT NOT NULL, file_name TEXT NOT NULL, bucket_name TEXT NOT NULL,
        territory_name TEXT NOT NULL, created INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS deal_reports (
        id INTEGER PRIMARY KEY, fid TEXT NOT NULL, idx INTEGER NOT NULL, miner TEXT NOT NULL,
        UNIQUE (fid, idx), UNIQUE (fid, miner))""",
    """CREATE TABLE IF NOT EXISTS files (
        fid TEXT PRIMARY KEY, file_size INTEGER NOT NULL, segments TEXT NOT NULL,
        completion INTEGER NOT NULL, state TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS file_owners (
        id INTEGER PRIMARY KEY, fid TEXT NOT NULL, user TEXT NOT NULL, file_name TEXT NOT NULL,
        bucket_name TEXT NOT NULL, territory_name TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS file_owners_fid ON file_owners(fid)",
    """CREATE TABLE IF NOT EXISTS user_files (
        id INTEGER PRIMARY KEY, owner TEXT NOT NULL, territory_name TEXT NOT NULL,
        fid TEXT NOT NULL, file_size INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS user_files_owner ON user_files(owner)",
    """CREATE TABLE IF NOT EXISTS nodes (
        account TEXT PRIMARY KEY, endpoint TEXT NOT NULL, state TEXT NOT NULL,
        idle_space INTEGER NOT NULL, service_space INTEGER NOT NULL,
        registered INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS authorities (
        id INTEGER PRIMARY KEY, owner TEXT NOT NULL, operator TEXT NOT NULL,
        UNIQUE (owner, operator))""",
    """CREATE TABLE IF NOT EXISTS gateways (
        account TEXT PRIMARY KEY, endpoint TEXT NOT NULL, domain TEXT NOT NULL,
        registered INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS restoral_orders (
        fragment_hash TEXT PRIMARY KEY, fid TEXT NOT NULL, origin_miner TEXT NOT NULL,
        miner TEXT NOT NULL, count INTEGER NOT NULL, gen_block INTEGER NOT NULL,
        deadline INTEGER NOT NULL)""",
]

#: tables that are the result of the log (compared by `replay_check`)
_STATE_TABLES = (
    "meta", "accounts", "territories", "buckets", "bucket_objects", "deals", "deal_reports",
    "files", "file_owners", "user_files", "nodes", "authorities", "gateways", "events",
    "restoral_orders",
    "transactions",
)


def canonical_json(value: Any) -> str:
    """The one JSON text of `value` that is signed and hashed (sorted keys, compact)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def territory_price(gib_count: int, days: int) -> int:
    """What `gib_count` GiB for `days` days cost, in the smallest token unit."""
    return UNIT_PRICE * gib_count * days // 30


def _signed_message(signer: str, nonce: int, pallet: str, call: str, args: Any) -> bytes:
    body = {"signer": signer, "nonce": nonce, "pallet": pallet, "call": call, "args": args}
    return canonical_json(body).encode()


def _record_hash(prev_hash: str, seq: int, block: int, message: bytes, signature: str) -> str:
    # the hash covers the position (seq, block) too, so moving a call in history shows
    head = canonical_json({"seq": seq, "block": block}).encode()
    return hashlib.sha256(prev_hash.encode() + head + message + signature.encode()).hexdigest()


# ---- the state machine: one handler per call, pure in (state, block, signer, args) ----


@dataclass
class _Ctx:
    """What a call handler sees: the open transaction, the block, the signer."""

    conn: sqlite3.Connection
    block: int
    signer: str
    seq: int

    def one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def run(self, sql: str, params: tuple = ()) -> None:
        self.conn.execute(sql, params)

    def emit(self, pallet: str, event: str, /, **attributes: Any) -> None:
        self.run(
            "INSERT INTO events (seq, block, pallet, name, attributes) VALUES (?, ?, ?, ?, ?)",
            (self.seq, self.block, pallet, event, canonical_json(attributes)),
        )


_Handler = Callable[[_Ctx, dict], None]
_HANDLERS: dict[tuple[str, str], _Handler] = {}


def _handler(pallet: str, call: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        _HANDLERS[(pallet, call)] = fn
        return fn

    return register


def _refuse(name: str, message: str | None = None) -> NoReturn:
    raise chain_error(name, message or name)


def _int_arg(value: Any, what: str, low: int = 0, high: int = MAX_SQL_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _refuse("ParamError", f"{what} must be an integer")
    if value < low:
        _refuse("ParamError", f"{what} must be at least {low}")
    if value > high:
        _refuse("Overflow", f"{what} is too large")
    return value


def _is_hash(value: Any) -> bool:
    """The runtime's `Hash` is any 64 bytes; deossfs sends lowercase hex (checked)."""
    return isinstance(value, str) and len(value) == 64 and value.isascii()


def _balance_of(ctx: _Ctx, address: str) -> int:
    row = ctx.one("SELECT balance FROM accounts WHERE address = ?", (address,))
    return int(row["balance"]) if row else 0


def _set_balance(ctx: _Ctx, address: str, amount: int) -> None:
    ctx.run("INSERT OR IGNORE INTO accounts (address) VALUES (?)", (address,))
    ctx.run("UPDATE accounts SET balance = ? WHERE address = ?", (str(amount), address))


def _charge(ctx: _Ctx, price: int) -> None:
    balance = _balance_of(ctx, ctx.signer)
    if balance < price:
        _refuse(
            "InsufficientBalance",
            f"this costs {price / TOKEN:.6f} TCESS; the balance is {balance / TOKEN:.6f}",
        )
    _set_balance(ctx, ctx.signer, balance - price)


def _expired(row: sqlite3.Row, block: int) -> bool:
    return block > row["deadline"]


def _network_free_space(ctx: _Ctx) -> int:
    """Unsold space: what positive nodes offer minus what unexpired territories hold."""
    offered = ctx.one(
        "SELECT COALESCE(SUM(idle_space + service_space), 0) AS s FROM nodes WHERE state = ?",
        (MinerState.POSITIVE.value,),
    )["s"]
    sold = ctx.one(
        "SELECT COALESCE(SUM(total_space), 0) AS s FROM territories WHERE deadline >= ?",
        (ctx.block,),
    )["s"]
    return offered - sold


def _require_network_space(ctx: _Ctx, space: int) -> None:
    free = _network_free_space(ctx)
    if space > free:
        _refuse(
            "InsufficientAvailableSpace",
            f"the network has {max(free, 0) // GIB} GiB unsold; {space // GIB} GiB asked",
        )


def _territory_row(ctx: _Ctx, owner: str, name: str) -> sqlite3.Row:
    row = ctx.one("SELECT * FROM territories WHERE owner = ? AND name = ?", (owner, name))
    if row is None:
        _refuse("NotHaveTerritory", f"no territory {name!r}")
    return row


def _remaining(row: sqlite3.Row) -> int:
    return max(0, row["total_space"] - row["used_space"] - row["locked_space"])


def _permitted(ctx: _Ctx, owner: str) -> bool:
    if ctx.signer == owner:
        return True
    return ctx.one(
        "SELECT 1 FROM authorities WHERE owner = ? AND operator = ?", (owner, ctx.signer)
    ) is not None


def _require_permission(ctx: _Ctx, owner: str) -> None:
    if not _permitted(ctx, owner):
        _refuse("NoPermission", f"{ctx.signer} may not act for {owner}")


def _ensure_bucket(ctx: _Ctx, owner: str, name: str) -> None:
    """Create `owner`'s bucket `name` if missing (upload_declaration does this too)."""
    if ctx.one("SELECT 1 FROM buckets WHERE owner = ? AND name = ?", (owner, name)):
        return
    count = ctx.one("SELECT COUNT(*) AS n FROM buckets WHERE owner = ?", (owner,))["n"]
    if count >= BUCKET_LIMIT:
        _refuse("LengthExceedsLimit", f"an account has at most {BUCKET_LIMIT} buckets")
    ctx.run("INSERT INTO buckets (owner, name, created) VALUES (?, ?, ?)", (owner, name, ctx.block))


def _add_to_bucket(ctx: _Ctx, owner: str, bucket: str, fid: str) -> None:
    _ensure_bucket(ctx, owner, bucket)
    ctx.run(
        "INSERT OR IGNORE INTO bucket_objects (owner, bucket, fid) VALUES (?, ?, ?)",
        (owner, bucket, fid),
    )


def _adjust_territory(ctx: _Ctx, owner: str, name: str, *, used: int = 0, locked: int = 0) -> None:
    # a territory that went away meanwhile has nothing left to release
    ctx.run(
        "UPDATE territories SET used_space = MAX(0, used_space + ?),"
        " locked_space = MAX(0, locked_space + ?) WHERE owner = ? AND name = ?",
        (used, locked, owner, name),
    )


# ---- StorageHandler -----------------------------------------------------------


@_handler("StorageHandler", "mint_territory")
def _mint_territory(ctx: _Ctx, args: dict) -> None:
    name = args["territory_name"]
    check_territory_name(name)
    # the runtime takes 0 GiB; the name check comes before the days check (checked)
    gib = _int_arg(args["gib_count"], "gib_count", 0, 2**32 - 1)
    days = _int_arg(args["days"], "days", 0, 2**32 - 1)
    if ctx.one("SELECT 1 FROM territories WHERE owner = ? AND name = ?", (ctx.signer, name)):
        _refuse("PurchasedSpace", f"territory {name!r} exists already")
    if days < MIN_TERRITORY_DAYS:
        _refuse("BoundariesNotMet", f"a territory is minted for at least {MIN_TERRITORY_DAYS} days")
    space = gib * GIB
    _require_network_space(ctx, space)
    price = territory_price(gib, days)
    _charge(ctx, price)
    ctx.run(
        "INSERT INTO territories (owner, name, total_space, used_space, locked_space, start,"
        " deadline) VALUES (?, ?, ?, 0, 0, ?, ?)",
        (ctx.signer, name, space, ctx.block, ctx.block + days * BLOCKS_PER_DAY),
    )
    ctx.emit("StorageHandler", "MintTerritory", owner=ctx.signer, name=name,
             storage_capacity=space, days=days, spend=price)


@_handler("StorageHandler", "expanding_territory")
def _expanding_territory(ctx: _Ctx, args: dict) -> None:
    name = args["territory_name"]
    row = _territory_row(ctx, ctx.signer, name)
    if _expired(row, ctx.block):
        _refuse("LeaseExpired", f"territory {name!r} has expired; renew it first")
    gib = _int_arg(args["gib_count"], "gib_count", 0, 2**32 - 1)  # 0 is accepted (checked)
    space = gib * GIB
    if row["total_space"] + space > MAX_SQL_INT:
        _refuse("Overflow", "territory too large")
    _require_network_space(ctx, space)
    # the price of the added space for the days left, a started day counting whole
    remaining_days = -(-(row["deadline"] - ctx.block) // BLOCKS_PER_DAY)
    price = territory_price(gib, remaining_days)
    _charge(ctx, price)
    ctx.run(
        "UPDATE territories SET total_space = total_space + ? WHERE owner = ? AND name = ?",
        (space, ctx.signer, name),
    )
    ctx.emit("StorageHandler", "ExpansionTerritory", owner=ctx.signer, name=name,
             expansion_space=space, spend=price)


@_handler("StorageHandler", "renewal_territory")
def _renewal_territory(ctx: _Ctx, args: dict) -> None:
    name = args["territory_name"]
    row = _territory_row(ctx, ctx.signer, name)
    days = _int_arg(args["days"], "days", 0, 2**32 - 1)  # 0 is accepted (checked)
    price = territory_price(row["total_space"] // GIB, days)
    if _expired(row, ctx.block):
        # reactivation: the space was released to the network when it expired
        _require_network_space(ctx, row["total_space"])
        _charge(ctx, price)
        ctx.run(
            "UPDATE territories SET start = ?, deadline = ? WHERE owner = ? AND name = ?",
            (ctx.block, ctx.block + days * BLOCKS_PER_DAY, ctx.signer, name),
        )
        ctx.emit("StorageHandler", "ReactivateTerritory", owner=ctx.signer, name=name,
                 days=days, spend=price)
        return
    _charge(ctx, price)
    ctx.run(
        "UPDATE territories SET deadline = deadline + ? WHERE owner = ? AND name = ?",
        (days * BLOCKS_PER_DAY, ctx.signer, name),
    )
    ctx.emit("StorageHandler", "RenewalTerritory", owner=ctx.signer, name=name, days=days,
             spend=price)


# ---- FileBank: buckets --------------------------------------------------------


@_handler("FileBank", "create_bucket")
def _create_bucket(ctx: _Ctx, args: dict) -> None:
    owner, name = args["owner"], args["name"]
    _require_permission(ctx, owner)
    check_bucket_name(name)
    if ctx.one("SELECT 1 FROM buckets WHERE owner = ? AND name = ?", (owner, name)):
        _refuse("Existed", f"bucket {name!r} exists already")
    _ensure_bucket(ctx, owner, name)
    ctx.emit("FileBank", "CreateBucket", operator=ctx.signer, owner=owner, bucket_name=name)


@_handler("FileBank", "delete_bucket")
def _delete_bucket(ctx: _Ctx, args: dict) -> None:
    owner, name = args["owner"], args["name"]
    _require_permission(ctx, owner)
    if ctx.one("SELECT 1 FROM buckets WHERE owner = ? AND name = ?", (owner, name)) is None:
        _refuse("NonExistent", f"no bucket {name!r}")
    if ctx.one("SELECT 1 FROM bucket_objects WHERE owner = ? AND bucket = ?", (owner, name)):
        _refuse("NotEmpty", f"bucket {name!r} is not empty")
    ctx.run("DELETE FROM buckets WHERE owner = ? AND name = ?", (owner, name))
    ctx.emit("FileBank", "DeleteBucket", operator=ctx.signer, owner=owner, bucket_name=name)


# ---- FileBank: storage orders -------------------------------------------------


def _check_deal_info(fid: Any, deal_info: Any) -> None:
    if not _is_hash(fid):
        _refuse("SpecError", "the file hash must be 64 ASCII characters")
    if not isinstance(deal_info, list) or not 1 <= len(deal_info) <= MAX_SEGMENTS:
        _refuse("SpecError", f"a storage order has 1..{MAX_SEGMENTS} segments")
    for number, segment in enumerate(deal_info):
        fragments = segment.get("fragment_list") if isinstance(segment, dict) else None
        if not isinstance(fragments, list) or len(fragments) != TOTAL_SHARDS:
            _refuse("SpecError", f"segment {number} must list exactly {TOTAL_SHARDS} fragments")
        if not _is_hash(segment.get("hash")) or not all(_is_hash(h) for h in fragments):
            _refuse("SpecError", f"segment {number} has a hash that is not 64 ASCII characters")


def _check_brief_bucket(name: Any) -> None:
    """At declaration the runtime checks only the bucket name's length (checked); its
    character rules are applied when the bucket is created, at completion."""
    size = len(name.encode("utf-8")) if isinstance(name, str) else -1
    if size < 3:
        _refuse("SpecError", f"bucket name {name!r} refused: at least 3 bytes")
    if size > 63:
        _refuse("LengthExceedsLimit", f"bucket name {name!r} refused: at most 63 bytes")


@_handler("FileBank", "upload_declaration")
def _upload_declaration(ctx: _Ctx, args: dict) -> None:
    fid, deal_info, brief = args["file_hash"], args["deal_info"], args["user_brief"]
    user = brief["user"]
    file_name, bucket, territory = brief["file_name"], brief["bucket_name"], brief["territory_name"]
    _require_permission(ctx, user)
    _check_deal_info(fid, deal_info)
    # the runtime declares a 0-byte file (checked); deossfs itself never does
    file_size = _int_arg(args["file_size"], "file_size", 0)
    check_file_name(file_name)
    _check_brief_bucket(bucket)
    row = _territory_row(ctx, user, territory)
    if _expired(row, ctx.block):
        _refuse("NotActive", f"territory {territory!r} has expired")

    stored = ctx.one("SELECT segments FROM files WHERE fid = ?", (fid,))
    if stored is not None:
        # de-duplication: the file is stored already, the user only becomes an owner
        held = ctx.one(
            "SELECT 1 FROM user_files WHERE owner = ? AND fid = ? AND territory_name = ?",
            (user, fid, territory),
        )
        if held:
            _refuse("Existed", f"{user} holds this file in territory {territory!r} already")
        # charged as the runtime does: 1.5 x 32 MiB per segment, used at once
        needed = DEDUP_SEGMENT_SPACE * len(json.loads(stored["segments"]))
        if _remaining(row) < needed:
            _refuse("InsufficientAvailableSpace",
                    f"territory {territory!r} has {_remaining(row)} bytes free; {needed} needed")
        check_bucket_name(bucket)
        _adjust_territory(ctx, user, territory, used=needed)
        ctx.run(
            "INSERT INTO file_owners (fid, user, file_name, bucket_name, territory_name)"
            " VALUES (?, ?, ?, ?, ?)",
            (fid, user, file_name, bucket, territory),
        )
        _add_to_bucket(ctx, user, bucket, fid)
        ctx.run(
            "INSERT INTO user_files (owner, territory_name, fid, file_size) VALUES (?, ?, ?, ?)",
            (user, territory, fid, needed),
        )
        ctx.emit("FileBank", "UploadDeclaration", operator=ctx.signer, owner=user, fid=fid)
        return

    needed = charged_space(len(deal_info))
    if _remaining(row) < needed:
        _refuse("InsufficientAvailableSpace",
                f"territory {territory!r} has {_remaining(row)} bytes free; {needed} needed")
    # A pending order declared again is overwritten as the runtime does (checked): the
    # new brief replaces the old, reports made so far are forgotten, and the space is
    # locked once more (the first lock is not released: a runtime quirk kept here so
    # the devnet accounts like the chain). The bucket is created at completion.
    ctx.run("DELETE FROM deal_reports WHERE fid = ?", (fid,))
    ctx.run("DELETE FROM deals WHERE fid = ?", (fid,))
    _adjust_territory(ctx, user, territory, locked=needed)
    ctx.run(
        "INSERT INTO deals (fid, file_size, segments, user, file_name, bucket_name,"
        " territory_name, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (fid, file_size, canonical_json(deal_info), user, file_name, bucket, territory, ctx.block),
    )
    ctx.emit("FileBank", "UploadDeclaration", operator=ctx.signer, owner=user, fid=fid)


@_handler("FileBank", "transfer_report")
def _transfer_report(ctx: _Ctx, args: dict) -> None:
    index, fid = args["index"], args["deal_hash"]
    node = ctx.one("SELECT state FROM nodes WHERE account = ?", (ctx.signer,))
    if node is None:
        _refuse("NotMiner", f"{ctx.signer} is not a storage node")
    if node["state"] != MinerState.POSITIVE.value:
        _refuse("MinerStateError", f"storage node {ctx.signer} is {node['state']}")
    deal = ctx.one("SELECT * FROM deals WHERE fid = ?", (fid,))
    if deal is None:
        _refuse("NonExistent", "no pending storage order for this file")
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= TOTAL_SHARDS:
        _refuse("SpecError", f"the fragment index is 1..{TOTAL_SHARDS}")
    reports = ctx.all("SELECT idx, miner FROM deal_reports WHERE fid = ? ORDER BY id", (fid,))
    for report in reports:
        if report["idx"] == index:
            _refuse("Existed", f"fragment column {index} was reported already")
        if report["miner"] == ctx.signer:
            _refuse("Existed", f"{ctx.signer} reported this order already")
    ctx.run("INSERT INTO deal_reports (fid, idx, miner) VALUES (?, ?, ?)", (fid, index, ctx.signer))
    ctx.emit("FileBank", "TransferReport", acc=ctx.signer, fid=fid, index=index)
    if len(reports) + 1 == TOTAL_SHARDS:
        _complete_deal(ctx, deal)


def _complete_deal(ctx: _Ctx, deal: sqlite3.Row) -> None:
    """All 12 columns are held: the order becomes `File[fid]`.

    The bucket is created here; a bucket name the runtime refuses makes the 12th
    report fail with SpecError (checked), so such an order can never complete.
    """
    fid = deal["fid"]
    check_bucket_name(deal["bucket_name"])
    reports = ctx.all("SELECT idx, miner FROM deal_reports WHERE fid = ?", (fid,))
    miners = {r["idx"]: r["miner"] for r in reports}
    spec = json.loads(deal["segments"])
    segments = [
        {
            "hash": segment["hash"],
            "fragments": [
                {"hash": fragment, "avail": True, "miner": miners[j + 1]}
                for j, fragment in enumerate(segment["fragment_list"])
            ],
        }
        for segment in spec
    ]
    ctx.run(
        "INSERT INTO files (fid, file_size, segments, completion, state) VALUES (?, ?, ?, ?, ?)",
        (fid, deal["file_size"], canonical_json(segments), ctx.block, FileState.ACTIVE.value),
    )
    user, territory, bucket = deal["user"], deal["territory_name"], deal["bucket_name"]
    ctx.run(
        "INSERT INTO file_owners (fid, user, file_name, bucket_name, territory_name)"
        " VALUES (?, ?, ?, ?, ?)",
        (fid, user, deal["file_name"], bucket, territory),
    )
    needed = charged_space(len(spec))
    _adjust_territory(ctx, user, territory, used=needed, locked=-needed)
    _add_to_bucket(ctx, user, bucket, fid)
    ctx.run(
        "INSERT INTO user_files (owner, territory_name, fid, file_size) VALUES (?, ?, ?, ?)",
        (user, territory, fid, needed),
    )
    # each node now serves one column: its idle space becomes service space
    column = FRAGMENT_SIZE * len(spec)
    for miner in miners.values():
        ctx.run(
            "UPDATE nodes SET idle_space = MAX(0, idle_space - ?),"
            " service_space = service_space + ? WHERE account = ?",
            (column, column, miner),
        )
    ctx.run("DELETE FROM deal_reports WHERE fid = ?", (fid,))
    ctx.run("DELETE FROM deals WHERE fid = ?", (fid,))
    ctx.emit("FileBank", "StorageCompleted", fid=fid)


@_handler("FileBank", "delete_file")
def _delete_file(ctx: _Ctx, args: dict) -> None:
    owner, fid = args["owner"], args["file_hash"]
    _require_permission(ctx, owner)
    stored = ctx.one("SELECT segments FROM files WHERE fid = ?", (fid,))
    if stored is None:
        # the runtime deletes stored files only: a pending order cannot be cancelled
        _refuse("NonExistent", "no such file")
    briefs = ctx.all("SELECT * FROM file_owners WHERE fid = ? AND user = ?", (fid, owner))
    if not briefs:
        return  # the runtime accepts a delete by a non-owner and changes nothing (checked)
    segments = json.loads(stored["segments"])
    needed = charged_space(len(segments))
    for brief in briefs:
        # the runtime takes back the full 12 x 8 MiB per segment with a checked
        # subtraction: a second owner charged 48 MiB gets Overflow (checked)
        row = ctx.one("SELECT used_space FROM territories WHERE owner = ? AND name = ?",
                      (owner, brief["territory_name"]))
        if row is not None and row["used_space"] < needed:
            _refuse("Overflow", f"territory {brief['territory_name']!r} holds less used space "
                                "than this file is released with")
    for brief in briefs:
        _adjust_territory(ctx, owner, brief["territory_name"], used=-needed)
    ctx.run("DELETE FROM file_owners WHERE fid = ? AND user = ?", (fid, owner))
    ctx.run("DELETE FROM bucket_objects WHERE owner = ? AND fid = ?", (owner, fid))
    ctx.run("DELETE FROM user_files WHERE owner = ? AND fid = ?", (owner, fid))
    if ctx.one("SELECT 1 FROM file_owners WHERE fid = ?", (fid,)) is None:
        # the last owner is gone: the file leaves the network, nodes get their space back
        per_miner: dict[str, int] = {}
        for segment in segments:
            for fragment in segment["fragments"]:
                per_miner[fragment["miner"]] = per_miner.get(fragment["miner"], 0) + FRAGMENT_SIZE
        for miner, space in sorted(per_miner.items()):
            ctx.run(
                "UPDATE nodes SET idle_space = idle_space + MIN(service_space, ?),"
                " service_space = MAX(0, service_space - ?) WHERE account = ?",
                (space, space, miner),
            )
        ctx.run("DELETE FROM files WHERE fid = ?", (fid,))
    ctx.emit("FileBank", "DeleteFile", operator=ctx.signer, owner=owner, fid=fid)


# ---- FileBank: restoral orders ------------------------------------------------


def _positive_miner(ctx: _Ctx) -> None:
    node = ctx.one("SELECT state FROM nodes WHERE account = ?", (ctx.signer,))
    if node is None:
        _refuse("NotMiner", f"{ctx.signer} is not a storage node")
    if node["state"] != MinerState.POSITIVE.value:
        _refuse("MinerStateError", f"storage node {ctx.signer} is {node['state']}")


def _restoral_row(ctx: _Ctx, fragment: Any) -> sqlite3.Row:
    row = ctx.one("SELECT * FROM restoral_orders WHERE fragment_hash = ?", (fragment,))
    if row is None:
        _refuse("NonExistent", "no restoral order for this fragment")
    return row


def _move_fragment(ctx: _Ctx, fid: str, fragment: str, origin: str, miner: str,
                   avail: bool) -> int:
    """Set holder and availability of `fid`'s fragments `fragment` held by `origin`."""
    row = ctx.one("SELECT segments FROM files WHERE fid = ?", (fid,))
    if row is None:
        return 0
    segments = json.loads(row["segments"])
    moved = 0
    for segment in segments:
        for entry in segment["fragments"]:
            if entry["hash"] == fragment and entry["miner"] == origin:
                entry["miner"], entry["avail"] = miner, avail
                moved += 1
    ctx.run("UPDATE files SET segments = ? WHERE fid = ?", (canonical_json(segments), fid))
    return moved


@_handler("FileBank", "generate_restoral_order")
def _generate_restoral_order(ctx: _Ctx, args: dict) -> None:
    fid, fragment = args["file_hash"], args["restoral_fragment"]
    if not _is_hash(fid) or not _is_hash(fragment):
        _refuse("SpecError", "hashes are 64 ASCII characters")
    row = ctx.one("SELECT segments FROM files WHERE fid = ?", (fid,))
    if row is None:
        _refuse("NonExistent", "no such file")
    holders = [
        entry["miner"]
        for segment in json.loads(row["segments"])
        for entry in segment["fragments"]
        if entry["hash"] == fragment
    ]
    if ctx.signer in holders:
        origin = ctx.signer  # the runtime's rule: the holding miner reports its loss
    else:
        # [ours] an owner (or its gateway) may open the order for the holder that lost it
        owners = [r["user"] for r in ctx.all("SELECT user FROM file_owners WHERE fid = ?", (fid,))]
        if not any(_permitted(ctx, owner) for owner in owners):
            _refuse("SpecError", "only the fragment's miner or an owner of the file may do this")
        origin = args.get("origin_miner") or (holders[0] if len(set(holders)) == 1 else "")
        if origin not in holders:
            _refuse("SpecError", "name the miner that lost the fragment (origin_miner)")
    if ctx.one("SELECT 1 FROM restoral_orders WHERE fragment_hash = ?", (fragment,)):
        _refuse("Existed", "a restoral order for this fragment exists already")
    ctx.run(
        "INSERT INTO restoral_orders (fragment_hash, fid, origin_miner, miner, count, gen_block,"
        " deadline) VALUES (?, ?, ?, ?, 0, ?, 0)",
        (fragment, fid, origin, origin, ctx.block),
    )
    _move_fragment(ctx, fid, fragment, origin, origin, avail=False)
    ctx.emit("FileBank", "GenerateRestoralOrder", miner=origin, fragment_hash=fragment)


@_handler("FileBank", "claim_restoral_order")
def _claim_restoral_order(ctx: _Ctx, args: dict) -> None:
    fragment = args["restoral_fragment"]
    _positive_miner(ctx)
    order = _restoral_row(ctx, fragment)
    # a claim holds RESTORAL_ORDER_LIFE blocks; an unclaimed order has deadline 0
    if order["count"] and ctx.block <= order["deadline"]:
        _refuse("SpecError", "the order is claimed by another miner until its deadline")
    ctx.run(
        "UPDATE restoral_orders SET count = count + 1, deadline = ?, miner = ?"
        " WHERE fragment_hash = ?",
        (ctx.block + RESTORAL_ORDER_LIFE, ctx.signer, fragment),
    )
    ctx.emit("FileBank", "ClaimRestoralOrder", miner=ctx.signer, order_id=fragment)


@_handler("FileBank", "restoral_order_complete")
def _restoral_order_complete(ctx: _Ctx, args: dict) -> None:
    fragment = args["fragment_hash"]
    _positive_miner(ctx)
    order = _restoral_row(ctx, fragment)
    if order["miner"] != ctx.signer:
        _refuse("SpecError", "the order was not claimed by this miner")
    if not order["count"] or ctx.block > order["deadline"]:
        # an unclaimed order's deadline is 0: completing it is refused as expired (checked)
        _refuse("Expired", "the claim expired (or was never made); claim the order again")
    if ctx.one("SELECT 1 FROM files WHERE fid = ?", (order["fid"],)) is None:
        # the file was deleted meanwhile: the order just ends
        ctx.run("DELETE FROM restoral_orders WHERE fragment_hash = ?", (fragment,))
        return
    moved = _move_fragment(ctx, order["fid"], fragment, order["origin_miner"], ctx.signer,
                           avail=True)
    # [ours] the space moves with the fragment, as a delete and a report would move it
    space = moved * FRAGMENT_SIZE
    ctx.run("UPDATE nodes SET idle_space = idle_space + MIN(service_space, ?),"
            " service_space = MAX(0, service_space - ?) WHERE account = ?",
            (space, space, order["origin_miner"]))
    ctx.run("UPDATE nodes SET idle_space = MAX(0, idle_space - ?),"
            " service_space = service_space + ? WHERE account = ?", (space, space, ctx.signer))
    ctx.run("DELETE FROM restoral_orders WHERE fragment_hash = ?", (fragment,))
    ctx.emit("FileBank", "RecoveryCompleted", miner=ctx.signer, order_id=fragment)


# ---- Sminer -------------------------------------------------------------------


@_handler("Sminer", "register_storage_node")
def _register_storage_node(ctx: _Ctx, args: dict) -> None:
    endpoint = args["endpoint"]
    if not isinstance(endpoint, str) or not endpoint:
        _refuse("SpecError", "a storage node needs an endpoint")
    if len(endpoint.encode()) > NODE_ENDPOINT_MAX:
        _refuse("LengthExceedsLimit", f"an endpoint has at most {NODE_ENDPOINT_MAX} bytes")
    idle = _int_arg(args["idle_space"], "idle_space", 0, 2**62)
    if ctx.one("SELECT 1 FROM nodes WHERE account = ?", (ctx.signer,)):
        # an update keeps the node's state (a frozen node stays frozen)
        ctx.run(
            "UPDATE nodes SET endpoint = ?, idle_space = ? WHERE account = ?",
            (endpoint, idle, ctx.signer),
        )
        ctx.emit("Sminer", "UpdateEndpoint", acc=ctx.signer, endpoint=endpoint, idle_space=idle)
        return
    ctx.run(
        "INSERT INTO nodes (account, endpoint, state, idle_space, service_space, registered)"
        " VALUES (?, ?, ?, ?, 0, ?)",
        (ctx.signer, endpoint, MinerState.POSITIVE.value, idle, ctx.block),
    )
    ctx.emit("Sminer", "Registered", acc=ctx.signer, endpoint=endpoint, idle_space=idle)


@_handler("Sudo", "set_node_state")
def _set_node_state(ctx: _Ctx, args: dict) -> None:
    account, state = args["account"], args["state"]
    if state not in {s.value for s in MinerState}:
        _refuse("ParamError", f"unknown storage node state {state!r}")
    if ctx.one("SELECT 1 FROM nodes WHERE account = ?", (account,)) is None:
        _refuse("NotMiner", f"{account} is not a storage node")
    ctx.run("UPDATE nodes SET state = ? WHERE account = ?", (state, account))
    ctx.emit("Sminer", "StateChanged", acc=account, state=state)


# ---- Oss ----------------------------------------------------------------------


@_handler("Oss", "authorize")
def _authorize(ctx: _Ctx, args: dict) -> None:
    operator = args["operator"]
    present = ctx.one(
        "SELECT 1 FROM authorities WHERE owner = ? AND operator = ?", (ctx.signer, operator)
    )
    if present is None:
        count = ctx.one("SELECT COUNT(*) AS n FROM authorities WHERE owner = ?", (ctx.signer,))["n"]
        if count >= AUTHOR_LIMIT:
            _refuse("BoundedVecError", f"at most {AUTHOR_LIMIT} gateways can be authorized")
        ctx.run("INSERT INTO authorities (owner, operator) VALUES (?, ?)", (ctx.signer, operator))
    ctx.emit("Oss", "Authorize", acc=ctx.signer, operator=operator)


@_handler("Oss", "cancel_authorize")
def _cancel_authorize(ctx: _Ctx, args: dict) -> None:
    operator = args["oss"]
    if ctx.one("SELECT 1 FROM authorities WHERE owner = ?", (ctx.signer,)) is None:
        _refuse("NoAuthorization", "no gateway is authorized")
    ctx.run("DELETE FROM authorities WHERE owner = ? AND operator = ?", (ctx.signer, operator))
    ctx.emit("Oss", "CancelAuthorize", acc=ctx.signer, oss=operator)


@_handler("Oss", "register")
def _register_gateway(ctx: _Ctx, args: dict) -> None:
    endpoint, domain = args["endpoint"], args["domain"]
    if not isinstance(endpoint, str) or not endpoint:
        _refuse("SpecError", "a gateway needs an endpoint")
    if len(endpoint.encode()) > GATEWAY_ENDPOINT_MAX:
        _refuse("LengthExceedsLimit", f"an endpoint has at most {GATEWAY_ENDPOINT_MAX} bytes")
    if not isinstance(domain, str) or len(domain.encode()) > GATEWAY_DOMAIN_MAX:
        _refuse("LengthExceedsLimit", f"a domain has at most {GATEWAY_DOMAIN_MAX} bytes")
    if ctx.one("SELECT 1 FROM gateways WHERE account = ?", (ctx.signer,)):
        ctx.run(
            "UPDATE gateways SET endpoint = ?, domain = ? WHERE account = ?",
            (endpoint, domain, ctx.signer),
        )
        ctx.emit("Oss", "OssUpdate", acc=ctx.signer, new_endpoint=endpoint)
        return
    ctx.run(
        "INSERT INTO gateways (account, endpoint, domain, registered) VALUES (?, ?, ?, ?)",
        (ctx.signer, endpoint, domain, ctx.block),
    )
    ctx.emit("Oss", "OssRegister", acc=ctx.signer, endpoint=endpoint)


# ---- dev calls ------------------------------------------------------------------


@_handler("Balances", "fund")
def _fund(ctx: _Ctx, args: dict) -> None:
    address = args["address"]
    amount = _int_arg(args["amount"], "amount", 1, 2**127)
    _set_balance(ctx, address, _balance_of(ctx, address) + amount)
    ctx.emit("Balances", "Deposit", who=address, amount=amount)


@_handler("Sudo", "advance_time")
def _advance_time(ctx: _Ctx, args: dict) -> None:
    seconds = args["seconds"]
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not valid or not math.isfinite(seconds) or seconds < 0:
        _refuse("ParamError", "time only moves forward")
    offset = float(ctx.one("SELECT value FROM meta WHERE key = 'time_offset'")["value"])
    ctx.run("UPDATE meta SET value = ? WHERE key = 'time_offset'", (repr(offset + seconds),))
    ctx.emit("Sudo", "TimeAdvanced", seconds=seconds)


# ---- storage plumbing -------------------------------------------------------------


def _init_schema(conn: sqlite3.Connection, genesis_time: float | None = None) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        genesis = repr(time.time() if genesis_time is None else genesis_time)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('genesis_time', ?)", (genesis,))
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('time_offset', '0.0')")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version != SCHEMA_VERSION:
        raise ChainUnavailable(
            f"the ledger has schema version {version}; this deossfs reads {SCHEMA_VERSION}"
        )


def _block_at(conn: sqlite3.Connection, now: float) -> int:
    rows = dict(
        conn.execute("SELECT key, value FROM meta WHERE key IN ('genesis_time', 'time_offset')")
    )
    elapsed = now + float(rows["time_offset"]) - float(rows["genesis_time"])
    return max(0, int(elapsed // BLOCK_SECONDS))


def _append_transaction(
    conn: sqlite3.Connection,
    seq: int,
    block: int,
    signer: str,
    pallet: str,
    call: str,
    args: Any,
    sign: Callable[[bytes], bytes] | None = None,
    signature: str | None = None,
) -> int:
    """Log a call that succeeded and bump the signer's nonce; returns the nonce used."""
    conn.execute("INSERT OR IGNORE INTO accounts (address) VALUES (?)", (signer,))
    nonce = conn.execute("SELECT nonce FROM accounts WHERE address = ?", (signer,)).fetchone()[0]
    message = _signed_message(signer, nonce, pallet, call, args)
    if signature is None:
        assert sign is not None
        signature = sign(message).hex()
    last = conn.execute("SELECT hash FROM transactions ORDER BY seq DESC LIMIT 1").fetchone()
    prev_hash = last[0] if last else GENESIS_HASH
    conn.execute(
        "INSERT INTO transactions (seq, block, signer, nonce, pallet, call, args, signature,"
        " prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, block, signer, nonce, pallet, call, canonical_json(args), signature, prev_hash,
         _record_hash(prev_hash, seq, block, message, signature)),
    )
    conn.execute("UPDATE accounts SET nonce = nonce + 1 WHERE address = ?", (signer,))
    return nonce


def _connect(target: str) -> sqlite3.Connection:
    conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def _open_ledger(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL and create the schema, riding out first-open races.

    When several processes create the file at once, SQLite answers the journal-mode
    switch (and reads during it) with an immediate "database is locked" that the
    busy timeout does not cover, so those are retried here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise sqlite3.OperationalError("database is locked (journal mode stays "
                                                   f"{mode})")
            _init_schema(conn)
            return
        except sqlite3.OperationalError as exc:
            transient = "locked" in str(exc) or "busy" in str(exc)
            if not transient or time.monotonic() > deadline:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        time.sleep(0.005 + random.random() * 0.02)


@contextmanager
def _db_errors(path: Path) -> Iterator[None]:
    """SQLite failures (locked past the timeout, unreadable file) as ChainUnavailable."""
    try:
        yield
    except sqlite3.IntegrityError:
        raise  # a constraint broken by our own code is a bug, not an outage
    except sqlite3.DatabaseError as exc:
        raise ChainUnavailable(f"the embedded chain {path} is unusable: {exc}") from exc


class EmbeddedLedger(ChainClient):
    """The chain in one SQLite file, shared by every process of a devnet."""

    def __init__(self, path: Path | str, account: Account | None = None) -> None:
        self.path = Path(path)
        self._account = account
        self.account = account.address if account is not None else ""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._generation = 0
        with _db_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _open_ledger(self._conn())

    # ---- connections --------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", -1) != self._generation:
            conn = _connect(str(self.path))
            conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
            self._local.generation = self._generation
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
            self._generation += 1
        for conn in connections:
            with suppress(sqlite3.Error):
                conn.close()

    def as_account(self, account: Account) -> EmbeddedLedger:
        """A client on the same ledger file that signs as `account`."""
        return EmbeddedLedger(self.path, account)

    def _read(self, fn: Callable[[_Ctx], T]) -> T:
        """Run queries in one read transaction (a consistent snapshot)."""
        with _db_errors(self.path):
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                ctx = _Ctx(conn, _block_at(conn, time.time()), self.account, 0)
                return fn(ctx)
            finally:
                conn.execute("COMMIT")

    def _submit(self, pallet: str, call: str, args: dict) -> None:
        """Apply one signed call in one write transaction and log it."""
        account = self._account
        if account is None:
            raise KeyFileError(
                "no signing account: this chain client can only query",
                hint="give a key file (key_file in the config)",
            )
        # the handler sees exactly what the log will hold, so a replay decides the same
        args = json.loads(canonical_json(args))
        handler = _HANDLERS[(pallet, call)]
        with _db_errors(self.path):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                block = _block_at(conn, time.time())
                last = conn.execute("SELECT MAX(seq) FROM transactions").fetchone()[0]
                seq = (last or 0) + 1
                handler(_Ctx(conn, block, account.address, seq), args)
                _append_transaction(conn, seq, block, account.address, pallet, call, args,
                                    sign=account.sign)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # ---- StorageHandler -----------------------------------------------------------

    def mint_territory(self, name: str, gib_count: int, days: int) -> None:
        self._submit("StorageHandler", "mint_territory",
                     {"territory_name": name, "gib_count": gib_count, "days": days})

    def expand_territory(self, name: str, gib_count: int) -> None:
        self._submit("StorageHandler", "expanding_territory",
                     {"territory_name": name, "gib_count": gib_count})

    def renew_territory(self, name: str, days: int) -> None:
        """Extend the lease by `days`; an expired territory is reactivated from now."""
        self._submit("StorageHandler", "renewal_territory", {"territory_name": name, "days": days})

    def territory(self, owner: str, name: str) -> Territory | None:
        def query(ctx: _Ctx) -> Territory | None:
            row = ctx.one("SELECT * FROM territories WHERE owner = ? AND name = ?", (owner, name))
            return None if row is None else _territory(row, ctx.block)

        return self._read(query)

    def territories(self, owner: str) -> list[Territory]:
        return self._read(lambda ctx: [
            _territory(row, ctx.block)
            for row in ctx.all("SELECT * FROM territories WHERE owner = ? ORDER BY name", (owner,))
        ])

    # ---- FileBank: buckets ------------------------------------------------------------

    def create_bucket(self, owner: str, name: str) -> None:
        _check_address(owner, "owner")
        self._submit("FileBank", "create_bucket", {"owner": owner, "name": name})

    def delete_bucket(self, owner: str, name: str) -> None:
        _check_address(owner, "owner")
        self._submit("FileBank", "delete_bucket", {"owner": owner, "name": name})

    def bucket(self, owner: str, name: str) -> BucketInfo | None:
        def query(ctx: _Ctx) -> BucketInfo | None:
            if ctx.one("SELECT 1 FROM buckets WHERE owner = ? AND name = ?", (owner, name)) is None:
                return None
            objects = ctx.all(
                "SELECT fid FROM bucket_objects WHERE owner = ? AND bucket = ? ORDER BY id",
                (owner, name),
            )
            return BucketInfo(owner, name, tuple(r["fid"] for r in objects), (owner,))

        return self._read(query)

    def buckets(self, owner: str) -> list[str]:
        return self._read(lambda ctx: [
            r["name"]
            for r in ctx.all("SELECT name FROM buckets WHERE owner = ? ORDER BY name", (owner,))
        ])

    # ---- FileBank: storage orders and files -------------------------------------------

    def upload_declaration(
        self,
        fid: str,
        segments: list[SegmentSpec],
        user_brief: UserBrief,
        file_size: int,
    ) -> None:
        _check_address(user_brief.user, "user")
        deal_info = [
            {"hash": s.hash, "fragment_list": list(s.fragment_hashes)} for s in segments
        ]
        brief = {
            "user": user_brief.user,
            "file_name": user_brief.file_name,
            "bucket_name": user_brief.bucket_name,
            "territory_name": user_brief.territory_name,
        }
        self._submit("FileBank", "upload_declaration",
                     {"file_hash": fid, "deal_info": deal_info, "user_brief": brief,
                      "file_size": file_size})

    def transfer_report(self, index: int, fid: str) -> None:
        self._submit("FileBank", "transfer_report", {"index": index, "deal_hash": fid})

    def delete_file(self, owner: str, fid: str) -> None:
        _check_address(owner, "owner")
        self._submit("FileBank", "delete_file", {"owner": owner, "file_hash": fid})

    def file(self, fid: str) -> FileInfo | None:
        def query(ctx: _Ctx) -> FileInfo | None:
            row = ctx.one("SELECT * FROM files WHERE fid = ?", (fid,))
            if row is None:
                return None
            owners = ctx.all("SELECT * FROM file_owners WHERE fid = ? ORDER BY id", (fid,))
            segments = tuple(
                SegmentInfo(
                    s["hash"],
                    tuple(FragmentInfo(f["hash"], f["avail"], f["miner"]) for f in s["fragments"]),
                )
                for s in json.loads(row["segments"])
            )
            return FileInfo(
                fid=fid,
                segments=segments,
                owners=tuple(_brief(o) for o in owners),
                file_size=row["file_size"],
                completion=row["completion"],
                state=FileState(row["state"]),
            )

        return self._read(query)

    def deal(self, fid: str) -> DealInfo | None:
        def query(ctx: _Ctx) -> DealInfo | None:
            row = ctx.one("SELECT * FROM deals WHERE fid = ?", (fid,))
            if row is None:
                return None
            reports = ctx.all(
                "SELECT idx, miner FROM deal_reports WHERE fid = ? ORDER BY id", (fid,)
            )
            return DealInfo(
                fid=fid,
                file_size=row["file_size"],
                segments=tuple(
                    SegmentSpec(s["hash"], tuple(s["fragment_list"]))
                    for s in json.loads(row["segments"])
                ),
                user=_brief(row),
                complete_list=tuple(CompleteInfo(r["idx"], r["miner"]) for r in reports),
            )

        return self._read(query)

    def user_files(self, owner: str) -> list[UserFileSlice]:
        return self._read(lambda ctx: [
            UserFileSlice(r["territory_name"], r["fid"], r["file_size"])
            for r in ctx.all("SELECT * FROM user_files WHERE owner = ? ORDER BY id", (owner,))
        ])

    # ---- FileBank: restoral orders --------------------------------------------------------

    def generate_restoral_order(self, fid: str, fragment_hash: str,
                                origin_miner: str | None = None) -> None:
        args: dict[str, Any] = {"file_hash": fid, "restoral_fragment": fragment_hash}
        if origin_miner is not None:
            args["origin_miner"] = origin_miner
        self._submit("FileBank", "generate_restoral_order", args)

    def claim_restoral_order(self, fragment_hash: str) -> None:
        self._submit("FileBank", "claim_restoral_order", {"restoral_fragment": fragment_hash})

    def restoral_order_complete(self, fragment_hash: str) -> None:
        self._submit("FileBank", "restoral_order_complete", {"fragment_hash": fragment_hash})

    def restoral_order(self, fragment_hash: str) -> RestoralOrder | None:
        def query(ctx: _Ctx) -> RestoralOrder | None:
            row = ctx.one("SELECT * FROM restoral_orders WHERE fragment_hash = ?",
                          (fragment_hash,))
            if row is None:
                return None
            return RestoralOrder(row["fragment_hash"], row["fid"], row["origin_miner"],
                                 row["miner"], row["count"], row["gen_block"], row["deadline"])

        return self._read(query)

    # ---- Sminer -------------------------------------------------------------------------

    def storage_nodes(self) -> list[StorageNode]:
        return self._read(lambda ctx: [
            _node(r) for r in ctx.all("SELECT * FROM nodes ORDER BY account")
        ])

    def storage_node(self, account: str) -> StorageNode | None:
        def query(ctx: _Ctx) -> StorageNode | None:
            row = ctx.one("SELECT * FROM nodes WHERE account = ?", (account,))
            return None if row is None else _node(row)

        return self._read(query)

    def register_storage_node(self, endpoint: str, idle_space: int) -> None:
        self._submit("Sminer", "register_storage_node",
                     {"endpoint": endpoint, "idle_space": idle_space})

    def set_node_state(self, account: str, state: MinerState | str) -> None:
        """Dev call (Sudo): put a storage node in `state` (positive, frozen, ...)."""
        _check_address(account, "account")
        self._submit("Sudo", "set_node_state", {"account": account, "state": str(state)})

    # ---- Oss ------------------------------------------------------------------------------

    def authorize(self, operator: str) -> None:
        _check_address(operator, "operator")
        self._submit("Oss", "authorize", {"operator": operator})

    def cancel_authorize(self, operator: str) -> None:
        _check_address(operator, "operator")
        self._submit("Oss", "cancel_authorize", {"oss": operator})

    def authorized_gateways(self, owner: str) -> list[str]:
        return self._read(lambda ctx: [
            r["operator"]
            for r in ctx.all(
                "SELECT operator FROM authorities WHERE owner = ? ORDER BY id", (owner,)
            )
        ])

    def register_gateway(self, endpoint: str, domain: str = "") -> None:
        self._submit("Oss", "register", {"endpoint": endpoint, "domain": domain})

    def gateways(self) -> list[Gateway]:
        return self._read(lambda ctx: [
            Gateway(r["account"], r["endpoint"], r["domain"])
            for r in ctx.all("SELECT * FROM gateways ORDER BY account")
        ])

    # ---- balances and time (dev) --------------------------------------------------------

    def fund(self, address: str, amount: int) -> None:
        """Dev call: credit `amount` (smallest unit; 10**18 = 1 TCESS) to `address`."""
        _check_address(address, "address")
        self._submit("Balances", "fund", {"address": address, "amount": amount})

    def balance(self, address: str) -> int:
        return self._read(lambda ctx: _balance_of(ctx, address))

    def advance_time(self, seconds: float) -> None:
        """Dev call: move the chain's clock forward (1 day = 86400 s = 14400 blocks)."""
        self._submit("Sudo", "advance_time", {"seconds": seconds})

    # ---- system -----------------------------------------------------------------------------

    def block_number(self) -> int:
        return self._read(lambda ctx: ctx.block)

    def events(self, since_block: int = 0) -> list[ChainEvent]:
        return self._read(lambda ctx: [
            ChainEvent(r["block"], r["pallet"], r["name"], json.loads(r["attributes"]))
            for r in ctx.all("SELECT * FROM events WHERE block >= ? ORDER BY id", (since_block,))
        ])

    # ---- history ------------------------------------------------------------------------------

    def verify_log(self) -> int:
        """Re-check every signature, nonce and the hash chain; returns the call count.

        Raises `IntegrityError` naming the first bad sequence number.
        """
        rows = self._read(lambda ctx: ctx.all("SELECT * FROM transactions ORDER BY seq"))
        prev_hash = GENESIS_HASH
        nonces: dict[str, int] = {}
        for expected_seq, row in enumerate(rows, start=1):
            seq = row["seq"]

            def bad(why: str, seq: int = seq) -> IntegrityError:
                return IntegrityError(f"the chain's transaction log is broken at seq {seq}: {why}")

            if seq != expected_seq:
                raise bad(f"seq {expected_seq} is missing")
            if row["prev_hash"] != prev_hash:
                raise bad("it does not link to the previous entry")
            try:
                args = json.loads(row["args"])
            except ValueError:
                raise bad("its arguments are not JSON") from None
            if canonical_json(args) != row["args"]:
                raise bad("its arguments are not in canonical form")
            signer = row["signer"]
            if row["nonce"] != nonces.get(signer, 0):
                raise bad(f"nonce {row['nonce']} of {signer} is out of order")
            nonces[signer] = row["nonce"] + 1
            message = _signed_message(signer, row["nonce"], row["pallet"], row["call"], args)
            try:
                signature = bytes.fromhex(row["signature"])
            except ValueError:
                raise bad("its signature is not hex") from None
            if not verify_signature(signer, message, signature):
                raise bad(f"the signature of {signer} does not verify")
            if _record_hash(prev_hash, seq, row["block"], message, row["signature"]) != row["hash"]:
                raise bad("its hash does not match its content")
            prev_hash = row["hash"]
        return len(rows)

    def replay_check(self) -> int:
        """Replay the log into a fresh in-memory ledger and compare every state table.

        Proves that the state is what the recorded history produces. Raises
        `IntegrityError` naming the first call that replays differently or the first
        table that disagrees; returns the number of calls replayed.
        """
        count = self.verify_log()

        def snapshot(ctx: _Ctx) -> dict[str, list[tuple]]:
            return {t: [tuple(r) for r in ctx.all(f"SELECT * FROM {t}")] for t in _STATE_TABLES}

        original = self._read(snapshot)
        genesis = float(dict((r[0], r[1]) for r in original["meta"])["genesis_time"])
        replica = _connect(":memory:")
        try:
            _init_schema(replica, genesis_time=genesis)
            for row in sorted(original["transactions"]):
                seq, block, signer, nonce, pallet, call, args_text, signature = row[:8]
                handler = _HANDLERS.get((pallet, call))
                if handler is None:
                    raise IntegrityError(f"seq {seq}: unknown call {pallet}.{call}")
                args = json.loads(args_text)
                replica.execute("BEGIN")
                try:
                    handler(_Ctx(replica, block, signer, seq), args)
                    used = _append_transaction(replica, seq, block, signer, pallet, call, args,
                                               signature=signature)
                except IntegrityError:
                    raise
                except Exception as exc:
                    raise IntegrityError(
                        f"seq {seq}: {pallet}.{call} does not replay: {exc}"
                    ) from exc
                finally:
                    if replica.in_transaction:
                        replica.execute("COMMIT")
                if used != nonce:
                    raise IntegrityError(f"seq {seq}: nonce {nonce} replays as {used}")
            replayed = {
                t: [tuple(r) for r in replica.execute(f"SELECT * FROM {t}")] for t in _STATE_TABLES
            }
        finally:
            replica.close()
        for table in _STATE_TABLES:
            if sorted(original[table], key=repr) != sorted(replayed[table], key=repr):
                raise IntegrityError(
                    f"the chain's table {table!r} disagrees with its transaction log"
                )
        return count


# ---- row → interface dataclasses --------------------------------------------------------


def _territory(row: sqlite3.Row, block: int) -> Territory:
    state = TerritoryState.EXPIRED if _expired(row, block) else TerritoryState.ACTIVE
    return Territory(
        owner=row["owner"],
        name=row["name"],
        total_space=row["total_space"],
        used_space=row["used_space"],
        locked_space=row["locked_space"],
        remaining_space=_remaining(row),
        start=row["start"],
        deadline=row["deadline"],
        state=state,
    )


def _brief(row: sqlite3.Row) -> UserBrief:
    return UserBrief(row["user"], row["file_name"], row["bucket_name"], row["territory_name"])


def _node(row: sqlite3.Row) -> StorageNode:
    return StorageNode(
        account=row["account"],
        endpoint=row["endpoint"],
        state=MinerState(row["state"]),
        idle_space=row["idle_space"],
        service_space=row["service_space"],
    )


def _check_address(address: str, what: str) -> None:
    """Refuse a malformed account before anything is signed (the chain cannot decode it)."""
    if not isinstance(address, str) or not valid_address(address):
        raise InvalidInput(f"{what} {address!r} is not a CESS account address (SS58, prefix 11330)")
