"""S3 bucket names the CESS runtime refuses work in the CLI and the mount (stored escaped:
docs/s3-names.md), through the real CLI and a real mount on the devnet."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from deossfs.chain.names import bucket_to_chain

from .. import harness
from ..conftest import Devnet
from ..fs.conftest import NEEDS_MOUNT

pytestmark = NEEDS_MOUNT


def test_cli_and_mount_take_names_the_chain_refuses(devnet: Devnet, tmp_path: Path) -> None:
    owner = harness.account(devnet).address
    jazz = f"jazz-{secrets.token_hex(3)}"
    dotted = f"a.b.c.{secrets.token_hex(3)}"  # exactly three dots
    for name in (jazz, dotted):
        devnet.cli("bucket", "create", name)
        assert name in devnet.cli("bucket", "ls").stdout.split()
        chain_names = harness.ledger(devnet).buckets(owner)
        assert bucket_to_chain(name) in chain_names and name not in chain_names
    source = tmp_path / "song.txt"
    source.write_bytes(os.urandom(5000))
    devnet.cli("put", str(source), f"{jazz}/songs/song.txt")
    assert "songs/song.txt" in devnet.cli("ls", jazz).stdout
    devnet.cli("get", f"{jazz}/songs/song.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == source.read_bytes()

    mounted = harness.Mounted(harness.config_for(devnet, tmp_path / "machine"), tmp_path / "mnt")
    try:
        mounted.mount()
        listing = os.listdir(mounted.mountpoint)
        assert jazz in listing and dotted in listing and bucket_to_chain(jazz) not in listing
        assert mounted.path(jazz, "songs", "song.txt").read_bytes() == source.read_bytes()
        made = f"jam-{secrets.token_hex(3)}"
        mounted.path(made).mkdir()  # a bucket, created on the chain as Qam-...
        assert bucket_to_chain(made) in harness.ledger(devnet).buckets(owner)
        assert made in devnet.cli("bucket", "ls").stdout.split()
        mounted.path(made).rmdir()
        assert bucket_to_chain(made) not in harness.ledger(devnet).buckets(owner)
    finally:
        mounted.cleanup()
    devnet.cli("rm", f"{jazz}/songs/song.txt")
    for name in (jazz, dotted):
        devnet.cli("bucket", "rm", name)
        assert bucket_to_chain(name) not in harness.ledger(devnet).buckets(owner)
