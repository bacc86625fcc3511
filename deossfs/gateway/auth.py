"""DeOSS's request signatures, with the freshness and binding DeOSS lacks.

A signed request carries `Account` (SS58), `Message` and `Signature`, as DeOSS v0.4.2 takes
them: an sr25519 signature over the Message as sent, or over `<Bytes>Message</Bytes>` (what
polkadot.js `signRaw` signs), encoded as hex (with or without 0x) or base58 (what CESS's Go
SDK sends).

What differs from DeOSS (docs/gateway.md):
- **Freshness.** DeOSS reads a numeric Message as an expiry and accepts any other text
  forever, so a captured request can be replayed without end. Here the Message is a Unix
  time in seconds or milliseconds, optionally followed by `:` and a nonce
  (`1765000000:8f2a`), within `gateway.message_window` of the gateway's clock either way
  (so both "now" and DeOSS's "expires in a minute" work), and each is accepted once: seen
  messages are kept in SQLite until they could not pass the window any more, so a restart
  does not reopen them. `gateway.accept_unfresh_messages` restores DeOSS's behaviour.
- **EthAcc.** DeOSS checks an Ethereum signature against the EthAcc address and then acts
  as whatever Account the request names. Here the address must be the one the CESS chain
  binds to that Account: its EVM address mapping (Frontier's HashedAddressMapping) makes
  an H160 address the account blake2_256("evm:" ‖ address), so only the holder of that
  Ethereum key acts for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import base58
from eth_keys import keys as eth_keys
from eth_keys.exceptions import BadSignature, ValidationError
from eth_utils import keccak
from scalecodec.utils.ss58 import ss58_decode, ss58_encode

from ..errors import Unauthenticated
from ..keys import verify_signature
from ..p2p.signing import ReplayGuard
from ..processing.layout import SS58_FORMAT

ACCOUNT = "Account"
MESSAGE = "Message"
SIGNATURE = "Signature"
ETH_ACCOUNT = "EthAcc"

#: longer Messages are refused before any parsing (ours are ~30 characters)
MAX_MESSAGE_LENGTH = 256
_FRESH = re.compile(r"(\d{10}|\d{13})(?::([A-Za-z0-9_-]{1,64}))?")
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
#: the SS58 prefix of the generic Substrate format ("5..."), which DeOSS also takes
_GENERIC_SS58 = 42


def _refuse(reason: str) -> Unauthenticated:
    return Unauthenticated(reason, hint="sign the request as docs/gateway.md describes")


def canonical_account(text: str) -> str:
    """The CESS (cX...) form of an SS58 account given in CESS's or the generic format."""
    for prefix in (SS58_FORMAT, _GENERIC_SS58):
        try:
            public_key = ss58_decode(text, valid_ss58_format=prefix)
        except (ValueError, IndexError, TypeError):
            continue
        return ss58_encode(public_key, ss58_format=SS58_FORMAT)
    raise _refuse(f"Account {text[:64]!r} is not an SS58 account")


def eth_bound_account(address: str) -> str:
    """The CESS account the chain's EVM mapping binds an Ethereum address to."""
    raw = bytes.fromhex(address[2:])
    return ss58_encode(hashlib.blake2b(b"evm:" + raw, digest_size=32).digest(), ss58_format=SS58_FORMAT)


def _signature_candidates(text: str) -> list[bytes]:
    """The 64-byte signatures `text` can stand for: hex (0x optional) or base58."""
    found = []
    hex_text = text[2:] if text[:2] in ("0x", "0X") else text
    if len(hex_text) == 128:
        with contextlib.suppress(ValueError):
            found.append(bytes.fromhex(hex_text))
    try:
        decoded = base58.b58decode(text)
    except ValueError:
        decoded = b""
    if len(decoded) == 64:
        found.append(decoded)
    return found


def verify_sr25519(account: str, message: str, signature: str) -> bool:
    """Does `signature` sign `message` (as sent, or wrapped as polkadot.js does) for `account`?"""
    candidates = _signature_candidates(signature.strip())
    for payload in (message.encode(), f"<Bytes>{message}</Bytes>".encode()):
        for candidate in candidates:
            if verify_signature(account, payload, candidate):
                return True
    return False


def recover_eth_address(message: str, signature: str) -> str:
    """The checksummed address of the key that made an EIP-191 personal_sign of `message`."""
    text = signature.strip()
    if text[:2] not in ("0x", "0X"):
        raise _refuse("an Ethereum Signature is 0x and 65 bytes of hex")
    try:
        raw = bytearray(bytes.fromhex(text[2:]))
    except ValueError:
        raise _refuse("the Ethereum Signature is not hex") from None
    if len(raw) != 65:
        raise _refuse("an Ethereum Signature is 65 bytes")
    if raw[64] in (27, 28):
        raw[64] -= 27
    payload = message.encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(payload)).encode() + payload)
    try:
        public_key = eth_keys.Signature(bytes(raw)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError, ValueError):
        raise _refuse("the Ethereum Signature does not verify") from None
    return public_key.to_checksum_address()


@dataclass(frozen=True)
class Signer:
    account: str  # CESS SS58 form
    message: str


class RequestVerifier:
    """Checks the signed headers of a request; returns who signed it."""

    def __init__(self, seen_path: Path | None, window_seconds: float,
                 accept_unfresh: bool = False) -> None:
        self.window_seconds = window_seconds
        self.accept_unfresh = accept_unfresh
        # seen messages are pruned once older than the window; a message up to `window`
        # ahead may be used until it is `window` behind, so remember them twice as long
        self.seen = ReplayGuard(seen_path, window_seconds * 2)

    def close(self) -> None:
        self.seen.close()

    def verify(self, headers: Mapping[str, str], now: float | None = None) -> Signer:
        """Verify Account/Message/Signature (or EthAcc); raise Unauthenticated otherwise.

        Blocking (sr25519 or secp256k1 and an SQLite write): run it in a worker thread."""
        account_text = headers.get(ACCOUNT, "").strip()
        message = headers.get(MESSAGE, "")
        signature = headers.get(SIGNATURE, "").strip()
        if not account_text or not message or not signature:
            raise _refuse("this route needs the Account, Message and Signature headers")
        if len(message) > MAX_MESSAGE_LENGTH:
            raise _refuse(f"Message is longer than {MAX_MESSAGE_LENGTH} characters")
        account = canonical_account(account_text)
        timestamp_ms = None if self.accept_unfresh else self._fresh(message, now)
        eth_address = headers.get(ETH_ACCOUNT, "").strip()
        if eth_address:
            if not _ETH_ADDRESS.fullmatch(eth_address):
                raise _refuse("EthAcc is not an Ethereum address (0x and 40 hex digits)")
            recovered = recover_eth_address(message, signature)
            if recovered.lower() != eth_address.lower():
                raise _refuse("the Ethereum Signature was not made by the EthAcc key")
            if eth_bound_account(recovered) != account:
                raise _refuse(
                    f"EthAcc {recovered} is not bound to Account {account}: on CESS an Ethereum "
                    f"address acts for {eth_bound_account(recovered)} only")
        elif not verify_sr25519(account, message, signature):
            raise _refuse("the Signature does not verify for this Account and Message")
        if timestamp_ms is not None and not self.seen.remember(f"{account}|{message}", timestamp_ms):
            # recorded only once the signature holds, so nobody can burn others' messages
            raise _refuse("this Message was used already: sign a new one for each request")
        return Signer(account, message)

    def _fresh(self, message: str, now: float | None) -> int:
        match = _FRESH.fullmatch(message.strip())
        if match is None:
            raise _refuse("Message must be the current Unix time (seconds or milliseconds), "
                          "optionally followed by ':' and a nonce, e.g. 1765000000:8f2a")
        stamp = int(match.group(1))
        timestamp_ms = stamp * 1000 if len(match.group(1)) == 10 else stamp
        now_ms = int((time.time() if now is None else now) * 1000)
        window_ms = int(self.window_seconds * 1000)
        if timestamp_ms < now_ms - window_ms:
            raise _refuse(f"Message is stale: its time is more than {self.window_seconds:.0f} s "
                          "behind the gateway's clock (sign a new one; check the clocks)")
        if timestamp_ms > now_ms + window_ms:
            raise _refuse(f"Message is more than {self.window_seconds:.0f} s ahead of the "
                          "gateway's clock (check the clocks)")
        return timestamp_ms
