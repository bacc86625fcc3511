"""Object key rules (bucket name rules are the chain's: deossfs.chain.names)."""

from __future__ import annotations

import hashlib

from .errors import InvalidName, NameTooLong

#: the chain's bounds on a storage order's file_name (checked on the runtime)
CHAIN_NAME_MIN_BYTES = 3
CHAIN_NAME_MAX_BYTES = 63
#: marks a chain file_name derived from a key that does not fit the chain's bounds
HASHED_NAME_PREFIX = "~k"


def chain_file_name(key: str) -> str:
    """The file_name a key is declared under on the chain.

    CESS takes 3..63 bytes. Keys that fit are used as they are, so other CESS tools
    see the real name; others (`a`, deep paths) get `~k` + 48 hex digits of their
    SHA-256 — the mount's metadata object maps them back to the real path.
    """
    raw = key.encode()
    if CHAIN_NAME_MIN_BYTES <= len(raw) <= CHAIN_NAME_MAX_BYTES and not key.startswith(HASHED_NAME_PREFIX):
        return key
    return HASHED_NAME_PREFIX + hashlib.sha256(raw).hexdigest()[:48]


_HEX = frozenset("0123456789abcdef")


def is_hashed_name(path: str) -> bool:
    """Whether `path` has the form chain_file_name gives a key it hashes.

    Listed before the metadata object that maps it back (another writer's upload whose
    save is still to come), such an object shows under this name as a placeholder. Once
    anything names its FID, the placeholder goes, and it is not published (only a mount
    publishes one it changed, a chmod): published, it became a file of its own in every
    mount, tracking the real file's versions."""
    return len(path) == 50 and path.startswith(HASHED_NAME_PREFIX) and _HEX.issuperset(path[2:])

#: longest object key deossfs stores. The chain never sees it (a key longer than 63 bytes
#: is declared under its hash), so the bound is deossfs' own: room for a mount's deep
#: trees (fs/operations.py MAX_PATH_BYTES) and the trash's hidden prefix below it
MAX_KEY_BYTES = 8192
#: S3's bound on a key (what an S3 client may send); callers that speak S3 pass it
S3_MAX_KEY_BYTES = 1024


def check_key(key: str, max_bytes: int = MAX_KEY_BYTES) -> str:
    """Validate an object key like `a/b/c.txt` of at most `max_bytes`; returns it unchanged."""
    if not key:
        raise InvalidName("an object key must not be empty")
    if "\0" in key:
        raise InvalidName("an object key must not contain NUL")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("an object key must be valid UTF-8") from None
    if len(raw) > max_bytes:
        raise NameTooLong(f"an object key is at most {max_bytes} bytes")
    parts = key.split("/")
    if key.startswith("/") or key.endswith("/") or "" in parts:
        raise InvalidName(f"object key {key!r} has an empty path component")
    if any(p in (".", "..") for p in parts):
        raise InvalidName(f"object key {key!r} must not contain '.' or '..' components")
    return key


def split_target(target: str) -> tuple[str, str]:
    """`BUCKET/KEY` → (bucket, key)."""
    bucket, sep, key = target.partition("/")
    if not sep or not bucket or not key:
        raise InvalidName(f"{target!r} is not BUCKET/KEY")
    return bucket, check_key(key)
