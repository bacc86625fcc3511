"""Node selection: preferred clusters (pinning with 12+), a blacklist, failing nodes
avoided for a while and re-checked (a fake clock: no sleeping, no timing)."""

from __future__ import annotations

import random

import pytest

from deossfs.chain.interface import MinerState, StorageNode
from deossfs.config import Config
from deossfs.errors import NotEnoughNodes
from deossfs.keys import account_from_secret
from deossfs.scheduling.selector import NodeSelector
from deossfs.store import ObjectStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def nodes(count: int) -> list[StorageNode]:
    return [StorageNode(f"node{i:02d}", f"http://127.0.0.1:{20000 + i}", MinerState.POSITIVE)
            for i in range(count)]


def names(chosen: list[StorageNode]) -> list[str]:
    return [n.account for n in chosen]


@pytest.mark.parametrize("seed", range(5))
def test_twelve_preferred_nodes_pin_files_to_them(seed: int) -> None:
    network = nodes(20)
    preferred = [f"node{i:02d}" for i in range(5, 17)]
    selector = NodeSelector(preferred=preferred, rng=random.Random(seed))
    for node in network[:5]:
        selector.record_rtt(node.account, 0.0001)  # the others are much faster: still not used
    assert sorted(names(selector.choose(network))) == sorted(preferred)


def test_pinned_cluster_does_not_spill_over_when_a_member_fails() -> None:
    clock = Clock()
    network = nodes(20)
    preferred = [f"node{i:02d}" for i in range(12)]
    selector = NodeSelector(preferred=preferred, penalty_seconds=30, clock=clock)
    selector.record_failure("node03")
    with pytest.raises(NotEnoughNodes, match="preferred"):
        selector.choose(network)
    clock.now += 31  # re-checked after the window: the cluster is whole again
    assert sorted(names(selector.choose(network))) == sorted(preferred)


@pytest.mark.parametrize("seed", range(5))
def test_fewer_preferred_nodes_come_first(seed: int) -> None:
    network = nodes(16)
    preferred = ["node13", "node02", "node09"]
    selector = NodeSelector(preferred=preferred, rng=random.Random(seed))
    chosen = names(selector.choose(network))
    assert len(chosen) == 12 and len(set(chosen)) == 12
    assert sorted(chosen[:3]) == sorted(preferred)


def test_blocked_nodes_are_never_chosen_even_if_preferred() -> None:
    network = nodes(14)
    selector = NodeSelector(preferred=["node01"], blocked=["node01", "node05"])
    for seed in range(10):
        selector.rng = random.Random(seed)
        chosen = names(selector.choose(network))
        assert "node01" not in chosen and "node05" not in chosen
    with pytest.raises(NotEnoughNodes, match="only 11 usable") as caught:
        NodeSelector(blocked=["node01", "node05", "node07"]).choose(network)
    assert "blocked_nodes" in (caught.value.hint or "")


def test_only_positive_nodes_are_used() -> None:
    network = nodes(13)
    network[4] = StorageNode("node04", network[4].endpoint, MinerState.OFFLINE)
    assert "node04" not in names(NodeSelector().choose(network))


def test_a_failing_node_is_avoided_for_a_while_then_rechecked() -> None:
    clock = Clock()
    network = nodes(14)
    selector = NodeSelector(penalty_seconds=60, clock=clock)
    selector.record_failure("node03")
    assert selector.penalized("node03")
    for seed in range(10):
        selector.rng = random.Random(seed)
        assert "node03" not in names(selector.choose(network, 13))
    clock.now += 59
    assert "node03" not in names(selector.choose(network, 13))
    clock.now += 2  # the window has passed: the node is tried again
    assert not selector.penalized("node03")
    assert "node03" in names(selector.choose(network, 14))
    selector.record_failure("node03")  # fails again: a new window
    assert "node03" not in names(selector.choose(network, 13))
    assert selector.health["node03"].failures == 2
    clock.now += 61
    selector.record_success("node03")  # works: its record is cleared
    assert selector.health["node03"].failures == 0 and not selector.penalized("node03")


def test_the_store_takes_node_selection_from_the_config() -> None:
    alice = account_from_secret("//Alice")
    bob = account_from_secret("//Bob").address
    config = Config()
    config.cache.enabled = False
    config.storage.preferred_nodes = [alice.address]
    config.storage.blocked_nodes = [bob]
    config.storage.node_penalty_seconds = 12.5
    store = ObjectStore(config, alice, chain=None)  # type: ignore[arg-type]
    assert store.selector.preferred == [alice.address]
    assert store.selector.blocked == [bob]
    assert store.selector.penalty_seconds == 12.5
