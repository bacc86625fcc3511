"""Node choice for a storage order.

Order of preference (as DeOSS's "shunt" plus what a serious client adds):
1. preferred nodes from the config (`storage.preferred_nodes`), shuffled; when 12
   or more are configured (blocked ones aside) only those are ever used - the
   file is pinned to that cluster, and an upload fails rather than leave it;
2. the rest by measured round-trip time, with randomness so load spreads;
3. never blocked nodes (`storage.blocked_nodes`), nodes not `positive`, or nodes
   that failed within the penalty window (`storage.node_penalty_seconds`). Once
   the window has passed a node is re-checked: it is used again, a success clears
   its record and another failure starts a new window.
Reads use the same record: fragments on penalized nodes are fetched last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..chain.interface import MinerState, StorageNode
from ..errors import NotEnoughNodes
from ..processing.layout import TOTAL_SHARDS


@dataclass(frozen=True)
class Placement:
    """Where one upload's fragments should go, beside the configured preferences.

    `preferred` pins the upload to these node accounts as `storage.preferred_nodes` does
    (DeOSS's repeated `Miner` header); `location` (latitude, longitude) is a hint that
    placement policies may use (DeOSS's `Latitude`/`Longitude` headers); the built-in
    choice records it and does not use it.
    """

    preferred: tuple[str, ...] = ()
    location: tuple[float, float] | None = None


@dataclass
class NodeHealth:
    rtt: float | None = None  # seconds; None = not measured
    failed_until: float = 0.0
    failures: int = 0


@dataclass
class NodeSelector:
    preferred: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    penalty_seconds: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    health: dict[str, NodeHealth] = field(default_factory=dict)
    #: the time source of penalty windows (tests pass a fake one)
    clock: Callable[[], float] = time.monotonic

    @property
    def pinned(self) -> bool:
        """12 or more preferred nodes: only they may take files."""
        return self._pinned(self.preferred)

    def _pinned(self, preferred: Iterable[str]) -> bool:
        return len(set(preferred) - set(self.blocked)) >= TOTAL_SHARDS

    def _preferred(self, placement: Placement | None) -> list[str]:
        """An upload's own pinned nodes replace the configured ones."""
        return list(placement.preferred) if placement and placement.preferred else self.preferred

    def penalized(self, account: str) -> bool:
        health = self.health.get(account)
        return health is not None and health.failed_until > self.clock()

    def _health(self, account: str) -> NodeHealth:
        return self.health.setdefault(account, NodeHealth())

    def record_rtt(self, account: str, seconds: float) -> None:
        health = self._health(account)
        # smooth so one slow probe does not reorder everything
        health.rtt = seconds if health.rtt is None else 0.7 * health.rtt + 0.3 * seconds

    def record_failure(self, account: str) -> None:
        health = self._health(account)
        health.failures += 1
        health.failed_until = self.clock() + self.penalty_seconds

    def record_success(self, account: str) -> None:
        health = self._health(account)
        health.failures = 0
        health.failed_until = 0.0

    def usable(self, nodes: Iterable[StorageNode]) -> list[StorageNode]:
        now = self.clock()
        blocked = set(self.blocked)
        return [
            node
            for node in nodes
            if node.state == MinerState.POSITIVE
            and node.account not in blocked
            and self._health(node.account).failed_until <= now
        ]

    def rank(self, nodes: Iterable[StorageNode], placement: Placement | None = None) -> list[StorageNode]:
        """Usable nodes, best first."""
        usable = self.usable(nodes)
        preferred_set = set(self._preferred(placement))
        preferred = [n for n in usable if n.account in preferred_set]
        self.rng.shuffle(preferred)
        if self._pinned(preferred_set) or len(preferred) >= TOTAL_SHARDS:
            return preferred
        others = [n for n in usable if n.account not in preferred_set]

        def score(node: StorageNode) -> float:
            rtt = self._health(node.account).rtt
            base = rtt if rtt is not None else 0.05  # unmeasured: assume a typical LAN peer
            return base * self.rng.uniform(1.0, 2.0)

        others.sort(key=score)
        return preferred + others

    def choose(self, nodes: Iterable[StorageNode], count: int = TOTAL_SHARDS,
               exclude: Iterable[str] = (), placement: Placement | None = None) -> list[StorageNode]:
        """`count` distinct usable nodes, or NotEnoughNodes."""
        excluded = set(exclude)
        ranked = [n for n in self.rank(nodes, placement) if n.account not in excluded]
        if len(ranked) < count:
            if self._pinned(self._preferred(placement)):
                raise NotEnoughNodes(
                    f"only {len(ranked)} of the preferred storage nodes are usable, {count} needed "
                    "(12 or more preferred nodes pin files to them)",
                    hint="check that they are up, or edit storage.preferred_nodes",
                )
            raise NotEnoughNodes(
                f"only {len(ranked)} usable storage nodes, {count} needed",
                hint="start more nodes (deossfs devnet up --nodes 12) or check blocked_nodes",
            )
        return ranked[:count]
