"""The debugging side: list shipped cores from their manifests, fetch one and prove it is intact.

Both read only what the shipper wrote. Each core's manifest (`<key>.manifest.json`, written after the
core object, so its presence means the object is complete) says what the core is: filters use its
fields, never the key layout, which is configurable. A fetched core is decompressed and hashed while it
streams to a temporary file that is renamed into place only when its sha256 matches the one recorded
at upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import posixpath
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, TypeVar, cast
from urllib.parse import unquote

import aiohttp
import zstandard
from botocore.exceptions import BotoCoreError, ClientError

from coredump_shipper.errors import ShipperError
from coredump_shipper.retry import Backoff, call_with_retries, describe
from coredump_shipper.shipper import MANIFEST_SUFFIX

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any
    StreamingBody = Any

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK: Final = 1024 * 1024
LIST_CONCURRENCY: Final = 8
# Manifests are a few hundred bytes; anything this large was not written by the shipper.
MAX_MANIFEST_BYTES: Final = 1024 * 1024
# SigV4 rejects requests signed by a clock more than 15 minutes off, so a manifest cannot have been
# stored more than that before the crash it describes (node clock) happened.
CLOCK_SLACK: Final = timedelta(minutes=15)
_CALL_ATTEMPTS: Final = 4
_BACKOFF: Final = Backoff(base=0.2, cap=5.0)
_NOT_FOUND: Final = frozenset({"NoSuchKey", "NotFound", "404"})
_S3_FAILURES: Final = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)
_ZEROS: Final = bytes(CHUNK)


class BrowseError(ShipperError):
    """Listing or fetching cores failed; the message says what and where."""


class CoreNotFound(BrowseError):
    """There is no object under the key asked for."""


class NotAManifest(BrowseError):
    """An object named like a manifest that does not hold one."""


class IntegrityError(BrowseError):
    """The stored core is not what was shipped (wrong sha256 or size, broken zstd stream, no checksum)."""


@dataclass(frozen=True)
class CoreEntry:
    """One shipped core as its manifest describes it. Text attributes are for display (printable).

    `fields` holds the manifest as stored (values are printable ASCII with %XX escapes).
    """

    key: str
    crash_time: datetime | None
    cluster: str
    node: str
    pod: str
    exe: str
    signal: str
    size: int
    stored_bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.fields.get("truncated") == "true"

    @property
    def stored(self) -> bool:
        """False for a core over the node's storm limit: only its manifest was written."""
        return self.fields.get("rate-limited") != "true"


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


# --- reading manifests --------------------------------------------------------------------------


def display(value: str) -> str:
    """A stored value made readable: %XX escapes decoded when that gives printable text.

    Values come from hostile file names; one whose decoded form holds control characters (which could
    drive the terminal) stays escaped.
    """
    if "%" in value:
        try:
            decoded = unquote(value, errors="strict")
        except UnicodeDecodeError:
            return value
        if decoded.isprintable():
            return decoded
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def _text(fields: Mapping[str, str], *names: str) -> str:
    for name in names:
        if fields.get(name):
            return display(fields[name])
    return ""


def _int(fields: Mapping[str, str], name: str) -> int:
    try:
        return max(0, int(fields.get(name, "")))
    except ValueError:
        return 0


def _time(fields: Mapping[str, str]) -> datetime | None:
    text = fields.get("crash-time") or fields.get("crash_time") or ""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def signal_text(fields: Mapping[str, str]) -> str:
    """'SIGSEGV (11)' from the signal number and/or name recorded; '' when neither is."""
    number = fields.get("signal", "").strip()
    name = display(fields.get("signal-name", "") or fields.get("signal_name", ""))
    if not number:
        return name
    if not number.isdigit():
        return display(number)
    if not name:
        try:
            name = signal.Signals(int(number)).name
        except ValueError:
            return number
    return f"{name} ({number})"


def program_path(fields: Mapping[str, str]) -> str:
    """The crashed executable's path, if recorded (%E names spell '/' as '!')."""
    path = display(fields.get("exe-path", "") or fields.get("exe_path", ""))
    if path.startswith("!") and "/" not in path:
        path = path.replace("!", "/")
    return path


def _program(fields: Mapping[str, str]) -> str:
    return _text(fields, "exe", "comm", "exe-name") or posixpath.basename(program_path(fields))


def _flatten(document: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in document.items():
        if value is None:
            continue
        if isinstance(value, str):
            out[str(name)] = value
        elif isinstance(value, bool):
            out[str(name)] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[str(name)] = str(value)
        else:
            out[str(name)] = json.dumps(value, sort_keys=True)
    return out


def core_key(manifest_key: str) -> str:
    """The core beside a manifest. Its own location wins over the `key` inside: buckets get copied."""
    return manifest_key.removesuffix(MANIFEST_SUFFIX)


def entry_from_manifest(manifest_key: str, document: Mapping[str, Any]) -> CoreEntry:
    fields = _flatten(document)
    return CoreEntry(
        key=core_key(manifest_key),
        crash_time=_time(fields),
        cluster=_text(fields, "cluster"),
        node=_text(fields, "node"),
        pod=_text(fields, "pod"),
        exe=_program(fields),
        signal=signal_text(fields),
        size=_int(fields, "size"),
        stored_bytes=_int(fields, "stored-bytes"),
        sha256=fields.get("sha256", ""),
        fields=fields,
    )


@dataclass(frozen=True)
class Filters:
    """What `ls` keeps. Values are exact names or shell globs (`api-*`), matched case-sensitively."""

    cluster: str | None = None
    node: str | None = None
    pod: str | None = None
    exe: str | None = None
    since: datetime | None = None

    def match(self, entry: CoreEntry) -> bool:
        if self.since is not None and (entry.crash_time is None or entry.crash_time < self.since):
            return False
        checks = ((self.cluster, (entry.cluster,)), (self.node, (entry.node,)), (self.pod, (entry.pod,)))
        if any(wanted is not None and not _any_match(wanted, values) for wanted, values in checks):
            return False
        return self.exe is None or _any_match(self.exe, _programs(entry))


def _programs(entry: CoreEntry) -> tuple[str, ...]:
    # comm is cut to 15 characters by the kernel: let the path and its base name match too.
    path = program_path(entry.fields)
    return (
        entry.exe,
        _text(entry.fields, "comm"),
        _text(entry.fields, "exe-name"),
        path,
        posixpath.basename(path),
    )


def _any_match(pattern: str, values: Iterable[str]) -> bool:
    return any(value and fnmatchcase(value, pattern) for value in values)


# --- S3 calls -------------------------------------------------------------------------------------


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


async def _call(operation: str, bucket: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
    """One S3 call, tried again on transient failures; failures become BrowseError."""
    url = f"s3://{bucket}/{key}"
    try:
        return await call_with_retries(call, _BACKOFF, _CALL_ATTEMPTS)
    except ClientError as error:
        code = _code(error)
        if code == "NoSuchBucket":
            raise BrowseError(f"bucket {bucket!r} does not exist") from None
        if code in _NOT_FOUND:
            raise CoreNotFound(f"{url}: no such object") from None
        raise BrowseError(f"{operation} {url} failed: {describe(error)}") from error
    except _S3_FAILURES as error:
        raise BrowseError(f"{operation} {url} failed: {describe(error)}") from error


async def _read_body(body: StreamingBody, limit: int, url: str) -> bytes:
    data = bytearray()
    while chunk := await body.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            raise NotAManifest(f"{url}: not a manifest: larger than {limit} bytes")
    return bytes(data)


async def read_manifest(client: S3Client, bucket: str, key: str) -> dict[str, Any]:
    """The manifest document stored under `key`. Raises CoreNotFound or BrowseError."""

    async def get() -> bytes:
        response = await client.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            return await _read_body(body, MAX_MANIFEST_BYTES, f"s3://{bucket}/{key}")

    raw = await _call("GetObject", bucket, key, get)
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise NotAManifest(f"s3://{bucket}/{key}: not a manifest: {error}") from None
    if not isinstance(document, dict):
        raise NotAManifest(f"s3://{bucket}/{key}: not a manifest: not a JSON object")
    return document


async def _manifest_keys(
    client: S3Client, bucket: str, prefix: str, stored_after: datetime | None
) -> list[str]:
    keys: list[str] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = await _call(
            "ListObjectsV2", bucket, prefix, functools.partial(client.list_objects_v2, **kwargs)
        )
        for obj in page.get("Contents", []):
            key = obj.get("Key", "")
            modified = obj.get("LastModified")
            if not key.endswith(MANIFEST_SUFFIX):
                continue
            if stored_after is not None and modified is not None and modified < stored_after:
                continue
            keys.append(key)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return keys


async def _bounded(items: Sequence[str], work: Callable[[str], Awaitable[T]], limit: int) -> list[T]:
    """`work` on every item, at most `limit` at once, results in order; the first failure cancels the rest."""
    results: list[T | None] = [None] * len(items)
    queue = iter(enumerate(items))

    async def worker() -> None:
        # One shared iterator: the event loop never switches tasks inside next().
        for index, item in queue:
            results[index] = await work(item)

    tasks = [asyncio.create_task(worker()) for _ in range(min(limit, len(items)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return cast(list[T], results)


async def list_cores(
    store_client: S3Client,
    bucket: str,
    *,
    prefix: str = "",
    cluster: str | None = None,
    node: str | None = None,
    pod: str | None = None,
    exe: str | None = None,
    since: timedelta | None = None,
    limit: int | None = None,
    now: datetime | None = None,
    concurrency: int = LIST_CONCURRENCY,
) -> list[CoreEntry]:
    """Shipped cores under `prefix` that pass the filters, newest crash first.

    Only cores with a manifest are listed: one without is still being uploaded (or its upload failed).
    """
    cutoff = (now or datetime.now(UTC)) - since if since is not None else None
    keys = await _manifest_keys(store_client, bucket, prefix, cutoff - CLOCK_SLACK if cutoff else None)

    async def read(key: str) -> CoreEntry | None:
        try:
            return entry_from_manifest(key, await read_manifest(store_client, bucket, key))
        except CoreNotFound:
            return None  # deleted since the listing
        except NotAManifest as error:
            log.warning("skipping %s: %s", key, error)
            return None

    filters = Filters(cluster, node, pod, exe, cutoff)
    entries = [e for e in await _bounded(keys, read, concurrency) if e is not None and filters.match(e)]
    entries.sort(key=lambda e: (e.crash_time or datetime.min.replace(tzinfo=UTC), e.key), reverse=True)
    return entries if limit is None else entries[: max(0, limit)]


# --- rendering ----------------------------------------------------------------------------------


def human_size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(text: str) -> str:
    # Keys can be written by anyone with access to the bucket: never let one drive the terminal.
    return (text if text.isprintable() else text.encode("unicode_escape").decode("ascii")) or "-"


def _time_text(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


TABLE_COLUMNS: Final = ("TIME (UTC)", "CLUSTER", "NODE", "POD", "PROGRAM", "SIGNAL", "SIZE", "KEY")


def render_table(entries: Iterable[CoreEntry]) -> str:
    """An aligned text table, one core per line (the header alone when there are none)."""
    rows: list[tuple[str, ...]] = [TABLE_COLUMNS]
    for e in entries:
        size = (
            human_size(e.size)
            + (" (truncated)" if e.truncated else "")
            + ("" if e.stored else " (not stored)")
        )
        cells = (e.cluster, e.node, e.pod, e.exe, e.signal, size, e.key)
        rows.append((_time_text(e.crash_time), *map(_cell, cells)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    return "\n".join(lines) + "\n"


def entry_json(entry: CoreEntry) -> dict[str, Any]:
    crash = entry.crash_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if entry.crash_time else None
    return {
        "key": entry.key,
        "crash_time": crash,
        "cluster": entry.cluster,
        "node": entry.node,
        "pod": entry.pod,
        "exe": entry.exe,
        "signal": entry.signal,
        "size": entry.size,
        "stored_bytes": entry.stored_bytes,
        "sha256": entry.sha256,
        "truncated": entry.truncated,
        "stored": entry.stored,
        "fields": dict(sorted(entry.fields.items())),
    }


def render_json(entries: Iterable[CoreEntry]) -> str:
    """A JSON array (newest first, as given), one object per core, for scripts."""
    return json.dumps([entry_json(e) for e in entries], indent=2) + "\n"


# --- fetching -----------------------------------------------------------------------------------


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


class _Progress:
    """A one-line progress bar on a terminal, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO | None, label: str, total: int) -> None:
        self.stream = stream
        self.label = label
        self.total = total
        self.started = self.drawn = time.monotonic()
        self.width = 0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not final and now - self.drawn < 0.1):
            return
        self.drawn = now
        rate = done / max(now - self.started, 1e-6)
        percent = f" ({100 * done // self.total}%)" if self.total else ""
        line = (
            f"{self.label}: {human_size(done)} / {human_size(self.total)}{percent}  {human_size(int(rate))}/s"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.width = len(line)
        if final:
            self.stream.write("\n")
        self.stream.flush()


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


async def _stream(body: StreamingBody, write: Callable[[bytes], object], progress: _Progress) -> None:
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


async def _download(body: StreamingBody, fd: int, compressed: bool, progress: _Progress, url: str) -> _Sink:
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
    except _S3_FAILURES as error:
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
        manifest: dict[str, Any] | None = await read_manifest(client, bucket, key + MANIFEST_SUFFIX)
    except CoreNotFound:
        manifest = None
    if manifest is not None and manifest.get("rate-limited") == "true":
        raise CoreNotFound(f"{url}: not stored: over the node's --storm-limit, only its metadata was kept")
    try:
        response = await _call("GetObject", bucket, key, lambda: client.get_object(Bucket=bucket, Key=key))
    except CoreNotFound:
        raise CoreNotFound(f"{url}: no such core (`coredump-shipper ls` lists shipped cores)") from None
    async with response["Body"] as body:
        metadata = {**response.get("Metadata", {}), **_flatten(manifest or {})}
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
                bar = _Progress(
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


def gdb_command(core: Path, metadata: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """The gdb command line that opens `core`, and notes on what it needs."""
    path = program_path(metadata)
    notes: list[str] = []
    if path.startswith("/"):
        program = path
        notes.append(
            "gdb needs the very build of the program (and its libraries) that crashed: run it where the "
            "pod's image is available, or add -ex 'set sysroot DIR' pointing at an unpacked copy of the image"
        )
    else:
        name = _program(metadata)
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
    return f"gdb {shlex.quote(program)} {shlex.quote(_shown_path(core))}", tuple(notes)


def describe_fetch(result: FetchResult) -> str:
    """What `fetch` prints on stdout: where the core is, its metadata, and how to open it."""
    lines = [
        f"fetched {_cell(result.url)}",
        f"  to {_cell(str(result.path))} ({human_size(result.bytes)}, sha256 {result.sha256} verified)",
        "metadata:",
    ]
    width = max((len(name) for name in result.metadata), default=0)
    for name, value in sorted(result.metadata.items()):
        lines.append(f"  {_cell(name).ljust(width)}  {_cell(display(value))}")
    lines += ["open it with:", f"  {result.gdb_command}"]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n"
