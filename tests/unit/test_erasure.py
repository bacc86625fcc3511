"""The RS 4+8 coder: CESS's matrix, byte-exact parity, every decode path."""

from __future__ import annotations

import hashlib
import itertools
import threading

import numpy as np
import numpy.typing as npt
import pytest

from deossfs.errors import DataUnavailable, InvalidInput, PermanentError, cli_message
from deossfs.processing import erasure, gf256, layout
from deossfs.processing.erasure import ErasureCoder, get_coder

SMALL = 4096
TINY = 1024


# ---- an independent reference: GF(2^8)/0x11D in numpy, not using gf256.py ----


def _reference_mul_table() -> npt.NDArray[np.uint8]:
    """mul[a, b] for all bytes, by carry-less multiply and reduction (no log tables)."""
    a = np.arange(256, dtype=np.uint16)[:, None]
    b = np.arange(256, dtype=np.uint16)[None, :]
    product = np.zeros((256, 256), dtype=np.uint16)
    for bit in range(8):
        product ^= np.where((b >> bit) & 1, a << bit, 0).astype(np.uint16)
    for bit in range(14, 7, -1):
        product ^= np.where((product >> bit) & 1, 0x11D << (bit - 8), 0).astype(np.uint16)
    return product.astype(np.uint8)


MUL = _reference_mul_table()


def reference_parity(matrix: list[list[int]], data: bytes, fragment_size: int) -> list[bytes]:
    shards = np.frombuffer(data, dtype=np.uint8).reshape(layout.DATA_SHARDS, fragment_size)
    out = []
    for row in matrix[layout.DATA_SHARDS :]:
        acc = np.zeros(fragment_size, dtype=np.uint8)
        for coef, shard in zip(row, shards, strict=True):
            acc ^= MUL[coef][shard]
        out.append(acc.tobytes())
    return out


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def encode_all(coder: ErasureCoder, data: bytes) -> list[bytes]:
    return [bytes(f) for f in coder.encode_segment(bytearray(data))]


# ---- the matrix ----------------------------------------------------------------


def test_reference_table_sanity() -> None:
    # x * x^7 = x^8 = 0x1D under 0x11D; 1 is the identity; 0 annihilates.
    assert MUL[2, 0x80] == 0x1D
    assert (MUL[1] == np.arange(256)).all()
    assert not MUL[0].any()


def test_gf256_agrees_with_reference() -> None:
    for a in range(256):
        assert [gf256.mul(a, b) for b in range(256)] == MUL[a].tolist()
    for a in range(1, 256):
        assert gf256.mul(a, gf256.inverse(a)) == 1


def test_matrix_is_cess() -> None:
    m = gf256.cess_encoding_matrix()
    assert len(m) == 12 and all(len(row) == 4 for row in m)
    assert m[:4] == gf256.identity(4)
    assert m[4] == [27, 28, 18, 20]


def test_mat_inv_singular() -> None:
    with pytest.raises(ValueError):
        gf256.mat_inv([[1, 2], [1, 2]])
    m = gf256.vandermonde(4, 4)
    assert gf256.mat_mul(m, gf256.mat_inv(m)) == gf256.identity(4)


# ---- encoding ------------------------------------------------------------------


def test_encode_matches_reference_small() -> None:
    coder = ErasureCoder(SMALL)
    matrix = gf256.cess_encoding_matrix()
    for seed in range(3):
        data = random_bytes(4 * SMALL, seed)
        parity = [bytearray(SMALL) for _ in range(8)]
        coder.encode(data, parity)
        assert [bytes(p) for p in parity] == reference_parity(matrix, data, SMALL)


@pytest.mark.parametrize("size", [1, 15, 33, 100])
def test_encode_odd_sizes(size: int) -> None:
    coder = ErasureCoder(size)
    data = random_bytes(4 * size, size)
    parity = [bytearray(size) for _ in range(8)]
    coder.encode(data, parity)
    assert [bytes(p) for p in parity] == reference_parity(gf256.cess_encoding_matrix(), data, size)


@pytest.mark.parametrize("extent", [None, 1024 * 1024 + 64, 2 * 1024 * 1024])
def test_encode_in_columns_with_a_partial_last_one(extent: int | None) -> None:
    """Fragments encoded 1 MiB column by column: one of 2 MiB + 4,160 bytes ends on a
    partial column; with `extent` the bytes past it are left alone."""
    size = 2 * 1024 * 1024 + 4160
    coder = ErasureCoder(size)
    data = bytearray(random_bytes(4 * size, 7))
    if extent is not None:
        for i in range(4):
            data[i * size + extent : (i + 1) * size] = bytes(size - extent)
    parity = [bytearray(b"\xee" * size) for _ in range(8)]
    coder.encode(data, parity, extent=extent)
    expected = reference_parity(gf256.cess_encoding_matrix(), bytes(data), size)
    computed = size if extent is None else extent
    for i in range(8):
        assert parity[i][:computed] == expected[i][:computed], f"parity fragment {4 + i}"
        assert parity[i][computed:] == b"\xee" * (size - computed)  # untouched


def test_encode_matches_reference_full_segment() -> None:
    fs = layout.FRAGMENT_SIZE
    coder = get_coder()
    data = random_bytes(layout.SEGMENT_SIZE, 42)
    # numpy buffers as outputs, one 2-D array: each row is a parity fragment.
    parity = np.empty((8, fs), dtype=np.uint8)
    coder.encode(memoryview(data), list(parity))
    expected = reference_parity(gf256.cess_encoding_matrix(), data, fs)
    for i in range(8):
        assert parity[i].tobytes() == expected[i], f"parity fragment {4 + i}"


def test_encode_segment_layout() -> None:
    coder = ErasureCoder(SMALL)
    data = bytearray(random_bytes(4 * SMALL, 7))
    frags = coder.encode_segment(data)
    assert len(frags) == 12
    for i in range(4):
        assert bytes(frags[i]) == bytes(data[i * SMALL : (i + 1) * SMALL])
    assert all(len(f) == SMALL for f in frags)


def test_all_zero_segment() -> None:
    coder = get_coder()
    frags = coder.encode_segment(bytearray(layout.SEGMENT_SIZE))
    for frag in frags[4:]:
        assert not any(frag)
    assert hashlib.sha256(frags[4]).hexdigest() == layout.ZERO_FRAGMENT_HASH
    assert hashlib.sha256(frags[11]).hexdigest() == layout.ZERO_FRAGMENT_HASH


def test_encode_rejects_bad_buffers() -> None:
    coder = ErasureCoder(16)
    with pytest.raises(InvalidInput):
        coder.encode(bytes(63), [bytearray(16) for _ in range(8)])
    with pytest.raises(InvalidInput):
        coder.encode(bytes(64), [bytearray(16) for _ in range(7)])
    with pytest.raises(InvalidInput):
        coder.encode(bytes(64), [bytearray(16) for _ in range(7)] + [bytes(16)])
    with pytest.raises(InvalidInput):
        ErasureCoder(0)


# ---- decoding ------------------------------------------------------------------


def test_every_choice_of_four_decodes() -> None:
    coder = ErasureCoder(TINY)
    data = random_bytes(4 * TINY, 1)
    frags = encode_all(coder, data)
    combos = list(itertools.combinations(range(12), 4))
    assert len(combos) == 495
    out = bytearray(4 * TINY)
    for combo in combos:
        out[:] = bytes(4 * TINY)
        coder.decode({i: frags[i] for i in combo}, out)
        assert out == data, combo


def test_decode_with_more_than_four() -> None:
    coder = ErasureCoder(TINY)
    data = random_bytes(4 * TINY, 2)
    frags = encode_all(coder, data)
    out = np.zeros(4 * TINY, dtype=np.uint8)
    available: dict[int, bytes | None] = {i: frags[i] for i in (1, 3, 5, 8, 9, 11)}
    available[0] = None  # None counts as missing
    coder.decode(available, out)
    assert out.tobytes() == data


def test_decode_full_segment_from_parity_only() -> None:
    coder = get_coder()
    data = random_bytes(layout.SEGMENT_SIZE, 3)
    frags = coder.encode_segment(bytearray(data))
    out = bytearray(layout.SEGMENT_SIZE)
    coder.decode({i: frags[i] for i in (4, 7, 9, 11)}, out)
    assert out == data


def test_reconstruct_each_fragment() -> None:
    coder = ErasureCoder(TINY)
    data = random_bytes(4 * TINY, 4)
    frags = encode_all(coder, data)
    for index in range(12):
        # from all the others (ignoring the target even if given)...
        assert coder.reconstruct_fragment(dict(enumerate(frags)), index) == frags[index]
        # ...and from the last four others only, mostly parity.
        others = [i for i in range(12) if i != index][-4:]
        rebuilt = coder.reconstruct_fragment({i: frags[i] for i in others}, index)
        assert rebuilt == frags[index], index


def test_too_few_fragments() -> None:
    coder = ErasureCoder(TINY)
    frags = encode_all(coder, random_bytes(4 * TINY, 5))
    with pytest.raises(DataUnavailable):
        coder.decode({i: frags[i] for i in (0, 5, 11)}, bytearray(4 * TINY))
    with pytest.raises(DataUnavailable):
        coder.decode({}, bytearray(4 * TINY))
    with pytest.raises(DataUnavailable):
        coder.decode({0: frags[0], 1: frags[1], 2: frags[2], 3: None}, bytearray(4 * TINY))
    with pytest.raises(DataUnavailable):
        coder.reconstruct_fragment({i: frags[i] for i in (0, 1, 2, 3)}, 3)


def test_decode_rejects_bad_input() -> None:
    coder = ErasureCoder(TINY)
    frags = encode_all(coder, random_bytes(4 * TINY, 6))
    with pytest.raises(InvalidInput):
        coder.decode({0: frags[0], 1: frags[1], 2: frags[2], 12: frags[3]}, bytearray(4 * TINY))
    with pytest.raises(InvalidInput):
        coder.decode({i: frags[i] for i in range(4)}, bytes(4 * TINY))
    with pytest.raises(InvalidInput):
        coder.decode({0: frags[0][:-1], 1: frags[1], 2: frags[2], 3: frags[3]}, bytearray(4 * TINY))


def test_missing_library_is_a_clear_permanent_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(erasure, "_lib", None)
    monkeypatch.setattr(erasure.ctypes, "CDLL", no_library)
    with pytest.raises(erasure.ErasureLibraryMissing) as info:
        ErasureCoder(16)
    assert isinstance(info.value, PermanentError)
    assert "apt-get install libisal2" in cli_message(info.value)


# ---- threads -------------------------------------------------------------------


def test_concurrent_encode_and_decode() -> None:
    fs = 1024 * 1024
    coder = get_coder(fs)
    matrix = gf256.cess_encoding_matrix()
    inputs = [random_bytes(4 * fs, 100 + t) for t in range(2)]
    expected = [reference_parity(matrix, d, fs) for d in inputs]
    failures: list[str] = []
    barrier = threading.Barrier(2)

    def work(t: int) -> None:
        data = inputs[t]
        parity = [bytearray(fs) for _ in range(8)]
        out = bytearray(4 * fs)
        barrier.wait()
        for rnd in range(10):
            coder.encode(data, parity)
            if [bytes(p) for p in parity] != expected[t]:
                failures.append(f"thread {t} round {rnd}: parity")
            coder.decode({4 + (i + rnd) % 8: parity[(i + rnd) % 8] for i in range(4)}, out)
            if out != data:
                failures.append(f"thread {t} round {rnd}: decode")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures
