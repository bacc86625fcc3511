"""The segment cache (segments as stored, LRU under a size cap) and its counters."""

from .counters import COUNTERS, Counters
from .segments import SegmentCache, min_size, segment_key

__all__ = ["COUNTERS", "Counters", "SegmentCache", "min_size", "segment_key"]
