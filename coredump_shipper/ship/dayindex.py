"""The node's side of the day index: each core's day entry, and the summaries of closed days.

After a core's manifest the node writes its day entry (fleetindex.py), named by today's UTC date on
the node's clock. An entry that cannot be written is kept and written with the next core's (named by
that day, which may be a later one): a lost write delays the core in `ls`, it does not hide it.

At most once per COMPACT_EVERY, after a core, the node looks for closed days of the last WINDOW_DAYS
that have entries but no summary (daysummary.py) and writes theirs: one listing of the summaries,
and for each day missing one, a listing of its entries and one PutObject. Every node does this with
no coordination; two nodes summing up the same day write the same bytes. A summary not written
(this node stopped, the store failed) is written by the next node that looks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from coredump_shipper.bucket import daysummary
from coredump_shipper.bucket.fleetindex import day_entry_key, day_prefix, parse_entry
from coredump_shipper.errors import S3Error
from coredump_shipper.s3.call import call_s3
from coredump_shipper.s3.pages import list_pages
from coredump_shipper.s3.retry import Backoff

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import ListObjectsV2OutputTypeDef

    from coredump_shipper.s3.store import S3Store

log = logging.getLogger(__name__)
COMPACT_EVERY: Final = 3600.0
WINDOW_DAYS: Final = 7
PENDING: Final = 10_000  # entries kept for a later write; past this the oldest are given up
_BACKOFF: Final = Backoff(base=0.2, cap=2.0)


class DayIndex:
    def __init__(
        self,
        store: S3Store,
        cluster: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.clock = clock
        self.monotonic = monotonic
        self._pending: deque[Mapping[str, str]] = deque(maxlen=PENDING)
        self._next_compaction: float | None = None
        self._compaction: asyncio.Task[list[date]] | None = None

    async def record(self, fields: Mapping[str, str], object_args: Mapping[str, Any]) -> None:
        """The day entry of a core whose manifest holds `fields`, then any entry left over before."""
        if not await self._write(fields, object_args):
            return
        # Workers record at once: each left-over entry is taken off the queue before it is written,
        # so no two write the same one (a failed one goes back).
        for _ in range(len(self._pending)):
            if not self._pending or not await self._write(self._pending.popleft(), object_args):
                break
        self._start_compaction(object_args)

    async def _write(self, fields: Mapping[str, str], object_args: Mapping[str, Any]) -> bool:
        entry = day_entry_key(fields, self.clock().date())
        if entry is None:
            return True  # its key alone is too long for a name: ls --full shows it
        try:
            await self.store.put_small(entry, b"{}", "application/json", object_args)
        except S3Error as error:
            log.warning(
                "day index entry for %r not written (written with the next core): %s",
                fields.get("key"),
                error,
                extra={"event": "index_failed", "key": fields.get("key")},
            )
            self._pending.append(fields)
            return False
        return True

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _start_compaction(self, object_args: Mapping[str, Any]) -> None:
        now = self.monotonic()
        if self._compaction is not None and not self._compaction.done():
            return
        if self._next_compaction is not None and now < self._next_compaction:
            return
        self._next_compaction = now + COMPACT_EVERY
        # In the background: a worker ships the next core meanwhile.
        self._compaction = asyncio.create_task(self.compact(object_args))

    async def close(self) -> None:
        if self._compaction is not None:
            self._compaction.cancel()
            await asyncio.gather(self._compaction, return_exceptions=True)

    async def compact(self, object_args: Mapping[str, Any]) -> list[date]:
        """Write the summary of each closed day of the window that has entries and none; the days."""
        now = self.clock()
        days = [now.date() - timedelta(days=n) for n in range(WINDOW_DAYS, 0, -1)]
        written: list[date] = []
        try:
            summed = await self._summed(days[0])
            for day in days:
                if day in summed or not daysummary.is_closed(day, now):
                    continue
                entries = await self._day_entries(day)
                if not entries:
                    continue
                body = daysummary.encode(self.cluster, day, entries)
                key = daysummary.summary_key(self.cluster, day)
                await self.store.put_small(key, body, "application/gzip", object_args)
                written.append(day)
                log.info(
                    "day %s summed up: %d cores in s3://%s/%s",
                    day,
                    len(entries),
                    self.store.bucket,
                    key,
                    extra={"event": "day_summed", "day": day.isoformat(), "cores": len(entries)},
                )
        except S3Error as error:
            log.warning("day summaries not written (the next look writes them): %s", error)
        return written

    async def _summed(self, first: date) -> set[date]:
        prefix = daysummary.cluster_prefix(self.cluster)
        start = daysummary.summary_key(self.cluster, first - timedelta(days=1))
        keys = await self._list(prefix, start_after=start)
        return {parsed[1] for key in keys if (parsed := daysummary.parse_key(key)) is not None}

    async def _day_entries(self, day: date) -> list[dict[str, str]]:
        keys = await self._list(day_prefix(self.cluster, day))
        return [fields for key in keys if (fields := parse_entry(key)) is not None]

    async def _list(self, prefix: str, *, start_after: str = "") -> list[str]:
        def call(kwargs: dict[str, Any]) -> Awaitable[ListObjectsV2OutputTypeDef]:
            list_page = functools.partial(self.store.client.list_objects_v2, **kwargs)
            return call_s3("ListObjectsV2", list_page, attempts=3, backoff=_BACKOFF, deadline=30.0)

        pages = list_pages(call, self.store.bucket, prefix, start_after=start_after)
        return [obj.get("Key", "") async for page in pages for obj in page.get("Contents", [])]
