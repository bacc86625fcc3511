"""Counters of where segments came from and what was served, persisted per instance.

They live in the workspace (`<workspace>/counters`, a small diskcache without
eviction), not in the segment cache, so they survive restarts and exist with the
cache off; several processes of one instance add to them atomically. `deossfs
status` shows them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import diskcache

log = logging.getLogger(__name__)

#: every counter, with what it counts
COUNTERS: dict[str, str] = {
    "hits": "segments read from the local cache",
    "misses": "segments not in the local cache",
    "peer_hits": "segments fetched from a peer's cache",
    "peer_misses": "cache misses no peer could answer",
    "node_reads": "segments fetched from storage nodes",
    "bytes_from_cache": "bytes read from the local cache",
    "bytes_from_peers": "bytes received from peers",
    "bytes_from_nodes": "fragment bytes received from storage nodes",
    "segments_cached": "segments written to the cache (uploaded or fetched)",
    "served_segments": "segments sent to peers",
    "served_bytes": "bytes sent to peers",
    "refused_requests": "peer requests refused (signature, access list, ownership)",
}


class Counters:
    """Persistent integer counters; blocking, thread- and process-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._store: diskcache.Cache | None = None
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._store = diskcache.Cache(str(self.directory), eviction_policy="none")
        return self._store

    def add(self, **deltas: int) -> None:
        """Add to counters (names from COUNTERS); disk trouble is logged, never raised."""
        for name in deltas:
            if name not in COUNTERS:
                raise ValueError(f"no counter {name!r}")
        try:
            store = self._open()
            with store.transact(retry=True):
                for name, delta in deltas.items():
                    if delta:
                        store.incr(name, delta, retry=True)
        except (OSError, diskcache.Timeout) as exc:
            log.warning("cannot update the counters in %s: %s", self.directory, exc)

    def snapshot(self) -> dict[str, int]:
        """Every counter's value (0 for those never counted)."""
        if self._store is None and not self.directory.exists():
            return dict.fromkeys(COUNTERS, 0)
        store = self._open()
        return {name: int(store.get(name, 0, retry=True)) for name in COUNTERS}

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
