"""Give freed memory back to the system, so a server's resident memory follows its work.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB); after that,
photos' pixels come from the heaps of whichever thread asked and stay resident there when freed,
where another thread cannot reuse them. Two measures, both no-ops outside glibc:

- a fixed threshold of 8 MiB keeps decoded photos and coefficient buffers in mappings of their
  own, returned on free, while inference's smaller tensors stay on the heap (a threshold of 128 KiB
  returned more but made beam-10 batches 1.47x slower; 8 MiB measured no slower);
- `trim` after each batch returns the heaps' free pages, as `malloc_trim(0)` does.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 8 * 1024 * 1024


@functools.cache
def _glibc():
    name = ctypes.util.find_library("c")
    if not name or not name.startswith("libc.so"):
        return None
    try:
        library = ctypes.CDLL(name)
        library.mallopt, library.malloc_trim  # noqa: B018 (a C library without them is not glibc)
    except (OSError, AttributeError):
        return None
    return library


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold; True if it was set."""
    library = _glibc()
    return bool(library and library.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Return the free pages of every heap to the system."""
    library = _glibc()
    if library:
        library.malloc_trim(0)
