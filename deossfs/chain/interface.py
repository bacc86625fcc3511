"""The chain interface: one method per CESS call or storage item we use.

Calls map one-to-one onto the extrinsics of docs/cess-protocol.md
(pallets FileBank, StorageHandler, Oss, Sminer) and queries onto their storage
items. The interface is blocking and thread-safe: the trio side calls it through
`trio.to_thread.run_sync`. A call the chain refuses raises `errors.ChainError`
whose `name` is the CESS error name; an unreachable chain raises
`errors.ChainUnavailable` (temporary).

Hashes (FIDs, segment and fragment hashes) are 64-character lowercase hex
strings, as CESS stores them (`[u8; 64]` of ASCII). Accounts are SS58 strings
(prefix 11330).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class TerritoryState(enum.StrEnum):
    ACTIVE = "Active"
    FROZEN = "Frozen"
    EXPIRED = "Expired"
    ON_CONSIGNMENT = "OnConsignment"


class FileState(enum.StrEnum):
    ACTIVE = "Active"
    CALCULATE = "Calculate"
    MISSING = "Missing"
    RECOVERY = "Recovery"


class MinerState(enum.StrEnum):
    POSITIVE = "positive"
    EXIT = "exit"
    FROZEN = "frozen"
    LOCK = "lock"
    OFFLINE = "offline"


#: CESS makes a block every 6 seconds (block numbers stand for times: ages, deadlines)
BLOCK_SECONDS = 6


@dataclass(frozen=True)
class Territory:
    owner: str
    name: str
    total_space: int
    used_space: int
    locked_space: int
    remaining_space: int
    start: int  # block number
    deadline: int  # block number
    state: TerritoryState


@dataclass(frozen=True)
class UserBrief:
    user: str
    file_name: str
    bucket_name: str
    territory_name: str


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of a storage order: its hash and its 12 fragment hashes, in order."""

    hash: str
    fragment_hashes: tuple[str, ...]


@dataclass(frozen=True)
class FragmentInfo:
    hash: str
    avail: bool
    miner: str  # the storage node's account


@dataclass(frozen=True)
class SegmentInfo:
    hash: str
    fragments: tuple[FragmentInfo, ...]


@dataclass(frozen=True)
class FileInfo:
    """`FileBank.File[fid]`."""

    fid: str
    segments: tuple[SegmentInfo, ...]
    owners: tuple[UserBrief, ...]
    file_size: int
    completion: int  # block number
    state: FileState


@dataclass(frozen=True)
class CompleteInfo:
    index: int  # 1..12
    miner: str


@dataclass(frozen=True)
class DealInfo:
    """`FileBank.DealMap[fid]`: a storage order waiting for its 12 transfer reports."""

    fid: str
    file_size: int
    segments: tuple[SegmentSpec, ...]
    user: UserBrief
    complete_list: tuple[CompleteInfo, ...]

    def reported(self) -> dict[int, str]:
        """column (0-11) -> the node that reported holding it."""
        return {c.index - 1: c.miner for c in self.complete_list}


@dataclass(frozen=True)
class UserFileSlice:
    """One entry of `FileBank.UserHoldFileList[acc]`; file_size is the charged space."""

    territory_name: str
    fid: str
    file_size: int


@dataclass(frozen=True)
class BucketInfo:
    owner: str
    name: str
    object_list: tuple[str, ...]
    authority: tuple[str, ...]


@dataclass(frozen=True)
class StorageNode:
    """A storage miner from `Sminer.MinerItems`, with the endpoint it serves fragments at."""

    account: str
    endpoint: str  # "http://127.0.0.1:PORT" or "host:port"
    state: MinerState
    idle_space: int = 0
    service_space: int = 0


@dataclass(frozen=True)
class Gateway:
    """An `Oss` entry: a gateway (deossfs instance) serving its cache to peers."""

    account: str
    endpoint: str
    domain: str = ""


@dataclass(frozen=True)
class RestoralOrder:
    """`FileBank.RestoralOrder[fragment_hash]`: a lost fragment waiting for a new holder.

    `miner` is the node that claimed it (the origin miner until a claim); a claim
    holds until block `deadline` (0: never claimed).
    """

    fragment_hash: str
    fid: str
    origin_miner: str
    miner: str
    count: int
    gen_block: int
    deadline: int


@dataclass(frozen=True)
class ChainEvent:
    block: int
    pallet: str
    name: str
    attributes: dict = field(default_factory=dict)


class ChainClient(abc.ABC):
    """The chain as deossfs uses it. Calls are signed by `self.account`'s key."""

    #: the SS58 address that signs calls made through this client
    account: str

    # ---- StorageHandler: territories ------------------------------------
    @abc.abstractmethod
    def mint_territory(self, name: str, gib_count: int, days: int) -> None: ...

    @abc.abstractmethod
    def expand_territory(self, name: str, gib_count: int) -> None: ...

    @abc.abstractmethod
    def renew_territory(self, name: str, days: int) -> None: ...

    @abc.abstractmethod
    def territory(self, owner: str, name: str) -> Territory | None: ...

    @abc.abstractmethod
    def territories(self, owner: str) -> list[Territory]: ...

    # ---- FileBank: buckets ------------------------------------------------
    @abc.abstractmethod
    def create_bucket(self, owner: str, name: str) -> None: ...

    @abc.abstractmethod
    def delete_bucket(self, owner: str, name: str) -> None: ...

    @abc.abstractmethod
    def bucket(self, owner: str, name: str) -> BucketInfo | None: ...

    @abc.abstractmethod
    def buckets(self, owner: str) -> list[str]: ...

    # ---- FileBank: storage orders and files -------------------------------
    @abc.abstractmethod
    def upload_declaration(
        self,
        fid: str,
        segments: list[SegmentSpec],
        user_brief: UserBrief,
        file_size: int,
    ) -> None:
        """Declare a storage order. If `fid` is already stored, only adds an owner."""

    @abc.abstractmethod
    def transfer_report(self, index: int, fid: str) -> None:
        """Sent by a storage node (as signer) holding fragment column `index` (1..12)."""

    @abc.abstractmethod
    def delete_file(self, owner: str, fid: str) -> None: ...

    @abc.abstractmethod
    def file(self, fid: str) -> FileInfo | None: ...

    def files(self, fids: Sequence[str]) -> list[FileInfo | None]:
        """`file` of each FID, in order. A backend over RPC reads them in a few batched
        queries: a bucket of thousands of files is listed in seconds, not minutes."""
        return [self.file(fid) for fid in fids]

    @abc.abstractmethod
    def deal(self, fid: str) -> DealInfo | None: ...

    @abc.abstractmethod
    def user_files(self, owner: str) -> list[UserFileSlice]: ...

    # ---- FileBank: restoral orders (re-homing a lost fragment) -------------
    @abc.abstractmethod
    def generate_restoral_order(self, fid: str, fragment_hash: str,
                                origin_miner: str | None = None) -> None:
        """Open an order to restore `fragment_hash` of `fid`, held by `origin_miner`.

        On CESS the signer must be the miner holding the fragment (`origin_miner`
        is implied); the embedded ledger also takes it from an owner of the file,
        naming the holder that lost it when several hold that hash.
        """

    @abc.abstractmethod
    def claim_restoral_order(self, fragment_hash: str) -> None:
        """Sent by a storage node (as signer) that will store the fragment."""

    @abc.abstractmethod
    def restoral_order_complete(self, fragment_hash: str) -> None:
        """Sent by the claiming node once it holds the fragment: it becomes the holder."""

    @abc.abstractmethod
    def restoral_order(self, fragment_hash: str) -> RestoralOrder | None: ...

    # ---- Sminer: storage nodes --------------------------------------------
    @abc.abstractmethod
    def storage_nodes(self) -> list[StorageNode]: ...

    def storage_node(self, account: str) -> StorageNode | None:
        for node in self.storage_nodes():
            if node.account == account:
                return node
        return None

    @abc.abstractmethod
    def register_storage_node(self, endpoint: str, idle_space: int) -> None:
        """Register (or update) the signer as a storage node serving at `endpoint`.

        On the embedded ledger this is a call; on a CESS chain miners are certified
        by a TEE, so the CESS backend only updates the endpoint of a known miner.
        """

    # ---- Oss: gateways ----------------------------------------------------
    @abc.abstractmethod
    def authorize(self, operator: str) -> None: ...

    @abc.abstractmethod
    def cancel_authorize(self, operator: str) -> None: ...

    @abc.abstractmethod
    def authorized_gateways(self, owner: str) -> list[str]: ...

    @abc.abstractmethod
    def register_gateway(self, endpoint: str, domain: str = "") -> None: ...

    @abc.abstractmethod
    def gateways(self) -> list[Gateway]: ...

    # ---- system -----------------------------------------------------------
    @abc.abstractmethod
    def block_number(self) -> int: ...

    @abc.abstractmethod
    def events(self, since_block: int = 0) -> list[ChainEvent]: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
