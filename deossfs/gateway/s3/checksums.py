"""The checksums S3 keeps with an object, and a multipart object's from its parts'.

A PutObject keeps the checksum its request carried (`x-amz-checksum-<algorithm>`, as a
header or a trailer), verified as the body arrived. A multipart upload created with
`x-amz-checksum-algorithm` keeps one for each part, and at Complete one for the object,
of the type its Create asked for (`x-amz-checksum-type`):

- COMPOSITE (SHA-1, SHA-256; CRC-32 and CRC-32C by default): the algorithm over the
  concatenated binary checksums of the parts, then `-N` for N parts;
- FULL_OBJECT (CRC-64/NVME always; CRC-32 and CRC-32C when asked): the CRC of the whole
  object, combined from the parts' CRCs and sizes, so no byte is read again.

Combining: the three CRCs are reflected, start from all ones and end XORed with all ones,
so CRC(A + B) = CRC(A) * x^(8 |B|) + CRC(B) in GF(2)[x] modulo the polynomial (zlib's
crc32_combine method, written here for any width).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from .context import S3Error
from .payload import CHECKSUMS, decode_checksum

COMPOSITE = "COMPOSITE"
FULL_OBJECT = "FULL_OBJECT"
#: algorithm -> the reflected polynomial and the width of its CRC
_CRCS = {"crc32": (0xEDB88320, 32), "crc32c": (0x82F63B78, 32), "crc64nvme": (0x9A6C9329AC4BC9B5, 64)}
#: the types each algorithm allows, the first its default
_TYPES = {"crc32": (COMPOSITE, FULL_OBJECT), "crc32c": (COMPOSITE, FULL_OBJECT),
          "crc64nvme": (FULL_OBJECT,), "sha1": (COMPOSITE,), "sha256": (COMPOSITE,)}


def upload_checksum(algorithm: str | None, checksum_type: str | None) -> tuple[str, str] | None:
    """(algorithm, type) of a CreateMultipartUpload's x-amz-checksum-algorithm and
    x-amz-checksum-type (lowercase algorithm, uppercase type), None without an algorithm;
    InvalidRequest for a combination S3 does not offer."""
    if algorithm is None:
        if checksum_type is not None:
            raise S3Error("InvalidRequest", "x-amz-checksum-type needs an "
                          "x-amz-checksum-algorithm.", 400)
        return None
    name = algorithm.strip().lower()
    if name not in _TYPES:
        raise S3Error("InvalidRequest", f"Checksum algorithm {algorithm!r} is not one of "
                      "CRC32, CRC32C, CRC64NVME, SHA1, SHA256.", 400)
    kind = (checksum_type or _TYPES[name][0]).strip().upper()
    if kind not in _TYPES[name]:
        raise S3Error("InvalidRequest", f"The {kind} checksum type cannot be used with the "
                      f"{name.upper()} checksum algorithm.", 400)
    return name, kind


def _multiply(a: int, b: int, polynomial: int, width: int) -> int:
    """a * b modulo the polynomial, both in the CRC's reflected representation."""
    top = 1 << (width - 1)
    product = 0
    mask = top
    while mask:
        if a & mask:
            product ^= b
        mask >>= 1
        b = (b >> 1) ^ polynomial if b & 1 else b >> 1
    return product


def _x_to_the(power: int, polynomial: int, width: int) -> int:
    """x^power modulo the polynomial (reflected), by squaring."""
    result = 1 << (width - 1)  # x^0
    square = 1 << (width - 2)  # x^1
    while power:
        if power & 1:
            result = _multiply(square, result, polynomial, width)
        power >>= 1
        if power:
            square = _multiply(square, square, polynomial, width)
    return result


def crc_combine(algorithm: str, first: int, second: int, second_length: int) -> int:
    """The CRC of A + B from CRC(A), CRC(B) and len(B)."""
    polynomial, width = _CRCS[algorithm]
    if second_length == 0:
        return first
    return _multiply(_x_to_the(8 * second_length, polynomial, width), first, polynomial,
                     width) ^ second


def object_checksum(algorithm: str, checksum_type: str, parts: Sequence[tuple[str, int]]) -> str:
    """The checksum of an object made of `parts` ((base64 checksum, size) each, in order)."""
    if checksum_type == COMPOSITE:
        digest = CHECKSUMS[algorithm][0]()
        for value, _ in parts:
            digest.update(memoryview(decode_checksum(algorithm, value, "kept for a part")))
        return f"{base64.b64encode(digest.digest()).decode()}-{len(parts)}"
    crc = 0  # the CRC of no bytes; combining it with a part's gives the part's
    for value, size in parts:
        part = int.from_bytes(decode_checksum(algorithm, value, "kept for a part"), "big")
        crc = crc_combine(algorithm, crc, part, size)
    return base64.b64encode(crc.to_bytes(CHECKSUMS[algorithm][1], "big")).decode()


def element_name(algorithm: str) -> str:
    """The XML element / response member of an algorithm's checksum: ChecksumCRC64NVME."""
    return "Checksum" + algorithm.upper()
