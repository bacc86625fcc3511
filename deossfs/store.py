"""The object store: what the CLI, the mount, the gateway and the library use to put and
get objects.

One file past 800 lines because it is the one façade (docs/architecture.md): put, get
and the processing-stage paths share the store's state - workspaces, caches, the node
selector, what it learnt of each file's layout and envelope - and splitting them would
hand that state across modules. The stage machinery itself lives in processing/stages.py.

It composes the layers in one direction: processing (encrypt, segment, erasure
code, hash) → scheduling/p2p (choose nodes, move fragments) → chain (orders and
metadata). Blocking work (CPU and the chain's blocking client) runs in worker
threads through `trio.to_thread.run_sync`; everything else is trio.

One file past 800 lines because it is the one façade the mount, the gateway, the CLI and
the library stand on: its put, get, range-read and delete paths share the store's
in-flight state (segment fetches shared between readers, the planning slots, the
acting-for views), and splitting them would spread that state over modules that all
need it. The work itself lives below it (processing/, scheduling/, p2p/, chain/, cache/).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .cache import Counters, SegmentCache
from .chain.interface import (
    ChainClient,
    FileInfo,
    SegmentSpec,
    StorageNode,
    Territory,
    TerritoryState,
    UserBrief,
)
from .config import Config
from .directio import ALIGNMENT, DirectWriter, aligned_buffer
from .errors import (
    AccessDenied,
    DataUnavailable,
    DeossError,
    FileTooLarge,
    IntegrityError,
    InvalidInput,
    MissingPlugin,
    NoSpace,
    NotEnoughNodes,
    NotFound,
    TemporaryError,
    Unsupported,
    cli_message,
)
from .keys import Account
from .metrics import BYTES_IN, SEGMENT_READS, UPLOADS
from .names import chain_file_name, check_key
from .p2p.nodeclient import NodeClient
from .p2p.peers import PeerNetwork
from .p2p.transfer import (
    ColumnFailure,
    fetch_segment,
    probe_nodes,
    refusal_message,
    send_segment,
)
from .processing.encryption import (
    DECRYPT_BUFFER_SIZE,
    PLAINTEXT_CAPACITY,
    SegmentCipher,
    looks_encrypted,
)
from .processing.layout import (
    DATA_SHARDS,
    FRAGMENT_SIZE,
    MAX_SEGMENTS,
    SEGMENT_SIZE,
    TOTAL_SHARDS,
    ZERO_FRAGMENT_HASH,
    charged_space,
    segment_count,
)
from .processing.pipeline import (
    FilePlan,
    ReadInto,
    SegmentBuffer,
    SegmentCodec,
    SegmentPlanner,
    SegmentWorkspace,
    WorkspacePool,
    file_reader,
)
from .processing.stages import (
    PROBE_BYTES,
    ProcessingStage,
    StagedSource,
    StageHeader,
    decode_range,
    decode_to_fd,
    encode_source,
    load_stage,
    parse_header,
    starts_with_magic,
)
from .reader import SegmentReader
from .scheduling.selector import NodeSelector, Placement

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
#: called once a put's storage order is on the chain (its FID is known), before any
#: fragment is sent: the gateway answers "accepted" uploads there
Declared = Callable[[FilePlan], None]
#: rounds of giving failed columns to other nodes before an upload fails
REASSIGN_ROUNDS = 3
#: seconds to wait for the 12 transfer reports once every fragment is sent
REPORT_TIMEOUT = 60.0
#: chain records kept for file_info's max_age (a 1 GiB file's is ~100 KB of objects)
RECENT_INFOS = 64


@dataclass(frozen=True)
class ObjectEntry:
    bucket: str
    key: str
    fid: str
    size: int


@dataclass
class UploadStatus:
    """How far a put has come, updated in place as it goes (the gateway's file-state
    route reads it): `sent[j]` counts the segments whose fragment j a node has taken."""

    state: str = "planning"  # planning, declared, uploading, reporting, stored, failed
    fid: str | None = None
    segments: int = 0
    sent: list[int] = field(default_factory=lambda: [0] * TOTAL_SHARDS)
    nodes: dict[int, str] = field(default_factory=dict)  # column -> node account
    error: str | None = None


class ObjectStore:
    """put/get/list/delete of one owner's objects.

    The owner is the signing account unless the store is a view made by `acting_for`
    (a gateway storing files for accounts that authorized it): views share the node
    client, selector, caches and workspaces, and differ in owner, territory and key.
    """

    def __init__(self, config: Config, account: Account, chain: ChainClient) -> None:
        self.config = config
        self.account = account
        self.chain = chain
        #: whose objects these are (the chain's UserBrief.user); the signer is `account`
        self.owner = account.address
        self.territory_name = config.storage.territory
        self._is_view = False
        storage = config.storage
        self.selector = NodeSelector(
            preferred=list(storage.preferred_nodes),
            blocked=list(storage.blocked_nodes),
            penalty_seconds=storage.node_penalty_seconds,
            policies=list(config.scheduling.policies),
            policy_options=config.scheduling.options,
        )
        #: the processing stage new files go through ("" = none; processing/stages.py)
        self.stage_name = config.processing.stage
        #: a view for the mount: files stored through a stage are refused, not decoded
        #: (its lazy per-segment reads need the stored bytes to be the file's bytes)
        self.refuse_processed = False
        #: fid -> the file's processing envelope (None: none); shared by views
        self._stages: dict[str, StageHeader | None] = {}
        self._loaded_stages: dict[str, ProcessingStage] = {}
        self.client = NodeClient(account, timeout=storage.request_timeout)
        self.cipher = SegmentCipher(account.derive_key("deossfs encryption v1"))
        self.encrypted_codec = SegmentCodec(self.cipher)
        self.plain_codec = SegmentCodec(None)
        #: the puts' 96 MiB workspaces, reused (pipeline.WorkspacePool says why)
        self.workspaces = WorkspacePool()
        self._probed = False
        #: fid -> whether the file has deossfs's encrypted layout (it decides where a
        #: plaintext offset falls); shared by views, as it is the file's, not the key's
        self._layouts: dict[str, bool] = {}
        #: segments being fetched from peers or nodes now, (fid, index) -> set when done
        self._fetching: dict[tuple[str, int], trio.Event] = {}
        #: fid -> (when read, its chain record), for file_info's max_age; shared by views
        self._recent_infos: dict[str, tuple[float, FileInfo]] = {}
        # read order: this cache, then peers' caches, then storage nodes (see _fetch_decoded)
        self.counters = Counters(config.workspace_dir(account.address) / "counters")
        self.cache = SegmentCache.from_config(config, account.address, self.counters)
        self.peers = PeerNetwork(config.peers, account, chain) if config.peers.enabled else None
        #: read_range through one reader shared by all views (`share_reads`), or None
        self.shared_reader: SegmentReader | None = None

    def acting_for(self, owner: str, *, territory: str | None = None,
                   master_key: bytes | None = None) -> ObjectStore:
        """A view of this store for `owner`'s objects, signed by this store's account
        (which `owner` must have authorized on the chain), in `territory`, encrypting
        under `master_key` (default: this store's key). Closing a view closes nothing."""
        view = copy.copy(self)
        view.owner = owner
        view.territory_name = territory if territory is not None else self.territory_name
        if master_key is not None:
            view.cipher = SegmentCipher(master_key)
            view.encrypted_codec = SegmentCodec(view.cipher)
        view._is_view = True
        return view

    def without_processing(self) -> ObjectStore:
        """A view that stores files as they are and refuses to read files stored through a
        processing stage (Unsupported): what the mount uses."""
        view = copy.copy(self)
        view.stage_name = ""
        view.refuse_processed = True
        view._is_view = True
        return view

    async def aclose(self) -> None:
        if self._is_view:
            return
        await self.client.aclose()
        if self.peers is not None:
            await self.peers.aclose()
        self.cache.close()
        self.counters.close()

    async def __aenter__(self) -> ObjectStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _chain(self, func: Callable, *args: object) -> object:
        return await trio.to_thread.run_sync(func, *args)

    # ---- territory and bucket checks ---------------------------------------

    async def territory(self) -> Territory:
        name = self.territory_name
        territory = await self._chain(self.chain.territory, self.owner, name)
        if territory is None:
            raise NotFound(
                f"territory {name!r} does not exist",
                hint=f"mint it with `deossfs territory mint {name} --gib N`",
            )
        return territory  # type: ignore[return-value]

    async def check_space(self, segments: int) -> Territory:
        territory = await self.territory()
        if territory.state != TerritoryState.ACTIVE:
            raise NoSpace(
                f"territory {territory.name!r} is {territory.state.value.lower()}",
                hint=f"renew it with `deossfs territory renew {territory.name} --days 30`",
            )
        need = charged_space(segments)
        if territory.remaining_space < need:
            raise NoSpace(
                f"territory {territory.name!r} has {territory.remaining_space // 2**20} MiB free, "
                f"this file needs {need // 2**20} MiB (12 x 8 MiB per segment)",
                hint=f"expand it with `deossfs territory expand {territory.name} --gib N`",
            )
        return territory

    async def require_bucket(self, bucket: str) -> None:
        info = await self._chain(self.chain.bucket, self.owner, bucket)
        if info is None:
            raise NotFound(
                f"bucket {bucket!r} does not exist",
                hint=f"create it with `deossfs bucket create {bucket}`",
            )

    # ---- put ----------------------------------------------------------------

    async def put_file(
        self, path: Path, bucket: str, key: str, *, encrypt: bool | None = None,
        progress: Progress | None = None,
    ) -> FilePlan:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            return await self.put(file_reader(fd), size, bucket, key, encrypt=encrypt, progress=progress)
        finally:
            os.close(fd)

    async def put(
        self, read_into: ReadInto, size: int, bucket: str, key: str, *,
        encrypt: bool | None = None, progress: Progress | None = None,
        replace_existing: bool = True, salt_context: bytes | None = None,
        placement: Placement | None = None, status: UploadStatus | None = None,
        declared: Declared | None = None, plan: FilePlan | None = None,
        stage: str | None = None,
    ) -> FilePlan:
        """Store `size` bytes as BUCKET/KEY; returns once the file is Active on the chain.

        With `replace_existing`, an object already named BUCKET/KEY is deleted once the
        new content is durable (the mount tracks versions itself and passes False).
        An encrypted retry with the same `salt_context` (by default the object's name) has
        the same FID and resumes its storage order instead of declaring (and locking
        space for) a new one; the same bytes put again under one name are a no-op.
        `placement` steers node choice for this put (pinned nodes, a location hint);
        `status` is kept up to date as the put goes; `declared` is called once the
        storage order is on the chain, before any fragment is sent. A `plan` made already
        (`planner` below: pass 1 while the bytes arrived) saves pass 1; it is not used
        when a processing stage applies. `stage` names the processing stage (None: the
        configured one, "": none).
        """
        status = status if status is not None else UploadStatus()
        try:
            name = self.stage_name if stage is None else stage
            # a file whose own bytes look like an envelope is wrapped in one, so that no
            # reader mistakes it for a processed file (processing/stages.py)
            if not name and await trio.to_thread.run_sync(starts_with_magic, read_into, size):
                name = "identity"
            if name:
                plan = await self._put_processed(name, read_into, size, bucket, key, encrypt,
                                                 progress, replace_existing, salt_context,
                                                 placement, status, declared)
            else:
                plan = await self._put(read_into, size, bucket, key, encrypt, progress,
                                       replace_existing, salt_context, placement, status,
                                       declared, plan)
        except BaseException as exc:
            status.state, status.error = "failed", cli_message(exc)
            UPLOADS.labels("failed").inc()
            raise
        status.state = "stored"
        UPLOADS.labels("stored").inc()
        return plan

    def stage(self, name: str) -> ProcessingStage:
        """The processing stage `name`, made once with its options from the config."""
        stage = self._loaded_stages.get(name)
        if stage is None:
            stage = load_stage(name, self.config.processing.options.get(name, {}))
            self._loaded_stages[name] = stage
        return stage

    def stage_for(self, header: StageHeader) -> ProcessingStage:
        """The stage a stored file's envelope names; MissingPlugin saying so when this
        instance does not have it (checked before anything is fetched)."""
        try:
            return self.stage(header.stage)
        except MissingPlugin as exc:
            raise MissingPlugin(
                f"this file was stored through the processing stage {header.stage!r}, which is "
                "not installed here", hint=f"install the plug-in that provides it (entry point "
                f"deossfs.processing:{header.stage}); {exc.hint}") from None

    def _spool_path(self) -> Path:
        directory = self.config.workspace_dir(self.account.address) / "spool"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory / uuid.uuid4().hex

    async def _put_processed(
        self, name: str, read_into: ReadInto, size: int, bucket: str, key: str,
        encrypt: bool | None, progress: Progress | None, replace_existing: bool,
        salt_context: bytes | None, placement: Placement | None, status: UploadStatus,
        declared: Declared | None,
    ) -> FilePlan:
        """Store the stage's output (envelope + body, spooled once) in place of the bytes;
        a stage that declines leaves the file as it is. Nothing reaches the chain before
        the stage has finished (and, with processing.verify, given the bytes back)."""
        check_key(key)
        if size <= 0:
            raise InvalidInput("empty files cannot be stored on CESS (the chain rejects them)")
        await self.require_bucket(bucket)
        stage = self.stage(name)
        spool = self._spool_path()
        staged: StagedSource | None = None
        try:
            staged = await trio.to_thread.run_sync(
                lambda: encode_source(name, stage, read_into, size, spool,
                                      verify=self.config.processing.verify))
            if staged is None:
                log.info("processing stage %r declined %s/%s: stored as it is", name, bucket, key)
                return await self._put(read_into, size, bucket, key, encrypt, progress,
                                       replace_existing, salt_context, placement, status,
                                       declared, None)
            scaled = None
            if progress is not None:
                ratio = size / staged.size

                def scaled(n: int) -> None:  # progress counts the caller's bytes
                    progress(round(n * ratio))

            log.info("%s/%s through processing stage %r: %d bytes stored for %d", bucket, key,
                     name, staged.size, size)
            plan = await self._put(staged.reader(), staged.size, bucket, key, encrypt, scaled,
                                   replace_existing, salt_context, placement, status, declared,
                                   None)
            self._remember_stage(plan.fid, staged.header)
            return plan
        finally:
            if staged is not None:
                os.close(staged.body_fd)
            spool.unlink(missing_ok=True)

    async def _put(
        self, read_into: ReadInto, size: int, bucket: str, key: str, encrypt: bool | None,
        progress: Progress | None, replace_existing: bool, salt_context: bytes | None,
        placement: Placement | None, status: UploadStatus, declared: Declared | None,
        plan: FilePlan | None,
    ) -> FilePlan:
        check_key(key)
        if size <= 0:
            raise InvalidInput("empty files cannot be stored on CESS (the chain rejects them)")
        if encrypt is None:
            encrypt = self.config.storage.encryption
        codec = self.encrypted_codec if encrypt else self.plain_codec
        if codec.segment_count(size) > MAX_SEGMENTS:
            raise FileTooLarge(f"{size} bytes is more than one CESS file holds "
                               f"({largest_file(encrypt)} bytes, {MAX_SEGMENTS} segments)",
                               hint="split it into smaller files")
        if salt_context is None:
            salt_context = f"object:{bucket}/{key}".encode()
        await self.require_bucket(bucket)
        await self.check_space(codec.segment_count(size))
        existing = await self.lookup(bucket, key, missing_ok=True) if replace_existing else None

        # lent by the pool, two for a file of more than one segment (pass 1 hashes one while
        # it encodes the next, pass 2 sends one while it rebuilds the next); given back
        # whatever happens, so a failed put's frames kept alive by a reference cycle hold
        # no memory of their own
        workspaces = [self.workspaces.take()]
        try:
            # pass 1: the hashes (and the FID) must be on the chain before any node takes a fragment
            if plan is None:
                if codec.segment_count(size) > 1:
                    workspaces.append(self.workspaces.take())
                plan = await trio.to_thread.run_sync(
                    lambda: codec.plan(read_into, size, workspaces[0], salt_context=salt_context,
                                       progress=(lambda n: trio.from_thread.run_sync(progress, n // 2))
                                       if progress else None,
                                       spare=workspaces[1] if len(workspaces) > 1 else None)
                )
            elif plan.size != size or plan.encrypted != encrypt:
                raise ValueError("the plan given to put is of other bytes")
            status.fid, status.segments = plan.fid, len(plan.segments)
            brief = UserBrief(self.owner, chain_file_name(key), bucket, self.territory_name)
            specs = [SegmentSpec(s.hash, s.fragment_hashes) for s in plan.segments]
            already = await self._chain(self.chain.file, plan.fid)
            pending = await self._chain(self.chain.deal, plan.fid) if already is None else None
            # the nodes are chosen before the order is declared: a placement policy that
            # refuses (or breaks its contract) leaves nothing on the chain, no space locked
            chosen = await self._choose_nodes(pending, placement) if already is None else None
            if already is not None and any(b.user == self.owner for b in already.owners):  # type: ignore[union-attr]
                # CESS refuses a second declaration by an owner (`Existed`)
                log.info("%s/%s is already stored as %s", bucket, key, plan.fid)
            elif pending is not None and pending.user == brief:  # type: ignore[union-attr]
                # a retry: declaring again would make the runtime lock the space a second time
                log.info("storage order for %s is pending already; not declaring it again", plan.fid)
            else:
                await self._chain(self.chain.upload_declaration, plan.fid, specs, brief, size)
            status.state = "declared"
            if declared is not None:
                declared(plan)
            if already is None:
                assert chosen is not None
                await self._upload_columns(codec, plan, read_into, workspaces, progress,
                                           placement, status, chosen)
            else:
                log.info("FID %s already on the chain: added an owner, nothing to send", plan.fid)
                if progress:
                    progress(size - size // 2)
            if existing is not None and existing.fid != plan.fid:
                # the key now names the new content; drop the old version
                await self._chain(self.chain.delete_file, self.owner, existing.fid)
            return plan
        finally:
            for ws in workspaces:
                self.workspaces.give(ws)
            workspaces.clear()

    def planner(self, bucket: str, key: str, encrypt: bool | None = None,
                salt_context: bytes | None = None) -> tuple[SegmentPlanner, SegmentWorkspace]:
        """A pass-1 planner for bytes of BUCKET/KEY that are still arriving, with the codec
        and salt context `put` would use, and the workspace it borrows (give it back to
        `self.workspaces` when done); its plan is then passed to `put`."""
        if encrypt is None:
            encrypt = self.config.storage.encryption
        codec = self.encrypted_codec if encrypt else self.plain_codec
        ws = self.workspaces.take()
        return SegmentPlanner(codec, ws, salt_context or f"object:{bucket}/{key}".encode()), ws

    async def _nodes(self) -> list[StorageNode]:
        nodes: list[StorageNode] = await self._chain(self.chain.storage_nodes)  # type: ignore[assignment]
        if not self._probed:
            await probe_nodes(self.client, self.selector, nodes)
            self._probed = True
        return nodes

    async def _choose_nodes(self, deal: object, placement: Placement | None
                            ) -> tuple[dict[int, str], list[StorageNode], list[StorageNode]]:
        """(columns reported already, the chain's nodes, a node for each other column).
        A resumed order's reported columns stay with their nodes, and those nodes (one
        column each per deal) get no other column."""
        nodes = await self._nodes()
        reported = deal.reported() if deal else {}  # type: ignore[attr-defined]
        columns = sorted(set(range(TOTAL_SHARDS)) - set(reported))
        chosen = self.selector.choose(nodes, len(columns), exclude=reported.values(),
                                      placement=placement, columns=columns)
        return reported, nodes, chosen

    async def _upload_columns(
        self, codec: SegmentCodec, plan: FilePlan, read_into: ReadInto,
        workspaces: list[SegmentWorkspace], progress: Progress | None,
        placement: Placement | None, status: UploadStatus,
        chosen_before: tuple[dict[int, str], list[StorageNode], list[StorageNode]],
    ) -> None:
        status.state = "uploading"
        deal = await self._chain(self.chain.deal, plan.fid)
        reported, nodes, chosen = chosen_before
        reported_now = deal.reported() if deal else {}
        if reported_now.keys() != reported.keys():
            # columns were reported meanwhile (another uploader of the same bytes)
            reported, nodes, chosen = await self._choose_nodes(deal, placement)
        columns = set(range(TOTAL_SHARDS)) - set(reported)
        assignment = dict(zip(sorted(columns), chosen, strict=True))
        for column in reported:
            status.sent[column] = len(plan.segments)
        used = {n.account for n in chosen} | set(reported.values())
        if reported:
            log.info("storage order for %s resumed: %d of %d columns reported already",
                     plan.fid, len(reported), TOTAL_SHARDS)
        report = progress
        for round_ in range(REASSIGN_ROUNDS + 1):
            for column in columns:
                status.sent[column] = 0
                status.nodes[column] = assignment[column].account
            failed = await self._send_pass(codec, plan, read_into, workspaces,
                                           {c: assignment[c] for c in columns}, report, status)
            report = None  # progress counts the first pass only
            if failed and await self._settled_on_chain(plan.fid, failed):
                return
            if not failed:
                status.state = "reporting"
                failed = await self._await_reports(plan, assignment, columns)
                if not failed:
                    return
            for failure in failed.values():
                self.selector.record_failure(failure.node.account)
            if round_ == REASSIGN_ROUNDS:
                raise NotEnoughNodes(f"upload of {plan.fid} failed: {refusal_message(failed.values())}")
            try:
                replacements = self.selector.choose(nodes, len(failed), exclude=used,
                                                    placement=placement, columns=sorted(failed))
            except NotEnoughNodes as exc:
                raise NotEnoughNodes(
                    f"upload of {plan.fid} failed and no other node can take its columns: "
                    f"{refusal_message(failed.values())}",
                    hint=exc.hint,
                ) from None
            columns = set(failed)
            for column, node in zip(sorted(failed), replacements, strict=True):
                log.warning("giving column %d of %s to %s", column, plan.fid, node.endpoint)
                assignment[column] = node
                used.add(node.account)

    async def _settled_on_chain(self, fid: str, failed: dict[int, ColumnFailure]) -> bool:
        """Forget the failed columns the chain has as reported; True if the file is stored.

        A node may store its column and report it while its answer is lost (a reset, a
        timeout after the body was sent). Such a column is held: giving it to another
        node would be refused once the order has completed (no pending deal), and the
        upload would fail although the file is stored."""
        deal = await self._chain(self.chain.deal, fid)
        if deal is None:  # completed meanwhile, or gone
            return await self._chain(self.chain.file, fid) is not None
        for column in deal.reported().keys() & failed.keys():
            del failed[column]
            log.info("column %d of %s is reported on the chain although its sender saw "
                     "an error: kept", column, fid)
        return False

    async def _send_pass(
        self, codec: SegmentCodec, plan: FilePlan, read_into: ReadInto,
        workspaces: list[SegmentWorkspace], assignment: dict[int, StorageNode],
        progress: Progress | None, status: UploadStatus,
    ) -> dict[int, ColumnFailure]:
        """Rebuild every segment and send the given columns; pipelined two segments deep."""
        failed: dict[int, ColumnFailure] = {}
        while len(workspaces) < min(2, len(plan.segments)):
            workspaces.append(self.workspaces.take())
        free_send, free_recv = trio.open_memory_channel[SegmentWorkspace](len(workspaces))
        for ws in workspaces:
            free_send.send_nowait(ws)

        async def send(ws: SegmentWorkspace, index: int) -> None:
            try:
                # the segment enters the cache while its fragments go out (both only read
                # the workspace), not before: a cache write held up the next segment
                async with _nursery() as beside:
                    beside.start_soon(self.cache.put_segment, plan.fid, index, ws.segment)
                    await send_segment(self.client, plan.fid, ws.fragments,
                                       plan.segments[index].fragment_hashes, assignment, failed)
                for column in assignment:
                    if column not in failed:
                        status.sent[column] += 1
                if progress:
                    progress(codec.segment_span(index, plan.size)[1] - codec.segment_span(index, plan.size)[1] // 2)
            finally:
                free_send.send_nowait(ws)

        async with _nursery() as nursery:
            for index in range(len(plan.segments)):
                if len(failed) == len(assignment):
                    break
                ws = await free_recv.receive()
                await trio.to_thread.run_sync(codec.rebuild, ws, read_into, plan, index)
                nursery.start_soon(send, ws, index)
        return failed

    async def _await_reports(
        self, plan: FilePlan, assignment: dict[int, StorageNode], columns: set[int]
    ) -> dict[int, ColumnFailure]:
        """Wait for the file to become Active; columns whose node never reported fail."""
        # 12 reports take 12 blocks on a real chain (6 s each on the testnet)
        timeout = REPORT_TIMEOUT * 3 if self.config.chain.backend == "cess" else REPORT_TIMEOUT
        deadline = trio.current_time() + timeout
        delay = 0.05
        while True:
            info = await self._chain(self.chain.file, plan.fid)
            if info is not None:
                return {}
            if trio.current_time() > deadline:
                break
            await trio.sleep(delay)
            delay = min(delay * 1.5, 1.0)
        deal = await self._chain(self.chain.deal, plan.fid)
        reported = deal.reported() if deal else {}
        missing = [c for c in columns if c not in reported]
        error = TemporaryError("the node stored its column but did not report it to the chain")
        return {c: ColumnFailure(c, assignment[c], error) for c in missing}

    # ---- lookup, list, delete ------------------------------------------------

    async def files_in_bucket(self, bucket: str) -> list[tuple[str, FileInfo]]:
        """(key, file) for each object of the owner's bucket."""
        info = await self._chain(self.chain.bucket, self.owner, bucket)
        if info is None:
            raise NotFound(f"bucket {bucket!r} does not exist",
                           hint="list buckets with `deossfs bucket ls`")

        def collect() -> list[tuple[str, FileInfo]]:
            out = []
            for file in self.chain.files(info.object_list):  # type: ignore[union-attr]
                if file is None:
                    continue
                for brief in file.owners:
                    if brief.user == self.owner and brief.bucket_name == bucket:
                        out.append((brief.file_name, file))
            return sorted(out, key=lambda item: item[0])

        return await trio.to_thread.run_sync(collect)

    async def lookup(self, bucket: str, key: str, *, missing_ok: bool = False,
                     files: list[tuple[str, FileInfo]] | None = None) -> ObjectEntry | None:
        """The object the chain names `key` in `bucket` (`files`: its listing, if read
        already). Of several under that name (DeOSS keeps every upload of a name) the one
        stored last: the latest in the bucket's object list, as the mount and S3 show."""
        chain_name = chain_file_name(key)
        found = None
        for name, file in files if files is not None else await self.files_in_bucket(bucket):
            if name == chain_name:
                found = ObjectEntry(bucket, key, file.fid, file.file_size)
        if found is not None:
            return found
        if missing_ok:
            return None
        raise NotFound(f"no object {bucket}/{key}", hint=f"list them with `deossfs ls {bucket}`")

    async def list(self, bucket: str, prefix: str = "") -> list[ObjectEntry]:
        return [ObjectEntry(bucket, key, f.fid, f.file_size)
                for key, f in await self.files_in_bucket(bucket) if key.startswith(prefix)]

    async def file_info(self, fid: str, *, max_age: float = 0.0) -> FileInfo:
        """The file's chain record. With `max_age`, a record read at most that many
        seconds ago serves: a download in ranges (boto3's: one GET per 8 MiB) asked the
        chain once per range, a round trip each on a real network."""
        if max_age > 0:
            recent = self._recent_infos.get(fid)
            if recent is not None and trio.current_time() - recent[0] <= max_age:
                return recent[1]
        info = await self._chain(self.chain.file, fid)
        if info is None:
            self._recent_infos.pop(fid, None)
            raise NotFound(f"file {fid} is not stored on the chain")
        if max_age > 0:
            self._recent_infos.pop(fid, None)
            self._recent_infos[fid] = (trio.current_time(), info)  # type: ignore[assignment]
            while len(self._recent_infos) > RECENT_INFOS:
                del self._recent_infos[next(iter(self._recent_infos))]  # the oldest read
        return info  # type: ignore[return-value]

    # ---- get ------------------------------------------------------------------

    async def endpoints(self) -> dict[str, str]:
        return {n.account: n.endpoint for n in await self._nodes()}

    async def _fetch_decoded(self, info: FileInfo, index: int, ws: SegmentWorkspace,
                             endpoints: dict[str, str] | None = None) -> None:
        """ws.segment = segment `index` as stored, from the first source that has it:
        the local cache, then peers (first answer matching the chain's segment hash),
        then storage nodes (data fragments land in place). What came from peers or
        nodes enters the cache. `endpoints` (node account -> URL) is looked up only
        if the nodes are needed. Readers of a segment another task is fetching (ranged
        GETs of one segment in parallel) wait for it and read it from the cache."""
        segment = info.segments[index]
        flight = self._fetching.get((info.fid, index))
        if flight is not None and self.cache.enabled:
            await flight.wait()
        if await self.cache.aget_into(info.fid, index, ws.segment, segment.hash):
            SEGMENT_READS.labels("cache").inc()
            await self._count(hits=1, bytes_from_cache=SEGMENT_SIZE)
            return
        mine = (info.fid, index) not in self._fetching
        if mine:
            self._fetching[(info.fid, index)] = trio.Event()
        try:
            await self._fetch_missing(info, index, ws, endpoints)
        finally:
            if mine:
                self._fetching.pop((info.fid, index)).set()

    async def _fetch_missing(self, info: FileInfo, index: int, ws: SegmentWorkspace,
                             endpoints: dict[str, str] | None) -> None:
        """_fetch_decoded's part after a cache miss: peers, then storage nodes."""
        segment = info.segments[index]
        await self._count(misses=1)
        if self.peers is not None:
            peer = await self.peers.fetch_segment(info.fid, index, segment.hash, ws.segment)
            if peer is not None:
                SEGMENT_READS.labels("peer").inc()
                BYTES_IN.labels("peers").inc(SEGMENT_SIZE)
                await self._count(peer_hits=1, bytes_from_peers=SEGMENT_SIZE)
                await self.cache.put_segment(info.fid, index, ws.segment)
                return
            await self._count(peer_misses=1)
        if endpoints is None:
            endpoints = await self.endpoints()
        fragments = await fetch_segment(
            self.client, info.fid, segment, endpoints, self.selector,
            into=lambda i: ws.fragments[i] if i < DATA_SHARDS else None,
        )
        received = sum(FRAGMENT_SIZE for i in fragments if segment.fragments[i].hash != ZERO_FRAGMENT_HASH)
        SEGMENT_READS.labels("node").inc()
        await self._count(node_reads=1, bytes_from_nodes=received)
        if not all(i in fragments for i in range(DATA_SHARDS)):
            await trio.to_thread.run_sync(self.plain_codec.decode, fragments, ws)
        await self.cache.put_segment(info.fid, index, ws.segment)

    async def _count(self, **deltas: int) -> None:
        await trio.to_thread.run_sync(lambda: self.counters.add(**deltas))

    def codec_for(self, info: FileInfo, segment: memoryview, out: SegmentBuffer,
                  index: int = 0) -> tuple[SegmentCodec, int | None]:
        """Which layout a file uses: deossfs-encrypted (by its authenticated header) or
        plain. Deciding decrypts `segment` into `out` when it is encrypted, and returns
        the plaintext length too, so the caller need not decrypt it again."""
        plain_segments = segment_count(info.file_size, SEGMENT_SIZE)
        if looks_encrypted(segment):
            try:
                length = self.cipher.decrypt_into(segment, index, out)
                return self.encrypted_codec, min(length, self.encrypted_codec.segment_span(index, info.file_size)[1])
            except IntegrityError:
                if len(info.segments) != plain_segments:
                    raise IntegrityError(
                        f"file {info.fid[:16]}… is encrypted under another key", hint="use the key that stored it"
                    ) from None
        return self.plain_codec, None

    async def get_file(self, bucket: str, key: str, dest: Path, progress: Progress | None = None) -> ObjectEntry:
        """Write BUCKET/KEY to `dest` atomically: a failed get leaves no file."""
        entry = await self.lookup(bucket, key)
        assert entry is not None
        await self.get_fid(entry.fid, dest, progress)
        return entry

    async def get_fid(self, fid: str, dest: Path, progress: Progress | None = None) -> None:
        """Write the file `fid` to `dest` atomically: a failed get leaves no file."""
        info = await self.file_info(fid)
        async with atomic_output(dest) as fd:
            await self.read_into_fd(info, fd, progress)

    async def read_into_fd(self, info: FileInfo, fd: int, progress: Progress | None = None) -> None:
        """Write the file's bytes into `fd` (a new, empty file, open for reading and
        writing). A file stored through a processing stage is decoded: its stored bytes
        go to a spool file first. A file not met before is fetched straight into `fd`
        and its first bytes looked at afterwards, so a plain get fetches nothing twice
        (an `fd` open for writing only costs a look at segment 0 first instead)."""
        readable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_WRONLY
        if info.fid not in self._stages and readable:
            await self._stored_into_fd(info, fd, progress)
            prefix = await trio.to_thread.run_sync(os.pread, fd, PROBE_BYTES, 0)
            header = parse_header(prefix)
            self._remember_stage(info.fid, header)
            if header is None:
                return
            if self.refuse_processed:
                _refuse_processed(info, header)
            stage = self.stage_for(header)
            with self._spooled() as (_, raw):
                await trio.to_thread.run_sync(_move_to, fd, raw)
                await trio.to_thread.run_sync(decode_to_fd, stage, header, raw, fd)
            return
        header = await self.stage_of(info)
        if header is None:
            await self._stored_into_fd(info, fd, progress)
            return
        stage = self.stage_for(header)
        with self._spooled() as (_, raw):
            await self._stored_into_fd(info, raw, progress)
            await trio.to_thread.run_sync(decode_to_fd, stage, header, raw, fd)

    @contextlib.contextmanager
    def _spooled(self) -> Iterator[tuple[Path, int]]:
        """A 0600 spool file in the workspace (path, fd), removed afterwards."""
        spool = self._spool_path()
        fd = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            yield spool, fd
        finally:
            os.close(fd)
            spool.unlink(missing_ok=True)

    async def _stored_into_fd(self, info: FileInfo, fd: int, progress: Progress | None = None) -> None:
        """Fetch, decode and write every segment in order into `fd` (a new, empty file).
        Written past the page cache where the file system allows (directio: copying a
        GiB into fresh page cache pages cost a get more CPU than decrypting and hashing
        it).

        Three things overlap: the write of segment i, the decryption of segment i+1 (into
        the other of two plaintext buffers) and the fetch of the next segments (into
        either workspace once its segment is decrypted; a plain file's workspace is its
        plaintext, so it is free only once written). Decrypting and writing a segment one
        after the other left the machine 40% idle: the writes, not the fetches, set the
        pace (docs/PERFORMANCE.md)."""
        endpoints = None  # the nodes are looked up by the first segment that needs them
        count = len(info.segments)
        workspaces = [SegmentWorkspace(with_parity=False) for _ in range(min(count, 2))]
        # page-aligned, with room to decrypt a segment where it follows the block the
        # writer has begun (DirectWriter.pending): it then goes to the disk from there
        plaintexts = [aligned_buffer(DECRYPT_BUFFER_SIZE + ALIGNMENT) for _ in range(min(count, 2))]
        first = workspaces[0]
        await self._fetch_decoded(info, 0, first, endpoints)
        codec, first_length = await trio.to_thread.run_sync(self.codec_for, info, first.segment, plaintexts[0])
        # segment i is in slots[i] once ready[i] is set
        slots: dict[int, SegmentWorkspace] = {0: first}
        ready = [trio.Event() for _ in range(count)]
        ready[0].set()
        failures: list[BaseException] = []
        free_send, free_workspaces = trio.open_memory_channel[SegmentWorkspace](len(workspaces))
        for ws in workspaces[1:]:
            free_send.send_nowait(ws)

        async def fetch(index: int, ws: SegmentWorkspace) -> None:
            try:
                await self._fetch_decoded(info, index, ws, endpoints)
                slots[index] = ws
            except BaseException as exc:  # handed to the loop below, which raises it in order
                failures.append(exc)
            finally:
                ready[index].set()

        async def fetch_all(nursery: trio.Nursery) -> None:
            for index in range(1, count):
                nursery.start_soon(fetch, index, await free_workspaces.receive())

        async def write(data: memoryview, ws: SegmentWorkspace | None, done: trio.Event) -> None:
            await trio.to_thread.run_sync(writer.write, data)  # segments in order, back to back
            if ws is not None:
                free_send.send_nowait(ws)
            if progress:
                progress(len(data))
            done.set()

        writer = DirectWriter.over(fd)
        try:
            async with _nursery() as nursery:
                nursery.start_soon(fetch_all, nursery)
                written = trio.Event()
                written.set()
                for index in range(count):
                    await ready[index].wait()
                    if failures:
                        raise failures[0]
                    ws = slots.pop(index)
                    buffer = plaintexts[index % len(plaintexts)]  # its last write is done
                    if index == 0 and first_length is not None:  # decrypted by codec_for
                        data = memoryview(buffer)[:first_length]
                    else:
                        # the writer's pending bytes once every earlier segment is handed over
                        pending = codec.segment_span(index, info.file_size)[0] % ALIGNMENT
                        data = await trio.to_thread.run_sync(codec.plaintext, ws, index, info.file_size,
                                                             memoryview(buffer)[pending:])
                    holds_plaintext = codec.cipher is None  # plain: `data` is a view of `ws`
                    if not holds_plaintext:
                        free_send.send_nowait(ws)
                    await written.wait()
                    written = trio.Event()
                    nursery.start_soon(write, data, ws if holds_plaintext else None, written)
                await written.wait()
            if failures:
                raise failures[0]
            await trio.to_thread.run_sync(writer.flush)
        finally:
            writer.close()

    async def encrypted_layout(self, info: FileInfo) -> bool:
        """Whether `info` is stored in deossfs's encrypted layout (PLAINTEXT_CAPACITY bytes of
        plaintext per segment) rather than CESS's plain one. The segment count tells for
        most sizes; otherwise segment 0's authenticated header does (one fetch, cached)."""
        known = self._layouts.get(info.fid)
        if known is not None:
            return known
        plain = segment_count(info.file_size, SEGMENT_SIZE)
        encrypted = segment_count(info.file_size, PLAINTEXT_CAPACITY)
        if plain != encrypted:
            result = len(info.segments) == encrypted
        else:
            ws = self.workspaces.take()
            try:
                await self._fetch_decoded(info, 0, ws)
                result = looks_encrypted(ws.segment)
            finally:
                self.workspaces.give(ws)
        if len(self._layouts) > 10_000:
            self._layouts.clear()
        self._layouts[info.fid] = result
        return result

    # ---- processing stages on the way out ---------------------------------------------

    def _remember_stage(self, fid: str, header: StageHeader | None) -> None:
        if len(self._stages) > 10_000:
            self._stages.clear()
        self._stages[fid] = header

    async def stage_of(self, info: FileInfo) -> StageHeader | None:
        """The processing envelope `info` was stored with (None: none). Learnt from the
        start of segment 0 once per file (it is cached like any segment); a mount's view
        refuses a processed file here (Unsupported)."""
        if info.fid in self._stages:
            header = self._stages[info.fid]
        else:
            prefix = bytearray()

            async def collect(view: memoryview) -> None:
                prefix.extend(view)

            await self._read_stored(info, 0, min(info.file_size, PROBE_BYTES), collect)
            header = parse_header(prefix)
            self._remember_stage(info.fid, header)
        if header is not None and self.refuse_processed:
            _refuse_processed(info, header)
        return header

    async def logical_size(self, info: FileInfo) -> int:
        """The file's own length: the chain's file_size, or, for a file stored through a
        processing stage, the length its envelope records."""
        header = await self.stage_of(info)
        return info.file_size if header is None else header.size

    async def read_range(self, info: FileInfo, start: int, end: int,
                         sink: Callable[[memoryview], Awaitable[object]]) -> None:
        """Pass the file's bytes [start, end) to `sink`, in order, as views valid only
        during the call (`_read_stored_range`). A file stored through a processing stage
        is fetched into a spool file and decoded from its start up to `end`."""
        header = await self.stage_of(info)
        if header is None:
            await self._read_stored(info, start, end, sink)
            return
        end = min(end, header.size)
        if start >= end:
            return
        stage = self.stage_for(header)
        with self._spooled() as (_, raw):
            await self._stored_into_fd(info, raw)
            await trio.to_thread.run_sync(decode_range, stage, header, raw, start, end, sink)

    async def _read_stored(self, info: FileInfo, start: int, end: int,
                           sink: Callable[[memoryview], Awaitable[object]]) -> None:
        """The stored bytes [start, end) to `sink`: through the shared reader if this store
        has one (`share_reads`), else with workspaces of this call's own."""
        if self.shared_reader is None:
            await self._read_stored_range(info, start, end, sink)
            return
        encrypted = await self.encrypted_layout(info)
        await self.shared_reader.read_range(self, info, start, min(end, info.file_size),
                                            PLAINTEXT_CAPACITY if encrypted else SEGMENT_SIZE, sink)

    async def _read_stored_range(self, info: FileInfo, start: int, end: int,
                                 sink: Callable[[memoryview], Awaitable[object]]) -> None:
        """Pass the stored bytes [start, end) of a file to `sink`, in order, as views
        valid only during the call. Only the segments the range touches are fetched, the
        next one while `sink` consumes the current (an HTTP response sends at network
        speed); memory is two 32 MiB workspaces and, encrypted, one plaintext buffer."""
        end = min(end, info.file_size)
        if start >= end:
            return
        encrypted = await self.encrypted_layout(info)
        capacity = PLAINTEXT_CAPACITY if encrypted else SEGMENT_SIZE
        first, last = start // capacity, (end - 1) // capacity
        workspaces = [SegmentWorkspace(with_parity=False) for _ in range(min(2, last - first + 1))]
        plaintext = bytearray(DECRYPT_BUFFER_SIZE) if encrypted else None
        done: dict[int, trio.Event] = {}
        failures: list[BaseException] = []

        def slot(index: int) -> SegmentWorkspace:
            return workspaces[(index - first) % len(workspaces)]

        async def fetch(index: int) -> None:
            try:
                await self._fetch_decoded(info, index, slot(index))
            except BaseException as exc:  # raised in order by the consumer below
                failures.append(exc)
            finally:
                done[index].set()

        try:
            async with _nursery() as nursery:
                done[first] = trio.Event()
                nursery.start_soon(fetch, first)
                for index in range(first, last + 1):
                    await done[index].wait()
                    if failures:
                        raise failures[0]
                    ws = slot(index)
                    if plaintext is not None:
                        length = await trio.to_thread.run_sync(self._decrypt_segment, info, index, ws, plaintext)
                        data = memoryview(plaintext)[:length]
                    else:
                        data = ws.segment[: self.plain_codec.segment_span(index, info.file_size)[1]]
                    if index < last:
                        # the other workspace held the segment sink consumed last: free now
                        done[index + 1] = trio.Event()
                        nursery.start_soon(fetch, index + 1)
                    offset = index * capacity
                    await sink(data[max(start - offset, 0): min(end - offset, len(data))])
                if failures:
                    raise failures[0]
        finally:
            for ws in workspaces:
                ws.release_pages()

    async def plaintext_segment_in_place(self, info: FileInfo, index: int,
                                         ws: SegmentWorkspace) -> tuple[int, bool]:
        """Segment `index`'s plaintext at the start of `ws.segment`, as `read_range` reads
        it: the layout is the file's (`encrypted_layout`), a wrong key is AccessDenied.
        Returns (length, encrypted)."""
        encrypted = await self.encrypted_layout(info)
        await self._fetch_decoded(info, index, ws)
        if not encrypted:
            return self.plain_codec.segment_span(index, info.file_size)[1], False
        return await trio.to_thread.run_sync(self._decrypt_segment, info, index, ws, None), True

    def share_reads(self, memory_segments: int, fetch_slots: int) -> None:
        """Serve `read_range` of this store and all its views through one SegmentReader:
        concurrent ranged reads of a segment share one fetch and one decryption, and
        memory_segments + fetch_slots recycled buffers bound the memory (a gateway's
        downloads: however many responses send at once)."""
        self.shared_reader = SegmentReader(self, memory_segments, fetch_slots=fetch_slots,
                                           max_buffers=memory_segments + fetch_slots,
                                           fetch=_plaintext_segment, in_place=True)

    def _decrypt_segment(self, info: FileInfo, index: int, ws: SegmentWorkspace,
                         out: SegmentBuffer | None) -> int:
        """The plaintext length of segment `index` decrypted into `out` (None: in place)."""
        try:
            if out is None:
                length = self.cipher.decrypt_in_place(ws.segment, index)
            else:
                length = self.cipher.decrypt_into(ws.segment, index, out)
        except IntegrityError:
            raise AccessDenied(f"file {info.fid[:16]}… is encrypted under another key",
                               hint="read it with the key (or the Cipher) that stored it") from None
        return min(length, self.encrypted_codec.segment_span(index, info.file_size)[1])

    async def read_segment_into(self, info: FileInfo, index: int, ws: SegmentWorkspace,
                                out: SegmentBuffer) -> tuple[int, bool]:
        """Segment `index`'s plaintext into `out` (DECRYPT_BUFFER_SIZE or more bytes).

        Returns (plaintext length, whether the file is deossfs-encrypted); `ws` is
        scratch. Nothing is allocated per segment, so a reader can recycle buffers.
        The stored bytes: a mount's view refuses a file stored through a processing stage.
        """
        if self.refuse_processed and (index != 0 or info.fid in self._stages):
            await self.stage_of(info)  # segment 0 says; read right below for index 0
        await self._fetch_decoded(info, index, ws)

        def finish() -> tuple[int, bool]:
            if looks_encrypted(ws.segment):
                try:
                    return self.cipher.decrypt_into(ws.segment, index, out), True
                except IntegrityError:
                    if len(info.segments) != segment_count(info.file_size, SEGMENT_SIZE):
                        raise IntegrityError(
                            f"file {info.fid[:16]}… is encrypted under another key",
                            hint="use the key that stored it") from None
            _, length = self.plain_codec.segment_span(index, info.file_size)
            out[:length] = ws.segment[:length]
            return length, False

        length, encrypted = await trio.to_thread.run_sync(finish)
        if self.refuse_processed and index == 0 and info.fid not in self._stages:
            header = parse_header(memoryview(out)[:min(length, PROBE_BYTES)])
            self._remember_stage(info.fid, header)
            if header is not None:
                _refuse_processed(info, header)
        return length, encrypted

    async def read_object(self, fid: str) -> bytes:
        """A whole (small) object in memory."""
        info = await self.file_info(fid)
        header = await self.stage_of(info)
        if header is not None:
            pieces: list[bytes] = []

            async def collect(view: memoryview) -> None:
                pieces.append(bytes(view))

            await self.read_range(info, 0, header.size, collect)
            return b"".join(pieces)
        out = bytearray(max(SEGMENT_SIZE, DECRYPT_BUFFER_SIZE))
        parts = []
        ws = self.workspaces.take()  # lent, as for a put (the mount reads its metadata objects)
        try:
            for index in range(len(info.segments)):
                length, _ = await self.read_segment_into(info, index, ws, out)
                parts.append(bytes(out[:length]))
        finally:
            self.workspaces.give(ws)
        return b"".join(parts)[: info.file_size]

    async def declare_name(self, fid: str, bucket: str, key: str) -> None:
        """Record an existing FID under another name (rename without re-upload)."""
        check_key(key)
        info = await self.file_info(fid)
        brief = UserBrief(self.owner, chain_file_name(key), bucket, self.territory_name)
        if any(b.user == self.owner for b in info.owners):
            # CESS refuses a second declaration by an owner (`Existed`): the chain keeps
            # the name the file was stored under; the mount's metadata has the new one
            log.debug("%s is ours already; its chain name stays", fid[:16])
            return
        specs = [SegmentSpec(seg.hash, tuple(f.hash for f in seg.fragments)) for seg in info.segments]
        await self._chain(self.chain.upload_declaration, fid, specs, brief, info.file_size)

    async def delete_fid(self, fid: str) -> None:
        """Remove the owner's claim on a file (all its names); missing files are fine."""
        try:
            with contextlib.suppress(NotFound):
                await self._chain(self.chain.delete_file, self.owner, fid)
        finally:  # also a read of the record that raced with the delete
            self._recent_infos.pop(fid, None)


async def _plaintext_segment(store: ObjectStore, info: FileInfo, index: int, ws: SegmentWorkspace,
                             out: SegmentBuffer) -> tuple[int, bool]:
    return await store.plaintext_segment_in_place(info, index, ws)  # ws is over `out`


def largest_file(encrypted: bool) -> int:
    """The most bytes one object can hold: MAX_SEGMENTS segments (an encrypted segment
    carries a little less than 32 MiB of plaintext)."""
    return MAX_SEGMENTS * (PLAINTEXT_CAPACITY if encrypted else SEGMENT_SIZE)


@contextlib.asynccontextmanager
async def atomic_output(dest: Path) -> AsyncIterator[int]:
    """An fd (read-write) of a hidden temporary file beside `dest` that becomes `dest`,
    fsynced, only when the block ends without an exception; otherwise it is removed."""
    dest = dest.expanduser().resolve()
    tmp = dest.with_name(f".{dest.name}.deossfs-partial-{os.getpid()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        yield fd
        await trio.to_thread.run_sync(os.fsync, fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise


def _move_to(source: int, target: int) -> None:
    """Copy all of `source` into the empty `target`, then empty `source` (blocking)."""
    size = os.fstat(source).st_size
    offset = 0
    while offset < size:
        copied = os.copy_file_range(source, target, size - offset, offset, offset)
        if copied == 0:
            raise OSError(f"could not copy byte {offset} of {size} to the spool file")
        offset += copied
    os.ftruncate(source, 0)
    os.lseek(source, 0, os.SEEK_SET)  # the decoded bytes start at 0, not past a hole


def _refuse_processed(info: FileInfo, header: StageHeader) -> None:
    raise Unsupported(
        f"file {info.fid[:16]}… was stored through the processing stage {header.stage!r}, "
        "which the mount does not decode",
        hint="read it with `deossfs get` or the library (deossfs.Client)")


@contextlib.asynccontextmanager
async def single_error_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose lone error comes out as itself, not in an ExceptionGroup, so the
    store raises what it documents (DeossError, OSError) and callers can catch it."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


_nursery = single_error_nursery


__all__ = ["ObjectStore", "ObjectEntry", "DataUnavailable", "DeossError"]
