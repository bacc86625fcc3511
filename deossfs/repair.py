"""`deossfs verify [--repair]`: check every stored fragment, rebuild the lost ones.

Verification fetches each fragment of each file from the node the chain names as its
holder and checks it against the fragment hash recorded on the chain (the 8 MiB zero
fragment is never stored, so it needs no check). A fragment is

- `missing`: the node answered that it does not hold it (404) or refused to serve it;
- `corrupt`: the node sent bytes of the wrong length or with the wrong SHA-256;
- `unreachable`: the node did not answer (down, hung past `storage.request_timeout`),
  or its account has no registered endpoint.

Repair rebuilds a bad fragment from any 4 good fragments of its segment (RS 4+8),
checks the result against the chain's hash, and re-homes it through a restoral order:

1. `generate_restoral_order(fid, fragment)` opens the order for the node that lost it;
2. the fragment is PUT to a healthy node that holds no fragment of that segment; the
   node claims the order (`claim_restoral_order`), stores the fragment, and completes
   it (`restoral_order_complete`), which makes it the fragment's holder in `File[fid]`.

An interrupted repair is resumed: an order left open is reused, and a node that
claimed it is sent the fragment again. docs/reliability.md says which of these calls
a CESS chain accepts from a user.

Verification also looks for **orphans**: chain files of a bucket that a mount keeps
(it has a metadata object) which no metadata object names, stored under the chain name
of a path whose current version (named, and on the chain) is another file. Two mounts
writing one file can leave the losing version so (docs/semantics.md). Only files older
than a grace period count: a mount publishes a new version in its bucket's metadata
object 5-30 s after the upload, or at its next start after a crash. Repair deletes them.
Files of other tools are never orphans: no path of a metadata object has their name, or
the path is another tool's object too, published as listed (DeOSS keeps every upload of
a name; the mount and S3 show the latest).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .catalog.protocol import META_KEY, file_versions, written_versions
from .catalog.protocol import decode_object as decode
from .chain.interface import BLOCK_SECONDS, FileInfo, StorageNode
from .errors import (
    ChainError,
    DataUnavailable,
    DeossError,
    IntegrityError,
    NodeRefused,
    NotEnoughNodes,
    NotFound,
    cli_message,
)
from .names import chain_file_name, split_target
from .p2p.transfer import with_retries
from .processing.erasure import get_coder
from .processing.layout import DATA_SHARDS, FRAGMENT_SIZE, TOTAL_SHARDS, ZERO_FRAGMENT_HASH
from .store import ObjectStore

log = logging.getLogger(__name__)

#: fragments fetched at once while verifying (each needs an 8 MiB buffer)
VERIFY_CONCURRENCY = 6
#: nodes tried for one rebuilt fragment before giving up on it
REPAIR_ATTEMPTS = 3

MISSING, CORRUPT, UNREACHABLE = "missing", "corrupt", "unreachable"
#: seconds a chain file must exist before it can be an orphan: far longer than a mount
#: takes to publish a version (seconds; at its next start after a crash)
ORPHAN_GRACE_SECONDS = 24 * 3600.0


@dataclass
class FragmentProblem:
    segment: int
    column: int
    fragment_hash: str
    miner: str
    endpoint: str | None
    kind: str  # MISSING, CORRUPT or UNREACHABLE
    detail: str
    #: the node that holds the fragment after a repair
    repaired_to: str | None = None
    repair_error: str | None = None


@dataclass
class FileReport:
    name: str  # BUCKET/KEY (the chain's file name)
    fid: str
    fragments: int = 0  # fragments checked (zero fragments excluded)
    problems: list[FragmentProblem] = field(default_factory=list)

    @property
    def unresolved(self) -> list[FragmentProblem]:
        return [p for p in self.problems if p.repaired_to is None]


@dataclass
class Orphan:
    """A chain file no metadata object names, whose path's current version is another."""

    bucket: str
    name: str  # its chain file name
    fid: str
    size: int
    age_seconds: float
    #: the path whose chain name it has, and that path's current FID
    path: str
    current: str
    deleted: bool = False
    delete_error: str | None = None


@dataclass
class VerifyReport:
    files: list[FileReport] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)

    @property
    def fragments(self) -> int:
        return sum(f.fragments for f in self.files)

    @property
    def problems(self) -> list[FragmentProblem]:
        return [p for f in self.files for p in f.problems]

    @property
    def repaired(self) -> list[FragmentProblem]:
        return [p for p in self.problems if p.repaired_to is not None]

    @property
    def unresolved(self) -> list[FragmentProblem]:
        return [p for p in self.problems if p.repaired_to is None]

    @property
    def orphans_left(self) -> list[Orphan]:
        return [o for o in self.orphans if not o.deleted]


Progress = Callable[[FileReport], None]


class ObjectNames(Protocol):
    """How an object's users name it, where that is more than its chain name: the CLI's
    namespace (namespace.py) knows keys the chain declares under a hash and files the
    mount renamed. Without one, objects go by their chain names."""

    async def resolve(self, bucket: str, key: str) -> str | None:
        """The FID `key` names (None: an object of zero bytes, which has no fragments)."""

    async def keys(self, bucket: str) -> dict[str, str]:
        """FID -> the key the bucket's users see it under, for the FIDs that have one."""


async def targets(store: ObjectStore, target: str | None,
                  names: ObjectNames | None = None) -> list[tuple[str, str]]:
    """(BUCKET/KEY, fid) of what to verify: every object, a bucket's, or one object.
    Every chain file of a bucket is checked (deossfs' metadata objects too); `names`
    labels them as their users know them."""
    if target and "/" in target.strip("/"):
        bucket, key = split_target(target)
        if names is not None:
            fid = await names.resolve(bucket, key)
            return [] if fid is None else [(f"{bucket}/{key}", fid)]
        entry = await store.lookup(bucket, key)
        assert entry is not None
        return [(f"{bucket}/{key}", entry.fid)]
    if target:
        buckets = [target.strip("/")]
    else:
        buckets = await trio.to_thread.run_sync(store.chain.buckets, store.owner)
    found: dict[str, str] = {}
    for bucket in buckets:
        known = await names.keys(bucket) if names is not None else {}
        for key, info in await store.files_in_bucket(bucket):
            found.setdefault(info.fid, f"{bucket}/{known.get(info.fid, key)}")
    return sorted(((name, fid) for fid, name in found.items()), key=lambda item: item[0])


class Verifier:
    """Checks (and repairs) files through one ObjectStore's client and node records."""

    def __init__(self, store: ObjectStore, *, concurrency: int = VERIFY_CONCURRENCY) -> None:
        self.store = store
        self.client = store.client
        self.concurrency = concurrency
        #: nodes found unreachable in this run: their other fragments are not asked for
        self.dead: set[str] = set()
        self._buffers: list[bytearray] = []

    # ---- checking -------------------------------------------------------------------

    async def check(self, info: FileInfo, endpoints: dict[str, str], name: str) -> FileReport:
        report = FileReport(name, info.fid)
        jobs = [
            (s, j, fragment)
            for s, segment in enumerate(info.segments)
            for j, fragment in enumerate(segment.fragments)
            if fragment.hash != ZERO_FRAGMENT_HASH
        ]
        report.fragments = len(jobs)
        free_send, free_recv = trio.open_memory_channel[bytearray](self.concurrency)
        while len(self._buffers) < min(self.concurrency, len(jobs)):
            self._buffers.append(bytearray(FRAGMENT_SIZE))
        for buffer in self._buffers:
            free_send.send_nowait(buffer)

        async def one(s: int, j: int, fragment_hash: str, miner: str, buffer: bytearray) -> None:
            try:
                problem = await self._check_one(info.fid, s, j, fragment_hash, miner, endpoints,
                                                memoryview(buffer))
                if problem is not None:
                    report.problems.append(problem)
            finally:
                free_send.send_nowait(buffer)

        async with trio.open_nursery() as nursery:
            for s, j, fragment in jobs:
                buffer = await free_recv.receive()
                nursery.start_soon(one, s, j, fragment.hash, fragment.miner, buffer)
        report.problems.sort(key=lambda p: (p.segment, p.column))
        return report

    async def _check_one(self, fid: str, s: int, j: int, fragment_hash: str, miner: str,
                         endpoints: dict[str, str], buffer: memoryview) -> FragmentProblem | None:
        endpoint = endpoints.get(miner)

        def problem(kind: str, detail: str) -> FragmentProblem:
            return FragmentProblem(s, j, fragment_hash, miner, endpoint, kind, detail)

        if endpoint is None:
            return problem(UNREACHABLE, f"node {miner} has no registered endpoint")
        if miner in self.dead:
            return problem(UNREACHABLE, f"node {endpoint} did not answer")
        try:
            await with_retries(
                lambda: self.client.get_fragment(endpoint, fid, fragment_hash, into=buffer),
                f"verifying fragment {j} of segment {s} on {endpoint}",
            )
        except IntegrityError as exc:
            return problem(CORRUPT, str(exc))
        except NodeRefused as exc:
            return problem(MISSING, str(exc))
        except DeossError as exc:
            if exc.temporary:
                self.dead.add(miner)
                self.store.selector.record_failure(miner)
                return problem(UNREACHABLE, str(exc))
            raise
        return None

    # ---- repairing ------------------------------------------------------------------

    async def repair(self, report: FileReport) -> None:
        """Rebuild and re-home every bad fragment of `report`'s file (sets repaired_to)."""
        by_segment: dict[int, list[FragmentProblem]] = {}
        for problem in report.problems:
            by_segment.setdefault(problem.segment, []).append(problem)
        for s, problems in sorted(by_segment.items()):
            try:
                good = await self._good_fragments(report.fid, s, {p.column for p in problems})
            except DeossError as exc:
                for problem in problems:
                    problem.repair_error = str(exc)
                continue
            for problem in problems:
                try:
                    problem.repaired_to = await self._rehome(report.fid, problem, good)
                except DeossError as exc:
                    log.warning("repair of fragment %d of segment %d of %s… failed: %s",
                                problem.column, s, report.fid[:16], exc)
                    problem.repair_error = str(exc)

    async def _good_fragments(self, fid: str, s: int, bad: set[int]) -> dict[int, bytes | memoryview]:
        """4 verified fragments of segment `s`, data first, none of the `bad` columns."""
        info = await self.store.file_info(fid)
        endpoints = await self.store.endpoints()
        segment = info.segments[s]
        order = [j for j in range(TOTAL_SHARDS) if j not in bad]
        # the zero fragment is free; then healthy nodes, data columns first
        order.sort(key=lambda j: (segment.fragments[j].hash != ZERO_FRAGMENT_HASH,
                                  segment.fragments[j].miner in self.dead, j >= DATA_SHARDS, j))
        got: dict[int, bytes | memoryview] = {}
        errors: list[str] = []
        for j in order:
            if len(got) == DATA_SHARDS:
                break
            fragment = segment.fragments[j]
            endpoint = endpoints.get(fragment.miner)
            if fragment.hash != ZERO_FRAGMENT_HASH and (endpoint is None or fragment.miner in self.dead):
                continue
            try:
                got[j] = await self.client.get_fragment(endpoint or "", fid, fragment.hash)
            except DeossError as exc:
                errors.append(f"fragment {j}: {exc}")
        if len(got) < DATA_SHARDS:
            raise DataUnavailable(
                f"only {len(got)} good fragments of segment {s} could be fetched; "
                f"{DATA_SHARDS} are needed to rebuild one ({'; '.join(errors[:2])})",
                hint="the file cannot be repaired until more of its nodes are back",
            )
        return got

    async def _rehome(self, fid: str, problem: FragmentProblem,
                      good: dict[int, bytes | memoryview]) -> str:
        """Rebuild `problem`'s fragment and make a healthy node its holder; returns the node."""
        chain = self.store.chain
        info = await self.store.file_info(fid)
        current = info.segments[problem.segment].fragments[problem.column]
        if current.miner != problem.miner:
            return current.miner  # moved meanwhile (an identical fragment's order moved it too)
        data = await trio.to_thread.run_sync(
            get_coder().reconstruct_fragment, good, problem.column)
        digest = await trio.to_thread.run_sync(hashlib.sha256, data)
        if digest.hexdigest() != problem.fragment_hash:
            raise IntegrityError(
                f"the rebuilt fragment {problem.column} of segment {problem.segment} does not "
                "match its hash on the chain")

        order = await trio.to_thread.run_sync(chain.restoral_order, problem.fragment_hash)
        if order is None:
            try:
                await trio.to_thread.run_sync(chain.generate_restoral_order, fid,
                                              problem.fragment_hash, problem.miner)
            except ChainError as exc:
                raise ChainError(exc.name, f"the chain refused the restoral order: {exc}",
                                 hint=_RESTORAL_HINT) from None
            order = await trio.to_thread.run_sync(chain.restoral_order, problem.fragment_hash)
        if order is None or order.fid != fid:
            raise ChainError("Existed", "a restoral order for this fragment belongs to another file")

        nodes: list[StorageNode] = await trio.to_thread.run_sync(chain.storage_nodes)
        holders = {f.miner for f in info.segments[problem.segment].fragments}
        block = await trio.to_thread.run_sync(chain.block_number)
        tried: set[str] = set()
        last: DeossError | None = None
        for _ in range(REPAIR_ATTEMPTS):
            if order.count and block <= order.deadline and order.miner not in tried:
                # a node claimed this order before (an interrupted repair): it must finish it
                target = next((n for n in nodes if n.account == order.miner), None)
                if target is None:
                    raise NotFound(f"the node {order.miner} that claimed the order is gone")
            else:
                target = self._choose(nodes, holders | self.dead | tried)
            tried.add(target.account)
            try:
                await with_retries(
                    lambda t=target: self.client.put_fragment(t.endpoint, fid, problem.fragment_hash,
                                                              data),
                    f"restoring a fragment on {target.endpoint}",
                )
            except DeossError as exc:
                last = exc
                self.store.selector.record_failure(target.account)
                log.warning("node %s did not take the restored fragment: %s", target.endpoint, exc)
                refreshed = await trio.to_thread.run_sync(chain.restoral_order, problem.fragment_hash)
                if refreshed is None:
                    break  # completed after all (the answer was lost)
                order = refreshed
                block = await trio.to_thread.run_sync(chain.block_number)
                continue
            info = await self.store.file_info(fid)
            now = info.segments[problem.segment].fragments[problem.column]
            if now.miner != target.account:
                raise IntegrityError(f"node {target.endpoint} stored the fragment but the chain "
                                     f"still names {now.miner} as its holder")
            log.info("fragment %d of segment %d of %s… rebuilt on %s", problem.column,
                     problem.segment, fid[:16], target.endpoint)
            return target.account
        info = await self.store.file_info(fid)
        now = info.segments[problem.segment].fragments[problem.column]
        if now.miner != problem.miner and now.avail:
            return now.miner
        raise last or NotEnoughNodes("no node took the restored fragment")

    def _choose(self, nodes: Iterable[StorageNode], exclude: set[str]) -> StorageNode:
        try:
            return self.store.selector.choose(nodes, 1, exclude=exclude)[0]
        except NotEnoughNodes as exc:
            raise NotEnoughNodes(
                "no healthy storage node outside this segment's holders can take the fragment",
                hint=exc.hint) from None

    # ---- everything -----------------------------------------------------------------

    async def run(self, names: list[tuple[str, str]], *, repair: bool = False,
                  progress: Progress | None = None) -> VerifyReport:
        report = VerifyReport()
        endpoints = await self.store.endpoints()
        for name, fid in names:
            try:
                info = await self.store.file_info(fid)
            except NotFound:
                continue  # deleted meanwhile
            file_report = await self.check(info, endpoints, name)
            if repair and file_report.problems:
                await self.repair(file_report)
            report.files.append(file_report)
            if progress is not None:
                progress(file_report)
        return report


_RESTORAL_HINT = ("on a CESS chain only the miner that held a fragment may open its restoral "
                  "order; the network's audit does that (docs/reliability.md)")


async def find_orphans(store: ObjectStore, buckets: list[str], grace: float = ORPHAN_GRACE_SECONDS,
                       keep: Callable[[str], bool] = lambda fid: False) -> list[Orphan]:
    """The orphans of `buckets` (see the module's docstring) at least `grace` s old; `keep`
    says which FIDs someone still needs (a mount: those its database refers to)."""
    found: list[Orphan] = []
    now = await trio.to_thread.run_sync(store.chain.block_number)
    for bucket in buckets:
        try:
            objects = await store.files_in_bucket(bucket)
        except NotFound:
            continue  # deleted meanwhile
        metas = [info.fid for key, info in objects if key == META_KEY]
        if not metas:
            continue  # no mount keeps this bucket: nothing tells a version from an object
        named: set[str] = set()
        current: dict[str, tuple[str, str]] = {}  # chain name -> (path, FID) of a named version
        on_chain = {info.fid for _, info in objects}
        try:
            for fid in metas:
                meta = decode(await store.read_object(fid))
                named.update(file_versions(meta).values())
                # another tool's object a writer only listed claims nothing: an earlier
                # object of that name is that tool's too (DeOSS keeps every upload)
                for path, version in written_versions(meta).items():
                    if version in on_chain:
                        current[chain_file_name(path)] = (path, version)
        except (DeossError, ValueError) as exc:
            log.warning("bucket %s: its metadata object cannot be read (%s); not looking for "
                        "orphans there", bucket, exc)
            continue
        for name, info in objects:
            if name == META_KEY or info.fid in named or keep(info.fid):
                continue
            claim = current.get(name)
            age = (now - info.completion) * BLOCK_SECONDS
            if claim is None or claim[1] == info.fid or age < grace:
                continue
            found.append(Orphan(bucket, name, info.fid, info.file_size, age, *claim))
    return found


async def delete_orphans(store: ObjectStore, orphans: list[Orphan]) -> None:
    for orphan in orphans:
        try:
            await store.delete_fid(orphan.fid)
            orphan.deleted = True
            log.info("deleted orphan %s/%s (%s…): no metadata object names it; %s is %s…",
                     orphan.bucket, orphan.name, orphan.fid[:16], orphan.path, orphan.current[:16])
        except DeossError as exc:
            orphan.delete_error = str(exc)
            log.warning("deleting orphan %s/%s failed: %s", orphan.bucket, orphan.name, exc)


async def verify(store: ObjectStore, target: str | None = None, *, repair: bool = False,
                 progress: Progress | None = None, grace: float = ORPHAN_GRACE_SECONDS,
                 keep: Callable[[str], bool] = lambda fid: False,
                 names: ObjectNames | None = None) -> VerifyReport:
    """Verify (and with `repair`, repair) BUCKET/KEY, a BUCKET, or every object; for a
    bucket or everything, find orphans too (and with `repair`, delete them). `names`
    finds and labels objects as their users name them (default: chain names)."""
    found = await targets(store, target, names)
    report = await Verifier(store).run(found, repair=repair, progress=progress)
    if target is None or "/" not in target.strip("/"):
        buckets = [target.strip("/")] if target else \
            await trio.to_thread.run_sync(store.chain.buckets, store.owner)
        report.orphans = await find_orphans(store, buckets, grace, keep)
        if repair:
            await delete_orphans(store, report.orphans)
    return report


async def verify_forever(store: ObjectStore, interval: float, *, repair: bool = True,
                         grace: float = ORPHAN_GRACE_SECONDS,
                         keep: Callable[[str], bool] = lambda fid: False) -> None:
    """The background check (`[storage] verify_interval`): verify everything every `interval` s,
    and delete orphans (`keep`: FIDs the mount still refers to, whatever the chain says).

    Runs until cancelled; a failed round is logged and the next one runs on time.
    """
    if interval <= 0:
        return
    while True:
        await trio.sleep(interval)
        try:
            report = await verify(store, repair=repair, grace=grace, keep=keep)
        except Exception as exc:  # a background task: it must not end the mount
            log.warning("background verification failed: %s", cli_message(exc))
            continue
        if report.orphans:
            log.warning("background verification: %d orphaned files, %d deleted",
                        len(report.orphans), len(report.orphans) - len(report.orphans_left))
        if report.problems:
            log.warning("background verification: %d bad fragments, %d repaired, %d left",
                        len(report.problems), len(report.repaired), len(report.unresolved))
        else:
            log.info("background verification: %d fragments of %d files are intact",
                     report.fragments, len(report.files))


def describe(problem: FragmentProblem, endpoints: dict[str, str] | None = None) -> str:
    """One line about a bad fragment (nodes named by endpoint where `endpoints` knows them)."""
    where = problem.endpoint or problem.miner
    text = (f"segment {problem.segment} fragment {problem.column} on {where}: {problem.kind}"
            f" ({problem.detail})")
    if problem.repaired_to is not None:
        node = (endpoints or {}).get(problem.repaired_to, problem.repaired_to)
        text += f" -> rebuilt on {node}"
    elif problem.repair_error is not None:
        text += f" -> not repaired: {problem.repair_error}"
    return text


def describe_orphan(orphan: Orphan) -> str:
    """One line about an orphaned file."""
    text = (f"{orphan.bucket}/{orphan.name} ({orphan.fid[:16]}…, {orphan.size} bytes, "
            f"{orphan.age_seconds / 3600:.1f} h old): orphaned, no metadata object names it; "
            f"{orphan.path} is {orphan.current[:16]}…")
    if orphan.deleted:
        text += " -> deleted"
    elif orphan.delete_error is not None:
        text += f" -> not deleted: {orphan.delete_error}"
    return text
