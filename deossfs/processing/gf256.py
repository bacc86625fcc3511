"""GF(2^8) arithmetic over the polynomial 0x11D (x^8 + x^4 + x^3 + x^2 + 1).

Pure Python and meant for small matrices only (building the 12x4 encoding matrix
and inverting 4x4 submatrices for decoding); bulk data goes through ISA-L in
`erasure.py`, which works in the same field.
"""

from __future__ import annotations

from collections.abc import Sequence

POLYNOMIAL = 0x11D

Matrix = list[list[int]]


def _build_tables() -> tuple[list[int], list[int]]:
    # 2 is a generator of the multiplicative group for 0x11D, so its powers
    # enumerate all 255 non-zero elements.
    exp = [0] * 512
    log = [0] * 256
    x = 1
    for i in range(255):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x & 0x100:
            x ^= POLYNOMIAL
    # Doubling the exp table lets mul() skip the "mod 255" on log sums.
    for i in range(255, 512):
        exp[i] = exp[i - 255]
    return exp, log


EXP, LOG = _build_tables()


def add(a: int, b: int) -> int:
    """Addition (and subtraction) in characteristic 2 is XOR."""
    return a ^ b


def mul(a: int, b: int) -> int:
    """Product of two field elements."""
    if a == 0 or b == 0:
        return 0
    return EXP[LOG[a] + LOG[b]]


def inverse(a: int) -> int:
    """Multiplicative inverse; 0 has none."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    return EXP[255 - LOG[a]]


def div(a: int, b: int) -> int:
    """a / b."""
    if b == 0:
        raise ZeroDivisionError("division by 0 in GF(2^8)")
    if a == 0:
        return 0
    return EXP[LOG[a] - LOG[b] + 255]


def power(a: int, n: int) -> int:
    """a^n for n >= 0, with 0^0 = 1 (as the Vandermonde construction needs)."""
    if n < 0:
        raise ValueError("negative exponent")
    if n == 0:
        return 1
    if a == 0:
        return 0
    return EXP[(LOG[a] * n) % 255]


def identity(n: int) -> Matrix:
    """The n x n identity matrix."""
    return [[1 if r == c else 0 for c in range(n)] for r in range(n)]


def mat_mul(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> Matrix:
    """Matrix product a * b."""
    inner = len(b)
    if any(len(row) != inner for row in a):
        raise ValueError("matrix shapes do not match")
    cols = len(b[0]) if inner else 0
    out: Matrix = []
    for row in a:
        res = [0] * cols
        for k, coef in enumerate(row):
            if coef == 0:
                continue
            lc = LOG[coef]
            brow = b[k]
            for c in range(cols):
                v = brow[c]
                if v:
                    res[c] ^= EXP[lc + LOG[v]]
        out.append(res)
    return out


def mat_inv(m: Sequence[Sequence[int]]) -> Matrix:
    """Inverse of a square matrix by Gauss-Jordan elimination.

    Raises ValueError if the matrix is not square or is singular.
    """
    n = len(m)
    if any(len(row) != n for row in m):
        raise ValueError("matrix is not square")
    # Augment [m | I] and reduce the left half to I.
    work = [list(row) + [1 if r == c else 0 for c in range(n)] for r, row in enumerate(m)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if work[r][col]), None)
        if pivot is None:
            raise ValueError("matrix is singular")
        if pivot != col:
            work[col], work[pivot] = work[pivot], work[col]
        prow = work[col]
        scale = inverse(prow[col])
        if scale != 1:
            prow = work[col] = [mul(v, scale) for v in prow]
        for r in range(n):
            factor = work[r][col]
            if r != col and factor:
                work[r] = [v ^ mul(factor, p) for v, p in zip(work[r], prow, strict=True)]
    return [row[n:] for row in work]


def vandermonde(rows: int, cols: int) -> Matrix:
    """V[r][c] = r^c, with r taken as a field element."""
    return [[power(r, c) for c in range(cols)] for r in range(rows)]


def encoding_matrix(data_shards: int, total_shards: int) -> Matrix:
    """The systematic matrix of klauspost/reedsolomon (default options).

    V * inverse(top square of V): the top `data_shards` rows become the
    identity, so data fragments are stored as-is, and any `data_shards` rows
    stay linearly independent.
    """
    if not 0 < data_shards <= total_shards <= 256:
        raise ValueError("need 0 < data_shards <= total_shards <= 256")
    v = vandermonde(total_shards, data_shards)
    return mat_mul(v, mat_inv(v[:data_shards]))


def cess_encoding_matrix() -> Matrix:
    """The 12x4 Reed-Solomon 4+8 matrix CESS uses; row 4 is [27, 28, 18, 20]."""
    return encoding_matrix(4, 12)
