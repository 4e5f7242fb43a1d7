"""The debugging side, listing: which cores were shipped, read from their manifests.

Each core's manifest (`<key>.manifest.json`, written after the core object, so its presence means the
object is complete) says what the core is: filters use its fields, never the key layout, which is
configurable. The manifest readers, the S3 call wrapper and the display helpers here are shared with
`fetch`, which downloads and verifies one core.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import posixpath
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import unquote

import aiohttp
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

LIST_CONCURRENCY: Final = 8
# Manifests are a few hundred bytes; anything this large was not written by the shipper.
MAX_MANIFEST_BYTES: Final = 1024 * 1024
# SigV4 rejects requests signed by a clock more than 15 minutes off, so a manifest cannot have been
# stored more than that before the crash it describes (node clock) happened.
CLOCK_SLACK: Final = timedelta(minutes=15)
_CALL_ATTEMPTS: Final = 4
_BACKOFF: Final = Backoff(base=0.2, cap=5.0)
_NOT_FOUND: Final = frozenset({"NoSuchKey", "NotFound", "404"})
# What an S3 call can fail with besides ClientError: shared with the download in `fetch`.
S3_FAILURES: Final = (ClientError, BotoCoreError, aiohttp.ClientError, OSError, TimeoutError)


class BrowseError(ShipperError):
    """Listing or fetching cores failed; the message says what and where."""


class CoreNotFound(BrowseError):
    """There is no object under the key asked for."""


class NotAManifest(BrowseError):
    """An object named like a manifest that does not hold one."""


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


def program_name(fields: Mapping[str, str]) -> str:
    return _text(fields, "exe", "comm", "exe-name") or posixpath.basename(program_path(fields))


def flatten(document: Mapping[str, Any]) -> dict[str, str]:
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
    fields = flatten(document)
    return CoreEntry(
        key=core_key(manifest_key),
        crash_time=_time(fields),
        cluster=_text(fields, "cluster"),
        node=_text(fields, "node"),
        pod=_text(fields, "pod"),
        exe=program_name(fields),
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
    namespace: str | None = None
    workload: str | None = None

    def match(self, entry: CoreEntry) -> bool:
        if self.since is not None and (entry.crash_time is None or entry.crash_time < self.since):
            return False
        checks = (
            (self.cluster, (entry.cluster,)),
            (self.node, (entry.node,)),
            (self.pod, (entry.pod,)),
            (self.namespace, (_text(entry.fields, "namespace"),)),
            (self.workload, (_text(entry.fields, "workload"),)),
        )
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


async def call_s3(operation: str, bucket: str, key: str, call: Callable[[], Awaitable[T]]) -> T:
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
    except S3_FAILURES as error:
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

    raw = await call_s3("GetObject", bucket, key, get)
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
        page = await call_s3(
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
    namespace: str | None = None,
    workload: str | None = None,
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

    filters = Filters(cluster, node, pod, exe, cutoff, namespace, workload)
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


def cell(text: str) -> str:
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
        rows.append((_time_text(e.crash_time), *map(cell, cells)))
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
