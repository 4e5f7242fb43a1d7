"""The daemon: startup() -> wait for a stop signal -> shutdown(). Wires every part together.

Data flows one way: watcher -> pipeline (bounded queue, workers) -> shipper -> S3 -> delete/record.
The HTTP server starts first and stops last, so probes and scrapes see the whole life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from coredump_shipper import crashfacts, http
from coredump_shipper.budget import DiskBudget
from coredump_shipper.config import Config
from coredump_shipper.corefile import Identity
from coredump_shipper.errors import UploadError
from coredump_shipper.kube import kube_features
from coredump_shipper.metrics import Metrics
from coredump_shipper.pipeline import Pipeline
from coredump_shipper.record import ShippedRecord
from coredump_shipper.s3checks import self_test
from coredump_shipper.shipper import Shipper
from coredump_shipper.stopping import cancel_and_wait
from coredump_shipper.uploader import S3Store, client_settings, s3_client
from coredump_shipper.watcher import Watcher

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)
S3_CHECK_INTERVAL = 15.0
BUDGET_INTERVAL = 5.0
S3_READY_WINDOW = 60.0


class Service:
    """The running shipper. `serve()` does it all; tests drive startup()/shutdown() themselves."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.started_at = datetime.now(UTC)
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.self_test_failure: str | None = None
        self.store: S3Store
        self.pipeline: Pipeline
        self.watcher: Watcher
        self.watcher_task: asyncio.Task[None]

    async def startup(self) -> None:
        config = self.config
        app = http.make_app(self.health, self.readiness, self.metrics.registry)
        await self._stack.enter_async_context(http.serve(app, *config.listen))
        client = await self._stack.enter_async_context(s3_client(client_settings(config)))
        self.store = S3Store.for_config(client, config, self.metrics)
        backoff = self.store.backoff
        keep = config.after_upload == "keep"
        record = ShippedRecord(config.state_path) if keep else None
        # Keep mode: files recorded as shipped are neither queued again nor kept before unshipped ones.
        self._already_shipped = None if record is None else self._shipped_check(record)
        kube = await self._stack.enter_async_context(kube_features(config, self.metrics))
        shipper = Shipper(config, self.store, self.metrics, delete_after=not keep, record=record, kube=kube)
        self.pipeline = Pipeline(
            config.watch_dir,
            shipper,
            self.metrics,
            backoff,
            workers=config.workers,
            queue_size=config.queue_size,
            already_shipped=self._already_shipped,
        )
        await self._stack.enter_async_context(self.pipeline)
        self.watcher = Watcher(
            config.watch_dir,
            self.pipeline.offer,
            config.ignored,
            self.metrics,
            rescan_interval=config.rescan_interval,
            on_scan=self._after_scan,
        )
        self.watcher_task = asyncio.create_task(self.watcher.run(), name="watcher")
        self._tasks = [
            self.watcher_task,
            asyncio.create_task(self._check_s3(), name="s3-check"),
            asyncio.create_task(self._clean_stale_uploads(), name="stale-uploads"),
            asyncio.create_task(self._keep_disk_budget(), name="disk-budget"),
        ]
        if config.self_test:
            self._tasks.append(asyncio.create_task(self._self_test(client), name="self-test"))
        log.info(
            "coredump-shipper started: watching %s, shipping to s3://%s, listening on %s:%d",
            config.watch_dir,
            config.bucket,
            *config.listen,
            extra={"event": "started"},
        )

    def _after_scan(self, names: set[str]) -> None:
        self.pipeline.forget_missing(names)
        crashfacts.sweep(self.config.watch_dir, names, time.time())

    @staticmethod
    def _shipped_check(record: ShippedRecord) -> Callable[[str, os.stat_result], bool]:
        return lambda name, st: record.contains(name, Identity.of(st))

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop watching, give uploads in progress the shutdown timeout, cancel the rest, stop HTTP."""
        log.info("stopping: in-flight uploads have %.0fs to finish", self.config.shutdown_timeout)
        await cancel_and_wait(self._tasks)
        await self.pipeline.close(grace=self.config.shutdown_timeout)
        await self._stack.aclose()
        log.info("stopped", extra={"event": "stopped"})

    async def serve(self, *, handle_signals: bool = True) -> None:
        await self.startup()
        try:
            with _signal_handlers(self.stop) if handle_signals else contextlib.nullcontext():
                await self.wait()
        finally:
            await self.shutdown()

    # Probes ---------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        watcher_ok = not self.watcher_task.done()
        wedged = [
            w.number
            for w in self.pipeline.workers
            if w.busy_since is not None
            and now - max(w.last_beat, self.store.last_progress) > self.config.stall_timeout
        ]
        dead = self.pipeline.dead_workers() if not self._stop.is_set() else []
        ok = watcher_ok and not wedged and not dead
        return ok, {
            "watcher": "running" if watcher_ok else "stopped",
            "workers": {"total": len(self.pipeline.workers), "wedged": wedged, "dead": dead},
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        watching = self.watcher.watching
        last = self.store.last_success
        s3_ok = last is not None and time.monotonic() - last < S3_READY_WINDOW
        reasons = []
        if not watching:
            reasons.append("watch not established")
        if not s3_ok:
            reasons.append(f"S3 not reachable: {self.store.last_error}")
        if self.self_test_failure:
            reasons.append(f"S3 self-test failed: {self.self_test_failure}")
        body = {"watching": watching, "s3": "ok" if s3_ok else "failing", "reasons": reasons}
        return not reasons, body

    async def _check_s3(self) -> None:
        """A cheap HeadBucket now and then keeps readiness current when no core is shipped."""
        while True:
            with contextlib.suppress(UploadError):
                await self.store.head_bucket()
            await asyncio.sleep(S3_CHECK_INTERVAL)

    async def _self_test(self, client: S3Client) -> None:
        """Write a probe object and a 2-part upload once S3 answers; say which call and setting fail."""
        attempt = 0
        while not (answer := await self_test(self.config, client))[0]:
            if attempt == 0:  # said once: a TLS or credentials problem must reach the log
                (head,) = answer[1]
                log.warning("S3 self-test waits for S3: %s; fix: %s", head.detail, head.fix)
            attempt += 1
            await asyncio.sleep(self.store.backoff.delay(attempt))
        checks = answer[1]
        failed = [check for check in checks if check.status == "FAIL"]
        self.metrics.self_test.set(0 if failed else 1)
        self.self_test_failure = "; ".join(f"{c.name}: {c.detail} (fix: {c.fix})" for c in failed) or None
        for check in failed:
            log.error(
                "S3 self-test failed: %s: %s; fix: %s",
                check.name,
                check.detail,
                check.fix,
                extra={"event": "self_test", "error": check.detail},
            )
        if not failed:
            log.info(
                "S3 self-test passed: PutObject, a 2-part multipart upload and their deletion work",
                extra={"event": "self_test"},
            )

    async def _keep_disk_budget(self) -> None:
        budget = DiskBudget(
            self.config.watch_dir,
            self.config.max_use,
            self.config.keep_free,
            self.config.ignored,
            self.metrics,
        )
        while True:
            try:
                await asyncio.to_thread(budget.enforce, self.pipeline.in_flight())
            except OSError as error:  # the directory is gone for a while: the watcher waits for it
                log.debug("disk budget not checked: %s", error)
            await asyncio.sleep(BUDGET_INTERVAL)

    async def _clean_stale_uploads(self) -> None:
        """Abort this node's multipart uploads left by a killed process; retried until S3 answers."""
        prefix = self.pipeline.shipper.keys.node_prefix(self.config.cluster_name, self.config.node_name)
        if prefix is None:
            log.warning("--key-template has no literal after {node}: stale uploads are not cleaned up")
            return
        attempt = 0
        while True:
            try:
                aborted = await self.store.abort_stale_uploads(prefix, self.started_at)
            except UploadError as error:
                attempt += 1
                await asyncio.sleep(self.store.backoff.delay(attempt))
                log.debug("stale upload clean-up postponed: %s", error)
                continue
            if aborted:
                log.warning("aborted %d stale multipart upload(s) under %r", aborted, prefix)
            return


@contextlib.contextmanager
def _signal_handlers(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT: graceful stop; a second one exits at once (files stay on disk)."""
    loop = asyncio.get_running_loop()
    received = 0

    def handle(signum: int) -> None:
        nonlocal received
        received += 1
        if received > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
