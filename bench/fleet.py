"""`ls` and `ls --group` at fleet scale: requests and time, with and without the fleet index.

    .venv/bin/python -m bench.fleet                      # 10,000 cores: today's path and the index
    .venv/bin/python -m bench.fleet --count 100000 --indexed-listing

The cores are seeded straight into an in-process moto (testkit/servers/motoinproc.py): a 1-byte core
object, the manifest the shipper writes, and its fleet index entry. `ls` then runs as the command
does, over HTTP on loopback, and every request it sends is counted. "no index" is the bucket as
shipped before the index existed: `ls` lists the keys and reads one manifest per core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from coredump_shipper.browse.grouping import group_cores
from coredump_shipper.browse.listing import list_cores
from coredump_shipper.s3.client import s3_client
from testkit.fleetseed import SIGNATURES, RequestCounter, fleet_objects
from testkit.servers import S3Endpoint
from testkit.servers.motoinproc import backend, indexed_listing, listing_settings, moto_in_process, put_all


async def measure(endpoint: S3Endpoint, bucket: str, group: bool) -> tuple[int, float, float, int]:
    settings = listing_settings(endpoint, 60.0)
    async with s3_client(settings) as client:
        counter = RequestCounter(client)
        started, cpu = time.perf_counter(), time.process_time()
        entries = await list_cores(client, bucket)
        rows = len(group_cores(entries)) if group else len(entries)
        return rows, time.perf_counter() - started, time.process_time() - cpu, counter.total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--indexed-listing", action="store_true", help="moto's listing as a real store's")
    parser.add_argument("--no-legacy", action="store_true", help="skip the bucket without an index")
    args = parser.parse_args()
    # CPU is this process's: the client and the in-process store together (the machine may be shared).
    print("| cores | bucket | listing | command | rows | requests | seconds | CPU seconds |")
    print("|---|---|---|---|---|---|---|---|")
    with moto_in_process() as endpoint, indexed_listing() if args.indexed_listing else _nothing():
        os.environ.update({k: v for k, v in endpoint.env().items() if not k.startswith("AWS_ENDPOINT")})
        kinds = [("index", True)] + ([] if args.no_legacy else [("no index", False)])
        for name, index in kinds:
            bucket = f"fleet-{'index' if index else 'legacy'}"
            backend().create_bucket(bucket, "us-east-1")
            put_all(bucket, fleet_objects(args.count, bucket, index=index))
            for group in (False, True):
                rows, seconds, cpu, requests = asyncio.run(measure(endpoint, bucket, group))
                assert rows == (min(SIGNATURES, args.count) if group else args.count), rows
                command = "ls --group" if group else "ls"
                listing = "indexed" if args.indexed_listing else "moto"
                cells = (args.count, name, listing, command, rows, requests, f"{seconds:.2f}", f"{cpu:.2f}")
                print("| " + " | ".join(map(str, cells)) + " |")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


if __name__ == "__main__":
    main()
