"""`fetch`: download one shipped core, prove it is intact, say how to open it.

The core is decompressed and hashed while it streams to a temporary file beside the target, which is
renamed into place only when its size and sha256 match what the shipper recorded at upload; otherwise
nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import shlex
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, cast

import zstandard

from coredump_shipper.browse.coreentry import program_name, program_path
from coredump_shipper.browse.progress import Progress
from coredump_shipper.browse.safetext import display
from coredump_shipper.bucket.manifest import Manifest, core_key, manifest_key
from coredump_shipper.s3.reads import S3_FAILURES, BrowseError, CoreNotFound, read_manifest, read_s3
from coredump_shipper.s3.retry import describe

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any
    StreamingBody = Any

CHUNK: Final = 1024 * 1024
_ZEROS: Final = bytes(CHUNK)


class IntegrityError(BrowseError):
    """The stored core is not what was shipped (wrong sha256 or size, broken zstd stream, no checksum)."""


@dataclass(frozen=True)
class FetchResult:
    """A fetched, verified core. `notes` are hints for opening it (missing executable, truncation)."""

    path: Path
    sha256: str
    bytes: int
    metadata: dict[str, str]
    gdb_command: str
    url: str = ""
    notes: tuple[str, ...] = ()


def parse_location(text: str, default_bucket: str | None) -> tuple[str, str]:
    """(bucket, core key) from `KEY`, `s3://BUCKET/KEY`, or either naming the manifest."""
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise BrowseError(f"{text!r}: expected s3://BUCKET/KEY")
    else:
        if not default_bucket:
            raise BrowseError(f"{text!r}: no bucket set; pass s3://BUCKET/KEY or set the bucket")
        bucket, key = default_bucket, text
    key = core_key(key)
    if not key:
        raise BrowseError(f"{text!r}: no key")
    return bucket, key


def output_name(metadata: Mapping[str, str], key: str) -> str:
    """The original file name, made safe to create in a directory (no separators, no '..')."""
    for candidate in (display(metadata.get("filename", "")), posixpath.basename(key).removesuffix(".zst")):
        name = "".join("_" if ch in "/\\" or not ch.isprintable() else ch for ch in candidate)
        if name.strip(".") and not name.startswith("-"):
            return name
    return "core"


def _target(output: Path | None, metadata: Mapping[str, str], key: str) -> Path:
    if output is None:
        return Path.cwd() / output_name(metadata, key)
    if output.is_dir():
        return output / output_name(metadata, key)
    return output


def _all_zero(data: bytes) -> bool:
    # Comparing with a ready zero block is a memcmp; chunks are CHUNK bytes but for the last.
    return data == _ZEROS if len(data) == CHUNK else data.count(0) == len(data)


class _Sink:
    """Hashes and writes the restored core. Zero chunks become holes, as in the file the kernel wrote.

    Called from a worker thread, one call at a time.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        if _all_zero(data):
            os.lseek(self.fd, len(data), os.SEEK_CUR)
            return len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def finish(self) -> None:
        # A trailing hole is only a seek: the size has to be set explicitly.
        os.ftruncate(self.fd, self.bytes)


async def _chunks(body: StreamingBody) -> AsyncIterator[bytes]:
    """The body in CHUNK-sized pieces (the network hands out whatever has arrived)."""
    buffer = bytearray()
    while data := await body.read(CHUNK - len(buffer)):
        buffer += data
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def _stream(body: StreamingBody, write: Callable[[bytes], object], progress: Progress) -> None:
    """Feed the body to `write` in a thread, reading the next chunk while the previous one is written."""
    received = 0
    pending: asyncio.Future[object] | None = None
    try:
        async for chunk in _chunks(body):
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(write, chunk))
            received += len(chunk)
            progress.update(received)
        if pending is not None:
            await pending
        progress.update(received, final=True)
    finally:
        if pending is not None and not pending.done():
            # A thread cannot be interrupted: let it finish before the file is closed under it.
            await asyncio.wait({pending})


def _expected(metadata: Mapping[str, str], url: str, have_manifest: bool) -> str:
    expected = metadata.get("sha256", "").lower()
    if len(expected) != 64 or any(ch not in "0123456789abcdef" for ch in expected):
        why = "" if have_manifest else " and it has no manifest: its upload may not have finished"
        raise IntegrityError(f"{url}: no sha256 was recorded for this core{why}; cannot verify it")
    return expected


def _verify(sink: _Sink, metadata: Mapping[str, str], expected: str, url: str) -> str:
    digest = sink.sha256.hexdigest()
    size = metadata.get("size", "")
    if size.isdigit() and int(size) != sink.bytes:
        raise IntegrityError(
            f"{url}: restored {sink.bytes} bytes but {size} were shipped; the stored object is damaged"
        )
    if digest != expected:
        raise IntegrityError(
            f"{url}: sha256 mismatch: shipped {expected}, got {digest}; the stored object is damaged"
        )
    return digest


async def _download(body: StreamingBody, fd: int, compressed: bool, progress: Progress, url: str) -> _Sink:
    sink = _Sink(fd)
    write: Callable[[bytes], object] = sink.write
    if compressed:
        # The writer hands the sink at most CHUNK bytes at a time, however well the data compressed
        # (a MiB of zstd can stand for GiBs of zeros), so memory stays bounded.
        decompressor = zstandard.ZstdDecompressor().stream_writer(
            cast(IO[bytes], sink), write_size=CHUNK, closefd=False
        )
        write = decompressor.write
    try:
        await _stream(body, write, progress)
    except zstandard.ZstdError as error:
        raise IntegrityError(f"{url}: the stored object is not a valid zstd stream: {error}") from None
    except S3_FAILURES as error:
        raise BrowseError(f"download of {url} failed: {describe(error)}") from error
    await asyncio.to_thread(sink.finish)
    return sink


def _is_compressed(metadata: Mapping[str, str], content_type: str) -> bool:
    if "compression" in metadata:
        return metadata["compression"] == "zstd"
    return content_type == "application/zstd"


async def fetch_core(
    client: S3Client,
    bucket: str | None,
    key_or_url: str,
    output: Path | None,
    *,
    progress: bool,
    overwrite: bool = False,
) -> FetchResult:
    """Download a shipped core, decompress it, check its sha256, and place it only if it matches.

    `output` may be a file or a directory; by default the original file name in the current
    directory. Raises CoreNotFound, IntegrityError (nothing is left behind) or BrowseError.
    """
    bucket, key = parse_location(key_or_url, bucket)
    url = f"s3://{bucket}/{key}"
    try:
        manifest: Manifest | None = await read_manifest(client, bucket, manifest_key(key))
    except CoreNotFound:
        manifest = None
    if manifest is not None and manifest.rate_limited:
        raise CoreNotFound(f"{url}: not stored: over the node's --storm-limit, only its metadata was kept")
    try:
        response = await read_s3("GetObject", bucket, key, lambda: client.get_object(Bucket=bucket, Key=key))
    except CoreNotFound:
        raise CoreNotFound(f"{url}: no such core (`coredump-shipper ls` lists shipped cores)") from None
    async with response["Body"] as body:
        metadata = {**response.get("Metadata", {}), **(manifest.fields if manifest is not None else {})}
        expected = _expected(metadata, url, manifest is not None)
        target = _target(output, metadata, key)
        if target.exists() and not overwrite:
            raise BrowseError(f"{target} already exists; choose another output or overwrite it")
        if not target.parent.is_dir():
            raise BrowseError(f"{target.parent} is not a directory")
        # Beside the target, so the final rename stays on one filesystem; mode 0600: cores hold secrets.
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        try:
            try:
                bar = Progress(
                    sys.stderr if progress else None, target.name, response.get("ContentLength", 0)
                )
                sink = await _download(
                    body, fd, _is_compressed(metadata, response.get("ContentType", "")), bar, url
                )
            finally:
                os.close(fd)
            digest = _verify(sink, metadata, expected, url)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    command, notes = gdb_command(target, metadata)
    return FetchResult(target, digest, sink.bytes, metadata, command, url, notes)


# --- opening it -----------------------------------------------------------------------------------


def _shown_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        relative = path.relative_to(Path.cwd())
        return str(relative) if relative.parent != Path() else f"./{relative}"
    return str(path)


MODULES_SHOWN: Final = 12


def _build_ids(metadata: Mapping[str, str]) -> list[tuple[str, str]]:
    """(build-id, path) of the modules the manifest lists (`modules`: one "BUILD-ID PATH" a line)."""
    out = []
    for line in metadata.get("modules", "").splitlines():
        build_id, _, path = line.partition(" ")
        if build_id and build_id != "-" and all(ch in "0123456789abcdef" for ch in build_id):
            out.append((build_id, display(path)))
    return out


def _debugging_notes(metadata: Mapping[str, str], environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """gdb options and notes: the image to take the binaries from, the build-ids, debuginfod."""
    options: list[str] = []
    notes: list[str] = []
    signature = display(metadata.get("signature", ""))
    if signature:
        frames = display(metadata.get("signature-frames", "")) or "no frames"
        notes.append(f"signature {signature}: {frames} (`coredump-shipper ls --group` counts its cores)")
    image = display(metadata.get("image", ""))
    if image:
        image_id = display(metadata.get("image-id", ""))
        notes.append(
            f"the program and its libraries are in the image {image}"
            + (f" ({image_id})" if image_id else "")
            + ": unpack it and add -iex 'set sysroot DIR'"
        )
    build_ids = _build_ids(metadata)
    if build_ids:
        shown = ", ".join(
            f"{posixpath.basename(path) or path}={bid}" for bid, path in build_ids[:MODULES_SHOWN]
        )
        more = f" and {len(build_ids) - MODULES_SHOWN} more" if len(build_ids) > MODULES_SHOWN else ""
        notes.append(f"build-ids (gdb checks them; debuginfod serves symbols by them): {shown}{more}")
        if environ.get("DEBUGINFOD_URLS"):
            options = ["-iex", "set debuginfod enabled on"]
            notes.append(
                f"gdb fetches debug symbols by build-id from DEBUGINFOD_URLS={environ['DEBUGINFOD_URLS']}"
            )
        else:
            notes.append(
                "set DEBUGINFOD_URLS to a debuginfod server of the image's distribution and gdb fetches "
                "the debug symbols of these build-ids itself"
            )
    return options, notes


def gdb_command(
    core: Path, metadata: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> tuple[str, tuple[str, ...]]:
    """The gdb command line that opens `core`, and notes on what it needs."""
    path = program_path(metadata)
    options, extra = _debugging_notes(metadata, os.environ if environ is None else environ)
    notes: list[str] = []
    if path.startswith("/"):
        program = path
        notes.append(
            "gdb needs the very build of the program (and its libraries) that crashed: run it where the "
            "pod's image is available, or add -iex 'set sysroot DIR' pointing at an unpacked copy of the "
            "image (docs/debugging.md)"
        )
    else:
        name = program_name(metadata)
        program = f"/path/to/{name.replace('/', '_')}" if name else "/path/to/program"
        notes.append(
            f"the executable's path was not recorded: replace {program} with the program that crashed "
            "(the same build, e.g. copied out of the pod's image)"
        )
    if metadata.get("truncated") == "true":
        notes.append(
            "this core is truncated (RLIMIT_CORE too small, disk full or the writer was killed): "
            "gdb will warn and some memory will be missing"
        )
    command = shlex.join(["gdb", program, _shown_path(core), *options])
    return command, tuple(notes + extra)
