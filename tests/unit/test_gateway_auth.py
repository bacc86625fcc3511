"""The gateway's request signatures (DeOSS's formats, our freshness and EthAcc binding),
byte ranges and resumable ranges, and Cipher keys: pure logic, no network."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import base58
import pytest
from eth_keys import keys as eth_keys
from eth_utils import keccak
from substrateinterface import Keypair

from deossfs.errors import InvalidInput, RangeNotSatisfiable, Unauthenticated
from deossfs.gateway.auth import RequestVerifier, canonical_account, eth_bound_account
from deossfs.gateway.deoss import _parse_content_range
from deossfs.gateway.engine import cipher_key
from deossfs.gateway.http import parse_range
from deossfs.keys import account_from_secret

ALICE = account_from_secret("//Alice")


def _fresh() -> str:
    return f"{int(time.time())}:{secrets.token_hex(4)}"


def _headers(message: str, signature: str, account: str = ALICE.address) -> dict[str, str]:
    return {"Account": account, "Message": message, "Signature": signature}


@pytest.fixture
def verifier(tmp_path: Path) -> RequestVerifier:
    v = RequestVerifier(tmp_path / "seen.sqlite3", 300)
    yield v
    v.close()


@pytest.mark.parametrize("encode", [
    lambda raw: "0x" + raw.hex(),          # polkadot.js, deossfs's GatewayClient
    lambda raw: raw.hex(),                 # hex without 0x
    lambda raw: base58.b58encode(raw).decode(),  # CESS's Go SDK
])
@pytest.mark.parametrize("wrapped", [False, True])
def test_signature_formats_deoss_clients_send(verifier: RequestVerifier, encode, wrapped: bool) -> None:
    message = _fresh()
    payload = f"<Bytes>{message}</Bytes>" if wrapped else message
    signer = verifier.verify(_headers(message, encode(ALICE.sign(payload.encode()))))
    assert signer.account == ALICE.address


def test_the_generic_substrate_address_form_is_the_same_account(verifier: RequestVerifier) -> None:
    generic = Keypair.create_from_uri("//Alice", ss58_format=42).ss58_address
    assert generic.startswith("5") and canonical_account(generic) == ALICE.address
    message = _fresh()
    assert verifier.verify(_headers(message, "0x" + ALICE.sign(message.encode()).hex(),
                                    generic)).account == ALICE.address


@pytest.mark.parametrize("bad", [
    {"Signature": "0x" + "00" * 64},                      # not Alice's signature
    {"Signature": "0x1234"},                               # too short
    {"Signature": "not base58 !!"},
    {"Account": "cXnotanaccount"},
    {"Message": ""},
    {"Message": "x" * 300},
])
def test_wrong_or_malformed_credentials(verifier: RequestVerifier, bad: dict) -> None:
    message = _fresh()
    headers = {**_headers(message, "0x" + ALICE.sign(message.encode()).hex()), **bad}
    with pytest.raises(Unauthenticated):
        verifier.verify(headers)


@pytest.mark.parametrize("message, why", [
    ("hello", "Unix time"),                       # DeOSS takes any text forever
    ("123", "Unix time"),
    ("2026-01-01 00:00:00", "Unix time"),
    ("{s-1000}", "stale"),
    ("{ms-1000000}", "stale"),
    ("{s+1000}:a", "ahead"),
    ("{s}:bad nonce!", "Unix time"),
])
def test_messages_must_be_fresh(verifier: RequestVerifier, message: str, why: str) -> None:
    now = time.time()  # here, not at collection: the suite takes minutes
    message = message.format(**{"s-1000": int(now) - 1000, "ms-1000000": int(now * 1000) - 1_000_000,
                                "s+1000": int(now) + 1000, "s": int(now)})
    with pytest.raises(Unauthenticated, match=why):
        verifier.verify(_headers(message, "0x" + ALICE.sign(message.encode()).hex()))


def test_deoss_expiry_style_messages_within_the_window_pass(verifier: RequestVerifier) -> None:
    """DeOSS clients send an expiry a little ahead ("valid for a minute"): within the
    window it is accepted, once."""
    message = str(int(time.time() * 1000) + 60_000)
    assert verifier.verify(_headers(message, "0x" + ALICE.sign(message.encode()).hex()))


def test_a_message_is_single_use_even_across_a_restart(tmp_path: Path) -> None:
    message = _fresh()
    headers = _headers(message, "0x" + ALICE.sign(message.encode()).hex())
    first = RequestVerifier(tmp_path / "seen.sqlite3", 300)
    first.verify(headers)
    with pytest.raises(Unauthenticated, match="used already"):
        first.verify(headers)
    first.close()
    restarted = RequestVerifier(tmp_path / "seen.sqlite3", 300)
    try:
        with pytest.raises(Unauthenticated, match="used already"):
            restarted.verify(headers)
    finally:
        restarted.close()


def test_a_bad_signature_does_not_burn_the_message(verifier: RequestVerifier) -> None:
    message = _fresh()
    with pytest.raises(Unauthenticated):
        verifier.verify(_headers(message, "0x" + "11" * 64))
    assert verifier.verify(_headers(message, "0x" + ALICE.sign(message.encode()).hex()))


def test_accept_unfresh_messages_restores_deoss_behaviour(tmp_path: Path) -> None:
    verifier = RequestVerifier(tmp_path / "seen.sqlite3", 300, accept_unfresh=True)
    try:
        for _ in range(2):  # any text, and again
            assert verifier.verify(_headers("123", "0x" + ALICE.sign(b"123").hex()))
    finally:
        verifier.close()


def _eth(key: eth_keys.PrivateKey, message: str, v_offset: int = 27) -> str:
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message.encode())
    raw = key.sign_msg_hash(digest).to_bytes()
    return "0x" + (raw[:64] + bytes([raw[64] + v_offset])).hex()


@pytest.mark.parametrize("v_offset", [0, 27])
def test_ethacc_acts_for_the_account_its_address_maps_to(verifier: RequestVerifier, v_offset: int) -> None:
    key = eth_keys.PrivateKey(secrets.token_bytes(32))
    address = key.public_key.to_checksum_address()
    bound = eth_bound_account(address)
    message = _fresh()
    headers = {**_headers(message, _eth(key, message, v_offset), bound), "EthAcc": address}
    assert verifier.verify(headers).account == bound


def test_ethacc_cannot_act_for_another_account(verifier: RequestVerifier) -> None:
    """DeOSS v0.4.2 accepts this: any Ethereum key acting for any Account."""
    key = eth_keys.PrivateKey(secrets.token_bytes(32))
    message = _fresh()
    headers = {**_headers(message, _eth(key, message)), "EthAcc": key.public_key.to_checksum_address()}
    with pytest.raises(Unauthenticated, match="not bound"):
        verifier.verify(headers)
    other = eth_keys.PrivateKey(secrets.token_bytes(32))
    message = _fresh()
    forged = {**_headers(message, _eth(other, message), eth_bound_account(key.public_key.to_checksum_address())),
              "EthAcc": key.public_key.to_checksum_address()}
    with pytest.raises(Unauthenticated, match="not made by"):
        verifier.verify(forged)


def test_the_evm_mapping_is_cess_runtimes() -> None:
    """Frontier's HashedAddressMapping<BlakeTwo256>: blake2_256("evm:" ++ address)."""
    import hashlib

    from substrateinterface.utils.ss58 import ss58_decode

    address = "0x" + "11" * 20
    expected = hashlib.blake2b(b"evm:" + bytes.fromhex("11" * 20), digest_size=32).hexdigest()
    assert ss58_decode(eth_bound_account(address), valid_ss58_format=11330) == expected


@pytest.mark.parametrize("header, size, expected", [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 10)),
    ("bytes=90-", 100, (90, 100)),
    ("bytes=-10", 100, (90, 100)),
    ("bytes=-500", 100, (0, 100)),
    ("bytes=95-200", 100, (95, 100)),
    ("bytes=0-1,5-6", 100, None),   # several ranges: the whole file, as RFC 9110 allows
    ("items=0-1", 100, None),
    ("bytes=9-3", 100, None),
])
def test_ranges(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@pytest.mark.parametrize("header, expected", [
    ("bytes 0-9/100", (0, 9, 100)),
    ("bytes=0-9/100", (0, 9, 100)),
    ("bytes */100", (None, None, 100)),
])
def test_resumable_content_ranges(header: str, expected: tuple) -> None:
    assert _parse_content_range(header) == expected


@pytest.mark.parametrize("header", [None, "", "bytes 0-9", "bytes 9-0/100", "bytes 0-100/100",
                                    "bytes a-b/100", "bytes 0-9/*", "octets 0-9/100", "bytes 0-9/0"])
def test_bad_resumable_content_ranges(header: str | None) -> None:
    with pytest.raises(InvalidInput):
        _parse_content_range(header)


def test_cipher_keys_are_bound_to_their_owner() -> None:
    bob = account_from_secret("//Bob").address
    assert cipher_key("words", ALICE.address) != cipher_key("words", bob)
    assert cipher_key("words", ALICE.address) == cipher_key("words", ALICE.address)
    for bad in ("", "x" * 33):
        with pytest.raises(InvalidInput):
            cipher_key(bad, ALICE.address)
