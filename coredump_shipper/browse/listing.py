"""`ls`: which cores were shipped, filtered, newest first.

What a core is comes from its fleet index entries (the fields `ls` uses), read through the day index
(browse/dayindex.py: one summary per closed day, a listing of the days not summed up yet). A bucket
shipped before the day index existed, and `--full`, are read from the cores' manifests
(`<key>.manifest.json`, written after the core object, so its presence means the object is complete),
with the signature entries standing in for the manifests they repeat. Filters use the recorded
fields, never the key layout, which is configurable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from coredump_shipper.browse.coreentry import CoreEntry, entry_from_fields, entry_from_manifest
from coredump_shipper.browse.dayindex import CLOCK_SLACK, read_day_index
from coredump_shipper.browse.filters import Filters
from coredump_shipper.bucket.fleetindex import PREFIX as ENTRIES_PREFIX
from coredump_shipper.bucket.fleetindex import ROOT as INDEX_ROOT
from coredump_shipper.bucket.fleetindex import cluster_prefix, is_index_key, parse_entry
from coredump_shipper.bucket.manifest import core_key, is_manifest_key
from coredump_shipper.s3.pages import list_pages
from coredump_shipper.s3.reads import CoreNotFound, NotAManifest, list_call, read_manifest

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)
T = TypeVar("T")

LIST_CONCURRENCY: Final = 8


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
    pages = list_pages(list_call(client, bucket, prefix), bucket, prefix, start_after=start_after)
    async for page in pages:
        for obj in page.get("Contents", []):
            key = obj.get("Key", "")
            if stop_at is not None and key >= stop_at:
                return keys
            if keep(key, obj.get("LastModified")):
                keys.append(key)
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

    if prefix.startswith(INDEX_ROOT):
        return []
    if not INDEX_ROOT.startswith(prefix):
        return await _keys(client, bucket, prefix, keep=keep)
    # Every key that starts with INDEX_ROOT sorts before INDEX_ROOT with its last "/" raised by one.
    past_index = INDEX_ROOT[:-1] + chr(ord(INDEX_ROOT[-1]) + 1)
    before, after = await asyncio.gather(
        _keys(client, bucket, prefix, stop_at=INDEX_ROOT, keep=keep),
        _keys(client, bucket, prefix, start_after=past_index, keep=keep),
    )
    return before + after


async def _index_entries(client: S3Client, bucket: str, cluster: str | None) -> dict[str, dict[str, str]]:
    """Core key -> its fields, from the signature entries (fleetindex.py), of one cluster when named."""
    prefix = cluster_prefix(cluster) if cluster is not None else ENTRIES_PREFIX
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
    filters: Filters | None = None,
    *,
    limit: int | None = None,
    concurrency: int = LIST_CONCURRENCY,
    full: bool = False,
) -> list[CoreEntry]:
    """Shipped cores that pass the filters, newest crash first.

    From the day index (the fields `ls` uses), or, in a bucket without one and with `full`, from the
    cores' manifests: only cores with a manifest are listed there (one without is still being
    uploaded, or its upload failed), each from its signature entry, or with `full` (every field, one
    read per core) or without an entry from its manifest.
    """
    filters = filters or Filters()

    def bounded(items: Sequence[Any], work: Callable[[Any], Awaitable[T]]) -> Awaitable[list[T]]:
        return _bounded(items, work, concurrency)

    index = None if full else await read_day_index(store_client, bucket, filters, bounded)
    if index is not None:
        found: list[CoreEntry | None] = [entry_from_fields(key, fields) for key, fields in index.items()]
    else:
        found = await _from_manifests(store_client, bucket, filters, concurrency, full=full)
    entries = [e for e in found if e is not None and filters.match(e)]
    entries.sort(key=lambda e: (e.crash_time or datetime.min.replace(tzinfo=UTC), e.key), reverse=True)
    return entries if limit is None else entries[: max(0, limit)]


async def _from_manifests(
    store_client: S3Client, bucket: str, filters: Filters, concurrency: int, *, full: bool
) -> list[CoreEntry | None]:
    stored_after = filters.since - CLOCK_SLACK if filters.since is not None else None
    keys, index = await asyncio.gather(
        _manifest_keys(store_client, bucket, filters.prefix, stored_after),
        _index_entries(store_client, bucket, filters.exact_cluster) if not full else _nothing(),
    )

    async def read(key: str) -> CoreEntry | None:
        try:
            return entry_from_manifest(key, await read_manifest(store_client, bucket, key))
        except CoreNotFound:
            return None  # deleted since the listing
        except NotAManifest as error:
            log.warning("skipping %s: %s", key, error)
            return None

    # A core's signature entry stands for its manifest; only cores without one (shipped before the
    # index, or whose entry was not written) cost a read. Entries without a manifest are not shown.
    found: list[CoreEntry | None] = []
    unindexed: list[str] = []
    for key in keys:
        fields = index.get(core_key(key))
        if fields is None:
            unindexed.append(key)
        else:
            found.append(entry_from_fields(core_key(key), fields))
    return found + await _bounded(unindexed, read, concurrency)
