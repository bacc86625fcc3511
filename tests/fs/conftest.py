"""Fixtures of the mount's tests: configs with their own workspace, a scratch devnet."""

from __future__ import annotations

import secrets
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import tomli_w

from ..conftest import Devnet, deossfs

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


#: the marks of every test that needs a real kernel mount
NEEDS_MOUNT = [
    pytest.mark.mount,
    pytest.mark.skipif(not Path("/dev/fuse").exists(),
                       reason="/dev/fuse is absent: this system cannot mount FUSE file systems"),
    pytest.mark.skipif(shutil.which("fusermount3") is None,
                       reason="fusermount3 is missing (apt-get install fuse3)"),
]


def bucket_name(prefix: str = "fs") -> str:
    """A fresh bucket name (hex only: the chain refuses the letter j in bucket names)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def config_for(devnet: Devnet, directory: Path, *, territory: str | None = None,
               penalty: float | None = None, name: str = "deossfs.toml") -> Path:
    """A config of the devnet's account with its own workspace (another "machine")."""
    data = tomllib.loads(devnet.config.read_text())
    data["workspace"] = str(directory / "workspace")
    storage = data.setdefault("storage", {})
    if territory is not None:
        storage["territory"] = territory
    if penalty is not None:
        storage["node_penalty_seconds"] = penalty
    path = directory / name
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture(scope="session")
def scratch_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """A second devnet for destructive tests (nodes stopped, the chain's clock moved on)."""
    directory = tmp_path_factory.mktemp("scratch-devnet")
    deossfs("devnet", "up", "--dir", str(directory), "--nodes", "12", timeout=180)
    net = Devnet(directory)
    try:
        yield net
    finally:
        deossfs("devnet", "down", "--dir", str(directory), check=False)
        # every object costs 12 x 8 MiB of fragments: do not leave gigabytes in /tmp
        shutil.rmtree(directory, ignore_errors=True)
