"""Node choice for a storage order: the selector keeps each node's health, the policies
choose.

The selector measures and remembers (round-trip times, failures and a penalty window:
`storage.node_penalty_seconds`; once the window has passed a node is re-checked - used
again, a success clears its record and another failure starts a new window) and offers
the policies the nodes that are `positive`, not penalized and not used by the order
already. The policies (scheduling/policies.py; `scheduling.policies` in the config)
choose among them: by default the blacklist, nearest first, then preferred nodes first
(12 or more pin files to them), as DeOSS's "shunt" plus what a serious client adds.
Reads use the same record: fragments on penalized nodes are fetched last.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..chain.interface import MinerState, StorageNode
from ..processing.layout import TOTAL_SHARDS
from .policies import (
    DEFAULT_POLICIES,
    NodeCandidate,
    Placement,
    PlacementRequest,
    SchedulingPolicy,
    load_policies,
    run_policies,
)


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

    #: the policies, in order (names of built-ins or `deossfs.scheduling` entry points)
    policies: list[str] = field(default_factory=lambda: list(DEFAULT_POLICIES))
    #: options of plug-in policies, by name
    policy_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    _loaded: list[tuple[str, SchedulingPolicy]] | None = field(default=None, repr=False)

    @property
    def pinned(self) -> bool:
        """12 or more preferred nodes: only they may take files."""
        return len(set(self.preferred) - set(self.blocked)) >= TOTAL_SHARDS

    def loaded_policies(self) -> list[tuple[str, SchedulingPolicy]]:
        """The policies, loaded at first use (a missing plug-in fails the first upload,
        not every command)."""
        if self._loaded is None:
            self._loaded = load_policies(self.policies, self.policy_options,
                                         self.preferred, self.blocked)
        return self._loaded

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

    def candidates(self, nodes: Iterable[StorageNode], exclude: Iterable[str] = ()) -> list[NodeCandidate]:
        """The nodes policies may choose: positive, not penalized, not excluded."""
        now = self.clock()
        excluded = set(exclude)
        out = []
        for node in nodes:
            health = self._health(node.account)
            if (node.state == MinerState.POSITIVE and node.account not in excluded
                    and health.failed_until <= now):
                out.append(NodeCandidate(node, health.rtt, health.failures))
        return out

    def rank(self, nodes: Iterable[StorageNode], placement: Placement | None = None) -> list[StorageNode]:
        """Every node the policies would use, best first."""
        candidates = self.candidates(nodes)
        request = PlacementRequest(0, (), placement or Placement(), self.rng)
        return [c.node for c in run_policies(self.loaded_policies(), candidates, request)]

    def choose(self, nodes: Iterable[StorageNode], count: int = TOTAL_SHARDS,
               exclude: Iterable[str] = (), placement: Placement | None = None,
               columns: Iterable[int] = ()) -> list[StorageNode]:
        """`count` distinct nodes for `columns` (in order), chosen by the policies; else
        NotEnoughNodes, or PluginError for a policy that broke its contract."""
        request = PlacementRequest(count, tuple(columns), placement or Placement(), self.rng)
        chosen = run_policies(self.loaded_policies(), self.candidates(nodes, exclude), request)
        return [c.node for c in chosen[:count]]


__all__ = ["NodeSelector", "NodeHealth", "Placement"]
