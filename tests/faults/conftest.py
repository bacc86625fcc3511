"""The fault suite's own devnet: 14 storage nodes (two spares beyond a file's 12).

Its tests kill, replace, corrupt and lock things; each restores what it broke in a
`finally`, so the next test starts from a full, healthy network.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import Devnet
from ..harness import config_for, restart_dead, scratch_devnet

NODES = 14


@pytest.fixture(scope="package")
def fault_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with scratch_devnet(tmp_path_factory.mktemp("fault-devnet"), NODES) as net:
        net.cli("bucket", "create", "faults")
        yield net


@pytest.fixture
def healthy(fault_devnet: Devnet) -> Iterator[Devnet]:
    """The fault devnet, every node restarted after the test whatever it did."""
    try:
        yield fault_devnet
    finally:
        restart_dead(fault_devnet)


@pytest.fixture
def plain_config(fault_devnet: Devnet, tmp_path: Path) -> Path:
    """A config without segment cache or peers: every read goes to the storage nodes."""
    return config_for(fault_devnet, tmp_path / "client")
