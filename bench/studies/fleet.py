"""`ls` and `ls --group` at fleet scale: requests, wall and CPU time, for each kind of bucket.

    .venv/bin/python -m bench.studies.fleet                                  # 10,000 cores
    .venv/bin/python -m bench.studies.fleet --count 100000 --indexed-listing --no-legacy

The cores are seeded straight into an in-process moto (testkit/servers/motoinproc.py): a 1-byte core
object, the manifest the shipper writes, and its fleet index entries and day summaries as the bucket
kind has them. `ls` then runs as the command does, over HTTP on loopback, and every request it sends
is counted. The buckets:

- "summed up": day entries and a summary for every day but the newest (the nodes' steady state);
- "days, no summary": day entries only (every summary write lost): `ls` lists every day;
- "signature entries": the bucket as the previous version shipped it (`ls` lists the manifests and
  the signature entries, 3 keys a core);
- "no index": shipped before any index (`ls` reads one manifest per core; skipped by --no-legacy).

CPU is this process's (the client and the in-process store together), and the store's share of it
(moto's request handling, measured per thread): the machine may be shared, so wall time is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections.abc import Iterable
from datetime import date
from typing import Any

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from moto.moto_server.werkzeug_app import DomainDispatcherApplication

from coredump_shipper.browse.grouping import group_cores
from coredump_shipper.browse.listing import list_cores
from coredump_shipper.s3.client import s3_client
from testkit.fleetseed import NOW, SIGNATURES, RequestCounter, fleet_objects
from testkit.servers import S3Endpoint
from testkit.servers.motoinproc import backend, indexed_listing, listing_settings, moto_in_process, put_all

# (name, fleet_objects arguments)
KINDS: list[tuple[str, dict[str, Any]]] = [
    ("summed up", {"summed_before": NOW.date()}),
    ("days, no summary", {"summed_before": date.min}),
    ("signature entries", {"days": False}),
    ("no index", {"index": False, "days": False}),
]


class StoreCPU:
    """CPU seconds moto's request threads spend answering (its WSGI application, per thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._original = DomainDispatcherApplication.__call__

    def __enter__(self) -> StoreCPU:
        original, meter = self._original, self

        def timed(app: Any, environ: Any, start_response: Any) -> Iterable[bytes]:
            started = time.thread_time()
            body = list(original(app, environ, start_response))
            with meter._lock:
                meter.seconds += time.thread_time() - started
            return body

        DomainDispatcherApplication.__call__ = timed  # type: ignore[method-assign, assignment]
        return self

    def __exit__(self, *_: object) -> None:
        DomainDispatcherApplication.__call__ = self._original  # type: ignore[method-assign]


async def measure(endpoint: S3Endpoint, bucket: str, group: bool, store: StoreCPU) -> tuple[Any, ...]:
    settings = listing_settings(endpoint, 120.0)
    async with s3_client(settings) as client:
        counter = RequestCounter(client)
        store.seconds = 0.0
        started, cpu = time.perf_counter(), time.process_time()
        entries = await list_cores(client, bucket)
        rows = len(group_cores(entries)) if group else len(entries)
        return rows, time.perf_counter() - started, time.process_time() - cpu, store.seconds, counter.total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--indexed-listing", action="store_true", help="moto's listing as a real store's")
    parser.add_argument("--no-legacy", action="store_true", help="skip the bucket without an index")
    parser.add_argument("--kind", action="append", help="only these kinds of bucket (by name)")
    args = parser.parse_args()
    kinds = [(n, k) for n, k in KINDS if (not args.no_legacy or n != "no index")]
    kinds = [(n, k) for n, k in kinds if not args.kind or n in args.kind]
    print("| cores | bucket | listing | command | rows | requests | seconds | CPU seconds | of which store |")
    print("|---|---|---|---|---|---|---|---|---|")
    with (
        moto_in_process() as endpoint,
        indexed_listing() if args.indexed_listing else _nothing(),
        StoreCPU() as store,
    ):
        os.environ.update({k: v for k, v in endpoint.env().items() if not k.startswith("AWS_ENDPOINT")})
        for number, (name, kind) in enumerate(kinds):
            bucket = f"fleet-{number}"
            backend().create_bucket(bucket, "us-east-1")
            put_all(bucket, fleet_objects(args.count, bucket, **kind))
            for group in (False, True):
                rows, seconds, cpu, store_cpu, requests = asyncio.run(measure(endpoint, bucket, group, store))
                assert rows == (min(SIGNATURES, args.count) if group else args.count), rows
                command = "ls --group" if group else "ls"
                listing = "indexed" if args.indexed_listing else "moto"
                cells = (
                    f"{args.count:,}", name, listing, command, rows, requests,
                    f"{seconds:.2f}", f"{cpu:.2f}", f"{store_cpu:.2f}",
                )  # fmt: skip
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
            del backend().buckets[bucket]  # its objects' memory, before the next kind is seeded


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


if __name__ == "__main__":
    main()
