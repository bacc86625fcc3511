"""Odd and hostile names - `..`, NUL, very long, not UTF-8 - are refused cleanly: one line,
no traceback, and nothing reaches the chain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deossfs.chain.factory import open_chain
from deossfs.config import load_config
from deossfs.errors import InvalidName, NameTooLong
from deossfs.keys import load_key_file
from deossfs.names import MAX_KEY_BYTES, S3_MAX_KEY_BYTES, check_key
from deossfs.processing.pipeline import bytes_reader
from deossfs.store import ObjectStore

from ..conftest import ROOT, Devnet
from ..harness import read_only_ledger


def transactions(devnet: Devnet) -> int:
    conn = read_only_ledger(devnet)
    try:
        return conn.execute("SELECT COUNT(*) FROM transactions").fetchone()[0]
    finally:
        conn.close()


def cli_bytes(devnet: Devnet, *args: bytes) -> subprocess.CompletedProcess:
    """The CLI with raw argv bytes (names that are not UTF-8 reach it as such)."""
    env = dict(os.environ, DEOSSFS_CONFIG=str(devnet.config))
    return subprocess.run([sys.executable.encode(), b"-m", b"deossfs", *args], capture_output=True,
                          env=env, cwd=ROOT, timeout=300)


BAD_TARGETS = [
    b"sec/../escape.txt", b"sec/a/../../escape.txt", b"sec/./a.txt", b"sec/a/./b.txt",
    b"sec//a.txt", b"sec/a/", b"sec/", b"sec", b"/sec/a.txt", b"sec/..", b"sec/.",
    b"sec/" + b"x" * (MAX_KEY_BYTES + 1), b"sec/" + b"d/" * (MAX_KEY_BYTES // 2) + b"f", b"sec/caf\xe9.txt", b"sec/\xff\xfe",
    b"../sec/a.txt", b"Sec/a.txt", b"s/a.txt", b"sec" + b"x" * 100 + b"/a.txt", b"\xff/a.txt",
]


def test_put_refuses_bad_object_names(secure_devnet: Devnet, tmp_path: Path) -> None:
    src = tmp_path / "payload.txt"
    src.write_bytes(b"hostile names")
    before = transactions(secure_devnet)
    for target in BAD_TARGETS:
        result = cli_bytes(secure_devnet, b"put", bytes(src), target)
        err = result.stderr.decode(errors="replace")
        assert result.returncode != 0, target
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("deossfs: error:"), (target, err)
        assert "Traceback" not in err
    assert transactions(secure_devnet) == before, "a refused name reached the chain"
    assert not list(tmp_path.parent.rglob("escape.txt"))


def test_get_refuses_bad_object_names(secure_devnet: Devnet, tmp_path: Path) -> None:
    for target in (b"sec/../../etc/passwd", b"sec/a\xff", b"sec/" + b"y" * 2000):
        result = cli_bytes(secure_devnet, b"get", target, bytes(tmp_path / "out"))
        err = result.stderr.decode(errors="replace")
        assert result.returncode != 0 and len(err.strip().splitlines()) == 1, (target, err)
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_s3_keeps_its_own_key_bound() -> None:
    """The store takes deep keys (a mount's trees); S3 callers ask for S3's 1,024 bytes."""
    assert check_key("k" * 4000) == "k" * 4000
    assert check_key("k" * S3_MAX_KEY_BYTES, S3_MAX_KEY_BYTES)
    with pytest.raises(NameTooLong):
        check_key("k" * (S3_MAX_KEY_BYTES + 1), S3_MAX_KEY_BYTES)


@pytest.mark.parametrize(("key", "error"), [
    ("a\x00b.txt", InvalidName), ("\x00", InvalidName), ("a/\x00/b", InvalidName),
    ("x" * (MAX_KEY_BYTES + 1), NameTooLong), ("caf\udce9.txt", InvalidName), ("..", InvalidName),
    ("a/../b", InvalidName),
])
async def test_the_store_refuses_names_argv_cannot_carry(secure_devnet: Devnet, key: str,
                                                         error: type) -> None:
    config = load_config(secure_devnet.config)
    account = load_key_file(config.require_key_file())
    chain = open_chain(config, account)
    before = transactions(secure_devnet)
    try:
        async with ObjectStore(config, account, chain) as store:
            with pytest.raises(error):
                await store.put(bytes_reader(b"data"), 4, "sec", key)
    finally:
        chain.close()
    assert transactions(secure_devnet) == before
