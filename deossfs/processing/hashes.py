"""SHA-256 hashes of the CESS layout and the FID Merkle root."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Lowercase hex SHA-256 (hashlib releases the GIL on large buffers)."""
    return hashlib.sha256(data).hexdigest()


def is_hash(value: str) -> bool:
    """A CESS hash: exactly 64 lowercase hex characters."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def merkle_root(segment_hashes: Iterable[str]) -> str:
    """The FID: Merkle root over the raw 32-byte segment digests.

    Adjacent digests are paired as sha256(a || b); an odd last digest is paired
    with itself. A one-segment file therefore has FID sha256(h || h).
    """
    level = [bytes.fromhex(h) for h in segment_hashes]
    if not level:
        raise ValueError("a file has at least one segment")
    while True:
        if len(level) % 2:
            level.append(level[-1])
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
        if len(level) == 1:
            return level[0].hex()
