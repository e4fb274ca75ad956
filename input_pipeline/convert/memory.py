"""Allocator tuning for the converter process: chunk-sized arrays reuse freed heap memory."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Above the largest per-chunk array (a few MiB), below what would matter for peak memory.
HEAP_REUSE_BYTES = 64 << 20


def keep_freed_heap(limit: int = HEAP_REUSE_BYTES) -> bool:
    """Asks glibc to serve arrays up to ``limit`` bytes from the heap and to keep
    up to ``limit`` freed bytes; returns False where that is not available.

    Every parsed chunk allocates and frees arrays of a few MiB; by default glibc
    maps and unmaps such blocks each time, and the page faults of fresh pages
    cost as much CPU as the parsing itself.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
