"""Fixtures of the mount's tests: configs with their own workspace, a scratch devnet."""

from __future__ import annotations

import secrets
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from ..conftest import Devnet, devnet_at
from ..harness import wait_for  # noqa: F401 - the fs tests import it from here

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
    with devnet_at(tmp_path_factory.mktemp("scratch-devnet")) as net:
        yield net
