"""A bounded queue of file names and the pool of workers that ship them.

Nothing is ever dropped here: when the queue is full the producer waits, and a file that fails stays
pending and is offered again after a backoff. While shipping is held (the store was seen keeping other
bytes than were sent) workers take no new file: every core stays on disk. A name is queued at most
once at a time; an event for a file that is being shipped marks it to be looked at again afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from coredump_shipper.errors import FileChanged, S3Error, SkipFile
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.retry import Backoff
from coredump_shipper.ship.afterupload import AfterUpload
from coredump_shipper.ship.claims import Claims
from coredump_shipper.ship.shipper import Shipper
from coredump_shipper.stopping import cancel_and_wait

log = logging.getLogger(__name__)
SkipMemoryKey = tuple[str, int, int, int]  # name, device, inode, mtime_ns


@dataclass
class Worker:
    """A worker's heartbeat: liveness checks that a busy worker keeps making progress."""

    number: int
    busy_since: float | None = None
    current: str | None = None
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self, busy: bool) -> None:
        now = time.monotonic()
        self.last_beat = now
        self.busy_since = (self.busy_since or now) if busy else None


class Pipeline:
    """Async context manager: workers run inside it; exit stops them (see `close`)."""

    def __init__(
        self,
        watch_dir: Path,
        shipper: Shipper,
        metrics: Metrics,
        backoff: Backoff,
        *,
        workers: int,
        queue_size: int,
        after_upload: AfterUpload,
    ) -> None:
        self.watch_dir = watch_dir
        self.shipper = shipper
        self.metrics = metrics
        self.backoff = backoff
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.workers = [Worker(n) for n in range(workers)]
        self.after_upload = after_upload
        self.claims = Claims()  # shared with the disk budget: a claimed file is never deleted
        self._pending: dict[str, tuple[int, float]] = {}  # name -> (size, mtime) when found
        self._again: set[str] = set()
        self._failures: dict[str, int] = {}
        self._skipped: set[SkipMemoryKey] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._may_ship = asyncio.Event()
        self._may_ship.set()
        self.finished = 0  # files a worker is done with (shipped, skipped or failed): idle-time work
        metrics.oldest_pending_age.set_function(self.oldest_pending_age)

    async def __aenter__(self) -> Pipeline:
        self._tasks = [
            asyncio.create_task(self._work(worker), name=f"worker-{worker.number}") for worker in self.workers
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(grace=0)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest waiting core was written. Its mtime, unlike the time this process
        found it, survives restarts: a shipper restarting every few minutes still shows a growing age."""
        if not self._pending:
            return 0.0
        return max(0.0, time.time() - min(mtime for _, mtime in self._pending.values()))

    def hold(self) -> None:
        """Take no new file until `resume()`; uploads in progress finish (each is verified)."""
        self._may_ship.clear()

    def resume(self) -> None:
        self._may_ship.set()

    @property
    def held(self) -> bool:
        return not self._may_ship.is_set()

    @property
    def idle(self) -> bool:
        """No worker busy and nothing queued (files waiting for a retry may still be pending)."""
        return self.queue.empty() and all(worker.busy_since is None for worker in self.workers)

    def dead_workers(self) -> list[int]:
        return [w.number for w, task in zip(self.workers, self._tasks, strict=True) if task.done()]

    def forget_missing(self, present: set[str]) -> None:
        """After a full directory scan: forget skip memories of names that no longer exist."""
        self._skipped = {entry for entry in self._skipped if entry[0] in present}

    async def offer(self, name: str) -> None:
        """Queue `name` for shipping unless it is queued, being shipped, or known to be skipped."""
        if not self._accepting:
            return
        if name in self._pending:
            self._again.add(name)
            return
        try:
            st = os.lstat(self.watch_dir / name)
        except FileNotFoundError:
            return  # gone before we looked: nothing to ship, nothing lost
        except OSError as error:
            log.warning("cannot stat %r: %s", name, error.strerror)
            return
        if (name, st.st_dev, st.st_ino, st.st_mtime_ns) in self._skipped:
            return
        if self.after_upload.shipped_stat(name, st):
            return  # keep mode: this very file is in the bucket already
        self.metrics.cores_detected.inc()
        self.shipper.found(self.watch_dir / name)
        self._pending[name] = (st.st_size, st.st_mtime)
        self._update_gauges()
        await self.queue.put(name)
        self.metrics.queue_depth.set(self.queue.qsize())

    def _update_gauges(self) -> None:
        self.metrics.pending_files.set(len(self._pending))
        self.metrics.pending_bytes.set(sum(size for size, _ in self._pending.values()))
        self.metrics.queue_depth.set(self.queue.qsize())
        self.metrics.most_failed_attempts.set(max(self._failures.values(), default=0))

    async def _work(self, worker: Worker) -> None:
        while self._accepting:
            worker.beat(busy=False)
            name = await self.queue.get()
            # Held after the name was taken too: a worker may have been waiting for one meanwhile.
            # The file waits here as it would in the queue (not busy, not claimed).
            await self._may_ship.wait()
            # Claimed before the first await: from here on the disk budget cannot delete it.
            self.claims.take(name)
            worker.beat(busy=True)
            worker.current = name
            self.metrics.queue_depth.set(self.queue.qsize())
            try:
                await self._ship(name)
            finally:
                worker.current = None
                self.finished += 1
                self.claims.release(name)
                self.queue.task_done()

    async def _ship(self, name: str) -> None:
        path = self.watch_dir / name
        try:
            await self.shipper.ship(path)
        except SkipFile as skip:
            self._remember_skip(name, skip)
        except FileChanged as changed:
            log.warning("%s; shipping it again", changed, extra={"event": "file_changed", "file": str(path)})
            self.metrics.upload_retries.inc()
            # A short pause: a file still being written would otherwise be re-read in a hot loop.
            self._retry_later(name, attempt=1)
            return
        except S3Error as error:
            attempt = self._failed(name)
            self.metrics.upload_retries.inc()
            delay = self._retry_later(name, attempt)
            log.error(
                "upload of %r failed (attempt %d), trying again in %.1fs: %s",
                str(path),
                attempt,
                delay,
                error,
                extra={
                    "event": "upload_failed",
                    "file": str(path),
                    "attempt": attempt,
                    "error": str(error),
                },
            )
            return
        except Exception:
            # A bug must not kill the worker or lose the file: log it and try the file again later.
            log.exception("unexpected error shipping %r", str(path))
            self._retry_later(name, self._failed(name))
            return
        self._done(name)

    def _failed(self, name: str) -> int:
        """Count a failed attempt of `name` (its backoff grows, alerts see it); returns its number."""
        attempt = self._failures.get(name, 0) + 1
        self._failures[name] = attempt
        self.metrics.uploads.labels("failure").inc()
        self._update_gauges()
        return attempt

    def _remember_skip(self, name: str, skip: SkipFile) -> None:
        self._done(name)
        if skip.reason == "vanished":
            return
        try:
            st = os.lstat(self.watch_dir / name)
        except OSError:
            return
        self._skipped.add((name, st.st_dev, st.st_ino, st.st_mtime_ns))
        self.metrics.skipped_files.labels(skip.reason).inc()
        log.warning("skipping %s", skip.detail, extra={"event": "skipped", "reason": skip.reason})

    def _done(self, name: str) -> None:
        self._pending.pop(name, None)
        self._failures.pop(name, None)
        self._update_gauges()
        if name in self._again:
            self._again.discard(name)
            self._retry_later(name, attempt=-1)

    def _retry_later(self, name: str, attempt: int) -> float:
        """Offer `name` again after a backoff (attempt -1: at once). The file stays pending."""
        delay = self.backoff.delay(attempt) if attempt > 0 else 0.0
        retry = asyncio.create_task(self._requeue(name, delay), name=f"retry-{attempt}")
        self._retries.add(retry)
        retry.add_done_callback(self._retries.discard)
        return delay

    async def _requeue(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._accepting:
            return
        if name not in self._pending:
            await self.offer(name)
            return
        await self.queue.put(name)
        self.metrics.queue_depth.set(self.queue.qsize())

    async def close(self, grace: float) -> None:
        """Stop taking files; let uploads in progress finish for `grace` seconds, then cancel them.

        Files still queued stay on disk and are found again at the next start.
        """
        self._accepting = False
        for retry in list(self._retries):
            retry.cancel()
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()
        idle = [t for t, w in zip(self._tasks, self.workers, strict=True) if w.busy_since is None]
        for task in idle:
            task.cancel()
        busy = [t for t in self._tasks if t not in idle]
        if busy:
            _, still_running = await asyncio.wait(busy, timeout=grace)
            if still_running:
                log.warning("shutdown timeout: cancelling %d upload(s) in progress", len(still_running))
        await cancel_and_wait([*self._tasks, *self._retries])
        await self.shipper.close()
