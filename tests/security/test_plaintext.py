"""With encryption on, no storage node, cache or journal file holds plaintext.

A file with a known marker is written through the CLI and through a mount, read back
by another machine (so caches fill from the nodes), and every file under the devnet
directory - nodes' fragments and logs, the ledger, the CLI's and the mounts' segment
caches and journals - is scanned for the marker. Only the mount's staging directory
(the local copy of files not yet durable, by design plaintext) is left out. A plain
(--no-encrypt) file with another marker proves the scan finds what is there.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

from ..conftest import Devnet, deossfs
from ..harness import Mounted, config_for

pytestmark = pytest.mark.skipif(
    not Path("/dev/fuse").exists() or shutil.which("fusermount3") is None,
    reason="needs /dev/fuse and fusermount3")


def files_holding(root: Path, needles: list[bytes], skip: list[Path]) -> dict[bytes, list[Path]]:
    """needle -> files under `root` (but not under `skip`) whose bytes contain it."""
    found: dict[bytes, list[Path]] = {n: [] for n in needles}
    overlap = max(len(n) for n in needles)
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or any(path.is_relative_to(s) for s in skip):
            continue
        tail = b""
        with open(path, "rb") as handle:
            while chunk := handle.read(4 << 20):
                window = tail + chunk
                for needle in needles:
                    if needle in window and path not in found[needle]:
                        found[needle].append(path)
                tail = window[-overlap:]
    return found


def test_no_plaintext_outside_the_staging_area(secure_devnet: Devnet, tmp_path: Path) -> None:
    secret = b"SECRET-" + secrets.token_hex(12).encode() + b"-MARKER"
    plain = b"PLAIN-" + secrets.token_hex(12).encode() + b"-MARKER"

    def content(marker: bytes, size: int) -> bytes:
        return (marker * 64 + os.urandom(size) + marker * 64)[: size + 128 * len(marker)]

    # through the CLI (the devnet's config: its segment cache is on)
    cli_file = tmp_path / "cli.bin"
    cli_file.write_bytes(content(secret, 3_000_000))
    deossfs("put", "-q", str(cli_file), "sec/secret-cli.bin", config=secure_devnet.config)
    plain_file = tmp_path / "plain.bin"
    plain_file.write_bytes(content(plain, 500_000))
    deossfs("put", "-q", "--no-encrypt", str(plain_file), "sec/plain.bin", config=secure_devnet.config)

    # through a mount whose workspace (journal, cache, staging) lives in the devnet directory
    machine = secure_devnet.dir / "mount-machine"
    m = Mounted(config_for(secure_devnet, machine, cache=True), tmp_path / "mnt")
    mounted_data = content(secret, 40_000_000)  # two segments
    try:
        m.mount()
        m.path("sec", "secret-mount.bin").write_bytes(mounted_data)
        m.wait_durable()
        assert m.path("sec", "secret-mount.bin").read_bytes() == mounted_data
        m.umount()
    finally:
        m.cleanup()

    # another machine (workspace and cache in the devnet directory too) reads both back
    reader = config_for(secure_devnet, secure_devnet.dir / "reader-machine", cache=True)
    for key, expected in (("secret-cli.bin", cli_file.read_bytes()), ("secret-mount.bin", mounted_data)):
        out = tmp_path / f"{key}.out"
        deossfs("get", "-q", f"sec/{key}", str(out), config=reader)
        assert out.read_bytes() == expected
    cached = [p for p in (secure_devnet.dir / "reader-machine").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in cached) > 32 * 1024**2, "the reader's cache stayed empty"

    found = files_holding(secure_devnet.dir, [secret, plain], skip=[machine / "workspace" / "staging"])
    assert found[secret] == [], f"plaintext of an encrypted file in {found[secret]}"
    # the scan works: the plain file's marker is on the nodes holding its data fragment
    assert any("fragments" in str(p) for p in found[plain]), found[plain]
