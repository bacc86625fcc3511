"""Plug-ins that misbehave, on a real devnet: a stage that raises, one that gives the
wrong size back, a policy that names a node twice or keeps too few. Each is a clear
error naming the plug-in; nothing half-written: no storage order, no space locked, no
fragment on any node, an older version of the object untouched, no partial download."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

import deossfs

from ..conftest import Devnet
from ..harness import fids_on
from .conftest import plugin_config

DATA = os.urandom(3 * 1024 * 1024)


@pytest.fixture
def bucket(devnet: Devnet) -> str:
    name = f"bad-{uuid.uuid4().hex[:10]}"
    with deossfs.Client(config=devnet.config) as client:
        client.create_bucket(name)
    return name


def node_holdings(devnet: Devnet) -> list[set[str]]:
    return [fids_on(node) for node in devnet.nodes()]


def test_a_stage_that_raises_stores_nothing_and_leaves_the_old_version(
        devnet: Devnet, bucket: str, tmp_path: Path, misbehaving_plugins: Path) -> None:
    with deossfs.Client(config=devnet.config) as plain:
        old = plain.put(b"version one", f"{bucket}/doc")
        locked = plain.territory().locked_space
    held = node_holdings(devnet)
    config = plugin_config(devnet, tmp_path / "raising", processing={"stage": "raising"})
    with deossfs.Client(config=config) as client:
        with pytest.raises(deossfs.PluginError, match="processing stage 'raising' failed while "
                                                      "encoding.*the stage fell over"):
            client.put(DATA, f"{bucket}/doc")
        assert client.get(f"{bucket}/doc") == b"version one"
        assert [o.fid for o in client.ls(bucket)] == [old.fid]
        assert client.territory().locked_space == locked
    assert node_holdings(devnet) == held
    assert not list((tmp_path / "raising" / "workspace" / "spool").iterdir())  # spool removed


def test_a_stage_that_gives_back_the_wrong_size_is_caught(
        devnet: Devnet, bucket: str, tmp_path: Path, misbehaving_plugins: Path) -> None:
    held = node_holdings(devnet)
    config = plugin_config(devnet, tmp_path / "short", processing={"stage": "short"})
    with deossfs.Client(config=config) as client:
        # verify (the default) decodes before storing: refused at the put
        with pytest.raises(deossfs.PluginError, match="'short' gave back 3145727 bytes; the file had 3145728"):
            client.put(DATA, f"{bucket}/short")
        assert client.ls(bucket) == []
    assert node_holdings(devnet) == held

    unverified = plugin_config(devnet, tmp_path / "unverified",
                               processing={"stage": "short", "verify": False})
    with deossfs.Client(config=unverified) as client:
        client.put(DATA, f"{bucket}/short")  # stored: the read is what catches it now
        dest = tmp_path / "out" / "short.bin"
        dest.parent.mkdir()
        with pytest.raises(deossfs.PluginError, match="'short' gave back 3145727 bytes"):
            client.get(f"{bucket}/short", dest)
        assert list(dest.parent.iterdir()) == []  # no file, no partial file
        with pytest.raises(deossfs.PluginError):
            client.get(f"{bucket}/short")
        assert client.stat(f"{bucket}/short").stage == "short"


@pytest.mark.parametrize("policy, error, message", [
    ("duplicate", deossfs.PluginError, "scheduling policy 'duplicate' chose node .* twice"),
    ("stingy", deossfs.NotEnoughNodes, "scheduling policy 'stingy' left 5 of 12 usable storage nodes"),
    ("nosuch", deossfs.MissingPlugin, "no scheduling policy named 'nosuch'"),
])
def test_a_policy_that_breaks_the_contract_sends_nothing(
        devnet: Devnet, bucket: str, tmp_path: Path, misbehaving_plugins: Path,
        policy: str, error: type, message: str) -> None:
    with deossfs.Client(config=devnet.config) as plain:
        locked = plain.territory().locked_space
    held = node_holdings(devnet)
    config = plugin_config(devnet, tmp_path / policy,
                           scheduling={"policies": ["blacklist", policy, "nearby"]})
    with deossfs.Client(config=config) as client:
        with pytest.raises(error, match=message):
            client.put(DATA, f"{bucket}/placed")
        assert client.ls(bucket) == []
        assert client.territory().locked_space == locked  # no storage order was declared
    assert node_holdings(devnet) == held


def test_the_cli_says_which_plugin_in_one_line(devnet: Devnet, bucket: str, tmp_path: Path,
                                               misbehaving_plugins: Path) -> None:
    from ..conftest import deossfs as cli

    source = tmp_path / "data.bin"
    source.write_bytes(DATA)
    config = plugin_config(devnet, tmp_path / "cli", scheduling={"policies": ["nosuch"]})
    result = cli("put", str(source), f"{bucket}/x", config=config, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("deossfs: error: no scheduling policy named 'nosuch' is installed")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def _needs_mount(test):  # noqa: ANN001, ANN202
    from ..fs.conftest import NEEDS_MOUNT

    for mark in NEEDS_MOUNT:
        test = mark(test)
    return test


@_needs_mount
def test_the_mount_refuses_a_processed_file_with_enotsup(devnet: Devnet, bucket: str,
                                                          tmp_path: Path) -> None:
    """The mount shows files as they are stored: one stored through a stage is refused
    (ENOTSUP and a log line naming the stage), never shown as its envelope."""
    import errno

    from ..harness import Mounted, config_for

    with deossfs.Client(config=devnet.config) as client:
        client.put(b"processed", f"{bucket}/staged.txt", stage="identity")
        client.put(b"as it is", f"{bucket}/plain.txt")
    mounted = Mounted(config_for(devnet, tmp_path / "m"), tmp_path / "mnt")
    try:
        mounted.mount()
        assert mounted.path(bucket, "plain.txt").read_bytes() == b"as it is"
        with pytest.raises(OSError) as caught:
            mounted.path(bucket, "staged.txt").read_bytes()
        assert caught.value.errno == errno.ENOTSUP
        assert "processing stage 'identity'" in mounted.log()
        mounted.umount()
    finally:
        mounted.cleanup()
