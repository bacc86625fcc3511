"""Segment encryption: AES-256-GCM under a fresh key per segment.

Why not AES-GCM-SIV: it runs at 240-275 MB/s here, AES-GCM at about 2,000 MB/s
(the reference machine in docs/PERFORMANCE.md); encryption would cost as much as a third of the
mandatory SHA-256 work. Why GCM is safe here: every segment version gets a fresh
random 32-byte salt and its own key HKDF(master, salt); within that key nonces
are the chunk counter 0..31, so a (key, nonce) pair is never used twice unless two
random 256-bit salts collide. See docs/encryption.md.

An encrypted segment is exactly SEGMENT_SIZE bytes:

    header (64 B, authenticated as AAD of every chunk)
        magic "DSF1" | version u8 | 3 reserved | segment index u64 |
        plaintext length u32 | 4 reserved | salt (32) | 8 reserved
    32 chunks: ciphertext || 16-byte tag; chunks 0..30 carry 1 MiB of
    plaintext, chunk 31 carries the rest of PLAINTEXT_CAPACITY.

Bytes past the plaintext length within a chunk are zeros before encryption.
Chunks past the plaintext length (pure padding) are left as zeros, neither
encrypted nor read back: the length is in the authenticated header (and the file
size on the chain), so they hide nothing, and zeros cost no cipher work, leave
the small file's fragments mostly zero (holes on the nodes' disks) and all-zero
data fragments are never sent at all. The segment index in the AAD stops
segments being swapped within a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import mmap
import os
import struct
import threading
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import IntegrityError, InvalidInput
from .layout import MIB, SEGMENT_SIZE, ensure_zero

MAGIC = b"DSF1"
VERSION = 1
HEADER_SIZE = 64
TAG_SIZE = 16
CHUNKS = 32
CHUNK_PLAIN = MIB
#: plaintext bytes an encrypted segment carries
PLAINTEXT_CAPACITY = SEGMENT_SIZE - HEADER_SIZE - CHUNKS * TAG_SIZE
_LAST_CHUNK_PLAIN = PLAINTEXT_CAPACITY - (CHUNKS - 1) * CHUNK_PLAIN
_HEADER = struct.Struct(">4sB3xQI4x32s8x")
assert _HEADER.size == HEADER_SIZE
#: cryptography's update_into wants this much room past the data
_SLACK = 15
#: size of a buffer decrypt_into can fill
DECRYPT_BUFFER_SIZE = PLAINTEXT_CAPACITY + _SLACK


def stored_extent(length: int) -> int:
    """How many bytes from the start of an encrypted segment holding `length` plaintext
    bytes can be non-zero: the header and every chunk up to the last with plaintext
    (chunk 0 always); pure-padding chunks are zeros."""
    last = min(max(length - 1, 0) // CHUNK_PLAIN, CHUNKS - 1)
    _, c_off, c_len = _CHUNKS[last]
    return c_off + c_len + TAG_SIZE


def _chunk_layout() -> list[tuple[int, int, int]]:
    """(plaintext offset, ciphertext offset, plaintext length) of each chunk."""
    layout = []
    plain_off, cipher_off = 0, HEADER_SIZE
    for index in range(CHUNKS):
        length = CHUNK_PLAIN if index < CHUNKS - 1 else _LAST_CHUNK_PLAIN
        layout.append((plain_off, cipher_off, length))
        plain_off += length
        cipher_off += length + TAG_SIZE
    assert cipher_off == SEGMENT_SIZE
    return layout


_CHUNKS = _chunk_layout()
_ZEROS = bytes(CHUNK_PLAIN)


#: prefixes a salt context kept from before salts hashed the plaintext with GMAC
#: (SegmentCipher.salt_for): such an upload keeps the FID its first attempt declared
LEGACY_SALT_CONTEXT = b"deossfs salt v1\0"

_bounce = threading.local()


def _bounce_buffer() -> bytearray:
    """This thread's buffer for one decrypted chunk (update_into wants slack past it)."""
    buffer = getattr(_bounce, "buffer", None)
    if buffer is None:
        buffer = _bounce.buffer = bytearray(CHUNK_PLAIN + _SLACK)
    return buffer


def _nonce(chunk: int) -> bytes:
    return b"\0\0\0\0" + chunk.to_bytes(8, "big")


class SegmentCipher:
    """Encrypts and decrypts whole segments under one master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise InvalidInput("the encryption key must be 32 bytes")
        self._master = master_key
        self._salt_key: bytes | None = None
        self._gmac_key: algorithms.AES | None = None
        #: names the key without revealing it: decrypted segments kept in memory are
        #: filed under it, so a reader with another key never gets them
        self.key_id = hashlib.sha256(b"deossfs key id v1\0" + master_key).digest()[:16]

    def _segment_key(self, salt: bytes) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=salt, info=b"deossfs segment v1"
        ).derive(self._master)

    @staticmethod
    def new_salt() -> bytes:
        return os.urandom(32)

    def salt_for(self, context: bytes, index: int, plaintext: bytes | bytearray | memoryview) -> bytes:
        """A salt that repeats only for the same plaintext of the same segment of one upload.

        HMAC over (context, index, a keyed hash of the plaintext) under a key derived from
        the master key: a retried upload (same `context`, kept in the mount's journal) gets
        the same ciphertext and so the same FID, instead of a new storage order that would
        lock territory space again. A key is still used for one plaintext only (different
        bytes give a different salt), and without the master key the salt reveals nothing
        about the plaintext (no guess can be confirmed against it).

        The plaintext's hash is GMAC (GHASH under a secret key, as AES-GCM-SIV derives its
        IV from POLYVAL): two different segments collide with probability below 2^-107,
        it is never revealed (only the HMAC over it is), and it runs at ~10 GB/s where
        SHA-256 runs at 1-2. A context carrying LEGACY_SALT_CONTEXT (a mount's journal
        from before, whose upload may already have a storage order) keeps SHA-256."""
        if self._salt_key is None:
            self._salt_key = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"deossfs salt v1"
            ).derive(self._master)
        if context.startswith(LEGACY_SALT_CONTEXT):
            mac = hmac.new(self._salt_key, context[len(LEGACY_SALT_CONTEXT):], "sha256")
            mac.update(index.to_bytes(8, "big"))
            mac.update(hashlib.sha256(plaintext).digest())
            return mac.digest()
        if self._gmac_key is None:
            self._gmac_key = algorithms.AES(HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=b"deossfs salt hash v2"
            ).derive(self._master))
        # the key is used for this hash only, so one fixed nonce serves: the tag is
        # GHASH(plaintext) masked by one constant, and never leaves this function
        gmac = Cipher(self._gmac_key, modes.GCM(bytes(12))).encryptor()
        gmac.authenticate_additional_data(plaintext)
        gmac.finalize()
        mac = hmac.new(self._salt_key, b"salt v2\0" + context, "sha256")
        mac.update(index.to_bytes(8, "big"))
        mac.update(memoryview(plaintext).nbytes.to_bytes(8, "big"))
        mac.update(gmac.tag)
        return mac.digest()

    def encrypt_into(
        self,
        plaintext: bytes | bytearray | memoryview,
        out: bytearray | memoryview,
        index: int,
        salt: bytes,
    ) -> None:
        """Encrypt up to PLAINTEXT_CAPACITY bytes into the SEGMENT_SIZE buffer `out`."""
        plain = memoryview(plaintext).cast("B")
        length = len(plain)
        if length > PLAINTEXT_CAPACITY:
            raise InvalidInput("plaintext larger than a segment's capacity")
        target = memoryview(out).cast("B")
        header = _HEADER.pack(MAGIC, VERSION, index, length, salt)
        target[:HEADER_SIZE] = header
        key = algorithms.AES(self._segment_key(salt))
        for chunk, (p_off, c_off, c_len) in enumerate(_CHUNKS):
            if p_off >= length and chunk:  # pure padding (chunk 0 always authenticates the header)
                # zeros; written only where the buffer holds something else (a fresh
                # workspace's untouched pages then stay unallocated: small files)
                ensure_zero(target[c_off : c_off + c_len + TAG_SIZE])
                continue
            encryptor = Cipher(key, modes.GCM(_nonce(chunk))).encryptor()
            encryptor.authenticate_additional_data(header)
            window = target[c_off : c_off + c_len + _SLACK]
            have = max(0, min(c_len, length - p_off))
            written = 0
            if have:
                written += encryptor.update_into(plain[p_off : p_off + have], window)
            if have < c_len:
                written += encryptor.update_into(_ZEROS[: c_len - have], window[written:])
            encryptor.finalize()
            target[c_off + c_len : c_off + c_len + TAG_SIZE] = encryptor.tag

    def decrypt_into(
        self, segment: bytes | bytearray | memoryview, index: int, out: bytearray | memoryview | mmap.mmap
    ) -> int:
        """Authenticate and decrypt a segment into `out`; returns the plaintext length.

        `out` must hold DECRYPT_BUFFER_SIZE bytes (the cipher needs a little slack).
        """
        source = memoryview(segment).cast("B")
        view = memoryview(out).cast("B")
        if len(view) < DECRYPT_BUFFER_SIZE:
            raise InvalidInput("decryption buffer too small")
        return self._decrypt(source, index, lambda _chunk, p_off, _len: view[p_off:], None)

    def decrypt_in_place(self, segment: bytearray | memoryview | mmap.mmap, index: int) -> int:
        """decrypt_into with the segment's own buffer as the output: each chunk is
        decrypted into a small bounce buffer and copied down to its plaintext offset,
        which lies before the chunks still to be read. Saves a 32 MiB buffer per segment
        held (a gateway's shared reader); on a failure the buffer holds neither."""
        view = memoryview(segment).cast("B")
        bounce = _bounce_buffer()
        # copied with the GIL released: a gateway's event loop sends meanwhile
        target = ctypes.addressof(ctypes.c_char.from_buffer(view))
        source = ctypes.addressof(ctypes.c_char.from_buffer(bounce))

        def land(_chunk: int, p_off: int, c_len: int) -> None:
            if p_off + c_len > len(view) or c_len > len(bounce):
                raise IntegrityError("a chunk does not fit its segment")
            ctypes.memmove(target + p_off, source, c_len)

        return self._decrypt(view, index, lambda _chunk, _p_off, _len: bounce, land)

    def _decrypt(self, source: memoryview, index: int,
                 target: Callable[[int, int, int], memoryview | bytearray],
                 land: Callable[[int, int, int], None] | None) -> int:
        """Check the header, then authenticate and decrypt each chunk holding plaintext
        into `target(chunk, plaintext offset, length)`, then `land` it."""
        if len(source) != SEGMENT_SIZE:
            raise IntegrityError("an encrypted segment must be 32 MiB")
        magic, version, stored_index, length, salt = _HEADER.unpack(source[:HEADER_SIZE])
        if magic != MAGIC or version != VERSION:
            raise IntegrityError("not a deossfs-encrypted segment")
        if stored_index != index or length > PLAINTEXT_CAPACITY:
            raise IntegrityError(f"segment {index} carries a wrong header")
        header = bytes(source[:HEADER_SIZE])
        key = algorithms.AES(self._segment_key(salt))
        try:
            for chunk, (p_off, c_off, c_len) in enumerate(_CHUNKS):
                if p_off >= length and chunk:
                    break  # chunks of pure padding carry no plaintext (zeros, see above)
                tag = bytes(source[c_off + c_len : c_off + c_len + TAG_SIZE])
                decryptor = Cipher(key, modes.GCM(_nonce(chunk), tag)).decryptor()
                decryptor.authenticate_additional_data(header)
                decryptor.update_into(source[c_off : c_off + c_len], target(chunk, p_off, c_len))
                decryptor.finalize()
                if land is not None:
                    land(chunk, p_off, c_len)
        except InvalidTag:
            raise IntegrityError(f"segment {index} failed authentication") from None
        return length

    def decrypt(self, segment: bytes | bytearray | memoryview, index: int) -> bytes:
        """Convenience form of decrypt_into that allocates."""
        out = bytearray(DECRYPT_BUFFER_SIZE)
        length = self.decrypt_into(segment, index, out)
        return bytes(memoryview(out)[:length])


def looks_encrypted(segment: bytes | bytearray | memoryview) -> bool:
    """Cheap check of the header magic (authentication decides for real)."""
    return bytes(memoryview(segment)[:5]) == MAGIC + bytes([VERSION])
