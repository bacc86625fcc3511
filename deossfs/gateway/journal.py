"""A durable SQLite journal shared by worker threads: the gateway's upload journal and its
multipart uploads. WAL with synchronous=FULL, so a committed row survives kill -9 and power
loss; one connection behind a lock (statements are short); the file is 0600."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class DurableJournal:
    """Opens `path` with `schema`; `_run` executes one statement under the lock."""

    def __init__(self, path: Path, schema: str) -> None:
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        os.chmod(path, 0o600)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()
