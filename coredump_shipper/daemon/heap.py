"""Giving memory back to the system once the daemon is idle again.

After a burst of cores the process keeps its part buffers, read buffers and zstd contexts for the
next core, and glibc keeps the freed heap pages: the RSS stays at the burst's peak for ever, which on
a node with a 128Mi limit leaves no room for the next burst's growth. When the pipeline has been idle
for a while the kept buffers are let go and `malloc_trim(0)` returns free pages to the kernel. The
next core allocates again, which costs a few page faults, not memory.

`malloc_trim` gives back all of the main arena's free memory but only part of a thread arena's: in
glibc (2.36 here) it releases the whole free pages inside every arena's free chunks, yet shrinks the
free top of the main arena alone. A thread arena's top is returned only by a `free()` that leaves it
above M_TRIM_THRESHOLD, and glibc raises that threshold (up to 64 MiB) once a large block such as an
8 MiB part buffer is freed. glibc gives each thread that allocates an arena of its own, so the
threads that read, compress and hash a core (asyncio's `to_thread` workers, the `bytes` helper
pool) each kept 2-4.5 MiB of free top after a burst: ~8 MiB in all. `use_one_arena()` puts every
thread's allocations in the main arena, where `malloc_trim` reaches them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# mallopt's parameter number for the most arenas (glibc's malloc.h).
M_ARENA_MAX = -8


def _libc_function(name: str, argtypes: list[type], restype: type) -> Callable[..., int] | None:
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        function = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):  # not glibc (musl has neither malloc_trim nor M_ARENA_MAX)
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function  # type: ignore[no-any-return]


_trim = _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


def use_one_arena() -> bool:
    """Make threads allocate from the main arena; False where the C library cannot.

    Call it before any thread allocates: a thread keeps the arena it was first given. The threads
    then share one lock, which costs nothing measurable here: they allocate rarely (a zstd context
    per core, buffers kept between parts) and mostly under the GIL.
    """
    if _mallopt is None:
        return False
    return bool(_mallopt(M_ARENA_MAX, 1))


def give_back_free_pages() -> bool:
    """Return the heap's free pages to the kernel; False where the C library cannot."""
    if _trim is None:
        return False
    _trim(0)
    return True
