"""The real CESS chain: `ChainClient` over substrate-interface (runtime spec 100).

One websocket connection (`CessConnection`) is shared by every client made from it
(`CessChain.as_account`), guarded by a lock: substrate-interface is blocking and its
websocket transport is not thread-safe. Endpoints are tried in order; a broken
connection is dropped and the next endpoint is tried (failover), the call retried.

Extrinsics: the nonce of each signer is fetched once (`system_accountNextIndex`) and
then counted locally under the lock, so threads that submit concurrently get
consecutive nonces; the lock is held from nonce to pool admission only, inclusion is
awaited outside it by scanning new blocks for the extrinsic's hash. A nonce error
(stale, future, same-nonce replacement) drops the local count and the call is signed
again. The dispatch result is read from the block's events; a module error becomes
`errors.chain_error(<CESS error name>)`, the same names the embedded ledger raises.

Encoding facts (docs/cess-protocol.md):
- a `Hash` is `[u8; 64]`: the 64 ASCII characters of the hex digest;
- in spec 100 `Sminer.MinerItems.peer_id` and `Oss.register(endpoint)` are `[u8; 38]`
  (a libp2p peer id); a deossfs network carries its HTTP endpoint there, NUL-padded;
- substrate-interface needs the BoundedVec type-registry fix to encode FileBank calls.

One file of about 800 lines: the connection, the nonce discipline, the encodings and the
calls are one client, and each call needs all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

from scalecodec.base import ScaleBytes
from substrateinterface import Keypair, SubstrateInterface
from substrateinterface.base import ExtrinsicReceipt
from substrateinterface.exceptions import SubstrateRequestException
from substrateinterface.storage import StorageKey
from websocket import WebSocketException

from ..errors import ChainError, ChainUnavailable, ConfigError, KeyFileError, chain_error
from ..keys import Account
from ..processing.layout import SS58_FORMAT
from .interface import (
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

log = logging.getLogger(__name__)
T = TypeVar("T")

#: substrate-interface 1.8.1 cannot encode FileBank calls without these aliases
TYPE_REGISTRY_FIX = {
    "types": {
        "bounded_collections::bounded_vec::BoundedVec": "BoundedVec",
        "bounded_collections::weak_bounded_vec::WeakBoundedVec": "BoundedVec",
    }
}
PEER_ID_BYTES = 38  # spec 100: Sminer peer_id and Oss endpoint are [u8; 38]
HASH_CHARS = 64
NAME_MAX_BYTES = 63  # FileBank NameStrLimit, StorageHandler NameLimit
DOMAIN_MAX_BYTES = 50
#: how far back `events()` looks at most (one storage read per block)
EVENT_SCAN_BLOCKS = 600
#: how often a storage read checks the runtime's version (a runtime upgrade changes how
#: storage decodes)
RUNTIME_CHECK_SECONDS = 60.0
#: FileBank `File` entries read in one query
FILES_PER_QUERY = 64
#: pallets whose events `events()` leaves out (fees and extrinsic bookkeeping)
_NOISE_PALLETS = frozenset({"System", "TransactionPayment", "Balances", "Treasury"})

#: connection-level failures: the endpoint is gone, try the next one
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    WebSocketException, ConnectionError, OSError, TimeoutError,
)
#: transaction-pool refusals that mean "this nonce is wrong, count again"
_NONCE_ERRORS = ("outdated", "stale", "future", "priority is too low", "already imported")


def encode_hash(value: str) -> str:
    """A 64-character hex digest as the chain's `[u8; 64]` of ASCII, in 0x-hex."""
    if not isinstance(value, str) or len(value) != HASH_CHARS or not value.isascii():
        raise chain_error("SpecError", f"a CESS hash is {HASH_CHARS} ASCII characters: {value!r}")
    return "0x" + value.encode("ascii").hex()


def decode_hash(value: Any) -> str:
    """The chain's `[u8; 64]` (0x-hex of ASCII, as substrate-interface returns it) as text."""
    if isinstance(value, str) and value.startswith("0x"):
        raw = bytes.fromhex(value[2:])
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return value
    if isinstance(value, list | tuple | bytes):
        return bytes(value).decode("ascii", errors="replace")
    return str(value)


def encode_peer_id(endpoint: str) -> list[int]:
    """An endpoint carried in spec 100's 38-byte peer id, NUL-padded."""
    raw = endpoint.encode("utf-8")
    if not raw:
        raise chain_error("SpecError", "an endpoint is needed")
    if len(raw) > PEER_ID_BYTES:
        raise chain_error(
            "LengthExceedsLimit",
            f"endpoint {endpoint!r} is {len(raw)} bytes; spec 100 carries at most "
            f"{PEER_ID_BYTES} (its libp2p peer id field)",
        )
    return list(raw.ljust(PEER_ID_BYTES, b"\0"))


def decode_peer_id(value: Any) -> str:
    """The endpoint in a peer id, or "" when it is a real libp2p id (not text)."""
    if isinstance(value, str) and value.startswith("0x"):
        raw = bytes.fromhex(value[2:])
    elif isinstance(value, list | tuple | bytes):
        raw = bytes(value)
    else:
        return str(value or "")
    text = raw.rstrip(b"\0")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return decoded if decoded.isprintable() else ""


def _text(value: Any) -> str:
    """A BoundedVec<u8> name: substrate-interface gives text, or 0x-hex if not UTF-8."""
    if isinstance(value, str) and value.startswith("0x") and len(value) % 2 == 0:
        try:
            return bytes.fromhex(value[2:]).decode("utf-8")
        except ValueError:
            return value
    return str(value)


def _check_name(name: str, what: str) -> None:
    """Names longer than the runtime's bound cannot be encoded into the call at all."""
    if not isinstance(name, str):
        raise chain_error("SpecError", f"a {what} must be a string")
    if len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise chain_error("LengthExceedsLimit", f"a {what} has at most {NAME_MAX_BYTES} bytes")


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


class CessConnection:
    """One reused RPC connection to a CESS chain, with failover over `endpoints`."""

    def __init__(self, endpoints: Iterable[str], *, timeout: float = 30.0,
                 inclusion_timeout: float = 120.0) -> None:
        self.endpoints = [e for e in endpoints if e]
        if not self.endpoints:
            raise ConfigError(
                "no CESS RPC endpoint configured",
                hint='set chain.endpoints = ["wss://..."] in the config',
            )
        self.timeout = timeout
        self.inclusion_timeout = inclusion_timeout
        self.lock = threading.RLock()
        self._si: SubstrateInterface | None = None
        self._current = 0
        self._nonces: dict[str, int] = {}
        #: block hash -> extrinsic hashes, for the inclusion scan (blocks never change)
        self._block_extrinsics: dict[str, list[str]] = {}
        self._dev: bool | None = None
        self._runtime_checked = -RUNTIME_CHECK_SECONDS
        self._users = 0
        self._closed = False

    # ---- connection ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.endpoints[self._current]

    def _connect(self) -> SubstrateInterface:
        problems = []
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            url = self.endpoints[index]
            try:
                si = SubstrateInterface(
                    url=url, ss58_format=SS58_FORMAT, type_registry=TYPE_REGISTRY_FIX,
                    ws_options={"timeout": self.timeout}, auto_reconnect=False,
                )
                si.init_runtime()  # metadata now, so a half-working endpoint fails here
            except (*_CONNECTION_ERRORS, SubstrateRequestException, ValueError) as exc:
                problems.append(f"{url}: {exc or type(exc).__name__}")
                log.warning("CESS endpoint %s failed: %s", url, exc)
                continue
            if index != self._current:
                log.warning("CESS RPC: failed over to %s", url)
            self._current = index
            self._si = si
            self._runtime_checked = time.monotonic()
            self._block_extrinsics.clear()
            return si
        raise ChainUnavailable("no CESS RPC endpoint answered: " + "; ".join(problems))

    def _drop(self, exc: BaseException) -> None:
        log.warning("CESS RPC connection to %s lost: %s", self.url, exc)
        if self._si is not None:
            with contextlib.suppress(Exception):  # it is broken already
                self._si.close()
        self._si = None
        # the next attempt starts with the next endpoint
        self._current = (self._current + 1) % len(self.endpoints)

    def run(self, fn: Callable[[SubstrateInterface], T]) -> T:
        """Run `fn(substrate)` under the lock, failing over on connection errors."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints) + 1):
            with self.lock:
                if self._closed:
                    raise ChainUnavailable("the CESS connection is closed")
                si = self._si or self._connect()
                try:
                    return fn(si)
                except _CONNECTION_ERRORS as exc:
                    last = exc
                    self._drop(exc)
        raise ChainUnavailable(f"the CESS chain stopped answering: {last}")

    def check_runtime(self, si: SubstrateInterface) -> None:
        """Make sure `si` decodes with the chain's current runtime (call with the lock held):
        checked at most every RUNTIME_CHECK_SECONDS, since a runtime upgrade is rare and the
        check costs three round trips."""
        now = time.monotonic()
        if si.metadata is None or now - self._runtime_checked >= RUNTIME_CHECK_SECONDS:
            si.init_runtime()
            self._runtime_checked = now

    def acquire(self) -> None:
        with self.lock:
            self._users += 1

    def release(self) -> None:
        with self.lock:
            self._users -= 1
            if self._users > 0:
                return
            self._closed = True
            if self._si is not None:
                with contextlib.suppress(Exception):
                    self._si.close()
                self._si = None

    # ---- nonces ------------------------------------------------------------------------

    def next_nonce(self, si: SubstrateInterface, address: str) -> int:
        """The nonce for `address`'s next extrinsic (call with the lock held)."""
        if address not in self._nonces:
            self._nonces[address] = int(si.rpc_request("system_accountNextIndex", [address])["result"])
        nonce = self._nonces[address]
        self._nonces[address] = nonce + 1
        return nonce

    def resync(self, address: str | None = None) -> None:
        """Forget local nonces (after a nonce error, or after the chain was rewound)."""
        with self.lock:
            if address is None:
                self._nonces.clear()
            else:
                self._nonces.pop(address, None)

    # ---- dev RPCs (chopsticks only) ------------------------------------------------------

    @property
    def dev(self) -> bool:
        """True on a local development chain (chopsticks' dev_* RPCs, loopback only)."""
        if self._dev is None:
            def probe(si: SubstrateInterface) -> bool:
                return bool(si.supports_rpc_method("dev_setStorage"))

            self._dev = all(_is_loopback(u) for u in self.endpoints) and self.run(probe)
        return self._dev

    def set_storage(self, items: list[tuple[str, str | None]]) -> None:
        """Dev: write raw storage (key hex -> SCALE hex, None deletes), no block."""
        if not self.dev:
            raise ChainError("NoPermission", "dev_setStorage exists only on a local dev chain")
        self.run(lambda si: si.rpc_request("dev_setStorage", [[list(kv) for kv in items]]))

    def set_head(self, block: int) -> None:
        """Dev: rewind the chain to `block` (instant); local nonces are resynced."""
        if not self.dev:
            raise ChainError("NoPermission", "dev_setHead exists only on a local dev chain")
        self.run(lambda si: si.rpc_request("dev_setHead", [block]))
        self.resync()


class CessChain(ChainClient):
    """A CESS chain reached over RPC; calls are signed by `account` (if given)."""

    def __init__(
        self,
        endpoints: Iterable[str] | CessConnection,
        account: Account | None = None,
        *,
        timeout: float = 30.0,
        inclusion_timeout: float = 120.0,
    ) -> None:
        if isinstance(endpoints, CessConnection):
            self.connection = endpoints
        else:
            self.connection = CessConnection(
                endpoints, timeout=timeout, inclusion_timeout=inclusion_timeout
            )
        self.connection.acquire()
        self._account = account
        self.account = account.address if account is not None else ""
        self._closed = False

    def as_account(self, account: Account) -> CessChain:
        """A client on the same connection that signs as `account`."""
        return CessChain(self.connection, account)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.connection.release()

    # ---- plumbing ----------------------------------------------------------------------

    def _query(self, pallet: str, item: str, params: list | None = None) -> Any:
        """One storage entry at the best block: one round trip. (substrate-interface's
        `query` asks for the chain head first, and for the runtime's version again at every
        new block: two to four.)"""

        def fetch(si: SubstrateInterface) -> Any:
            self.connection.check_runtime(si)
            key = StorageKey.create_from_storage_function(
                pallet, item, params or [], runtime_config=si.runtime_config, metadata=si.metadata)
            response = si.rpc_request("state_getStorage", [key.to_hex()])
            if "error" in response:
                raise SubstrateRequestException(response["error"]["message"])
            data = response.get("result")
            return key.decode_scale_value(None if data is None else ScaleBytes(data)).value

        return self.connection.run(fetch)

    def _query_map(self, pallet: str, item: str, params: list | None = None) -> list[tuple[Any, Any]]:
        def fetch(si: SubstrateInterface) -> list[tuple[Any, Any]]:
            result = si.query_map(pallet, item, params or [], page_size=200)
            return [(key.value, value.value) for key, value in result]

        return self.connection.run(fetch)

    def _keypair(self) -> Keypair:
        if self._account is None:
            raise KeyFileError(
                "no signing account: this chain client can only query",
                hint="give a key file (key_file in the config)",
            )
        return self._account.keypair

    def _submit(self, pallet: str, call: str, params: dict) -> list[ChainEvent]:
        """Sign, submit, wait for inclusion; returns the call's events or raises its error."""
        keypair = self._keypair()
        conn = self.connection
        for attempt in range(4):
            def sign_and_send(si: SubstrateInterface) -> tuple[str, int]:
                composed = si.compose_call(pallet, call, params)
                nonce = conn.next_nonce(si, keypair.ss58_address)
                extrinsic = si.create_signed_extrinsic(call=composed, keypair=keypair, nonce=nonce)
                data = bytes(extrinsic.data.data)
                ext_hash = "0x" + hashlib.blake2b(data, digest_size=32).hexdigest()
                head = _head_number(si)
                try:
                    si.rpc_request("author_submitExtrinsic", ["0x" + data.hex()])
                except SubstrateRequestException as exc:
                    conn.resync(keypair.ss58_address)
                    raise _PoolRefusal(exc) from None
                except _CONNECTION_ERRORS as exc:
                    # it may have reached the pool: send the same bytes again elsewhere
                    conn._drop(exc)
                    raise _Interrupted(data, ext_hash, head) from exc
                return ext_hash, head

            try:
                ext_hash, head = conn.run(sign_and_send)
            except _PoolRefusal as refusal:
                text = refusal.text.lower()
                if any(word in text for word in _NONCE_ERRORS) and attempt < 3:
                    log.info("%s.%s: nonce refused (%s); signing again", pallet, call, refusal.text)
                    continue
                raise _pool_error(pallet, call, refusal.text) from None
            except _Interrupted as cut:
                ext_hash, head = cut.ext_hash, cut.head

                def resend(si: SubstrateInterface, data: bytes = cut.data) -> None:
                    # "already imported" or "outdated" (included meanwhile): the scan decides
                    with contextlib.suppress(SubstrateRequestException):
                        si.rpc_request("author_submitExtrinsic", ["0x" + data.hex()])

                conn.run(resend)
            except ValueError as exc:
                # substrate-interface could not encode the arguments
                raise chain_error("SpecError", f"{pallet}.{call}: arguments refused: {exc}") from None
            return self._await_inclusion(pallet, call, ext_hash, head)
        raise ChainUnavailable(f"{pallet}.{call}: the chain kept refusing the nonce")

    def _await_inclusion(self, pallet: str, call: str, ext_hash: str, head: int) -> list[ChainEvent]:
        conn = self.connection
        deadline = time.monotonic() + conn.inclusion_timeout
        scanned = head
        delay = 0.05
        while True:
            def scan(si: SubstrateInterface, after: int = scanned) -> tuple[int, tuple | None]:
                top = _head_number(si)
                for number in range(after + 1, top + 1):
                    block_hash = si.rpc_request("chain_getBlockHash", [number])["result"]
                    hashes = conn._block_extrinsics.get(block_hash)
                    if hashes is None:
                        block = si.rpc_request("chain_getBlock", [block_hash])["result"]["block"]
                        hashes = [
                            "0x" + hashlib.blake2b(bytes.fromhex(x[2:]), digest_size=32).hexdigest()
                            for x in block["extrinsics"]
                        ]
                        conn._block_extrinsics[block_hash] = hashes
                    if ext_hash in hashes:
                        receipt = ExtrinsicReceipt(si, extrinsic_hash=ext_hash, block_hash=block_hash,
                                                   block_number=number,
                                                   extrinsic_idx=hashes.index(ext_hash))
                        events = [_event(number, e.value) for e in receipt.triggered_events]
                        return top, (receipt.is_success, receipt.error_message, events)
                return max(top, after), None

            scanned, found = conn.run(scan)
            if found is not None:
                success, error, events = found
                if success:
                    return [e for e in events if e.pallet not in _NOISE_PALLETS]
                raise _dispatch_error(pallet, call, error)
            if time.monotonic() > deadline:
                conn.resync(self.account)
                raise ChainUnavailable(
                    f"{pallet}.{call} was not included within {conn.inclusion_timeout:.0f}s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # ---- StorageHandler ------------------------------------------------------------------

    def mint_territory(self, name: str, gib_count: int, days: int) -> None:
        _check_name(name, "territory name")
        self._submit("StorageHandler", "mint_territory",
                     {"gib_count": gib_count, "territory_name": name, "days": days})

    def expand_territory(self, name: str, gib_count: int) -> None:
        _check_name(name, "territory name")
        self._submit("StorageHandler", "expanding_territory",
                     {"territory_name": name, "gib_count": gib_count})

    def renew_territory(self, name: str, days: int) -> None:
        """Extend the lease; an expired territory is reactivated (the runtime's own call)."""
        _check_name(name, "territory name")
        current = self.territory(self.account, name) if self.account else None
        call = "renewal_territory"
        if current is not None and current.state == TerritoryState.EXPIRED:
            call = "reactivate_territory"
        self._submit("StorageHandler", call, {"territory_name": name, "days": days})

    def territory(self, owner: str, name: str) -> Territory | None:
        if len(name.encode("utf-8")) > NAME_MAX_BYTES:
            return None
        value = self._query("StorageHandler", "Territory", [owner, name])
        return None if value is None else _territory(owner, name, value)

    def territories(self, owner: str) -> list[Territory]:
        rows = self._query_map("StorageHandler", "Territory", [owner])
        return sorted((_territory(owner, _text(key), value) for key, value in rows),
                      key=lambda t: t.name)

    # ---- FileBank: buckets -----------------------------------------------------------------

    def create_bucket(self, owner: str, name: str) -> None:
        _check_name(name, "bucket name")
        self._submit("FileBank", "create_bucket", {"owner": owner, "name": name})

    def delete_bucket(self, owner: str, name: str) -> None:
        _check_name(name, "bucket name")
        self._submit("FileBank", "delete_bucket", {"owner": owner, "name": name})

    def bucket(self, owner: str, name: str) -> BucketInfo | None:
        if len(name.encode("utf-8")) > NAME_MAX_BYTES:
            return None
        value = self._query("FileBank", "Bucket", [owner, name])
        if value is None:
            return None
        return BucketInfo(
            owner=owner,
            name=name,
            object_list=tuple(decode_hash(h) for h in value["object_list"]),
            authority=tuple(value["authority"]),
        )

    def buckets(self, owner: str) -> list[str]:
        return sorted(_text(n) for n in self._query("FileBank", "UserBucketList", [owner]) or [])

    # ---- FileBank: storage orders and files ---------------------------------------------------

    def upload_declaration(
        self,
        fid: str,
        segments: list[SegmentSpec],
        user_brief: UserBrief,
        file_size: int,
    ) -> None:
        for name, what in ((user_brief.file_name, "file name"),
                           (user_brief.bucket_name, "bucket name"),
                           (user_brief.territory_name, "territory name")):
            _check_name(name, what)
        deal_info = [
            {"hash": encode_hash(s.hash), "fragment_list": [encode_hash(h) for h in s.fragment_hashes]}
            for s in segments
        ]
        brief = {
            "user": user_brief.user,
            "file_name": user_brief.file_name,
            "bucket_name": user_brief.bucket_name,
            "territory_name": user_brief.territory_name,
        }
        self._submit("FileBank", "upload_declaration",
                     {"file_hash": encode_hash(fid), "deal_info": deal_info, "user_brief": brief,
                      "file_size": file_size})

    def transfer_report(self, index: int, fid: str) -> None:
        self._submit("FileBank", "transfer_report", {"index": index, "deal_hash": encode_hash(fid)})

    def delete_file(self, owner: str, fid: str) -> None:
        self._submit("FileBank", "delete_file", {"owner": owner, "file_hash": encode_hash(fid)})

    def file(self, fid: str) -> FileInfo | None:
        return _file_info(fid, self._query("FileBank", "File", [encode_hash(fid)]))

    def files(self, fids: Sequence[str]) -> list[FileInfo | None]:
        """One `state_queryStorageAt` per FILES_PER_QUERY FIDs, all at one block (a
        consistent listing), where `file` costs a query - and substrate-interface's
        check of the runtime, three more round trips - each. A batch whose answer the node
        refuses (too large: ~1.2 kB per segment, and nodes cap an answer at ~10-15 MB) is
        read again in halves."""
        if not fids:
            return []
        block = self.connection.run(lambda si: si.get_chain_head())
        out: list[FileInfo | None] = []
        for start in range(0, len(fids), FILES_PER_QUERY):
            out.extend(self._files(fids[start:start + FILES_PER_QUERY], block))
        return out

    def _files(self, batch: Sequence[str], block: str) -> list[FileInfo | None]:
        def fetch(si: SubstrateInterface) -> list[Any]:
            si.init_runtime(block_hash=block)  # no round trip once it is this block's
            keys = [StorageKey.create_from_storage_function(
                "FileBank", "File", [encode_hash(fid)], runtime_config=si.runtime_config,
                metadata=si.metadata) for fid in batch]
            found = {key.to_hex(): value.value for key, value in si.query_multi(keys, block)}
            return [found.get(key.to_hex()) for key in keys]

        try:
            values = self.connection.run(fetch)
        except SubstrateRequestException:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            return self._files(batch[:half], block) + self._files(batch[half:], block)
        return [_file_info(fid, value) for fid, value in zip(batch, values, strict=True)]

    def deal(self, fid: str) -> DealInfo | None:
        value = self._query("FileBank", "DealMap", [encode_hash(fid)])
        if value is None:
            return None
        return DealInfo(
            fid=fid,
            file_size=int(value["file_size"]),
            segments=tuple(
                SegmentSpec(decode_hash(s["hash"]), tuple(decode_hash(h) for h in s["fragment_list"]))
                for s in value["segment_list"]
            ),
            user=_brief(value["user"]),
            complete_list=tuple(CompleteInfo(int(c["index"]), c["miner"])
                                for c in value["complete_list"]),
        )

    def user_files(self, owner: str) -> list[UserFileSlice]:
        return [
            UserFileSlice(_text(e["territory_name"]), decode_hash(e["file_hash"]), int(e["file_size"]))
            for e in self._query("FileBank", "UserHoldFileList", [owner]) or []
        ]

    # ---- FileBank: restoral orders ---------------------------------------------------------------

    def generate_restoral_order(self, fid: str, fragment_hash: str,
                                origin_miner: str | None = None) -> None:
        # the runtime names no miner: the order's origin is the signer (the holding miner)
        self._submit("FileBank", "generate_restoral_order",
                     {"file_hash": encode_hash(fid), "restoral_fragment": encode_hash(fragment_hash)})

    def claim_restoral_order(self, fragment_hash: str) -> None:
        self._submit("FileBank", "claim_restoral_order",
                     {"restoral_fragment": encode_hash(fragment_hash)})

    def restoral_order_complete(self, fragment_hash: str) -> None:
        self._submit("FileBank", "restoral_order_complete",
                     {"fragment_hash": encode_hash(fragment_hash)})

    def restoral_order(self, fragment_hash: str) -> RestoralOrder | None:
        value = self._query("FileBank", "RestoralOrder", [encode_hash(fragment_hash)])
        if value is None:
            return None
        return RestoralOrder(
            fragment_hash=decode_hash(value["fragment_hash"]),
            fid=decode_hash(value["file_hash"]),
            origin_miner=value["origin_miner"],
            miner=value["miner"],
            count=int(value["count"]),
            gen_block=int(value["gen_block"]),
            deadline=int(value["deadline"]),
        )

    # ---- Sminer ----------------------------------------------------------------------------------

    def storage_nodes(self) -> list[StorageNode]:
        return sorted((_node(account, value)
                       for account, value in self._query_map("Sminer", "MinerItems")),
                      key=lambda n: n.account)

    def storage_node(self, account: str) -> StorageNode | None:
        value = self._query("Sminer", "MinerItems", [account])
        return None if value is None else _node(account, value)

    def register_storage_node(self, endpoint: str, idle_space: int) -> None:
        """Check the signer is a miner and publish `endpoint` in its peer id.

        A CESS miner registers (`Sminer.regnstk`) with staking and TEE-certified idle
        space, which deossfs cannot do. A known miner's endpoint is updated with
        `Sminer.update_peer_id`; on a local dev chain it is written directly
        (dev_setStorage, no block), as the devnet injected the miner that way.
        """
        peer_id = encode_peer_id(endpoint)
        current = self.storage_node(self.account) if self.account else None
        if current is None:
            raise chain_error(
                "NotMiner",
                f"{self.account or 'this client'} is not a storage miner on this CESS chain: "
                "miners register with staking and TEE-certified space (cess-miner); deossfs "
                "cannot register one",
            )
        if current.endpoint == endpoint:
            return
        if self.connection.dev:
            self._dev_set_peer_id(self.account, bytes(peer_id))
            return
        self._submit("Sminer", "update_peer_id", {"peer_id": peer_id})

    def _dev_set_peer_id(self, account: str, peer_id: bytes) -> None:
        """Dev chain: rewrite the peer id inside the stored MinerItems value."""
        def patched(si: SubstrateInterface) -> tuple[str, str]:
            key = si.create_storage_key("Sminer", "MinerItems", [account]).to_hex()
            data = bytearray.fromhex(si.rpc_request("state_getStorage", [key])["result"][2:])
            # MinerInfo begins with beneficiary and staking_account (32 bytes each), then
            # the 38-byte peer id; rewriting bytes avoids re-encoding the whole struct
            start = 64
            decoded = decode_peer_id(bytes(data[start:start + PEER_ID_BYTES]))
            stored = decode_peer_id(si.query("Sminer", "MinerItems", [account]).value["peer_id"])
            if decoded != stored:
                raise ChainError("Unexpected", "Sminer.MinerItems has an unexpected layout")
            data[start:start + PEER_ID_BYTES] = peer_id
            return key, "0x" + data.hex()

        self.connection.set_storage([self.connection.run(patched)])

    # ---- Oss ---------------------------------------------------------------------------------------

    def authorize(self, operator: str) -> None:
        self._submit("Oss", "authorize", {"operator": operator})

    def cancel_authorize(self, operator: str) -> None:
        self._submit("Oss", "cancel_authorize", {"oss": operator})

    def authorized_gateways(self, owner: str) -> list[str]:
        return list(self._query("Oss", "AuthorityList", [owner]) or [])

    def register_gateway(self, endpoint: str, domain: str = "") -> None:
        """`Oss.register`, or `Oss.update` when the signer is registered already."""
        peer_id = encode_peer_id(endpoint)
        if len(domain.encode("utf-8")) > DOMAIN_MAX_BYTES:
            raise chain_error("LengthExceedsLimit", f"a domain has at most {DOMAIN_MAX_BYTES} bytes")
        known = self.account and self._query("Oss", "Oss", [self.account]) is not None
        self._submit("Oss", "update" if known else "register", {"endpoint": peer_id, "domain": domain})

    def gateways(self) -> list[Gateway]:
        return sorted(
            (Gateway(account, decode_peer_id(v["peer_id"]), _text(v.get("domain") or ""))
             for account, v in self._query_map("Oss", "Oss")),
            key=lambda g: g.account,
        )

    # ---- system -------------------------------------------------------------------------------------

    def block_number(self) -> int:
        return self.connection.run(_head_number)

    def events(self, since_block: int = 0) -> list[ChainEvent]:
        """Events of the CESS pallets from `since_block` on (at most the last 600 blocks)."""
        def collect(si: SubstrateInterface) -> list[ChainEvent]:
            top = _head_number(si)
            out: list[ChainEvent] = []
            for number in range(max(since_block, top - EVENT_SCAN_BLOCKS + 1, 0), top + 1):
                block_hash = si.get_block_hash(number)
                for record in si.get_events(block_hash):
                    event = _event(number, record.value)
                    if event.pallet not in _NOISE_PALLETS:
                        out.append(event)
            return out

        return self.connection.run(collect)

    def balance(self, address: str) -> int:
        value = self._query("System", "Account", [address])
        return int(value["data"]["free"]) if value else 0


# ---- helpers --------------------------------------------------------------------------------------


class _Interrupted(Exception):
    """The connection broke while an extrinsic was being submitted."""

    def __init__(self, data: bytes, ext_hash: str, head: int) -> None:
        super().__init__(ext_hash)
        self.data, self.ext_hash, self.head = data, ext_hash, head


class _PoolRefusal(Exception):
    """The transaction pool refused an extrinsic (never dispatched)."""

    def __init__(self, exc: SubstrateRequestException) -> None:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, dict):
            text = f"{detail.get('message', '')}: {detail.get('data', '')}"
        else:
            text = str(detail)
        super().__init__(text)
        self.text = text


def _pool_error(pallet: str, call: str, text: str) -> ChainError:
    lowered = text.lower()
    if "inability to pay" in lowered or "payment" in lowered:
        return chain_error("InsufficientBalance", f"{pallet}.{call}: the signer cannot pay the fee ({text})")
    return chain_error("InvalidTransaction", f"{pallet}.{call} refused by the transaction pool: {text}")


def _dispatch_error(pallet: str, call: str, error: Any) -> ChainError:
    if isinstance(error, dict):
        name = str(error.get("name") or error.get("type") or "Unknown")
        docs = error.get("docs")
        if isinstance(docs, list):
            docs = " ".join(d.strip() for d in docs if d.strip())
        if name in ("FundsUnavailable", "FundsUnavailable()"):
            name = "InsufficientBalance"
        detail = f": {docs}" if docs else ""
        return chain_error(name, f"{pallet}.{call} refused by the chain: {name}{detail}")
    return chain_error("Unknown", f"{pallet}.{call} refused by the chain: {error}")


def _head_number(si: SubstrateInterface) -> int:
    return int(si.rpc_request("chain_getHeader", [])["result"]["number"], 16)


def _enum(value: Any) -> str:
    """An enum decoded as "Active" or {"Active": None}."""
    if isinstance(value, dict):
        return next(iter(value))
    return str(value)


def _territory(owner: str, name: str, v: dict) -> Territory:
    return Territory(
        owner=owner,
        name=name,
        total_space=int(v["total_space"]),
        used_space=int(v["used_space"]),
        locked_space=int(v["locked_space"]),
        remaining_space=int(v["remaining_space"]),
        start=int(v["start"]),
        deadline=int(v["deadline"]),
        state=TerritoryState(_enum(v["state"])),
    )


def _file_info(fid: str, value: Any) -> FileInfo | None:
    """FileBank's `File` entry of `fid` (None: no such file)."""
    if value is None:
        return None
    segments = tuple(
        SegmentInfo(
            decode_hash(s["hash"]),
            tuple(FragmentInfo(decode_hash(f["hash"]), bool(f["avail"]), f["miner"])
                  for f in s["fragment_list"]),
        )
        for s in value["segment_list"]
    )
    return FileInfo(
        fid=fid,
        segments=segments,
        owners=tuple(_brief(b) for b in value["owner"]),
        file_size=int(value["file_size"]),
        completion=int(value["completion"]),
        state=FileState(_enum(value["stat"])),
    )


def _brief(v: dict) -> UserBrief:
    return UserBrief(v["user"], _text(v["file_name"]), _text(v["bucket_name"]),
                     _text(v["territory_name"]))


def _node(account: str, v: dict) -> StorageNode:
    return StorageNode(
        account=account,
        endpoint=decode_peer_id(v.get("peer_id", v.get("endpoint"))),
        state=MinerState(_enum(v["state"])),
        idle_space=int(v.get("idle_space") or 0),
        service_space=int(v.get("service_space") or 0),
    )


def _plain(value: Any) -> Any:
    """Event attributes with CESS hashes as text."""
    if isinstance(value, str) and value.startswith("0x") and len(value) == 2 + 2 * HASH_CHARS:
        text = decode_hash(value)
        return text if all(c in "0123456789abcdef" for c in text) else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _event(block: int, record: dict) -> ChainEvent:
    attributes = record.get("attributes")
    if not isinstance(attributes, dict):
        attributes = {"args": attributes} if attributes is not None else {}
    return ChainEvent(block, record["module_id"], record["event_id"], _plain(attributes))
