"""Helpers of the fault and security suites: scratch devnets, configs, mounts, waiting.

Nothing here sleeps a fixed time: `wait_for` polls a condition with a generous
deadline, and a test asserts on outcomes, never on durations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from deossfs.chain.ledger import EmbeddedLedger
from deossfs.config import load_config
from deossfs.devnet import (
    NodeProcess,
    node_processes,
    process_alive,
    start_node,
    stop_node,
    wait_ready,
)
from deossfs.keys import Account, load_key_file

from .conftest import Devnet, deossfs, devnet_at

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


scratch_devnet = devnet_at  # a devnet of its own for destructive tests


def config_for(devnet: Devnet, directory: Path, *, name: str = "deossfs.toml",
               storage: dict[str, Any] | None = None, cache: bool = False,
               workspace: Path | None = None) -> Path:
    """A config of the devnet's account: its own workspace, no segment cache and no
    peers unless `cache` (so reads reach the storage nodes), `storage` options set."""
    directory.mkdir(parents=True, exist_ok=True)
    data = _plain_config(devnet.config)
    data["workspace"] = str(workspace or directory / "workspace")
    data.setdefault("cache", {})
    data["cache"]["enabled"] = cache
    data["cache"]["dir"] = str((workspace or directory / "workspace") / "cache")
    data["peers"] = {"enabled": False}
    data.setdefault("storage", {}).update(storage or {})
    path = directory / name
    path.write_text(tomli_w.dumps(data))
    load_config(path)  # fail here, not in the CLI, if the options are wrong
    return path


def _plain_config(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


def account(devnet: Devnet) -> Account:
    return load_key_file(devnet.dir / "account.key")


def ledger(devnet: Devnet, who: Account | None = None) -> EmbeddedLedger:
    return EmbeddedLedger(devnet.dir / "ledger.sqlite", who or account(devnet))


def node_account(node: NodeProcess) -> str:
    return load_key_file(node.dir / "key.json").address


def nodes_by_account(devnet: Devnet) -> dict[str, NodeProcess]:
    return {node_account(n): n for n in devnet.nodes()}


def restart_dead(devnet: Devnet) -> None:
    """Start every node process that is not running (after a test killed some)."""
    dead = [n for n in devnet.nodes() if not n.alive]
    started = [start_node(devnet.config, n) for n in dead]
    if started:
        wait_ready(started, timeout=120)


def kill(node: NodeProcess) -> None:
    stop_node(node, signal.SIGKILL)


def fragment_path(node: NodeProcess, fid: str, fragment_hash: str) -> Path:
    return node.dir / "fragments" / fid[:2] / fid / fragment_hash


def fids_on(node: NodeProcess) -> set[str]:
    base = node.dir / "fragments"
    found: set[str] = set()
    if base.is_dir():
        for prefix in base.iterdir():
            if prefix.is_dir():
                found.update(p.name for p in prefix.iterdir() if len(p.name) == 64)
    return found


def stored_tree(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under `root` (what a node holds)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def read_only_ledger(devnet: Devnet) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{devnet.dir / 'ledger.sqlite'}?mode=ro", uri=True, timeout=60)


# ---- mounts ------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (0600), as PEM files in `directory`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Mounted:
    """A `deossfs mount` in the background, driven through the real CLI."""

    def __init__(self, config: Path, mountpoint: Path) -> None:
        self.config = config
        self.mountpoint = mountpoint
        self.pid: int | None = None
        mountpoint.mkdir(parents=True, exist_ok=True)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return deossfs(*args, config=self.config, check=check)

    def mount(self, *flags: str) -> Mounted:
        out = self.cli("mount", *flags, str(self.mountpoint)).stdout
        match = re.search(r"pid (\d+)", out)
        assert match and os.path.ismount(self.mountpoint), out
        self.pid = int(match.group(1))
        return self

    def umount(self) -> None:
        self.cli("umount", str(self.mountpoint))
        self.pid = None

    def cleanup(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)
        if self.pid is not None and process_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
            wait_for(lambda: not process_alive(self.pid), 30, "the mount process to go")  # type: ignore[arg-type]
        self.pid = None

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)

    def pending(self) -> list[dict]:
        return json.loads(self.cli("status", "--json").stdout)["pending"]

    def wait_durable(self, timeout: float = 180.0) -> None:
        wait_for(lambda: not self.pending(), timeout, "pending uploads to finish", interval=0.3)

    def peak_rss(self) -> int:
        """The mount process's peak resident memory (VmHWM), in bytes."""
        assert self.pid is not None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def log(self) -> str:
        workspace = load_config(self.config).workspace
        path = Path(workspace or ".") / "mount.log"
        return path.read_text(errors="replace") if path.exists() else ""


def with_storage(config: Path, **storage: Any) -> Path:
    """A copy of `config` (beside it) with storage options changed."""
    loaded = load_config(config)
    changed = replace(loaded, storage=replace(loaded.storage, **storage))
    data = _plain_config(config)
    data.setdefault("storage", {}).update({k: getattr(changed.storage, k) for k in storage})
    out = config.with_name(config.stem + "-" + "-".join(storage) + ".toml")
    out.write_text(tomli_w.dumps(data))
    return out


__all__ = ["Mounted", "wait_for", "scratch_devnet", "config_for", "node_processes"]
