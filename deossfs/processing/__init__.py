"""Byte-exact CESS data layout: encryption, segmentation, erasure code, hashes."""
