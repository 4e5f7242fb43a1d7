"""`ls`: which cores were shipped, read from their manifests, filtered, newest first.

Each core's manifest (`<key>.manifest.json`, written after the core object, so its presence means the
object is complete) says what the core is: filters use its fields, never the key layout, which is
configurable. The field readers here (program, signal) also serve `fetch`'s gdb hint.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import posixpath
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from coredump_shipper.browse.safetext import display
from coredump_shipper.bucket.fleetindex import PREFIX as INDEX_PREFIX
from coredump_shipper.bucket.fleetindex import cluster_prefix, is_index_key, parse_entry
from coredump_shipper.bucket.manifest import Manifest, core_key, is_manifest_key
from coredump_shipper.s3.reads import CoreNotFound, NotAManifest, read_manifest, read_s3

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)
T = TypeVar("T")

LIST_CONCURRENCY: Final = 8
# SigV4 rejects requests signed by a clock more than 15 minutes off, so a manifest cannot have been
# stored more than that before the crash it describes (node clock) happened.
CLOCK_SLACK: Final = timedelta(minutes=15)


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


# --- what a manifest says -----------------------------------------------------------------------


def field_text(fields: Mapping[str, str], *names: str) -> str:
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
    return field_text(fields, "exe", "comm", "exe-name") or posixpath.basename(program_path(fields))


def entry_from_manifest(manifest_key: str, manifest: Manifest) -> CoreEntry:
    return entry_from_fields(core_key(manifest_key), manifest.fields, manifest.sha256)


def entry_from_fields(key: str, fields: dict[str, str], sha256: str = "") -> CoreEntry:
    """A core from its manifest's fields, or from the subset its fleet index entry carries."""
    return CoreEntry(
        key=key,
        crash_time=_time(fields),
        cluster=field_text(fields, "cluster"),
        node=field_text(fields, "node"),
        pod=field_text(fields, "pod"),
        exe=program_name(fields),
        signal=signal_text(fields),
        size=_int(fields, "size"),
        stored_bytes=_int(fields, "stored-bytes"),
        sha256=sha256 or fields.get("sha256", ""),
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
            (self.namespace, (field_text(entry.fields, "namespace"),)),
            (self.workload, (field_text(entry.fields, "workload"),)),
        )
        if any(wanted is not None and not _any_match(wanted, values) for wanted, values in checks):
            return False
        return self.exe is None or _any_match(self.exe, _programs(entry))


def _programs(entry: CoreEntry) -> tuple[str, ...]:
    # comm is cut to 15 characters by the kernel: let the path and its base name match too.
    path = program_path(entry.fields)
    return (
        entry.exe,
        field_text(entry.fields, "comm"),
        field_text(entry.fields, "exe-name"),
        path,
        posixpath.basename(path),
    )


def _any_match(pattern: str, values: Iterable[str]) -> bool:
    return any(value and fnmatchcase(value, pattern) for value in values)


async def _keys(
    client: S3Client,
    bucket: str,
    prefix: str,
    *,
    start_after: str = "",
    stop_at: str | None = None,
    keep: Callable[[str, datetime | None], bool],
) -> list[str]:
    """Keys under `prefix` (after `start_after`, before `stop_at`) that `keep` accepts, 1,000 a request."""
    keys: list[str] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        page = await read_s3(
            "ListObjectsV2", bucket, prefix, functools.partial(client.list_objects_v2, **kwargs)
        )
        for obj in page.get("Contents", []):
            key = obj.get("Key", "")
            if stop_at is not None and key >= stop_at:
                return keys
            if keep(key, obj.get("LastModified")):
                keys.append(key)
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return keys


async def _manifest_keys(
    client: S3Client, bucket: str, prefix: str, stored_after: datetime | None
) -> list[str]:
    """Every manifest under `prefix`. The fleet index's own keys are stepped over, not listed: a
    listing by prefix cannot exclude them, so the keys before and after them are two listings."""

    def keep(key: str, modified: datetime | None) -> bool:
        if not is_manifest_key(key) or is_index_key(key):
            return False
        return stored_after is None or modified is None or modified >= stored_after

    if prefix.startswith(INDEX_PREFIX):
        return []
    if not INDEX_PREFIX.startswith(prefix):
        return await _keys(client, bucket, prefix, keep=keep)
    # Every key that starts with INDEX_PREFIX sorts before INDEX_PREFIX with its last "/" raised by one.
    past_index = INDEX_PREFIX[:-1] + chr(ord(INDEX_PREFIX[-1]) + 1)
    before, after = await asyncio.gather(
        _keys(client, bucket, prefix, stop_at=INDEX_PREFIX, keep=keep),
        _keys(client, bucket, prefix, start_after=past_index, keep=keep),
    )
    return before + after


async def _index_entries(client: S3Client, bucket: str, cluster: str | None) -> dict[str, dict[str, str]]:
    """Core key -> its fields, from the fleet index (fleetindex.py), of one cluster when named exactly."""
    exact = cluster is not None and not any(ch in cluster for ch in "*?[")
    prefix = cluster_prefix(cluster) if exact and cluster is not None else INDEX_PREFIX
    entries: dict[str, dict[str, str]] = {}

    def keep(key: str, modified: datetime | None) -> bool:
        fields = parse_entry(key)
        if fields is not None:
            entries[fields["key"]] = fields
        return False

    await _keys(client, bucket, prefix, keep=keep)
    return entries


async def _nothing() -> dict[str, dict[str, str]]:
    return {}


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
    full: bool = False,
) -> list[CoreEntry]:
    """Shipped cores under `prefix` that pass the filters, newest crash first.

    Only cores with a manifest are listed: one without is still being uploaded (or its upload failed).
    A core's fields come from its fleet index entry (the fields `ls` uses), or with `full` from its
    manifest (every field, one read per core).
    """
    cutoff = (now or datetime.now(UTC)) - since if since is not None else None
    keys, index = await asyncio.gather(
        _manifest_keys(store_client, bucket, prefix, cutoff - CLOCK_SLACK if cutoff else None),
        _index_entries(store_client, bucket, cluster) if not full else _nothing(),
    )

    async def read(key: str) -> CoreEntry | None:
        try:
            return entry_from_manifest(key, await read_manifest(store_client, bucket, key))
        except CoreNotFound:
            return None  # deleted since the listing
        except NotAManifest as error:
            log.warning("skipping %s: %s", key, error)
            return None

    # A core's index entry stands for its manifest; only cores without one (shipped before the
    # index, or whose entry was not written) cost a read. Entries without a manifest are not shown.
    found: list[CoreEntry | None] = []
    unindexed: list[str] = []
    for key in keys:
        fields = index.get(core_key(key))
        if fields is None:
            unindexed.append(key)
        else:
            found.append(entry_from_fields(core_key(key), fields))
    found += await _bounded(unindexed, read, concurrency)
    filters = Filters(cluster, node, pod, exe, cutoff, namespace, workload)
    entries = [e for e in found if e is not None and filters.match(e)]
    entries.sort(key=lambda e: (e.crash_time or datetime.min.replace(tzinfo=UTC), e.key), reverse=True)
    return entries if limit is None else entries[: max(0, limit)]
