"""`ls`'s read of the day index: one summary per closed day, a listing for each day without one.

Requests: the summaries' and the days' names (one listing each per 1,000 names, one per cluster for
the days), one GetObject per summed-up day, and one listing per 1,000 entries of the days not summed
up yet (today, yesterday's first hour, a day whose summary was not written). With `--since` only the
days it reaches are read; with `--cluster NAME` (exact) only that cluster's. A summary that cannot be
read or decoded is replaced by a listing of its day: the day's entries are what it was made from.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Final

from coredump_shipper.browse.filters import Filters
from coredump_shipper.bucket import daysummary
from coredump_shipper.bucket.fleetindex import DAYS_PREFIX, parse_entry
from coredump_shipper.bucket.keys import key_safe
from coredump_shipper.s3.pages import list_pages
from coredump_shipper.s3.reads import CoreNotFound, list_call, read_s3

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)

# SigV4 rejects requests signed by a clock more than 15 minutes off, so an entry cannot have been
# written more than that before the crash it describes (node clock) happened.
CLOCK_SLACK: Final = timedelta(minutes=15)

Entries = dict[str, dict[str, str]]  # core key -> the fields its entry carries
Day = tuple[str, date]  # the cluster as it stands in keys, a UTC day
# Runs the work on every item, a bounded number at once, results in order (listing.py's _bounded).
Bounded = Callable[[Sequence[Day], Callable[[Day], Awaitable[Entries]]], Awaitable[list[Entries]]]


async def list_names(
    client: S3Client, bucket: str, prefix: str, *, delimiter: str = "", max_keys: int = 1000
) -> list[str]:
    """Every key (or with `delimiter`, every common prefix) under `prefix`, 1,000 a request; with a
    smaller `max_keys`, only the first page (to see whether there is any)."""
    names: list[str] = []
    call = list_call(client, bucket, prefix)
    async for page in list_pages(call, bucket, prefix, delimiter=delimiter, max_keys=max_keys):
        names += [obj.get("Key", "") for obj in page.get("Contents", [])]
        names += [common.get("Prefix", "") for common in page.get("CommonPrefixes", [])]
        if max_keys < 1000:
            break
    return names


async def read_day_index(client: S3Client, bucket: str, filters: Filters, bounded: Bounded) -> Entries | None:
    """Core key -> fields of every core the day index holds for the filters' clusters and days; None
    when the bucket has no day index (shipped before it existed: `ls` reads the manifests)."""
    cluster = filters.exact_cluster
    summaries = await _summaries(client, bucket, cluster)
    days = set(summaries) | await _days(client, bucket, cluster)
    if not days and not await list_names(client, bucket, DAYS_PREFIX, max_keys=1):
        return None
    first_day = (filters.since - CLOCK_SLACK).date() if filters.since is not None else None
    wanted = sorted(day for day in days if first_day is None or day[1] >= first_day)

    async def read(day: Day) -> Entries:
        name = summaries.get(day)
        if name is not None:
            try:
                return await _summary(client, bucket, name)
            except (CoreNotFound, daysummary.NotASummary) as error:
                log.warning("day summary %s not used (its day's entries are listed): %s", name, error)
        return await _day_entries(client, bucket, *day)

    entries: Entries = {}
    for found in await bounded(wanted, read):
        entries.update(found)
    return entries


async def _summaries(client: S3Client, bucket: str, cluster: str | None) -> dict[Day, str]:
    """(cluster segment, day) -> the key of its summary."""
    prefix = daysummary.cluster_prefix(cluster) if cluster is not None else daysummary.PREFIX
    summaries: dict[Day, str] = {}
    for name in await list_names(client, bucket, prefix):
        parsed = daysummary.parse_key(name)
        if parsed is not None:
            summaries[parsed] = name
    return summaries


async def _days(client: S3Client, bucket: str, cluster: str | None) -> set[Day]:
    """The (cluster segment, day) pairs that have day entries: their names, not the entries."""
    if cluster is not None:
        clusters = [key_safe(cluster)]
    else:
        found = await list_names(client, bucket, DAYS_PREFIX, delimiter="/")
        clusters = [name[len(DAYS_PREFIX) :].rstrip("/") for name in found]
    days: set[Day] = set()
    for segment in clusters:
        for name in await list_names(client, bucket, f"{DAYS_PREFIX}{segment}/", delimiter="/"):
            try:
                days.add((segment, date.fromisoformat(name.rstrip("/").rsplit("/", 1)[-1])))
            except ValueError:
                continue
    return days


async def _summary(client: S3Client, bucket: str, name: str) -> Entries:
    async def get() -> bytes:
        answer = await client.get_object(Bucket=bucket, Key=name)
        if answer.get("ContentLength", 0) > daysummary.MAX_BYTES:
            raise daysummary.NotASummary(f"larger than {daysummary.MAX_BYTES} bytes")
        async with answer["Body"] as body:
            data: bytes = await body.read()
            return data

    body = await read_s3("GetObject", bucket, name, get)
    return {entry["key"]: entry for entry in daysummary.decode(body)}


async def _day_entries(client: S3Client, bucket: str, segment: str, day: date) -> Entries:
    # `segment` is the cluster's name as it stands in keys (key-safe), as day_prefix writes it.
    entries: Entries = {}
    for name in await list_names(client, bucket, f"{DAYS_PREFIX}{segment}/{day.isoformat()}/"):
        fields = parse_entry(name)
        if fields is not None:
            entries[fields["key"]] = fields
    return entries
