"""Giving memory back to the system once the daemon is idle again.

After a burst of cores the process keeps its part buffers, read buffers and zstd contexts for the
next core, and glibc keeps the freed heap pages: the RSS stays at the burst's peak for ever, which on
a node with a 128Mi limit leaves no room for the next burst's growth. When the pipeline has been idle
for a while the kept buffers are let go and `malloc_trim(0)` returns free pages (of every arena, so
also those of the helper threads) to the kernel. The next core allocates again, which costs a few
page faults, not memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to give back
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _malloc_trim()


def give_back_free_pages() -> bool:
    """Return the heap's free pages to the kernel; False where the C library cannot."""
    if _trim is None:
        return False
    _trim(0)
    return True
