"""How often a signature was seen on this cluster, for the CoreDumped Event: one listing, cached.

The count is the number of fleet index entries under the signature's prefix (fleetindex.py), read
with one ListObjectsV2 of at most 1,000 keys; later cores of the same signature within CACHE_SECONDS
add one to the cached count instead of listing again. A failed listing only leaves the count unknown.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from coredump_shipper.bucket.fleetindex import signature_prefix
from coredump_shipper.errors import S3Error
from coredump_shipper.s3.call import call_s3
from coredump_shipper.s3.retry import Backoff

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)
CACHE_SECONDS: Final = 600.0
CACHED: Final = 1024
PAGE: Final = 1000
_BACKOFF: Final = Backoff(base=0.2, cap=1.0)


@dataclass(frozen=True)
class Sighting:
    count: int  # cores of this signature on the cluster, this one included
    more: bool = False  # at least `count`: the one listing stopped at a full page

    def text(self) -> str:
        if self.count <= 1 and not self.more:
            return "new on this cluster"
        return f"seen {self.count}{'+' if self.more else ''} times on this cluster"


class Sightings:
    def __init__(
        self, client: S3Client, bucket: str, cluster: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.cluster = cluster
        self.clock = clock
        self._cache: OrderedDict[str, tuple[Sighting, float]] = OrderedDict()

    async def seen(self, signature: str) -> Sighting | None:
        """After this core's index entry was written: how often its signature was seen, or None."""
        now = self.clock()
        cached = self._cache.get(signature)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            sighting = Sighting(cached[0].count + 1, cached[0].more)
            self._cache[signature] = (sighting, cached[1])
            return sighting
        prefix = signature_prefix(self.cluster, signature)
        try:
            page = await call_s3(
                "ListObjectsV2",
                lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=PAGE),
                attempts=2,
                backoff=_BACKOFF,
                deadline=10.0,
            )
        except S3Error as error:
            log.debug("could not count signature %s: %s", signature, error)
            return None
        count = len(page.get("Contents", []))
        # Its own entry may not be listed yet on an eventually consistent store: it counts.
        sighting = Sighting(max(count, 1), bool(page.get("IsTruncated")))
        self._cache[signature] = (sighting, now)
        self._cache.move_to_end(signature)
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
        return sighting
