"""The key file: created 0600 (whatever the umask), never overwritten, refused when others
can read it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT


def cli(*args: str, config: Path | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if config is not None:
        env["DEOSSFS_CONFIG"] = str(config)

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([sys.executable, "-m", "deossfs", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, preexec_fn=set_umask)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_key_file_is_created_0600(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "keys" / "account.key"
    result = cli("key", "create", str(path), umask=umask)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    address = result.stdout.strip()
    assert address.startswith("c") and address in path.read_text()
    # never overwritten
    again = cli("key", "create", str(path))
    assert again.returncode != 0 and "exists" in again.stderr
    assert address in path.read_text()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o700, 0o610, 0o601])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "account.key"
    assert cli("key", "create", str(key)).returncode == 0
    config = tmp_path / "deossfs.toml"
    config.write_text(f'key_file = "{key}"\n')
    assert cli("key", "show", config=config).returncode == 0
    os.chmod(key, mode)
    result = cli("key", "show", config=config)
    if mode & 0o077:
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert "readable by others" in lines[0] and "chmod 600" in lines[0]
        assert result.stdout == ""  # not even the address
    else:
        assert result.returncode == 0, result.stderr
