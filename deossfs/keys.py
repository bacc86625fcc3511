"""Account keys: sr25519 key files (mode 0600) and the secrets derived from them.

A key file is JSON: `{"type": "sr25519", "secret": "<mnemonic or //URI>",
"address": "cX..."}`. It is the only place a secret lives. It is created 0600
and refused when group or others can read it.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import bip39
import sr25519
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from scalecodec.utils.ss58 import ss58_decode, ss58_encode

from .errors import KeyFileError
from .processing.layout import SS58_FORMAT

if TYPE_CHECKING:
    from substrateinterface import Keypair

#: the language of the mnemonics deossfs writes and reads (substrate-interface's default)
MNEMONIC_LANGUAGE = "en"


@dataclass(frozen=True)
class Account:
    """A signing account: its sr25519 key pair and the secret it came from.

    Built on the sr25519 and BIP39 bindings substrate-interface itself uses, so a command
    that only signs, verifies or derives keys does not import substrate-interface (~0.15 s
    of every CLI command's start-up); `keypair`, for substrate-interface's own calls
    (extrinsics), is made when first asked for. tests/unit/test_keys.py checks that both
    give the same keys, addresses and signatures."""

    public_key: bytes
    private_key: bytes = field(repr=False)
    secret: str = field(repr=False)
    address: str

    @cached_property
    def keypair(self) -> Keypair:
        from substrateinterface import Keypair

        return Keypair(ss58_address=self.address, public_key=self.public_key,
                       private_key=self.private_key, ss58_format=SS58_FORMAT)

    def sign(self, message: bytes) -> bytes:
        return bytes(sr25519.sign((self.public_key, self.private_key), message))

    def derive_key(self, purpose: str, length: int = 32) -> bytes:
        """A key for `purpose` (e.g. "encryption v1"), derived from the account secret."""
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=b"deossfs",
            info=purpose.encode(),
        )
        return hkdf.derive(self.private_key)


def account_from_secret(secret: str) -> Account:
    """Build an account from a mnemonic or a `//URI` secret."""
    try:
        if secret.startswith("//") or secret.startswith("0x"):
            # derivation paths and raw seeds (dev accounts): substrate-interface's parser
            from substrateinterface import Keypair

            keypair = Keypair.create_from_uri(secret, ss58_format=SS58_FORMAT)
            public, private = keypair.public_key, keypair.private_key
        else:
            seed = bytes(bip39.bip39_to_mini_secret(secret, "", MNEMONIC_LANGUAGE))
            public, private = sr25519.pair_from_seed(seed)
    except Exception as exc:  # the libraries raise ValueError and friends
        raise KeyFileError(f"not a valid account secret: {exc}") from None
    public, private = bytes(public), bytes(private)
    return Account(public_key=public, private_key=private, secret=secret,
                   address=ss58_encode(public, ss58_format=SS58_FORMAT))


def _public_key(address: str) -> bytes:
    """The public key an SS58 address of this network names (ValueError if none)."""
    public = bytes.fromhex(ss58_decode(address, valid_ss58_format=SS58_FORMAT))
    if len(public) != 32:
        raise ValueError("not an sr25519 account address")
    return public


def verify_signature(address: str, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `address`'s sr25519 signature of `message`, as signed
    here or by a browser wallet (polkadot.js wraps what it signs in <Bytes>...</Bytes>)."""
    try:
        public = _public_key(address)
        return bool(sr25519.verify(signature, message, public)
                    or sr25519.verify(signature, b"<Bytes>" + message + b"</Bytes>", public))
    except Exception:
        return False


def valid_address(address: str) -> bool:
    try:
        _public_key(address)
    except Exception:
        return False
    return True


def new_mnemonic() -> str:
    return str(bip39.bip39_generate(12, MNEMONIC_LANGUAGE))


def create_key_file(path: Path, secret: str | None = None) -> Account:
    """Write a new key file (0600, never overwriting one) and return its account."""
    if secret is None:
        secret = new_mnemonic()
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
