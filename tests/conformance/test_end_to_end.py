"""End to end on the real CESS runtime: `devnet_cess` starts the chain and 12 storage-node
processes; a file put and read back through the CLI (ObjectStore) ends Active on the chain
with the StorageCompleted event, after the nodes' own transfer_reports. ~15 extrinsics."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deossfs.chain.interface import FileState
from deossfs.keys import load_key_file

from ..conftest import Devnet

pytestmark = [pytest.mark.cess, pytest.mark.slow]


@pytest.fixture(scope="module")
def cess_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    from deossfs import devnet_cess

    reason = devnet_cess.unavailable_reason()
    if reason is not None:
        if os.environ.get("DEOSSFS_REQUIRE_CESS") == "1":
            pytest.fail(f"the CESS runtime is required (DEOSSFS_REQUIRE_CESS=1): {reason}")
        pytest.skip(f"CESS runtime unavailable: {reason}")
    directory = tmp_path_factory.mktemp("cess-devnet")
    try:
        devnet_cess.devnet_up_cess(directory, 12)
        yield Devnet(directory)
    finally:
        devnet_cess.devnet_down_cess(directory)


def test_put_get_ends_active_with_storage_completed(cess_devnet: Devnet, tmp_path: Path) -> None:
    from deossfs.chain.cess import CessChain
    from deossfs.config import load_config

    config = load_config(cess_devnet.config)
    assert config.chain.backend == "cess"
    chain = CessChain(config.chain.endpoints)
    try:
        start = chain.block_number()
        cess_devnet.cli("bucket", "create", "e2e")
        data = os.urandom(3_000_000)
        src = tmp_path / "hello.bin"
        src.write_bytes(data)
        cess_devnet.cli("put", str(src), "e2e/hello.bin")
        dest = tmp_path / "back.bin"
        cess_devnet.cli("get", "e2e/hello.bin", str(dest))
        assert dest.read_bytes() == data

        fid = json.loads(cess_devnet.cli("stat", "--json", "e2e/hello.bin").stdout)["fid"]
        info = chain.file(fid)
        assert info is not None and info.state is FileState.ACTIVE
        owner = load_key_file(cess_devnet.dir / "account.key").address
        assert [(b.user, b.file_name, b.bucket_name) for b in info.owners] == [
            (owner, "hello.bin", "e2e")]
        # each column was reported by the node holding it, with its own key
        node_accounts = {load_key_file(n.dir / "key.json").address for n in cess_devnet.nodes()}
        miners = [f.miner for f in info.segments[0].fragments]
        assert len(set(miners)) == 12 and set(miners) <= node_accounts
        events = chain.events(start)
        completed = [e for e in events if (e.pallet, e.name) == ("FileBank", "StorageCompleted")]
        assert len(completed) == 1 and fid in completed[0].attributes.values()
        reporters = {e.attributes.get("acc") for e in events if e.name == "TransferReport"}
        assert reporters == set(miners)
        bucket = chain.bucket(owner, "e2e")
        assert bucket is not None and bucket.object_list == (fid,)
    finally:
        chain.close()


def test_file_copied_through_the_mount_ends_active(
    cess_devnet: Devnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cp into a mount on the real runtime: Active with StorageCompleted; a second mount
    with an empty workspace (and no cache) reads it back from the storage nodes."""
    import shutil
    import subprocess
    import time

    from deossfs.chain.cess import CessChain
    from deossfs.config import load_config

    if not Path("/dev/fuse").exists():
        pytest.skip("/dev/fuse is absent: no FUSE mounts on this system")
    monkeypatch.setenv("DEOSSFS_CACHE_ENABLED", "false")
    config = load_config(cess_devnet.config)
    chain = CessChain(config.chain.endpoints)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    data = os.urandom(2_500_000)
    src = tmp_path / "viamount.bin"
    src.write_bytes(data)
    try:
        if "mountb" not in cess_devnet.cli("bucket", "ls").stdout:
            cess_devnet.cli("bucket", "create", "mountb")
        start = chain.block_number()
        monkeypatch.setenv("DEOSSFS_WORKSPACE", str(tmp_path / "ws1"))
        cess_devnet.cli("mount", str(mnt))
        try:
            shutil.copyfile(src, mnt / "mountb" / "viamount.bin")
            deadline = time.monotonic() + 300
            while os.getxattr(mnt / "mountb" / "viamount.bin", "user.deossfs.state") != b"stored":
                assert time.monotonic() < deadline, "the upload did not become durable"
                time.sleep(0.5)
            fid = os.getxattr(mnt / "mountb" / "viamount.bin", "user.deossfs.fid").decode()
        finally:
            cess_devnet.cli("umount", str(mnt))
        info = chain.file(fid)
        assert info is not None and info.state is FileState.ACTIVE
        completed = [e for e in chain.events(start)
                     if (e.pallet, e.name) == ("FileBank", "StorageCompleted")]
        assert any(fid in e.attributes.values() for e in completed)
        # another "machine": empty workspace, no cache: the bytes come from the nodes
        monkeypatch.setenv("DEOSSFS_WORKSPACE", str(tmp_path / "ws2"))
        cess_devnet.cli("mount", str(mnt))
        try:
            assert (mnt / "mountb" / "viamount.bin").read_bytes() == data
        finally:
            cess_devnet.cli("umount", str(mnt))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        chain.close()


def test_gateway_upload_download_delete_on_the_runtime(cess_devnet: Devnet) -> None:
    """The gateway's DeOSS routes on the real runtime: an upload (its default bucket
    created on the chain), a download, and a delete. ~17 extrinsics."""
    from deossfs.chain.cess import CessChain
    from deossfs.config import load_config
    from deossfs.devnet import start_gateway, stop_gateway
    from deossfs.gateway_client import GatewayClient

    config = load_config(cess_devnet.config)
    chain = CessChain(config.chain.endpoints)
    gateway = start_gateway(cess_devnet.dir)
    owner = load_key_file(cess_devnet.dir / "account.key")
    try:
        assert gateway.url
        with GatewayClient(gateway.url, owner) as client:
            data = os.urandom(2_000_000)
            fid = client.upload(data, "via-gateway.bin", territory="default")
            info = chain.file(fid)
            assert info is not None and info.state is FileState.ACTIVE
            assert [(b.user, b.file_name, b.bucket_name) for b in info.owners] == [
                (owner.address, "via-gateway.bin", "deoss")]
            assert client.download(fid) == data
            client.delete(fid)
            assert chain.file(fid) is None
    finally:
        stop_gateway(cess_devnet.dir)
        chain.close()
