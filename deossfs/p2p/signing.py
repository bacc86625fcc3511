"""Signed, fresh, non-replayable requests between gateways and storage nodes.

The headers are cess-miner's: `Account` (SS58), `Message`, `Signature` (hex
sr25519 signature over the Message bytes). cess-miner signs any text and never
checks freshness, so a captured request could be replayed forever. Our Message
binds the request and a time to the signature:

    deossfs:1:<unix_ms>:<16 hex nonce>:<METHOD>:<fid>:<fragment>

("-" for an empty part). A node accepts it once, within `window_seconds` of its
own clock in either direction; `ReplayGuard` remembers every accepted message
until it has gone stale anyway, in SQLite, so a restarted node still refuses
replays made within the window.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import NodeRefused
from ..keys import Account, valid_address, verify_signature

log = logging.getLogger(__name__)

PREFIX = "deossfs"
VERSION = "1"
#: header names, as cess-miner spells them
ACCOUNT_HEADER = "Account"
MESSAGE_HEADER = "Message"
SIGNATURE_HEADER = "Signature"

_MAX_MESSAGE_LENGTH = 512  # ours are ~180 characters; refuse junk before parsing it
_HEX = frozenset("0123456789abcdef")


def _part(value: str) -> str:
    return value if value else "-"


def build_message(
    method: str,
    fid: str,
    fragment: str,
    *,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> str:
    """The text a request signs (see the module docstring)."""
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    if nonce is None:
        nonce = secrets.token_hex(8)
    return ":".join(
        (PREFIX, VERSION, str(timestamp_ms), nonce, method.upper(), _part(fid), _part(fragment))
    )


def sign_request(
    account: Account,
    method: str,
    fid: str,
    fragment: str,
    *,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The `Account`/`Message`/`Signature` headers of one request.

    `timestamp_ms` is for tests (and clocks known to be off); by default now.
    """
    message = build_message(method, fid, fragment, timestamp_ms=timestamp_ms)
    signature = account.sign(message.encode())
    return {
        ACCOUNT_HEADER: account.address,
        MESSAGE_HEADER: message,
        SIGNATURE_HEADER: "0x" + signature.hex(),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    value = headers.get(lowered)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _refuse(reason: str) -> NodeRefused:
    return NodeRefused(reason, status=401)


def _parse_signature(text: str) -> bytes:
    if text.startswith(("0x", "0X")):
        text = text[2:]
    if len(text) != 128:
        raise _refuse("Signature must be 64 bytes of hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _refuse("Signature is not hex") from None


class ReplayGuard:
    """Checks signed requests and refuses each message the second time.

    `path` None keeps the seen messages in memory only (tests, throwaway nodes).
    Thread-safe: the node calls `check` from worker threads, since sr25519
    verification and the SQLite write are blocking.
    """

    def __init__(self, path: Path | None, window_seconds: float = 120) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.window_ms = int(window_seconds * 1000)
        self._lock = threading.Lock()
        # key -> message timestamp (ms); a hot cache in front of SQLite
        self._seen: dict[str, int] = {}
        self._next_prune_ms = 0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash, which is the restart we care about
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS seen_ts ON seen (ts_ms)")
            self._db = db

    # ---- public --------------------------------------------------------------
    def check(self, headers: Mapping[str, str], method: str, fid: str, fragment: str) -> str:
        """Verify a request's signature, freshness and uniqueness; return the signer.

        Raises `NodeRefused(status=401)` with the reason otherwise.
        """
        account = _header(headers, ACCOUNT_HEADER)
        message = _header(headers, MESSAGE_HEADER)
        signature_text = _header(headers, SIGNATURE_HEADER)
        if not account or not message or not signature_text:
            raise _refuse("missing Account, Message or Signature header")
        if len(message) > _MAX_MESSAGE_LENGTH:
            raise _refuse("Message too long")
        timestamp_ms = self._check_message(message, method, fid, fragment)
        signature = _parse_signature(signature_text.strip())
        if not valid_address(account):
            raise _refuse("Account is not a valid SS58 address")
        if not verify_signature(account, message.encode(), signature):
            raise _refuse("bad signature")
        # recorded only after the signature holds, so nobody can burn others' nonces
        self._remember(f"{account}|{message}", timestamp_ms)
        return account

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> ReplayGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------
    def _check_message(self, message: str, method: str, fid: str, fragment: str) -> int:
        parts = message.split(":")
        if len(parts) != 7 or parts[0] != PREFIX or parts[1] != VERSION:
            raise _refuse("Message is not a deossfs:1 request message")
        _, _, ts_text, nonce, m_method, m_fid, m_fragment = parts
        if not ts_text.isascii() or not ts_text.isdigit() or len(ts_text) > 15:
            raise _refuse("Message timestamp is malformed")
        if len(nonce) != 16 or not set(nonce) <= _HEX:
            raise _refuse("Message nonce is malformed")
        if m_method != method.upper() or m_fid != _part(fid) or m_fragment != _part(fragment):
            raise _refuse("Message was signed for another request")
        timestamp_ms = int(ts_text)
        now_ms = time.time_ns() // 1_000_000
        if timestamp_ms < now_ms - self.window_ms:
            raise _refuse("Message is stale (check the clocks)")
        if timestamp_ms > now_ms + self.window_ms:
            raise _refuse("Message is from the future (check the clocks)")
        return timestamp_ms

    def _remember(self, key: str, timestamp_ms: int) -> None:
        if not self.remember(key, timestamp_ms):
            raise _refuse("replayed request")

    def remember(self, key: str, timestamp_ms: int) -> bool:
        """Record a message (`key`, made at `timestamp_ms`); False if it was seen already.

        Callers check freshness first: a message older than the window is forgotten."""
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms >= self._next_prune_ms:
                self._prune(now_ms)
            if key in self._seen:
                return False
            if self._db is not None:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO seen (key, ts_ms) VALUES (?, ?)", (key, timestamp_ms)
                )
                if cursor.rowcount == 0:
                    self._seen[key] = timestamp_ms
                    return False
            self._seen[key] = timestamp_ms
            return True

    def _prune(self, now_ms: int) -> None:
        # a message older than the window is refused as stale, so need not be remembered
        horizon = now_ms - self.window_ms - 1000
        self._seen = {k: ts for k, ts in self._seen.items() if ts >= horizon}
        if self._db is not None:
            self._db.execute("DELETE FROM seen WHERE ts_ms < ?", (horizon,))
        self._next_prune_ms = now_ms + max(1000, self.window_ms // 4)
