"""zstd compression as a deossfs processing stage (the contract: deossfs docs/extending.md).

`encode` compresses a sample first and declines (returns None: the file is stored as it
is) unless it saves at least `min_saving`; it declines too if the whole output turns out
no smaller. `decode` streams the frame back. Both are blocking and keep no state between
calls, so deossfs may call them from several threads at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

import zstandard

__all__ = ["ZstdStage"]

#: bytes moved per read and write
CHUNK = 1024 * 1024


class ZstdStage:
    """Made by deossfs with the options of `[processing.options.zstd]`."""

    def __init__(self, level: int = 3, min_saving: float = 0.05, sample: int = CHUNK) -> None:
        if not isinstance(level, int) or not 1 <= level <= 22:
            raise ValueError(f"level is an integer from 1 to 22, not {level!r}")
        if not 0 <= float(min_saving) < 1:
            raise ValueError(f"min_saving is a fraction from 0 to 1, not {min_saving!r}")
        if not isinstance(sample, int) or sample < 4096:
            raise ValueError(f"sample is at least 4096 bytes, not {sample!r}")
        self.level = level
        self.min_saving = float(min_saving)
        self.sample = sample

    def _worth_it(self, original: int, compressed: int) -> bool:
        return compressed <= original * (1 - self.min_saving)

    def encode(self, source: BinaryIO, sink: BinaryIO) -> Mapping[str, Any] | None:
        head = _read_up_to(source, self.sample)
        if head and not self._worth_it(len(head), len(zstandard.compress(head, self.level))):
            return None  # incompressible: stored as it is
        # the frame's checksum makes a damaged body an error on decode, never garbage
        compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        counter = _Counting(sink)
        total = len(head)
        with compressor.stream_writer(counter, closefd=False) as writer:
            writer.write(head)
            while piece := source.read(CHUNK):
                writer.write(piece)
                total += len(piece)
        if not self._worth_it(total, counter.count):
            return None  # the sample compressed, the rest did not
        return {"format": "zstd", "level": self.level}

    def decode(self, source: BinaryIO, sink: BinaryIO, params: Mapping[str, Any]) -> None:
        if params.get("format") != "zstd":
            raise ValueError(f"not a zstd body (params {dict(params)!r})")
        with zstandard.ZstdDecompressor().stream_reader(source, closefd=False) as reader:
            while piece := reader.read(CHUNK):
                sink.write(piece)  # an exception from the sink ends the decode


def _read_up_to(source: BinaryIO, count: int) -> bytes:
    parts, left = [], count
    while left > 0:
        piece = source.read(left)
        if not piece:
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts)


class _Counting:
    """A writable that counts what passes to the sink."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.count = 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()
