"""The CESS layout end to end in memory: segments, encryption, RS, hashes, FID."""

from __future__ import annotations

import hashlib
import os
from itertools import combinations

import pytest

from deossfs.errors import IntegrityError
from deossfs.processing.encryption import PLAINTEXT_CAPACITY, SegmentCipher
from deossfs.processing.hashes import is_hash, merkle_root
from deossfs.processing.layout import FRAGMENT_SIZE, MIB, SEGMENT_SIZE, ZERO_FRAGMENT_HASH
from deossfs.processing.pipeline import SegmentCodec, SegmentPlanner, SegmentWorkspace, bytes_reader


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def test_zero_fragment_hash() -> None:
    assert hashlib.sha256(bytes(FRAGMENT_SIZE)).hexdigest() == ZERO_FRAGMENT_HASH
    assert ZERO_FRAGMENT_HASH.startswith("2daeb1f3") and ZERO_FRAGMENT_HASH.endswith("3e74")


def test_merkle_root_rules() -> None:
    a, b, c = sha(b"a"), sha(b"b"), sha(b"c")
    assert merkle_root([a.hex()]) == sha(a + a).hex()
    assert merkle_root([a.hex(), b.hex()]) == sha(a + b).hex()
    # odd count: the last digest pairs with itself, then the next level
    ab, cc = sha(a + b), sha(c + c)
    assert merkle_root([a.hex(), b.hex(), c.hex()]) == sha(ab + cc).hex()
    with pytest.raises(ValueError):
        merkle_root([])


def test_is_hash() -> None:
    assert is_hash(ZERO_FRAGMENT_HASH)
    assert not is_hash(ZERO_FRAGMENT_HASH.upper())
    assert not is_hash("../" + ZERO_FRAGMENT_HASH[3:])
    assert not is_hash(ZERO_FRAGMENT_HASH + "0")


def reference_plain_layout(data: bytes) -> tuple[str, list[tuple[str, list[str]]]]:
    """An independent statement of the plain CESS layout: pad, slice, hash (parity via coder)."""
    from deossfs.processing.erasure import ErasureCoder

    coder = ErasureCoder()
    segments = []
    for start in range(0, max(len(data), 1), SEGMENT_SIZE):
        segment = data[start : start + SEGMENT_SIZE].ljust(SEGMENT_SIZE, b"\0")
        fragments = coder.encode_segment(bytearray(segment))
        segments.append((hashlib.sha256(segment).hexdigest(),
                         [hashlib.sha256(f).hexdigest() for f in fragments]))
    return merkle_root(s for s, _ in segments), segments


@pytest.fixture(scope="module")
def workspace() -> SegmentWorkspace:
    return SegmentWorkspace()


def roundtrip(codec: SegmentCodec, data: bytes, ws: SegmentWorkspace, drop: tuple[int, ...] = ()) -> bytes:
    plan = codec.plan(bytes_reader(data), len(data), ws)
    out = bytearray()
    reader_ws = SegmentWorkspace(with_parity=False)
    for seg in plan.segments:
        codec.rebuild(ws, bytes_reader(data), plan, seg.index)
        fragments = {i: bytes(f) for i, f in enumerate(ws.fragments) if i not in drop}
        for i, f in fragments.items():
            assert hashlib.sha256(f).hexdigest() == seg.fragment_hashes[i]
        codec.decode(fragments, reader_ws)
        assert hashlib.sha256(reader_ws.segment).hexdigest() == seg.hash
        out += codec.plaintext(reader_ws, seg.index, len(data))
    return bytes(out)


SIZES = [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 2 * SEGMENT_SIZE + 5 * MIB]


@pytest.mark.parametrize("size", SIZES)
def test_plain_roundtrip_and_layout(size: int, workspace: SegmentWorkspace) -> None:
    data = os.urandom(size)
    codec = SegmentCodec(None)
    plan = codec.plan(bytes_reader(data), size, workspace)
    fid, segments = reference_plain_layout(data)
    assert plan.fid == fid
    assert [(s.hash, list(s.fragment_hashes)) for s in plan.segments] == segments
    # lose 8 of 12 fragments (all data ones): still exact
    assert roundtrip(codec, data, workspace, drop=(0, 1, 2, 3, 5, 7, 9, 11)) == data


@pytest.mark.parametrize("size", [0, 1, PLAINTEXT_CAPACITY - 1, PLAINTEXT_CAPACITY,
                                  PLAINTEXT_CAPACITY + 1, SEGMENT_SIZE + 1])
def test_encrypted_roundtrip(size: int, workspace: SegmentWorkspace) -> None:
    data = os.urandom(size)
    codec = SegmentCodec(SegmentCipher(os.urandom(32)))
    assert roundtrip(codec, data, workspace, drop=(1, 4, 6)) == data
    assert codec.segment_count(size) == max(1, -(-size // PLAINTEXT_CAPACITY))


def test_encrypted_segments_hide_plaintext_and_fill_32mib(workspace: SegmentWorkspace) -> None:
    marker = b"PLAINTEXT-MARKER-1234567890" * 1000
    codec = SegmentCodec(SegmentCipher(os.urandom(32)))
    codec.load(workspace, bytes_reader(marker), 0, len(marker), os.urandom(32))
    codec.encode(workspace)
    assert len(workspace.segment) == SEGMENT_SIZE
    assert b"PLAINTEXT-MARKER" not in bytes(workspace.buffer)


def test_a_small_encrypted_file_leaves_its_padding_chunks_zero(workspace: SegmentWorkspace) -> None:
    """Chunks wholly past the plaintext stay zeros: three of four data fragments are the
    zero fragment (never sent) and the rest end in zeros (holes on the nodes)."""
    codec = SegmentCodec(SegmentCipher(os.urandom(32)))
    data = os.urandom(5000)
    codec.load(workspace, bytes_reader(data), 0, len(data), os.urandom(32))
    codec.encode(workspace)
    segment = bytes(workspace.segment)
    chunk0_end = 64 + MIB + 16  # the header, chunk 0 and its tag
    assert segment[chunk0_end:] == bytes(SEGMENT_SIZE - chunk0_end)
    assert segment[64:5064] != data and len(set(segment[64:1000])) > 200  # chunk 0 is ciphertext
    hashes = [hashlib.sha256(f).hexdigest() for f in workspace.fragments]
    assert hashes[1:4] == [ZERO_FRAGMENT_HASH] * 3
    assert all(bytes(f[2 * MIB :]) == bytes(FRAGMENT_SIZE - 2 * MIB) for f in workspace.fragments)
    assert roundtrip(codec, data, workspace, drop=(0, 5, 6)) == data


def test_tampered_segment_fails_authentication(workspace: SegmentWorkspace) -> None:
    cipher = SegmentCipher(os.urandom(32))
    codec = SegmentCodec(cipher)
    codec.load(workspace, bytes_reader(b"hello"), 0, 5, os.urandom(32))
    segment = bytearray(workspace.segment)
    segment[200] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(segment, 0)
    # a segment moved to another index is refused too (the index is authenticated)
    codec.load(workspace, bytes_reader(b"hello"), 0, 5, os.urandom(32))
    with pytest.raises(IntegrityError):
        cipher.decrypt(bytes(workspace.segment), 1)


@pytest.mark.parametrize("size", [1, 5000, MIB, MIB + 7, 20 * MIB + 3, PLAINTEXT_CAPACITY])
def test_decrypting_in_place_gives_what_decrypt_into_gives(size: int, workspace: SegmentWorkspace) -> None:
    """The gateway's reader decrypts in the segment's own buffer (each plaintext chunk
    lands before ciphertext not yet read); a tampered chunk anywhere is still refused."""
    cipher = SegmentCipher(os.urandom(32))
    codec = SegmentCodec(cipher)
    data = os.urandom(size)
    codec.load(workspace, bytes_reader(data), 0, size, os.urandom(32))
    segment = bytearray(workspace.segment)
    assert cipher.decrypt_in_place(segment, 0) == size
    assert bytes(segment[:size]) == data == cipher.decrypt(workspace.segment, 0)
    last_chunk = min(size - 1, PLAINTEXT_CAPACITY - 1) // MIB
    tampered = bytearray(workspace.segment)
    tampered[64 + last_chunk * (MIB + 16) + 3] ^= 1  # a byte of the last chunk with plaintext
    with pytest.raises(IntegrityError):
        cipher.decrypt_in_place(tampered, 0)


def test_same_salt_rebuilds_identical_segment(workspace: SegmentWorkspace) -> None:
    """Pass 2 must recreate exactly what pass 1 hashed."""
    data = os.urandom(3 * MIB)
    codec = SegmentCodec(SegmentCipher(os.urandom(32)))
    plan = codec.plan(bytes_reader(data), len(data), workspace)
    codec.rebuild(workspace, bytes_reader(data), plan, 0)
    assert [hashlib.sha256(f).hexdigest() for f in workspace.fragments] == list(plan.segments[0].fragment_hashes)


def test_salt_context_makes_a_retry_the_same_fid(workspace: SegmentWorkspace) -> None:
    """A retried upload (same context, same bytes) is the same FID; nothing else is."""
    data = bytearray(os.urandom(PLAINTEXT_CAPACITY + 5000))
    cipher = SegmentCipher(os.urandom(32))
    codec = SegmentCodec(cipher)

    def plan(context: bytes | None, content: bytes | bytearray = data):  # noqa: ANN202
        return codec.plan(bytes_reader(bytes(content)), len(content), workspace, salt_context=context)

    first, again = plan(b"ctx-1"), plan(b"ctx-1")
    assert first.fid == again.fid and first.segments == again.segments
    # hashing one segment while the next is encoded (a spare workspace) plans the same
    spare = SegmentWorkspace()
    overlapped = codec.plan(bytes_reader(bytes(data)), len(data), workspace, salt_context=b"ctx-1",
                            spare=spare)
    assert overlapped == first
    # a file that shrinks under the second segment fails as without the overlap
    with pytest.raises(OSError, match="shrank"):
        codec.plan(bytes_reader(bytes(data[: PLAINTEXT_CAPACITY + 10])), len(data), workspace,
                   salt_context=b"ctx-1", spare=spare)
    assert plan(b"ctx-2").fid != first.fid
    assert plan(None).fid != plan(None).fid  # no context: a fresh encryption each time
    # one changed byte in segment 1: segment 0 keeps its salt and hash, segment 1 does not
    data[-1] ^= 1
    changed = plan(b"ctx-1")
    assert changed.segments[0] == first.segments[0]
    assert changed.segments[1].salt != first.segments[1].salt
    assert changed.segments[1].hash != first.segments[1].hash
    # and the salt gives nothing away without the key: another key, another salt
    other = SegmentCodec(SegmentCipher(os.urandom(32)))
    assert other.plan(bytes_reader(bytes(data)), len(data), workspace,
                      salt_context=b"ctx-1").segments[0].salt != first.segments[0].salt


def test_salts_are_the_documented_derivations() -> None:
    """Salts decide FIDs that journals and storage orders outlive: both schemes are pinned
    here by an independent computation (docs/encryption.md), through the cryptography
    library's AEAD interface rather than the streaming one the code uses."""
    import hmac

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from deossfs.processing.encryption import LEGACY_SALT_CONTEXT

    master = bytes(range(32))
    plaintext = os.urandom(3 * MIB + 7)

    def derive(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)

    salt_key, gmac_key = derive(b"deossfs salt v1"), derive(b"deossfs salt hash v2")
    cipher = SegmentCipher(master)
    # now: HMAC(salt key, "salt v2" NUL | context | index | length | GMAC(plaintext))
    tag = AESGCM(gmac_key).encrypt(bytes(12), b"", plaintext)
    expected = hmac.new(salt_key, b"salt v2\0ctx" + (3).to_bytes(8, "big")
                        + len(plaintext).to_bytes(8, "big") + tag, "sha256").digest()
    assert cipher.salt_for(b"ctx", 3, memoryview(plaintext)) == expected
    # a context journaled before: HMAC(salt key, context | index | SHA-256(plaintext))
    legacy = hmac.new(salt_key, b"ctx" + (3).to_bytes(8, "big") + sha(plaintext), "sha256").digest()
    assert cipher.salt_for(LEGACY_SALT_CONTEXT + b"ctx", 3, plaintext) == legacy
    assert legacy != expected
    # one flipped bit anywhere, another salt
    flipped = bytearray(plaintext)
    flipped[len(flipped) // 2] ^= 0x10
    assert cipher.salt_for(b"ctx", 3, flipped) != expected
    # same bytes, one zero byte longer: GHASH pads to blocks, the length tells them apart
    assert cipher.salt_for(b"ctx", 3, plaintext + b"\0") != expected


def test_any_four_fragments_decode_a_full_segment() -> None:
    """The 495 choices at full size would take long; check a spread of them on a real segment."""
    data = os.urandom(SEGMENT_SIZE)
    codec = SegmentCodec(None)
    ws = SegmentWorkspace()
    plan = codec.plan(bytes_reader(data), len(data), ws)
    fragments = [bytes(f) for f in ws.fragments]
    out = SegmentWorkspace(with_parity=False)
    for choice in list(combinations(range(12), 4))[::41]:
        codec.decode({i: fragments[i] for i in choice}, out)
        assert hashlib.sha256(out.segment).hexdigest() == plan.segments[0].hash


@pytest.mark.parametrize("encrypt", [True, False])
@pytest.mark.parametrize("size", [1, 100, 4095, MIB - 1, MIB + 1, 3 * MIB + 5, FRAGMENT_SIZE - 1,
                                  FRAGMENT_SIZE + 1, 20 * MIB, PLAINTEXT_CAPACITY])
def test_a_small_segment_is_encoded_and_hashed_as_a_full_one(size: int, encrypt: bool) -> None:
    """Encoding only up to the stored extent gives byte-identical fragments and hashes to
    encoding all 8 MiB of every fragment, also in a workspace full of an earlier
    segment's bytes; and a fresh workspace stays almost unallocated for a small one."""
    codec = SegmentCodec(SegmentCipher(os.urandom(32)) if encrypt else None)
    size = min(size, codec.capacity)
    data = os.urandom(size)
    salt = os.urandom(32)
    dirty = SegmentWorkspace()
    dirty.buffer[:] = os.urandom(len(dirty.buffer))  # a big segment's leftovers
    codec.load(dirty, bytes_reader(data), 0, size, salt)
    extent = codec.stored_extent(size)
    codec.encode(dirty, extent)
    hashes = codec.hash_segment(dirty, extent)

    full = SegmentWorkspace()
    codec.load(full, bytes_reader(data), 0, size, salt)
    codec.coder.encode(full.segment, full.parity)  # every byte of every fragment
    expected = (hashlib.sha256(full.segment).hexdigest(),
                tuple(hashlib.sha256(f).hexdigest() for f in full.fragments))
    assert bytes(dirty.buffer) == bytes(full.buffer)
    assert hashes == expected


def test_a_small_encrypted_segment_leaves_a_fresh_workspace_unallocated() -> None:
    codec = SegmentCodec(SegmentCipher(os.urandom(32)))
    ws = SegmentWorkspace()
    data = bytes_reader(os.urandom(100_000))
    before = resident_anon_mib()
    SegmentPlanner(codec, ws, b"context").add(data, 100_000)
    # chunk 0 (1 MiB of ciphertext) and the first MiB of each of the 8 parity fragments;
    # padding is only read (untouched pages read as the shared zero page, not counted)
    grown = resident_anon_mib() - before
    assert grown < 16, grown  # of the workspace's 96 MiB


def resident_anon_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


def test_crc32_through_isal_is_zlibs() -> None:
    """S3's x-amz-checksum-crc32 is checked with ISA-L's CRC-32: the same values as zlib,
    running value, odd lengths and addresses, read-only and empty buffers included."""
    import zlib

    from deossfs.processing import checksums

    assert checksums._CRC32 is not None, "ISA-L's crc32_gzip_refl did not load"
    data = os.urandom(3 * MIB + 77)
    view = memoryview(data)
    for start, end in ((0, len(data)), (1, 4097), (13, 13), (5, 70), (MIB - 3, 3 * MIB + 1)):
        assert checksums.crc32(view[start:end]) == zlib.crc32(data[start:end])
    running = 0
    for offset in range(0, len(data), 65_537):
        running = checksums.crc32(view[offset : offset + 65_537], running)
    assert running == zlib.crc32(data)
    assert checksums.crc32(bytearray(b"123456789")) == 0xCBF43926  # the CRC-32 check value
    assert checksums.crc32(b"", 1234) == 1234
