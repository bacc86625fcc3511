"""Console sessions: who is signed in, their CSRF token, and the sign-in rate limits.

Sessions are kept server-side, in `<workspace>/gateway/console-sessions.sqlite3` (0600).
The cookie holds 32 random bytes; the database holds only their SHA-256, so a copy of
the database signs nobody in. A session names the access key it was opened with: the
key's secret is checked once, at sign-in, and never reaches the browser again; a key
removed with `deossfs gateway key rm` ends its sessions at their next request.

Statements are single-row and local: they run on the trio thread, as the catalog's do.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY, access_key_id TEXT NOT NULL, account TEXT NOT NULL,
    csrf TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, flash TEXT);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires);
"""


@dataclass(frozen=True)
class Session:
    id_hash: str
    access_key_id: str
    account: str
    #: sent back with every request that changes something (forms and the console's fetches)
    csrf: str
    created: float
    expires: float


def _hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class SessionStore:
    def __init__(self, path: Path, lifetime: float) -> None:
        self.lifetime = lifetime
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        for side in ("-wal", "-shm"):  # created with the umask's mode
            extra = path.with_name(path.name + side)
            if extra.exists():
                os.chmod(extra, 0o600)

    def close(self) -> None:
        self.conn.close()

    def create(self, access_key_id: str, account: str, now: float | None = None) -> tuple[str, Session]:
        """A new session; returns the cookie value (never stored) and the session."""
        now = time.time() if now is None else now
        self.conn.execute("DELETE FROM sessions WHERE expires < ?", (now,))
        cookie = secrets.token_urlsafe(32)
        session = Session(_hash(cookie), access_key_id, account, secrets.token_urlsafe(32),
                          now, now + self.lifetime)
        self.conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, NULL)",
                          (session.id_hash, access_key_id, account, session.csrf, now,
                           session.expires))
        return cookie, session

    def get(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The live session of a cookie; None for none, a forged one or an expired one."""
        if not cookie or len(cookie) > 128:
            return None
        now = time.time() if now is None else now
        row = self.conn.execute(
            "SELECT id_hash, access_key_id, account, csrf, created, expires FROM sessions "
            "WHERE id_hash=?", (_hash(cookie),)).fetchone()
        if row is None or row[5] <= now:
            return None
        return Session(*row)

    def delete(self, session: Session) -> None:
        self.conn.execute("DELETE FROM sessions WHERE id_hash=?", (session.id_hash,))

    def set_flash(self, session: Session, message: str) -> None:
        """A one-line message shown on the next page (the outcome of a form)."""
        self.conn.execute("UPDATE sessions SET flash=? WHERE id_hash=?", (message[:2000], session.id_hash))

    def take_flash(self, session: Session) -> str | None:
        row = self.conn.execute("SELECT flash FROM sessions WHERE id_hash=?", (session.id_hash,)).fetchone()
        if row is None or row[0] is None:
            return None
        self.conn.execute("UPDATE sessions SET flash=NULL WHERE id_hash=?", (session.id_hash,))
        return row[0]


def tokens_match(sent: str | None, expected: str) -> bool:
    return bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())  # type: ignore[union-attr]


class SignInLimiter:
    """Failed sign-ins counted per client address and per access key id, in a sliding
    window: past the limit, sign-in is refused (429) until the oldest failure leaves the
    window, whether or not the next attempt would be right. Memory is bounded: past
    MAX_TRACKED names the oldest are forgotten."""

    MAX_TRACKED = 10_000

    def __init__(self, per_address: int = 5, per_key: int = 10, window: float = 300.0) -> None:
        self.limits = {"address": per_address, "key": per_key}
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, kind: str, name: str, now: float) -> deque[float]:
        failures = self._failures.get((kind, name), deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def wait(self, address: str, key_id: str, now: float | None = None) -> float:
        """Seconds until this address may try this key again (0: now)."""
        now = time.monotonic() if now is None else now
        longest = 0.0
        for kind, name in (("address", address), ("key", key_id)):
            failures = self._recent(kind, name, now)
            if len(failures) >= self.limits[kind]:
                longest = max(longest, failures[-self.limits[kind]] + self.window - now)
        return longest

    def failed(self, address: str, key_id: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for kind, name in (("address", address), ("key", key_id)):
            failures = self._recent(kind, name, now)
            failures.append(now)
            self._failures.pop((kind, name), None)
            self._failures[(kind, name)] = failures  # the most recent last
        while len(self._failures) > self.MAX_TRACKED:
            del self._failures[next(iter(self._failures))]
