"""Request bodies sent without copies: each part's bytes exist once in memory.

botocore turns a `bytes` body into `io.BytesIO`, and aiohttp's payload for BytesIO copies it whole
(`getbuffer()` un-shares the bytes) before sending; the SigV4 payload hash reads it in 1 MiB copies.
For 8 MiB parts that is two or three extra copies per part in flight. `PartBody` is a seekable
file-like view whose reads return memoryview slices, and `PartPayload` (registered with aiohttp)
writes those slices straight to the socket, a bounded chunk at a time.
"""

from __future__ import annotations

import io
from typing import IO, Any, cast

from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter

# aiohttp drains the socket once this much is buffered, so memory for sending stays small.
WRITE_CHUNK = 256 * 1024


class PartBody(io.IOBase):
    """A read-only, seekable, zero-copy file over `data`. Make a new one for each attempt."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = min(max(base + offset, 0), len(self._view))
        return self._position

    def read(self, size: int | None = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        chunk = self._view[self._position : end]
        self._position = end
        return chunk

    def remaining(self) -> memoryview:
        return self._view[self._position :]


class PartPayload(payload.Payload):
    """aiohttp payload for PartBody: sends the view in chunks, never copying it."""

    def __init__(self, value: PartBody, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("content_type", "application/octet-stream")
        super().__init__(value, *args, **kwargs)
        self._view = value.remaining()
        self._size = len(self._view)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._view).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = self._view if content_length is None else self._view[:content_length]
        for start in range(0, len(view), WRITE_CHUNK):
            await writer.write(view[start : start + WRITE_CHUNK])


def zero_copy_body(data: bytes | bytearray | memoryview) -> IO[bytes]:
    """`data` as a request Body that botocore and aiohttp pass along without copying."""
    return cast(IO[bytes], PartBody(data))


payload.PAYLOAD_REGISTRY.register(PartPayload, PartBody, order=payload.Order.try_first)
