"""Moving fragments: whole columns to storage nodes, segments back from them.

Upload: one column (fragment j of every segment) per node, the 12 columns sent
concurrently; a node that fails has its column given to another node.
Download: per segment, the 4 data fragments first (no decoding needed), then
parity fragments as replacements for any that are missing or wrong; every
fragment is checked against its hash from the chain before use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import trio

from ..chain.interface import SegmentInfo, StorageNode
from ..errors import DataUnavailable, DeossError, IntegrityError, NodeRefused
from ..processing.layout import DATA_SHARDS, TOTAL_SHARDS, ZERO_FRAGMENT_HASH
from ..scheduling.selector import NodeSelector
from .nodeclient import NodeClient

log = logging.getLogger(__name__)

RETRY_DELAYS = (0.2, 0.8, 2.0)
#: a segment's read fetches a parity fragment beside one still under way (a straggler)
#: only this long after it began, and at least HEDGE_FACTOR x what its first fragment took
HEDGE_MIN_SECONDS = 0.5
HEDGE_FACTOR = 4.0


async def with_retries(attempt: Callable[[], Awaitable[object]], what: str) -> object:
    """Run `attempt`, retrying temporary errors with backoff; permanent ones pass through."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return await attempt()
        except DeossError as exc:
            if not exc.temporary or delay is None:
                raise
            log.info("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await trio.sleep(delay)
    raise AssertionError("unreachable")


async def probe_nodes(client: NodeClient, selector: NodeSelector, nodes: Iterable[StorageNode]) -> None:
    """Measure each node's round-trip time (GET /status) for the selector."""

    async def probe(node: StorageNode) -> None:
        start = time.monotonic()
        try:
            with trio.fail_after(2):
                await client.status(node.endpoint)
        except (DeossError, trio.TooSlowError):
            selector.record_failure(node.account)
            return
        selector.record_rtt(node.account, time.monotonic() - start)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(probe, node)


class ColumnFailure(Exception):
    def __init__(self, column: int, node: StorageNode, error: DeossError) -> None:
        super().__init__(f"column {column} on {node.account}: {error}")
        self.column, self.node, self.error = column, node, error


async def send_segment(
    client: NodeClient,
    fid: str,
    fragments: list[memoryview],
    fragment_hashes: tuple[str, ...],
    assignment: Mapping[int, StorageNode],
    failed: dict[int, ColumnFailure],
) -> None:
    """Send this segment's fragment of every live column to its node, concurrently."""

    async def send(column: int, node: StorageNode) -> None:
        fragment_hash = fragment_hashes[column]
        data = None if fragment_hash == ZERO_FRAGMENT_HASH else fragments[column]
        try:
            await with_retries(
                lambda: client.put_fragment(node.endpoint, fid, fragment_hash, data),
                f"fragment {column} to {node.endpoint}",
            )
        except DeossError as exc:
            log.warning("node %s refused column %d of %s: %s", node.endpoint, column, fid, exc)
            failed.setdefault(column, ColumnFailure(column, node, exc))

    async with trio.open_nursery() as nursery:
        for column, node in assignment.items():
            if column not in failed:
                nursery.start_soon(send, column, node)


async def fetch_segment(
    client: NodeClient,
    fid: str,
    segment: SegmentInfo,
    endpoints: Mapping[str, str],
    selector: NodeSelector | None = None,
    into: Callable[[int], memoryview | None] | None = None,
) -> dict[int, bytes | memoryview]:
    """Fetch 4 verified fragments of a segment: data first, parity as replacements.

    `into(index)` may give a buffer to receive fragment `index` in place (the
    reader passes the segment's own slots for data fragments, so the common case
    needs no decoding and no copy).
    """
    now = time.monotonic()

    def penalized(index: int) -> bool:
        if selector is None:
            return False
        health = selector.health.get(segment.fragments[index].miner)
        return health is not None and health.failed_until > now

    # data fragments first (no decode needed), healthy nodes before penalized ones
    order = sorted(range(TOTAL_SHARDS), key=lambda i: (penalized(i), i >= DATA_SHARDS, i))
    queue = list(reversed(order))
    got: dict[int, bytes | memoryview] = {}
    errors: list[str] = []
    done = trio.CancelScope()
    in_flight = 0
    first_took: list[float] = []
    changed = trio.Event()

    def keep(index: int, data: bytes | memoryview) -> None:
        if len(got) < DATA_SHARDS:
            got[index] = data
        if not first_took:
            first_took.append(time.monotonic() - now)
        if len(got) == DATA_SHARDS:
            # enough to decode: stragglers (a slow or hung node) are not waited for
            done.cancel()

    async def wait_or_hedge() -> None:
        """Every missing fragment is being fetched: wait for one to fail (its worker
        goes on), or, if one is a straggler, fetch a parity fragment beside it - but
        only after several times what the first fragment took: fetching parity at once
        read ~75% more than needed from the nodes on every segment."""
        nonlocal changed
        hedge_after = max(HEDGE_MIN_SECONDS, HEDGE_FACTOR * first_took[0]) if first_took else HEDGE_MIN_SECONDS
        with trio.move_on_after(max(0.0, now + hedge_after - time.monotonic())):
            while len(got) < DATA_SHARDS and in_flight + len(got) >= DATA_SHARDS:
                await changed.wait()
                if changed.is_set():  # the first waiter woken re-arms it for all
                    changed = trio.Event()

    async def worker() -> None:
        nonlocal in_flight
        while queue and len(got) < DATA_SHARDS:
            if in_flight + len(got) >= DATA_SHARDS:
                await wait_or_hedge()
                if not queue or len(got) >= DATA_SHARDS:
                    return
            index = queue.pop()
            fragment = segment.fragments[index]
            target = into(index) if into is not None else None
            if fragment.hash == ZERO_FRAGMENT_HASH:
                keep(index, await client.get_fragment("", fid, fragment.hash, into=target))
                continue
            endpoint = endpoints.get(fragment.miner)
            if endpoint is None:
                errors.append(f"fragment {index}: node {fragment.miner} not registered")
                continue
            in_flight += 1
            try:
                data = await with_retries(
                    lambda e=endpoint, h=fragment.hash, t=target: client.get_fragment(e, fid, h, into=t),
                    f"fragment {index} from {endpoint}",
                )
            except (DeossError, IntegrityError) as exc:
                if selector is not None:
                    selector.record_failure(fragment.miner)
                errors.append(f"fragment {index} from {endpoint}: {exc}")
                continue
            finally:
                in_flight -= 1
                changed.set()
            if selector is not None:
                selector.record_success(fragment.miner)
            keep(index, data)  # type: ignore[arg-type]

    with done:
        async with trio.open_nursery() as nursery:
            for _ in range(DATA_SHARDS):
                nursery.start_soon(worker)
    if len(got) < DATA_SHARDS:
        detail = "; ".join(errors[:3])
        raise DataUnavailable(
            f"only {len(got)} of {TOTAL_SHARDS} fragments of a segment of {fid[:16]}… could be "
            f"fetched, {DATA_SHARDS} are needed ({detail})",
            hint="too many storage nodes are down; try again when they are back",
        )
    return got


def refusal_message(failures: Iterable[ColumnFailure]) -> str:
    parts = []
    for failure in failures:
        kind = "refused" if isinstance(failure.error, NodeRefused) else "failed"
        parts.append(f"node {failure.node.endpoint} {kind} column {failure.column}: {failure.error}")
    return "; ".join(parts)
