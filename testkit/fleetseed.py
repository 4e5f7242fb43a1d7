"""A fleet's worth of shipped cores in a bucket, written as the shipper writes them (core object,
manifest, fleet index entries, day summaries) but with tiny bodies, for `ls` at scale (tests and
bench/studies/fleet.py)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from coredump_shipper.bucket import daysummary
from coredump_shipper.bucket.fleetindex import day_entry_key, entry_key, parse_entry
from coredump_shipper.bucket.integrity import VERIFIED
from coredump_shipper.bucket.manifest import Manifest, manifest_key

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SIGNATURES = 50


def fleet_core(i: int) -> tuple[str, dict[str, str]]:
    """The key and metadata of the `i`th core: 200 nodes, 20 workloads, 50 signatures, 30 days."""
    rng = random.Random(i)
    node = f"node-{rng.randrange(200):03d}"
    workload = f"app-{rng.randrange(20)}"
    crashed = NOW - timedelta(seconds=rng.randrange(30 * 86400))
    signature = f"{rng.randrange(SIGNATURES):012x}"
    name = f"core.{workload}-7d9f-x{i}.server.sig11.{1000 + i}.{int(crashed.timestamp())}"
    metadata = {
        "cluster": "prod",
        "node": node,
        "filename": name,
        "pod": f"{workload}-7d9f-x{i}",
        "exe": "server",
        "signal": "11",
        "signal-name": "SIGSEGV",
        "pid": str(1000 + i),
        "crash-time": crashed.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "signature": signature,
        "signature-method": "fp",
        "signature-frames": "server+0x1234 server+0x2345 server+0x3456",
        "namespace": f"team-{rng.randrange(5)}",
        "workload": workload,
        "workload-kind": "Deployment",
        "image": f"registry.example/{workload}:1.{rng.randrange(3)}",
        "size": str(rng.randrange(1 << 20, 1 << 30)),
        "compression": "zstd",
        "truncated": "false",
    }
    return f"prod/{node}.{name}.zst", metadata


def fleet(count: int) -> Iterator[tuple[str, dict[str, str]]]:
    return (fleet_core(i) for i in range(count))


def signature_counts(count: int) -> Counter[str]:
    return Counter(metadata["signature"] for _, metadata in fleet(count))


def fleet_objects(
    count: int, bucket: str, *, index: bool = True, days: bool = True, summed_before: date | None = None
) -> Iterator[tuple[str, bytes]]:
    """(key, body) of every object the shipper would have written for `count` cores: a 1-byte core
    object, its manifest, with `index` its signature entry, and with `days` its day entry (named by
    its crash day) and the summary of every day before `summed_before` (each day when None), as the
    nodes write them once the day is closed."""
    by_day: dict[date, list[dict[str, str]]] = defaultdict(list)
    for key, metadata in fleet(count):
        manifest = Manifest.for_core(key, bucket, metadata, "0" * 64, 1, VERIFIED)
        yield key, b"x"
        yield manifest_key(key), json.dumps(manifest.to_json()).encode()
        entry = entry_key(manifest.fields)
        if index and entry is not None:
            yield entry, b"{}"
        crashed = datetime.fromisoformat(metadata["crash-time"].replace("Z", "+00:00")).date()
        day_entry = day_entry_key(manifest.fields, crashed)
        fields = parse_entry(day_entry) if day_entry is not None else None
        if days and day_entry is not None and fields is not None:
            yield day_entry, b"{}"
            by_day[crashed].append(fields)
    for day, entries in sorted(by_day.items()):
        if summed_before is None or day < summed_before:
            yield daysummary.summary_key("prod", day), daysummary.encode("prod", day, entries)


async def seed(client: S3Client, bucket: str, count: int, *, index: bool = True, workers: int = 32) -> None:
    """Write the fleet's objects through S3 (slow on moto: about 10 ms an object)."""
    objects = fleet_objects(count, bucket, index=index)

    async def worker() -> None:
        for key, body in objects:
            await client.put_object(Bucket=bucket, Key=key, Body=body)

    await asyncio.gather(*(worker() for _ in range(workers)))


class RequestCounter:
    """Counts the HTTP requests an aiobotocore client sends: all, by method, and listings; keeps the
    listings' prefixes."""

    def __init__(self, client: S3Client) -> None:
        self.counts: Counter[str] = Counter()
        self.prefixes: list[str] = []
        client.meta.events.register("before-send.s3", self._count)

    def _count(self, request: Any, **_: Any) -> None:
        self.counts["all"] += 1
        self.counts[request.method] += 1
        query = parse_qs(urlsplit(request.url).query)
        if "list-type" in query:
            self.counts["list"] += 1
            self.prefixes += query.get("prefix", [""])

    @property
    def total(self) -> int:
        return self.counts["all"]
