"""Shared fixtures: a real devnet (embedded ledger + storage-node processes on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def deossfs(*args: str, config: Path | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    env = dict(os.environ)
    if config is not None:
        env["DEOSSFS_CONFIG"] = str(config)
    result = subprocess.run([sys.executable, "-m", "deossfs", *args], capture_output=True,
                            text=True, env=env, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"deossfs {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class Devnet:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "deossfs.toml"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return deossfs(*args, config=self.config, check=check)

    def nodes(self) -> list:
        from deossfs.devnet import node_processes

        return node_processes(self.dir)


@contextlib.contextmanager
def devnet_at(directory: Path, nodes: int = 12) -> Iterator[Devnet]:
    """A devnet of its own (ledger and node processes) in `directory`, removed afterwards."""
    deossfs("devnet", "up", "--dir", str(directory), "--nodes", str(nodes), timeout=240)
    net = Devnet(directory)
    try:
        yield net
    finally:
        deossfs("devnet", "down", "--dir", str(directory), check=False)
        # the nodes hold 3x every byte stored: do not leave gigabytes behind on a shared disk
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with devnet_at(tmp_path_factory.mktemp("devnet")) as net:
        yield net
