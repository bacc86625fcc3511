"""glibc malloc settings for the gateway process, which moves GiBs through MiB-sized
Python objects (request bodies, response pieces) from many threads.

- Arenas (M_ARENA_MAX): by default up to 8 per core, one per busy worker thread, each
  keeping the freed MiB-sized blocks of its thread resident. Measured during boto3
  downloads of 512 MiB: 484-535 MB peak RSS with the default, 418-433 MB with 2.
- Trimming (malloc_trim): free memory inside the heap stays resident until trimmed;
  ten concurrent 8 MiB UploadParts leave ~90 MB of it behind, which a multipart
  Complete then holds beside its 192 MiB of segment workspaces.

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both
    except (OSError, AttributeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Cap glibc's malloc arenas for threads started from now on."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)


def give_back_free_memory() -> None:
    """Return the free pages inside the malloc heaps to the kernel (a few ms)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(OSError):
            libc.malloc_trim(0)
