"""The producer: finds finished cores in the watched directory and offers their names to the pipeline.

Order matters: the inotify watch is added first, then the directory is scanned, so a core finished
between the two is seen at least once (the pipeline de-duplicates). An inotify queue overflow loses
events, so it triggers a rescan; so does a periodic safety timer. If the directory is deleted (or
moved away) the watcher waits for it to come back and starts over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from asyncinotify import Inotify, Mask

from coredump_shipper.ops.metrics import Metrics

log = logging.getLogger(__name__)

FINISHED = Mask.CLOSE_WRITE | Mask.MOVED_TO
GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.UNMOUNT
WATCH_MASK = FINISHED | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR | Mask.EXCL_UNLINK
DIRECTORY_POLL = 1.0


class Watcher:
    def __init__(
        self,
        watch_dir: Path,
        offer: Callable[[str], Awaitable[None]],
        ignored: Callable[[str], bool],
        metrics: Metrics,
        *,
        rescan_interval: float,
        on_scan: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.watch_dir = watch_dir
        self.offer = offer
        self.ignored = ignored
        self.metrics = metrics
        self.rescan_interval = rescan_interval
        self.on_scan = on_scan
        self.watching = False
        self.last_beat = time.monotonic()
        self._rescan = asyncio.Event()

    async def run(self) -> None:
        """Watch forever (until cancelled), re-establishing the watch whenever the directory returns."""
        timer = asyncio.create_task(self._timer(), name="rescan-timer") if self.rescan_interval else None
        try:
            while True:
                await self._wait_for_directory()
                await self._watch_once()
        finally:
            self.watching = False
            if timer is not None:
                timer.cancel()

    async def _wait_for_directory(self) -> None:
        warned = False
        while not self.watch_dir.is_dir():
            if not warned:
                log.warning("watched directory %s is missing; waiting for it", self.watch_dir)
                warned = True
            self.last_beat = time.monotonic()
            await asyncio.sleep(DIRECTORY_POLL)

    async def _watch_once(self) -> None:
        with Inotify() as inotify:
            try:
                inotify.add_watch(self.watch_dir, WATCH_MASK)
            except OSError as error:
                log.warning("cannot watch %s: %s", self.watch_dir, error)
                await asyncio.sleep(DIRECTORY_POLL)
                return
            self.watching = True
            log.info("watching %s", self.watch_dir, extra={"event": "watching"})
            await self.scan()
            events = asyncio.create_task(self._next_event(inotify))
            try:
                while True:
                    rescan = asyncio.create_task(self._rescan.wait())
                    done, _ = await asyncio.wait({events, rescan}, return_when=asyncio.FIRST_COMPLETED)
                    rescan.cancel()
                    self.last_beat = time.monotonic()
                    if self._rescan.is_set():
                        self._rescan.clear()
                        await self.scan()
                    if events in done:
                        mask, name = events.result()
                        if not await self._handle(mask, name):
                            return
                        events = asyncio.create_task(self._next_event(inotify))
            finally:
                # Cancel the iterating task rather than closing Inotify under it (asyncinotify raises).
                self.watching = False
                events.cancel()
                await asyncio.gather(events, return_exceptions=True)

    @staticmethod
    async def _next_event(inotify: Inotify) -> tuple[Mask, str | None]:
        event = await inotify.get()
        return event.mask, str(event.name) if event.name is not None else None

    async def _handle(self, mask: Mask, name: str | None) -> bool:
        """Act on one event; False when the watch is gone and must be set up again."""
        if Mask.Q_OVERFLOW in mask:
            self.metrics.inotify_overflows.inc()
            log.warning("inotify queue overflowed; rescanning %s", self.watch_dir)
            await self.scan()
            return True
        if mask & GONE:
            log.warning("watched directory %s went away; waiting for it to return", self.watch_dir)
            return False
        if name is not None and mask & FINISHED and not self.ignored(name):
            await self.offer(name)
        return True

    async def scan(self) -> None:
        """Offer every candidate file in the directory (the pipeline drops what it already has)."""
        try:
            names = await asyncio.to_thread(os.listdir, self.watch_dir)
        except OSError as error:
            log.warning("cannot list %s: %s", self.watch_dir, error)
            return
        for name in sorted(names):
            if not self.ignored(name):
                await self.offer(name)
            self.last_beat = time.monotonic()
        if self.on_scan is not None:
            self.on_scan(set(names))

    def request_rescan(self) -> None:
        self._rescan.set()

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval)
            self.request_rescan()
