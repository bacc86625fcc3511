"""The CESS data layout constants (docs/cess-protocol.md)."""

from __future__ import annotations

MIB = 1024 * 1024
SEGMENT_SIZE = 32 * MIB
FRAGMENT_SIZE = 8 * MIB
DATA_SHARDS = 4
PARITY_SHARDS = 8
TOTAL_SHARDS = DATA_SHARDS + PARITY_SHARDS  # 12 fragments per segment
#: space a segment occupies in a territory (locked during a deal, then used)
SEGMENT_SPACE = TOTAL_SHARDS * FRAGMENT_SIZE
#: the most segments one storage order (one file) may have: the runtime's SegmentCount
#: (a longer deal_info is refused with SpecError). With 32 MiB segments a file ends at
#: 31.25 GiB (a little less encrypted, whose segments carry headers and tags)
MAX_SEGMENTS = 1000
#: sha256 of an all-zero 8 MiB fragment; miners accept it without a body
ZERO_FRAGMENT_HASH = "2daeb1f36095b44b318410b3f4e8b5d989dcc7bb023d1426c492dab0a3053e74"
SS58_FORMAT = 11330


def segment_count(stored_size: int, capacity: int = SEGMENT_SIZE) -> int:
    """Segments needed for `stored_size` bytes when each holds `capacity` bytes."""
    return max(1, -(-stored_size // capacity))


def charged_space(segments: int) -> int:
    """Territory space a file of `segments` segments occupies (12 x 8 MiB each)."""
    return segments * SEGMENT_SPACE


def ensure_zero(view: memoryview) -> None:
    """Make `view` all zeros, writing only the 1 MiB blocks that are not: untouched pages
    of an anonymous mapping read as the shared zero page and stay unallocated, so a
    small file's segment costs memory for its data, not for 96 MiB of padding."""
    import numpy as np  # the erasure code loads it anyway

    for start in range(0, len(view), MIB):
        block = view[start : start + MIB]
        if np.frombuffer(block, dtype=np.uint8).any():
            block[:] = _ZERO_MIB[: len(block)]


_ZERO_MIB = bytes(MIB)
