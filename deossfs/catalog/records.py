"""S3 objects as entries of the bucket metadata object: what the catalog hands the S3 API.

An object's S3 attributes are xattrs of its entry, so the mount shows them (`getfattr -d`)
and keeps them when it renames or rewrites the file:

- `user.s3.etag`: `<etag> <FID>` (`-` for no FID): the ETag and the content it was
  computed for. A file the mount rewrote has another FID, so the stored ETag no longer
  applies and the file gets the ETag of unknown content (`etag_for`).
- `user.s3.content-type`, and `user.s3.<header>` for the other headers S3 keeps
  (HEADERS);
- `user.s3.meta.<name>`: user metadata (`x-amz-meta-<name>`);
- `user.s3.checksum`: `<algorithm> <type> <value> <FID>`, the checksum S3 keeps with the
  object (gateway/s3/checksums.py), bound to its content as the ETag is: a file the
  mount rewrote has none;
- `user.s3.part-checksums`: `<value> ... <FID>`, a multipart object's parts' checksums
  (of the object checksum's algorithm), in order; kept while they fit in
  PART_CHECKSUMS_MAX bytes, so a bucket's metadata object stays small.

A directory with any `user.s3.*` xattr is an S3 folder object (`key/`, zero bytes).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import InvalidInput
from .protocol import decode_xattrs, encode_xattrs

S3_XATTR = b"user.s3."
ETAG_XATTR = b"user.s3.etag"
CONTENT_TYPE_XATTR = b"user.s3.content-type"
#: the parts of a multipart object (GetObject's partNumber): runs "first-last:size", or "n:size"
PARTS_XATTR = b"user.s3.parts"
CHECKSUM_XATTR = b"user.s3.checksum"
PART_CHECKSUMS_XATTR = b"user.s3.part-checksums"
#: the longest part-checksums value kept: ~900 parts' CRC32s, ~180 parts' SHA-256s
PART_CHECKSUMS_MAX = 8192
META_XATTR = b"user.s3.meta."
#: the response headers S3 stores with an object besides Content-Type (lowercase)
HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language",
           "expires")
#: the MD5 of no bytes: the ETag of every empty object
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
#: Linux bounds an xattr name to 255 bytes
_XATTR_NAME_MAX = 255
FILE_MODE = stat.S_IFREG | 0o644
DIR_MODE = stat.S_IFDIR | 0o755


@dataclass(frozen=True)
class ObjectRecord:
    """One S3 object. `etag` is unquoted; `fid` is None for an object of zero bytes (CESS
    refuses empty files: it lives in the metadata object only) and for a folder (a key
    ending in `/`). `metadata` is the user metadata (names lowercase, without
    `x-amz-meta-`); `headers` those of HEADERS the object has (names lowercase)."""

    key: str
    size: int
    etag: str
    fid: str | None = None
    modified_ns: int = 0
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    encrypted: bool = True
    #: (part number, size) of each part of a multipart upload, in order; () for one PUT
    parts: tuple[tuple[int, int], ...] = ()
    #: (algorithm, type, base64 value) of the checksum S3 keeps with the object, e.g.
    #: ("crc32", "COMPOSITE", "WgDhBQ==-3"); None when its upload carried none
    checksum: tuple[str, str, str] | None = None
    #: each part's checksum, in `parts`' order, of `checksum`'s algorithm; () when not kept
    part_checksums: tuple[str, ...] = ()

    @property
    def is_folder(self) -> bool:
        return self.key.endswith("/")


@dataclass(frozen=True)
class ListedObject:
    """What a listing says of an object."""

    key: str
    size: int
    etag: str
    modified_ns: int


@dataclass(frozen=True)
class ListPage:
    """One page of a listing: objects and common prefixes (with a delimiter), each in UTF-8
    byte order; `next_marker` is the last key or prefix of the page (start the next page
    after it); `truncated` says whether there is a next page."""

    objects: list[ListedObject]
    prefixes: list[str]
    truncated: bool
    next_marker: str | None


def etag_for(fid: str | None, xattrs: Mapping[bytes, bytes]) -> str:
    """The ETag of a file with these xattrs and content: the one recorded for this very
    content; MD5("") for no content; otherwise (written by the mount or another CESS tool)
    one that is visibly no MD5 - 32 hex digits of the FID and `-1`, the shape of a
    multipart ETag, which S3 clients (aws cli, rclone) do not check against the bytes."""
    stored = xattrs.get(ETAG_XATTR)
    if stored is not None:
        etag, _, bound = stored.decode("utf-8", "replace").partition(" ")
        if bound == (fid or "-"):
            return etag
    if not fid:
        return EMPTY_MD5
    return f"{fid[:32]}-1"


def s3_xattrs(record: ObjectRecord) -> dict[bytes, bytes]:
    """The xattrs that carry a record's S3 attributes."""
    xattrs = {ETAG_XATTR: f"{record.etag} {record.fid or '-'}".encode()}
    if record.content_type is not None:
        xattrs[CONTENT_TYPE_XATTR] = record.content_type.encode()
    if record.parts:
        xattrs[PARTS_XATTR] = encode_parts(record.parts).encode()
    if record.checksum is not None:
        xattrs[CHECKSUM_XATTR] = " ".join((*record.checksum, record.fid or "-")).encode()
        listed = " ".join((*record.part_checksums, record.fid or "-")).encode()
        if record.part_checksums and len(listed) <= PART_CHECKSUMS_MAX:
            xattrs[PART_CHECKSUMS_XATTR] = listed
    for name, value in record.headers.items():
        if name.lower() not in HEADERS:
            raise InvalidInput(f"{name} is not a header S3 stores with an object")
        xattrs[S3_XATTR + name.lower().encode()] = value.encode()
    for name, value in record.metadata.items():
        xattr = META_XATTR + name.lower().encode()
        if len(xattr) > _XATTR_NAME_MAX:
            raise InvalidInput(f"the metadata name {name[:40]!r}... is longer than "
                               f"{_XATTR_NAME_MAX - len(META_XATTR)} bytes")
        xattrs[xattr] = value.encode()
    return xattrs


def has_s3_attributes(entry: dict) -> bool:
    """Does an entry carry S3 attributes (a directory with them is an S3 folder object)?"""
    return any(name.startswith(S3_XATTR) for name in decode_xattrs(entry))


def with_s3_xattrs(entry: dict, xattrs: Mapping[bytes, bytes]) -> dict:
    """`entry` with its S3 xattrs replaced by `xattrs` (its other xattrs stay)."""
    kept = {n: v for n, v in decode_xattrs(entry).items() if not n.startswith(S3_XATTR)}
    kept.update(xattrs)
    out = {k: v for k, v in entry.items() if k != "x"}
    if kept:
        out["x"] = encode_xattrs(kept)
    return out


def record_of(key: str, entry: dict, file: dict | None = None) -> ObjectRecord:
    """The S3 object of an entry under `key`: a file, a directory (a folder object), or a
    hard link (`file`: the entry of the file it names, whose content and attributes are
    the link's)."""
    source = file if file is not None else entry
    xattrs = decode_xattrs(source)
    fid = source.get("f") if source["k"] == "file" else None
    content_type = xattrs.get(CONTENT_TYPE_XATTR)
    return ObjectRecord(
        key=key,
        size=source.get("s", 0) if source["k"] == "file" else 0,
        etag=etag_for(fid, xattrs),
        fid=fid,
        modified_ns=source["t"],
        content_type=None if content_type is None else content_type.decode("utf-8", "replace"),
        metadata={n[len(META_XATTR):].decode("utf-8", "replace"): v.decode("utf-8", "replace")
                  for n, v in xattrs.items() if n.startswith(META_XATTR)},
        headers={h: xattrs[S3_XATTR + h.encode()].decode("utf-8", "replace")
                 for h in HEADERS if S3_XATTR + h.encode() in xattrs},
        encrypted=bool(source.get("e", 1)),
        parts=(parts := decode_parts(xattrs.get(PARTS_XATTR, b"").decode("ascii", "replace"))),
        checksum=(checksum := checksum_for(fid, xattrs)),
        part_checksums=part_checksums_for(fid, xattrs, len(parts)) if checksum else (),
    )


def part_checksums_for(fid: str | None, xattrs: Mapping[bytes, bytes], count: int) -> tuple[str, ...]:
    """The parts' checksums recorded for this very content, if there is one per part."""
    words = xattrs.get(PART_CHECKSUMS_XATTR, b"").decode("ascii", "replace").split(" ")
    if len(words) != count + 1 or words[-1] != (fid or "-"):
        return ()
    return tuple(words[:-1])


def checksum_for(fid: str | None, xattrs: Mapping[bytes, bytes]) -> tuple[str, str, str] | None:
    """The checksum recorded for this very content, or None (another content's, or one
    not written by `s3_xattrs`)."""
    words = xattrs.get(CHECKSUM_XATTR, b"").decode("ascii", "replace").split(" ")
    if len(words) != 4 or words[3] != (fid or "-"):
        return None
    return words[0], words[1], words[2]


def encode_parts(parts: tuple[tuple[int, int], ...]) -> str:
    """Runs of consecutive part numbers of one size: 10,000 parts of 8 MiB and a last one
    take a few bytes ("1-9999:8388608,10000:1234"), not 10,000 entries."""
    runs: list[list[int]] = []  # [first, last, size]
    for number, size in parts:
        if runs and runs[-1][1] + 1 == number and runs[-1][2] == size:
            runs[-1][1] = number
        else:
            runs.append([number, number, size])
    return ",".join(f"{a}-{b}:{size}" if a != b else f"{a}:{size}" for a, b, size in runs)


def decode_parts(text: str) -> tuple[tuple[int, int], ...]:
    """The parts `encode_parts` wrote; () for none or for a value it did not write."""
    parts: list[tuple[int, int]] = []
    try:
        for run in filter(None, text.split(",")):
            numbers, _, size = run.partition(":")
            first, _, last = numbers.partition("-")
            parts += [(n, int(size)) for n in range(int(first), int(last or first) + 1)]
    except ValueError:
        return ()
    return tuple(parts)
