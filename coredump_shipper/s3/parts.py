"""Cutting a core into upload parts: sizing, hole-aware reading, hashing and streaming compression.

`PartSource.fill()` is blocking and is called in a worker thread: reading, hashing and zstd all
release the GIL, so the event loop keeps serving other uploads and the HTTP endpoints meanwhile.
A helper thread hashes each 1 MiB chunk while the calling thread reads the next one (`pread`) and
compresses: SHA-256 and zstd, the two most expensive passes over the bytes, run on two cores.
Each part's MD5 (what the store's ETag is compared with) is computed by the calling thread on the
bytes as they are put into the part, while they are in cache: no extra copy and no extra buffer.
Memory stays bounded whatever the file size: two read buffers, the compressor's window and the part
being filled.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import threading
from dataclasses import dataclass

import zstandard

from coredump_shipper.s3.background import OVERLAP, BackgroundSha256, Helper

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
READ_SIZE = 1 * MiB
_ZEROS = bytes(READ_SIZE)
# Below this size the helper thread's hand-offs cost more than the overlap saves (a storm of small
# cores is bound by CPU per core, not by one file's wall time): such files are hashed inline.
PARALLEL_FROM = 4 * READ_SIZE
# Read buffers kept for the next file: enough for two workers' two buffers each. Allocating 1 MiB
# per file instead leaves the heap fragmented after a storm of thousands of small cores.
KEEP_READ_BUFFERS = 4
_spare_read_buffers: list[bytearray] = []
# Compressors kept for the next file, per level: one per worker.
KEEP_COMPRESSORS = 2
_spare_compressors: dict[int, list[zstandard.ZstdCompressor]] = {}
_spare_lock = threading.Lock()


def _take_read_buffer() -> bytearray:
    with _spare_lock:
        return _spare_read_buffers.pop() if _spare_read_buffers else bytearray(READ_SIZE)


def _take_compressor(level: int) -> zstandard.ZstdCompressor:
    """A compressor for `level`: kept from an earlier file when there is one. Its context (a few
    MiB of zstd tables) is allocated once, not once per core, which would fragment the heap."""
    with _spare_lock:
        spares = _spare_compressors.get(level)
        if spares:
            return spares.pop()
    return zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)


def _give_compressor(level: int, compressor: zstandard.ZstdCompressor) -> None:
    with _spare_lock:
        spares = _spare_compressors.setdefault(level, [])
        if len(spares) < KEEP_COMPRESSORS:
            spares.append(compressor)


def kept_bytes() -> int:
    """Bytes of read buffers kept for the next file (compressors not counted: zstd owns them)."""
    with _spare_lock:
        return sum(len(buffer) for buffer in _spare_read_buffers)


def drop_spares() -> None:
    """Let go of the read buffers and compressors kept for the next file (see `heap`)."""
    with _spare_lock:
        _spare_read_buffers.clear()
        _spare_compressors.clear()


def _give_back(buffers: list[bytearray]) -> None:
    with _spare_lock:
        room = KEEP_READ_BUFFERS - len(_spare_read_buffers)
        _spare_read_buffers.extend(buffers[: max(room, 0)])


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


@dataclass(frozen=True)
class UploadFormat:
    """How the store turns a file into an object: its part size, its most parts, zstd or not.

    The store owns it (StoreSettings), so the parts that ship cores name only what they store.
    """

    part_size: int = 8 * MiB  # as configured; choose_part_size raises it for a large file
    max_parts: int = MAX_PARTS
    compression_level: int | None = None  # None: stored as is

    @property
    def content_type(self) -> str:
        return "application/zstd" if self.compression_level is not None else "application/octet-stream"

    def part_size_for(self, size: int) -> int:
        return choose_part_size(size, self.part_size, self.compression_level is not None, self.max_parts)


class PartSource:
    """Fills part buffers with what to upload for one open file, and hashes the original.

    Without compression a part is read straight into its buffer, which is then the request body
    itself (the helper hashes each chunk while the next is read); with compression 1 MiB chunks go
    through zstd and its output fills the buffer, the overflow carried to the next part, while the
    helper hashes the chunk being compressed. Every part but the last is exactly `part_size` bytes.
    """

    def __init__(self, fd: int, size: int, part_size: int, compression_level: int | None) -> None:
        self.fd = fd
        self.size = size
        self.part_size = part_size
        self._helper = Helper()
        self.sha256 = BackgroundSha256(self._helper)
        self.bytes_out = 0
        # The MD5 of each part filled so far, in order: the ETags the store should answer.
        self.digests: list[bytes] = []
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        self._offset = 0
        self._dropped = 0  # page cache dropped up to here
        self._compressor: zstandard.ZstdCompressionObj | None = None
        # Compression reads into these in turn (one for files hashed inline), taken when needed.
        self._read_buffers: list[bytearray] = []
        self._parallel = OVERLAP and size >= PARALLEL_FROM
        self._chunks = 0  # chunks read so far (compression): picks the read buffer
        self._carry = memoryview(b"")  # compressed bytes that did not fit the last part
        self._flushed = False
        self._empty_sent = False
        if compression_level is not None:
            self._level = compression_level
            self._zstd = _take_compressor(compression_level)
            self._compressor = self._zstd.compressobj(size=size)

    @property
    def finished(self) -> bool:
        if self._compressor is None:
            return self._offset >= self.size and (self.size > 0 or self._empty_sent)
        return self._flushed and not self._carry

    def fill(self, buffer: bytearray) -> memoryview | None:
        """Put the next part into `buffer`; its bytes, or None when nothing is left. Blocking."""
        if self.finished:
            return None
        target = memoryview(buffer)[: self.part_size]
        self._part_md5 = hashlib.md5(usedforsecurity=False)
        filled = self._fill_raw(target) if self._compressor is None else self._fill_compressed(target)
        self.bytes_out += filled
        self.digests.append(self._part_md5.digest())
        return target[:filled]

    @property
    def body_md5(self) -> str:
        """The hex MD5 of everything filled so far (read_all's body): one part's, or a new pass
        over the rare body that compression made longer than a part."""
        if len(self.digests) == 1:
            return self.digests[0].hex()
        raise ValueError("body_md5 is known for a body of one part only")

    def read_all(self, buffer: bytearray) -> memoryview | bytearray:
        """Every byte to upload as one body (files of at most one part): a view of `buffer` unless
        compression made it a little larger than a part."""
        first = self.fill(buffer)
        assert first is not None
        if self.finished:
            return first
        whole = bytearray(first)
        while (part := self.fill(buffer)) is not None:
            whole += part
        # One digest for the body actually sent.
        self.digests = [hashlib.md5(whole, usedforsecurity=False).digest()]
        return whole

    def _fill_raw(self, target: memoryview) -> int:
        self._empty_sent = True
        count = min(len(target), self.size - self._offset)
        for start in range(0, count, READ_SIZE):
            chunk = target[start : min(start + READ_SIZE, count)]
            self._read_into(chunk)
            if self._parallel:
                self.sha256.update_later(chunk)  # hashed while the next chunk is read
            else:
                self.sha256.update_now(chunk)
            self._part_md5.update(chunk)
        # Hashed before the part leaves: its buffer is sent and then reused.
        self._helper.wait()
        self._drop_cache()
        return count

    def _fill_compressed(self, target: memoryview) -> int:
        assert self._compressor is not None
        filled = 0
        while filled < len(target):
            if self._carry:
                take = min(len(self._carry), len(target) - filled)
                target[filled : filled + take] = self._carry[:take]
                self._part_md5.update(self._carry[:take])
                self._carry = self._carry[take:]
                filled += take
            elif self._offset < self.size:
                chunk = self._next_read_view()
                self._read_into(chunk)
                self._drop_cache()
                if self._parallel:
                    self.sha256.update_later(chunk)  # hashed by the helper while zstd compresses it
                else:
                    self.sha256.update_now(chunk)
                self._carry = memoryview(self._compressor.compress(chunk))
            elif not self._flushed:
                self._carry = memoryview(self._compressor.flush())
                self._flushed = True
                _give_compressor(self._level, self._zstd)  # its frame is finished
                self._helper.wait()  # done with the read buffers: the next file may have them
                _give_back(self._read_buffers)
                self._read_buffers = []
            else:
                break
        return filled

    def _next_read_view(self) -> memoryview:
        """Where the next chunk goes. With the helper, two buffers in turn: it may still be hashing
        the previous chunk (submitting this one waits for it), never the one being read now."""
        index = self._chunks % 2 if self._parallel else 0
        self._chunks += 1
        if index == len(self._read_buffers):
            self._read_buffers.append(_take_read_buffer())
        return memoryview(self._read_buffers[index])[: min(READ_SIZE, self.size - self._offset)]

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
