"""Account keys: sr25519 key files (mode 0600) and the secrets derived from them.

A key file is JSON: `{"type": "sr25519", "secret": "<mnemonic or //URI>",
"address": "cX..."}`. It is the only place a secret lives. It is created 0600
and refused when group or others can read it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from substrateinterface import Keypair

from .errors import KeyFileError
from .processing.layout import SS58_FORMAT


@dataclass(frozen=True)
class Account:
    """A signing account: its keypair and where it came from."""

    keypair: Keypair
    secret: str

    @property
    def address(self) -> str:
        return self.keypair.ss58_address

    def sign(self, message: bytes) -> bytes:
        return self.keypair.sign(message)

    def derive_key(self, purpose: str, length: int = 32) -> bytes:
        """A key for `purpose` (e.g. "encryption v1"), derived from the account secret."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=b"deossfs",
            info=purpose.encode(),
        )
        return hkdf.derive(self.keypair.private_key)


def account_from_secret(secret: str) -> Account:
    """Build an account from a mnemonic or a `//URI` secret."""
    try:
        if secret.startswith("//") or secret.startswith("0x"):
            keypair = Keypair.create_from_uri(secret, ss58_format=SS58_FORMAT)
        else:
            keypair = Keypair.create_from_mnemonic(secret, ss58_format=SS58_FORMAT)
    except Exception as exc:  # the library raises ValueError and friends
        raise KeyFileError(f"not a valid account secret: {exc}") from None
    return Account(keypair=keypair, secret=secret)


def verify_signature(address: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `address`'s sr25519 signature of `message`."""
    try:
        keypair = Keypair(ss58_address=address, ss58_format=SS58_FORMAT)
        return bool(keypair.verify(message, signature))
    except Exception:
        return False


def valid_address(address: str) -> bool:
    try:
        Keypair(ss58_address=address, ss58_format=SS58_FORMAT)
    except Exception:
        return False
    return True


def create_key_file(path: Path, secret: str | None = None) -> Account:
    """Write a new key file (0600, never overwriting one) and return its account."""
    if secret is None:
        secret = Keypair.generate_mnemonic()
    account = account_from_secret(secret)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"type": "sr25519", "secret": secret, "address": account.address})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} exists already; not overwriting it") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(body + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return account


def load_key_file(path: Path | str) -> Account:
    """Read a key file, refusing one that others can read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} not found", hint="create one with `deossfs key create`"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})",
            hint=f"run `chmod 600 {path}`",
        )
    try:
        data = json.loads(path.read_text())
        secret = data["secret"]
    except (OSError, ValueError, KeyError, TypeError):
        raise KeyFileError(f"key file {path} is not a deossfs key file") from None
    return account_from_secret(secret)
