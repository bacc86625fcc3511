"""deossfs' accounts are built on the sr25519 and BIP39 bindings directly (keys.py), so a
CLI command need not import substrate-interface: the keys, addresses, signatures and
derived keys must be exactly substrate-interface's, or an account would change (and its
encrypted data become unreadable) with the library that loads it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from substrateinterface import Keypair

from deossfs.errors import KeyFileError
from deossfs.keys import account_from_secret, new_mnemonic, valid_address, verify_signature
from deossfs.processing.layout import SS58_FORMAT

SECRETS = [new_mnemonic() for _ in range(8)] + [Keypair.generate_mnemonic(24), "//Alice", "//Bob//stash"]


@pytest.mark.parametrize("secret", SECRETS)
def test_an_account_is_substrate_interfaces_keypair(secret: str) -> None:
    reference = Keypair.create_from_uri(secret, ss58_format=SS58_FORMAT) if secret.startswith("//") \
        else Keypair.create_from_mnemonic(secret, ss58_format=SS58_FORMAT)
    account = account_from_secret(secret)
    assert (account.public_key, account.private_key, account.address) == (
        reference.public_key, reference.private_key, reference.ss58_address)
    assert account.keypair.ss58_address == reference.ss58_address
    message = b"deossfs " + secret[:4].encode()
    assert reference.verify(message, account.sign(message))
    assert verify_signature(account.address, message, reference.sign(message))
    assert not verify_signature(account.address, message + b"!", reference.sign(message))
    # a browser wallet's signature of the same message, wrapped as polkadot.js does
    assert verify_signature(account.address, message, reference.sign(b"<Bytes>" + message + b"</Bytes>"))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"deossfs", info=b"deossfs encryption v1")
    assert account.derive_key("deossfs encryption v1") == hkdf.derive(reference.private_key)


def test_addresses_of_this_network_only() -> None:
    alice = Keypair.create_from_uri("//Alice")  # public key of //Alice
    assert valid_address(Keypair(public_key=alice.public_key, ss58_format=SS58_FORMAT).ss58_address)
    assert not valid_address(alice.ss58_address)  # the same key in another network's format
    assert not valid_address("cXnot-an-address")
    assert not verify_signature(alice.ss58_address, b"m", alice.sign(b"m"))
    assert not verify_signature("garbage", b"m", b"x" * 64)


def test_a_bad_secret_is_one_clear_error() -> None:
    with pytest.raises(KeyFileError, match="not a valid account secret"):
        account_from_secret("these are not twelve words of any bip39 list at all ok")


def test_secrets_stay_out_of_reprs() -> None:
    account = account_from_secret(SECRETS[0])
    assert SECRETS[0] not in repr(account) and account.private_key.hex() not in repr(account)


def test_loading_a_mnemonic_account_does_not_import_substrate_interface() -> None:
    code = ("import sys; from deossfs.keys import account_from_secret, new_mnemonic; "
            "a = account_from_secret(new_mnemonic()); a.sign(b'x'); a.derive_key('p'); "
            "print('substrateinterface' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
