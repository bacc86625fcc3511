"""Throughput of the S3 body verifier (deossfs.gateway.s3.payload) on one core.

    .venv/bin/python benchmarks/s3_payload.py [--size-mib 256] [--chunk-kib 64] [--read-kib 64]

Feeds SIZE MiB of payload, framed as each mode frames it (aws-chunked with CHUNK KiB
chunks), in READ KiB pieces as an HTTP server hands them over, and prints MB/s of
payload and the ratio to the floor measured in the same run: the hashes that mode
must compute anyway (MD5 for the ETag, plus SHA-256 / a CRC), one pass each over the
payload in one buffer. Best of --runs after a warm-up run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awscrt import checksums as crt  # noqa: E402

from deossfs.gateway.credentials import AccessKey  # noqa: E402
from deossfs.gateway.s3.payload import PayloadVerifier  # noqa: E402
from deossfs.gateway.s3.sigv4 import (  # noqa: E402
    EMPTY_SHA256,
    ChunkSigning,
    HeaderMap,
    PayloadMode,
    VerifiedRequest,
    derive_signing_key,
)

MIB = 1024 * 1024


def signed_request(mode: PayloadMode, trailer: str | None) -> VerifiedRequest:
    key = AccessKey("A" * 20, "s" * 40, "account", 0.0)
    signing = ChunkSigning(derive_signing_key(key.secret, "20240101", "us-east-1"),
                           "20240101T000000Z", "20240101/us-east-1/s3/aws4_request", "0" * 64)
    return VerifiedRequest(key, False, mode, mode.value, (trailer,) if trailer else (),
                           "us-east-1", datetime.now(UTC), None, ("host",), signing)


def frame(payload: bytes, chunk: int, signing: ChunkSigning | None,
          trailer: tuple[str, str] | None) -> bytes:
    """The aws-chunked body of `payload` (signed when `signing` is given)."""
    parts, previous = [], signing.seed_signature if signing else ""
    for start in [*range(0, len(payload), chunk), len(payload)]:
        data = payload[start:start + chunk]
        if signing:
            previous = signing.sign("\n".join((
                "AWS4-HMAC-SHA256-PAYLOAD", signing.amz_date, signing.scope, previous,
                EMPTY_SHA256, hashlib.sha256(data).hexdigest())))
            parts.append(f"{len(data):x};chunk-signature={previous}\r\n".encode())
        else:
            parts.append(f"{len(data):x}\r\n".encode())
        if data or not trailer:
            parts += [data, b"\r\n"]
    if trailer:
        canonical = f"{trailer[0]}:{trailer[1]}\n".encode()
        parts.append(canonical.replace(b"\n", b"\r\n"))
        if signing:
            signature = signing.sign("\n".join((
                "AWS4-HMAC-SHA256-TRAILER", signing.amz_date, signing.scope, previous,
                hashlib.sha256(canonical).hexdigest())))
            parts.append(f"x-amz-trailer-signature:{signature}\r\n".encode())
        parts.append(b"\r\n")
    return b"".join(parts)


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def run_verifier(body: bytes, headers: HeaderMap, verified: VerifiedRequest | None,
                 read: int) -> float:
    """Seconds to feed `body` in `read`-byte pieces and finish."""
    pieces = [body[i:i + read] for i in range(0, len(body), read)]
    start = time.perf_counter()
    verifier = PayloadVerifier(headers, verified)
    for piece in pieces:
        verifier.feed(piece)
    verifier.finish()
    return time.perf_counter() - start


def floor(payload: bytes, hashes: list[Callable[[bytes], object]]) -> float:
    start = time.perf_counter()
    for function in hashes:
        function(payload)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--read-kib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    payload = os.urandom(args.size_mib * MIB)
    chunk, read = args.chunk_kib * 1024, args.read_kib * 1024
    md5 = hashlib.md5
    sha256_hex = hashlib.sha256(payload).hexdigest()
    crc32 = b64(zlib.crc32(payload).to_bytes(4, "big"))
    crc64 = b64(crt.crc64nvme(payload).to_bytes(8, "big"))
    crc32c = b64(crt.crc32c(payload).to_bytes(4, "big"))
    length = str(len(payload))
    chunked = [("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", length)]
    cases = [
        # name, body, headers, verified, floor hashes
        ("plain, UNSIGNED-PAYLOAD", payload, [("content-length", length)], None, [md5]),
        ("plain, hex SHA-256", payload, [("content-length", length),
                                          ("x-amz-content-sha256", sha256_hex)], None,
         [md5, hashlib.sha256]),
        ("unsigned trailer CRC32 (boto3)", frame(payload, chunk, None, (
            "x-amz-checksum-crc32", crc32)), [*chunked, ("x-amz-trailer", "x-amz-checksum-crc32"),
                                             ("x-amz-content-sha256",
                                              PayloadMode.STREAMING_UNSIGNED_TRAILER.value)],
         None, [md5, zlib.crc32]),
        ("unsigned trailer CRC64NVME", frame(payload, chunk, None, (
            "x-amz-checksum-crc64nvme", crc64)), [
            *chunked, ("x-amz-trailer", "x-amz-checksum-crc64nvme"),
            ("x-amz-content-sha256", PayloadMode.STREAMING_UNSIGNED_TRAILER.value)],
         None, [md5, crt.crc64nvme]),
    ]
    signed = signed_request(PayloadMode.STREAMING_SIGNED, None)
    cases.append(("signed chunks", frame(payload, chunk, signed.signing, None), chunked, signed,
                  [md5, hashlib.sha256]))
    signed_trailer = signed_request(PayloadMode.STREAMING_SIGNED_TRAILER, "x-amz-checksum-crc32c")
    cases.append(("signed chunks + trailer CRC32C",
                  frame(payload, chunk, signed_trailer.signing, ("x-amz-checksum-crc32c", crc32c)),
                  [*chunked, ("x-amz-trailer", "x-amz-checksum-crc32c")], signed_trailer,
                  [md5, hashlib.sha256, crt.crc32c]))
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores; "
          f"{args.size_mib} MiB payload, {args.chunk_kib} KiB chunks, {args.read_kib} KiB reads")
    for name, body, headers, verified, hashes in cases:
        header_map = HeaderMap(headers)
        times = [run_verifier(body, header_map, verified, read) for _ in range(args.runs + 1)][1:]
        floors = [floor(payload, hashes) for _ in range(args.runs + 1)][1:]
        best, best_floor = min(times), min(floors)
        print(f"{name:34s} {len(payload) / best / 1e6:7.0f} MB/s   floor "
              f"{len(payload) / best_floor / 1e6:6.0f} MB/s   ratio {best_floor / best:.2f}")


if __name__ == "__main__":
    main()
