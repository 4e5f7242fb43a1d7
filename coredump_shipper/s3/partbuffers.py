"""The process's part buffers: at most `count`, allocated once and reused for every part.

Holding a buffer is what bounds memory: a part is read (and compressed) into a buffer taken from
here and the buffer comes back when the part's upload ends, so however many files and workers there
are, part data never takes more than count x part size. Reusing buffers also spares the kernel
from faulting in fresh pages for every part (about a third of a CPU-second per GiB).
"""

from __future__ import annotations

import asyncio


class PartBuffers:
    def __init__(self, count: int) -> None:
        self._slots = asyncio.Semaphore(count)
        self._free: list[bytearray] = []

    async def acquire(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes; waits while all are in use."""
        await self._slots.acquire()
        buffer = self._free.pop() if self._free else bytearray()
        if len(buffer) < size:
            buffer = bytearray(size)  # a file with larger parts: the smaller buffer goes
        return buffer

    def release(self, buffer: bytearray) -> None:
        self._free.append(buffer)
        self._slots.release()

    @property
    def kept_bytes(self) -> int:
        """Bytes of buffers kept for the next part (not held by any part)."""
        return sum(len(buffer) for buffer in self._free)

    def drop_spares(self) -> None:
        """Let go of the buffers no part holds: called when the daemon has been idle for a while,
        so that an idle node does not keep a storm's worth of part memory for ever."""
        self._free.clear()

    def discard(self) -> None:
        """Give the slot back but not the buffer (something may still write into it)."""
        self._slots.release()
