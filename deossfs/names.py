"""Object key rules (bucket name rules are the chain's: deossfs.chain.names)."""

from __future__ import annotations

from .errors import InvalidName, NameTooLong

#: longest object key deossfs accepts (the chain's file_name bound)
MAX_KEY_BYTES = 1024


def check_key(key: str) -> str:
    """Validate an object key like `a/b/c.txt`; returns it unchanged."""
    if not key:
        raise InvalidName("an object key must not be empty")
    if "\0" in key:
        raise InvalidName("an object key must not contain NUL")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("an object key must be valid UTF-8") from None
    if len(raw) > MAX_KEY_BYTES:
        raise NameTooLong(f"an object key is at most {MAX_KEY_BYTES} bytes")
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
