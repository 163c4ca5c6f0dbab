"""glibc's allocator, tuned for a long-lived daemon whose big objects come and go.

Python keeps small objects in its own arenas; anything over 512 bytes (the dicts
and lists of 16,000 reals, map batch buffers of several MB) comes from malloc.
Three glibc habits keep such memory resident after it is freed: every thread
that allocates gets an arena of its own; the size from which a block gets a
mapping of its own (unmapped when freed) rises to that of any such block freed,
so after the first big config they all come from the heap; and freed blocks
inside the heap are not given back unless the top of the heap is free.
`limit_arenas()` and `big_blocks_apart()` (at start, before the threads) and
`trim()` (after each reload) undo them; elsewhere than glibc they do nothing.
"""

from __future__ import annotations

import ctypes
from typing import Optional

M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3
BIG_BLOCK = 128 * 1024  # glibc's default threshold, kept fixed
ARENAS = 2  # the main thread's, and one for the others (they allocate little)

_libc: Optional[ctypes.CDLL] = None


def _lib() -> Optional[ctypes.CDLL]:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None)
        except OSError:
            return None
    return _libc if hasattr(_libc, "malloc_trim") else None


def limit_arenas() -> None:
    lib = _lib()
    if lib is not None:
        lib.mallopt(M_ARENA_MAX, ARENAS)


def big_blocks_apart() -> None:
    """Blocks of BIG_BLOCK or more in mappings of their own, unmapped when freed."""
    lib = _lib()
    if lib is not None:
        lib.mallopt(M_MMAP_THRESHOLD, BIG_BLOCK)


def trim() -> None:
    """Hand the free pages of every arena back to the kernel (madvise)."""
    lib = _lib()
    if lib is not None:
        lib.malloc_trim(0)
