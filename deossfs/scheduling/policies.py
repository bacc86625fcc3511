"""Placement policies: which storage nodes take a storage order's fragment columns.

A policy sees the candidates (the chain's node list, less nodes that are not `positive`,
that failed within the penalty window, or that the order uses already), each with the
selector's measurements, and returns the ones it would use, best first. Policies run in
the order the config lists them (`scheduling.policies`), each on what the one before
returned; the first `count` nodes of the last answer take the columns, in column order.
The built-ins are policies of this kind:

- `blacklist`: drops `storage.blocked_nodes`;
- `nearby`: orders by measured round-trip time, with randomness so load spreads;
- `pinned`: puts `storage.preferred_nodes` (or an upload's own pinned nodes, DeOSS's
  `Miner` headers) first, shuffled; with 12 or more only they are used (a pinned cluster).

What a policy returns is checked before any byte is sent: a node it was not offered, a
node named twice, or an exception is a PluginError naming the policy; fewer nodes than
the order needs is NotEnoughNodes naming it. docs/extending.md is the contract.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..chain.interface import StorageNode
from ..errors import NotEnoughNodes, PluginError
from ..plugins import SCHEDULING_GROUP, instantiate, load
from ..processing.layout import TOTAL_SHARDS

#: the built-in chain: the configured blacklist, then nearest first, then pinned nodes first
DEFAULT_POLICIES = ("blacklist", "nearby", "pinned")
#: the round-trip time assumed for a node not measured yet (a typical LAN peer)
UNMEASURED_RTT = 0.05


@dataclass(frozen=True)
class Placement:
    """Where one upload's fragments should go, beside the configured policies.

    `preferred` pins the upload to these node accounts as `storage.preferred_nodes` does
    (DeOSS's repeated `Miner` header); `location` (latitude, longitude) is the first point
    DeOSS's `Latitude`/`Longitude` headers gave, and `area` all of them (DeOSS takes three
    or more as a region). Built-in policies use `preferred`; the others are for policies
    such as the region plug-in.
    """

    preferred: tuple[str, ...] = ()
    location: tuple[float, float] | None = None
    area: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class NodeCandidate:
    """A node a policy may choose, with what the selector has measured of it."""

    node: StorageNode
    #: smoothed round-trip time in seconds (None: not measured yet)
    rtt: float | None = None
    #: failures since its last success
    failures: int = 0

    @property
    def account(self) -> str:
        return self.node.account

    @property
    def endpoint(self) -> str:
        return self.node.endpoint


@dataclass(frozen=True)
class PlacementRequest:
    """What is being placed: `count` fragment columns (`columns`, 0..11) of one storage
    order, with the upload's hints. `rng` is the selector's (tests seed it)."""

    count: int
    columns: tuple[int, ...] = ()
    placement: Placement = field(default_factory=Placement)
    rng: random.Random = field(default_factory=random.Random)


@runtime_checkable
class SchedulingPolicy(Protocol):
    """What a `deossfs.scheduling` entry point makes (called with the policy's options
    from `scheduling.options.<name>` as keyword arguments)."""

    def rank(self, candidates: Sequence[NodeCandidate],
             request: PlacementRequest) -> Sequence[NodeCandidate]:
        """The candidates to use, best first: a subset of `candidates` (no node twice).
        Called on the trio thread: return at once, never block or do I/O."""
        ...


# ---- the built-ins -------------------------------------------------------------------------


class BlacklistPolicy:
    """Never the configured blocked nodes."""

    def __init__(self, blocked: Sequence[str] = ()) -> None:
        self.blocked = set(blocked)

    def rank(self, candidates: Sequence[NodeCandidate],
             request: PlacementRequest) -> Sequence[NodeCandidate]:
        return [c for c in candidates if c.account not in self.blocked]

    def shortfall(self, left: int, count: int) -> NotEnoughNodes:
        return NotEnoughNodes(
            f"only {left} usable storage nodes, {count} needed",
            hint="start more nodes (deossfs devnet up --nodes 12) or check blocked_nodes")


class NearbyPolicy:
    """Nearest first by measured round-trip time, each scaled by a random 1-2x so that
    equally near nodes share the load."""

    def rank(self, candidates: Sequence[NodeCandidate],
             request: PlacementRequest) -> Sequence[NodeCandidate]:
        def score(candidate: NodeCandidate) -> float:
            rtt = candidate.rtt if candidate.rtt is not None else UNMEASURED_RTT
            return rtt * request.rng.uniform(1.0, 2.0)

        return sorted(candidates, key=score)


class PinnedPolicy:
    """Preferred nodes first (shuffled); 12 or more of them (blocked ones aside) pin the
    file to that cluster: only they are used, and an upload fails rather than leave it.
    An upload's own pinned nodes replace the configured ones."""

    def __init__(self, preferred: Sequence[str] = (), blocked: Sequence[str] = ()) -> None:
        self.preferred = list(preferred)
        self.blocked = set(blocked)

    def wanted(self, placement: Placement) -> list[str]:
        return list(placement.preferred) if placement.preferred else self.preferred

    def pins(self, placement: Placement) -> bool:
        return len(set(self.wanted(placement)) - self.blocked) >= TOTAL_SHARDS

    def rank(self, candidates: Sequence[NodeCandidate],
             request: PlacementRequest) -> Sequence[NodeCandidate]:
        wanted = set(self.wanted(request.placement))
        preferred = [c for c in candidates if c.account in wanted]
        request.rng.shuffle(preferred)
        if self.pins(request.placement) or len(preferred) >= TOTAL_SHARDS:
            return preferred
        return preferred + [c for c in candidates if c.account not in wanted]

    def shortfall(self, left: int, count: int, placement: Placement) -> NotEnoughNodes | None:
        if not self.pins(placement):
            return None
        return NotEnoughNodes(
            f"only {left} of the preferred storage nodes are usable, {count} needed "
            "(12 or more preferred nodes pin files to them)",
            hint="check that they are up, or edit storage.preferred_nodes")


def builtin_policies(preferred: Sequence[str], blocked: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """The built-in policies, made from [storage]'s preferred and blocked nodes."""
    return {
        "blacklist": lambda: BlacklistPolicy(blocked),
        "nearby": NearbyPolicy,
        "pinned": lambda: PinnedPolicy(preferred, blocked),
    }


def load_policies(names: Sequence[str], options: Mapping[str, Mapping[str, Any]],
                  preferred: Sequence[str], blocked: Sequence[str]) -> list[tuple[str, SchedulingPolicy]]:
    """(name, policy) for each name, built-ins or plug-ins made with their options."""
    builtins = builtin_policies(preferred, blocked)
    loaded = []
    for name in names:
        factory = load(SCHEDULING_GROUP, name, builtins)
        policy = instantiate(SCHEDULING_GROUP, name, factory,
                             {} if name in builtins else options.get(name, {}))
        if not callable(getattr(policy, "rank", None)):
            raise PluginError(f"scheduling policy {name!r} has no rank method",
                              hint="see docs/extending.md for what a policy provides")
        loaded.append((name, policy))
    return loaded


# ---- running them ----------------------------------------------------------------------------


def run_policies(policies: Sequence[tuple[str, SchedulingPolicy]], candidates: Sequence[NodeCandidate],
                 request: PlacementRequest) -> list[NodeCandidate]:
    """The nodes the policies would use, best first, after every policy has ranked what
    the one before left (at least `request.count` of them; the caller takes the first
    `count`). Checked as the module's docstring says."""
    current = list(candidates)
    narrowed_by: tuple[str, SchedulingPolicy] | None = None
    for name, policy in policies:
        offered = {c.account: c for c in current}
        try:
            answer = policy.rank(tuple(current), request)
            answer = list(answer)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"scheduling policy {name!r} failed: {exc!r}",
                              hint="nothing was sent; fix the policy or remove it from "
                                   "scheduling.policies") from exc
        ranked: list[NodeCandidate] = []
        seen: set[str] = set()
        for item in answer:
            account = _account_of(item)
            if account is None or account not in offered:
                raise PluginError(
                    f"scheduling policy {name!r} chose node {account or repr(item)}, which it was not "
                    "offered (not positive, failing, blocked, or used by this order already)",
                    hint="a policy returns a subset of the candidates it is given")
            if account in seen:
                raise PluginError(f"scheduling policy {name!r} chose node {account} twice",
                                  hint="each fragment column needs a node of its own")
            seen.add(account)
            ranked.append(offered[account])
        if len(ranked) < request.count <= len(current):
            narrowed_by = (name, policy)
        current = ranked
    if len(current) < request.count:
        raise _shortfall(narrowed_by, len(current), len(candidates), request)
    return current


def _account_of(item: object) -> str | None:
    if isinstance(item, NodeCandidate | StorageNode):
        return item.account
    if isinstance(item, str):
        return item
    return None


def _shortfall(narrowed_by: tuple[str, SchedulingPolicy] | None, left: int, offered: int,
               request: PlacementRequest) -> NotEnoughNodes:
    count = request.count
    if narrowed_by is None:
        return NotEnoughNodes(
            f"only {left} usable storage nodes, {count} needed",
            hint="start more nodes (deossfs devnet up --nodes 12) or check blocked_nodes")
    name, policy = narrowed_by
    if isinstance(policy, PinnedPolicy):
        found = policy.shortfall(left, count, request.placement)
        if found is not None:
            return found
    if isinstance(policy, BlacklistPolicy):
        return policy.shortfall(left, count)
    return NotEnoughNodes(
        f"scheduling policy {name!r} left {left} of {offered} usable storage nodes, {count} needed",
        hint="nothing was sent; widen the policy's options or add nodes it accepts")
