"""moto's S3 server in this process, on loopback, with its store reachable for seeding.

Writing 300,000 objects through HTTP takes moto most of an hour; putting them straight into its
in-memory backend takes seconds. What is measured (listing, reading) still goes over HTTP.

moto lists a bucket by sorting every key for each page (O(keys) per request: 0.3 s a page at 30,000
keys, seconds at 300,000). `indexed_listing()` replaces that, for plain prefix listings, with a
bisection in the sorted key names, as a real store's index does, so that benchmarks at 100,000 cores
measure the client and not moto's listing.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import S3Backend, s3_backends
from moto.server import ThreadedMotoServer

from coredump_shipper.s3.settings import ClientSettings
from testkit.servers import S3Endpoint, free_port


def backend() -> S3Backend:
    store: S3Backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    return store


@contextlib.contextmanager
def moto_in_process() -> Iterator[S3Endpoint]:
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Endpoint(
            name="moto-in-process",
            url=f"http://127.0.0.1:{port}",
            access_key="testing-access-key",
            secret_key="testing-secret-key",
        )
    finally:
        server.stop()


def put_all(bucket: str, objects: Iterable[tuple[str, bytes]]) -> int:
    store = backend()
    count = 0
    for key, body in objects:
        store.put_object(bucket, key, body)
        count += 1
    return count


@contextlib.contextmanager
def indexed_listing() -> Iterator[None]:
    """ListObjectsV2 without a delimiter answered from sorted key names (rebuilt when keys change)."""
    original = S3Backend.list_objects_v2
    names: dict[str, tuple[int, list[str]]] = {}

    def listing(
        self: S3Backend,
        bucket: Any,
        prefix: str | None,
        delimiter: str | None,
        continuation_token: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> Any:
        if delimiter:
            return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        keys = bucket.keys
        cached = names.get(bucket.name)
        if cached is None or cached[0] != len(keys):
            cached = (len(keys), sorted(keys.keys()))
            names[bucket.name] = cached
        sorted_names = cached[1]
        prefix = prefix or ""
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        start = bisect.bisect_right(sorted_names, after) if after else 0
        start = max(start, bisect.bisect_left(sorted_names, prefix))
        page: list[Any] = []
        position = start
        while position < len(sorted_names) and len(page) <= max_keys:
            name = sorted_names[position]
            if not name.startswith(prefix):
                break
            page.append(keys[name])
            position += 1
        return self._truncate_result(page, max_keys)

    S3Backend.list_objects_v2 = listing  # type: ignore[method-assign]
    try:
        yield
    finally:
        S3Backend.list_objects_v2 = original  # type: ignore[method-assign]


def listing_settings(endpoint: S3Endpoint, read_timeout: float) -> ClientSettings:
    """The client `ls` builds, pointed at an in-process moto (path style, 10 connections as `ls` has)."""
    return ClientSettings(
        endpoint_url=endpoint.url,
        region="us-east-1",
        addressing_style="path",
        checksum_mode="when_required",
        ca_bundle=None,
        connect_timeout=10.0,
        read_timeout=read_timeout,
        max_connections=10,
    )
