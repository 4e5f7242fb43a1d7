"""Cutting a core into upload parts: sizing, hole-aware reading, hashing and streaming compression.

`PartSource.next_part()` is blocking and is called in a worker thread: reading, hashing and zstd all
release the GIL, so the event loop keeps serving other uploads and the HTTP endpoints meanwhile.
Memory stays bounded whatever the file size: one read buffer, the compressor's window and the part
being filled.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from collections import deque

import zstandard

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
READ_SIZE = 1 * MiB
_ZEROS = bytes(READ_SIZE)


def compress_bound(size: int) -> int:
    """zstd's worst case for `size` input bytes (ZSTD_COMPRESSBOUND) plus frame overhead."""
    margin = ((128 * 1024 - size) >> 11) if size < 128 * 1024 else 0
    return size + (size >> 8) + margin + 64


def choose_part_size(size: int, configured: int, compressed: bool, max_parts: int = MAX_PARTS) -> int:
    """The configured part size (rounded up to a whole MiB), raised when `max_parts` would not do.

    With compression the parts hold compressed bytes, whose total is at most compress_bound(size).
    """
    total = compress_bound(size) if compressed else size
    needed = math.ceil(total / max_parts)
    part = math.ceil(max(configured, MIN_PART, needed) / MiB) * MiB
    if part > MAX_PART:
        raise ValueError(f"a {size}-byte file cannot be uploaded in {max_parts} parts of at most 5 GiB")
    return part


class PartSource:
    """Produces the bytes to upload for one open file, part by part, and hashes the original.

    Without compression each part is read straight into its own buffer, which is then the request
    body itself (no copies); with compression 1 MiB reads feed zstd's chunker, which hands out
    parts of exactly `part_size` compressed bytes.
    """

    def __init__(
        self,
        fd: int,
        size: int,
        part_size: int,
        compression_level: int | None,
    ) -> None:
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self.sha256 = hashlib.sha256()
        self.bytes_out = 0
        self._offset = 0
        self._dropped = 0  # page cache dropped up to here
        self._ready: deque[bytes | bytearray] = deque()
        self._chunker: zstandard.ZstdCompressionChunker | None = None
        self._buffer = bytearray()
        self._finished = False
        if compression_level is not None:
            compressor = zstandard.ZstdCompressor(
                level=compression_level, write_content_size=True, write_checksum=True
            )
            self._chunker = compressor.chunker(size=size, chunk_size=part_size)
            self._buffer = bytearray(READ_SIZE)

    def next_part(self) -> bytes | bytearray | None:
        """The next part's bytes, or None when the file is exhausted. Blocking: call in a thread."""
        while not self._ready:
            if self._finished:
                return None
            self._feed()
        part = self._ready.popleft()
        self.bytes_out += len(part)
        return part

    def read_all(self) -> bytes | bytearray:
        """Every byte to upload as one body (for files of at most one part)."""
        parts = []
        while (part := self.next_part()) is not None:
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _feed(self) -> None:
        if self._offset >= self.size:
            self._finished = True
            if self._chunker is not None:
                self._ready.extend(self._chunker.finish())  # type: ignore[no-untyped-call]
            elif self.size == 0:
                self._ready.append(b"")
            return
        if self._chunker is None:
            part = bytearray(min(self.part_size, self.size - self._offset))
            for start in range(0, len(part), READ_SIZE):
                self._read_into(memoryview(part)[start : start + READ_SIZE])
            self.sha256.update(part)
            self._ready.append(part)
        else:
            view = memoryview(self._buffer)[: min(READ_SIZE, self.size - self._offset)]
            self._read_into(view)
            self.sha256.update(view)
            self._ready.extend(self._chunker.compress(view))
        self._drop_cache()

    def _read_into(self, view: memoryview) -> None:
        """Fill `view` from the current offset; a hole is zeros without reading it."""
        want = len(view)
        if self._in_hole(want):
            view[:] = _ZEROS[:want]
        else:
            got = os.preadv(self.fd, [view], self._offset)
            if got < want:
                # The file shrank under us; the final identity check will reject this upload.
                view[got:] = _ZEROS[: want - got]
        self._offset += want

    def _drop_cache(self) -> None:
        """Drop what was read from the page cache (a pod's memory cgroup is charged for it), once a part."""
        if self._offset - self._dropped >= self.part_size or self._offset >= self.size:
            os.posix_fadvise(self.fd, self._dropped, self._offset - self._dropped, os.POSIX_FADV_DONTNEED)
            self._dropped = self._offset

    def _in_hole(self, length: int) -> bool:
        """True if [offset, offset+length) lies wholly in a hole, so zeros need not be read."""
        try:
            data = os.lseek(self.fd, self._offset, os.SEEK_DATA)
        except OSError as error:
            # ENXIO: nothing but a hole up to the end; anything else (no SEEK_DATA here): just read.
            return error.errno == errno.ENXIO
        return data >= self._offset + length
