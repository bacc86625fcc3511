"""S3 keys <-> paths below a bucket in the mount: a reversible mapping (docs/s3-names.md).

S3 takes any UTF-8 key up to 1,024 bytes: `a//b`, `/etc`, `../x`, `a/./b`, a component of
600 bytes. A mount path is `/`-separated components of 1..255 bytes, none `.` or `..`,
and `.deossfs` at the top of a bucket is the metadata object's. So:

- A key's components map one to one onto path components; a key that is a valid path
  maps to itself (`photos/2026/cat.jpg`).
- A component the mount cannot have gets the escape MARK (`~~`) in front: `` (empty) ->
  `~~`, `.` -> `~~.`, `..` -> `~~..`, `.deossfs` at the top -> `~~.deossfs`. So that this
  stays reversible, a component that already looks like an escape - MARK repeated, then
  one of those or `+` - gets one more MARK: `~~` -> `~~~~`, `~~+x` -> `~~~~+x`. Nothing
  else is escaped: `~~notes`, `a~~b`, `%41`, spaces and `+` are themselves.
- A component too long for the mount (over 255 bytes once escaped) is cut into pieces of
  at most 252 bytes (at character boundaries) that continue one another: each piece but
  the last becomes a directory `~~+<piece>`, the last a component as above.
- A key ending in `/` (an S3 "folder", what consoles create) is a directory: the path of
  the key without its last `/`. Such a key holds no bytes.

`key_path` is total on valid keys and one-to-one; `path_key` inverts it, and answers None
for the few mount paths no key maps to (a name made in the mount that starts with `~~+`
but does not continue a long component the way key_path cuts it): those are not S3 objects.
"""

from __future__ import annotations

from ..errors import InvalidName, KeyTooLongError
from .protocol import META_DIR

#: S3's bound on a key
S3_MAX_KEY_BYTES = 1024
#: the mount's bound on one path component (NAME_MAX)
COMPONENT_MAX_BYTES = 255
#: the mount's bound on a whole path (PATH_MAX - 1): every key of S3_MAX_KEY_BYTES fits
#: once escaped (at most ~3.1 KB: 1,025 empty components are `~~/~~/...`)
PATH_MAX_BYTES = 4095
#: escapes a component the mount cannot have
MARK = "~~"
#: starts a piece of a long component that the next path component continues
CONTINUED = MARK + "+"
#: what a piece carries at most, so that CONTINUED + piece fits in a component
_PIECE_BYTES = COMPONENT_MAX_BYTES - len(CONTINUED.encode())
_UNSTORABLE = frozenset(("", ".", ".."))


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _needs_mark(component: str, top: bool) -> bool:
    """Is `component` (of a key) escaped in the path? Yes for what the mount cannot have,
    and for what would read as an escape: MARK repeated n >= 0 times and then something
    the mount cannot have, or MARK repeated n >= 1 times and then `+`."""
    rest = component
    marks = 0
    while rest.startswith(MARK):
        rest, marks = rest[len(MARK):], marks + 1
    if rest in _UNSTORABLE or (top and rest == META_DIR):
        return True
    return marks > 0 and rest.startswith("+")


def _encode_component(component: str, top: bool) -> list[str]:
    """The path components of one key component (more than one when it is too long)."""
    out: list[str] = []
    while True:
        escaped = MARK + component if _needs_mark(component, top and not out) else component
        if _size(escaped) <= COMPONENT_MAX_BYTES:
            out.append(escaped)
            return out
        piece, size = [], 0
        for char in component:  # the longest prefix that fits, whole characters
            size += _size(char)
            if size > _PIECE_BYTES:
                break
            piece.append(char)
        out.append(CONTINUED + "".join(piece))
        component = component[len(piece):]


def check_key(key: str) -> bytes:
    """Refuse a key S3 allows that deossfs cannot store, or one S3 refuses; its bytes."""
    if not isinstance(key, str) or not key:
        raise InvalidName("an object key must not be empty")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("an object key must be valid UTF-8") from None
    if len(raw) > S3_MAX_KEY_BYTES:
        raise KeyTooLongError(f"an object key is at most {S3_MAX_KEY_BYTES} bytes; "
                              f"this one has {len(raw)}")
    if "\0" in key:
        # no file system name holds NUL, and XML 1.0 cannot carry it in a listing
        raise InvalidName("an object key must not contain the NUL character (U+0000)")
    return raw


def key_path(key: str) -> tuple[str, bool]:
    """The path below the bucket that stores `key`, and whether it is a directory (a key
    ending in `/`). InvalidName / KeyTooLongError for keys that cannot be stored."""
    check_key(key)
    folder = key.endswith("/")
    parts: list[str] = []
    for component in (key[:-1] if folder else key).split("/"):
        parts.extend(_encode_component(component, top=not parts))
    path = "/".join(parts)
    assert _size(path) <= PATH_MAX_BYTES  # what S3_MAX_KEY_BYTES guarantees
    return path, folder


def path_key(path: str, is_dir: bool = False) -> str | None:
    """The key whose path is `path` (a directory: a key ending in `/`), or None when no key
    maps there (a name made in the mount that is not a canonical escape)."""
    components: list[str] = []
    pieces = ""
    for index, part in enumerate(path.split("/")):
        top = index == 0
        if part.startswith(MARK) and _needs_mark(part[len(MARK):], top):
            components.append(pieces + part[len(MARK):])
        elif part.startswith(CONTINUED):
            pieces += part[len(CONTINUED):]
            continue
        else:
            components.append(pieces + part)
        pieces = ""
    if pieces:
        return None
    key = "/".join(components) + ("/" if is_dir else "")
    try:
        if key_path(key) != (path, is_dir):
            return None
    except InvalidName:
        return None
    return key
