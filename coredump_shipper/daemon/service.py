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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from coredump_shipper.capture import failures, heartbeat
from coredump_shipper.config.settings import Config
from coredump_shipper.core import companions
from coredump_shipper.daemon import heap
from coredump_shipper.daemon.pipeline import Pipeline
from coredump_shipper.daemon.watcher import Watcher
from coredump_shipper.diagnostics import capturestate
from coredump_shipper.diagnostics.checkrow import Check
from coredump_shipper.diagnostics.s3store import self_test
from coredump_shipper.errors import S3Error
from coredump_shipper.ops import endpoints
from coredump_shipper.ops.metrics import Labelled, Metrics
from coredump_shipper.s3.client import s3_client
from coredump_shipper.s3.retry import repeat_until
from coredump_shipper.s3.settings import client_settings, store_settings
from coredump_shipper.s3.store import S3Store
from coredump_shipper.ship import afterupload
from coredump_shipper.ship.diskbudget import DiskBudget
from coredump_shipper.ship.kube import kube_features
from coredump_shipper.ship.settings import kube_settings, shipper_settings
from coredump_shipper.ship.shipper import Shipper
from coredump_shipper.stopping import cancel_and_wait

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger(__name__)
S3_CHECK_INTERVAL = 15.0
BUDGET_INTERVAL = 5.0
CAPTURE_FAILURES_INTERVAL = 5.0
CAPTURE_CHECK_INTERVAL = 60.0
# How often an idle pipeline's kept buffers and free heap pages are given back (see `heap`).
MEMORY_RELEASE_INTERVAL = 10.0
# S3 counts as reachable while the last periodic check succeeded and some call succeeded this recently
# (a check that hangs until its deadline must not leave an old success standing).
S3_REACHABLE_WINDOW = 60.0
# Failed aborts are tried again at most this often, after a call to the store succeeded.
ABORT_RETRY_PAUSE = 1.0


@dataclass(frozen=True)
class Health:
    """What /healthz answers and the health gauges export."""

    watcher_running: bool
    wedged: list[int]
    dead: list[int]

    @property
    def failing_workers(self) -> list[int]:
        return self.wedged + self.dead

    @property
    def ok(self) -> bool:
        return self.watcher_running and not self.failing_workers


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
        self.s3_check_ok = False
        # This node's keys, for the stale-upload clean-up (None: the template cannot set them apart).
        self.own_keys = config.keys.node_keys(config.cluster_name, config.node_name)
        self.store: S3Store
        self.pipeline: Pipeline
        self.watcher: Watcher
        self.watcher_task: asyncio.Task[None]

    async def startup(self) -> None:
        config = self.config
        identity = {"node": config.node_name} | ({"namespace": config.namespace} if config.namespace else {})
        app = endpoints.make_app(self.health, self.readiness, Labelled(self.metrics.registry, identity))
        await self._stack.enter_async_context(endpoints.serve(app, *config.listen))
        client = await self._stack.enter_async_context(s3_client(client_settings(config)))
        self.store = S3Store(client, store_settings(config), self.metrics)
        backoff = self.store.backoff
        # Built once; every part that acts on shipped files obeys this same object.
        self.after_upload = afterupload.for_daemon(config.after_upload, config.state_path)
        self.ignored = afterupload.IgnoreFilter(config.ignore, self.after_upload)
        kube = await self._stack.enter_async_context(kube_features(kube_settings(config), self.metrics))
        shipper = Shipper(shipper_settings(config), self.store, self.metrics, self.after_upload, kube=kube)
        self.pipeline = Pipeline(
            config.watch_dir,
            shipper,
            self.metrics,
            backoff,
            workers=config.workers,
            queue_size=config.queue_size,
            after_upload=self.after_upload,
        )
        await self._stack.enter_async_context(self.pipeline)
        self.watcher = Watcher(
            config.watch_dir,
            self.pipeline.offer,
            self.ignored,
            self.metrics,
            rescan_interval=config.rescan_interval,
            on_scan=self._after_scan,
        )
        self.watcher_task = asyncio.create_task(self.watcher.run(), name="watcher")
        metrics = self.metrics
        metrics.healthy.set_function(lambda: float(self._health().ok))
        metrics.workers_wedged.set_function(lambda: float(len(self._health().failing_workers)))
        metrics.watcher_running.set_function(lambda: float(self._health().watcher_running))
        metrics.s3_reachable.set_function(lambda: float(self.s3_reachable()))
        metrics.s3_last_success.set_function(self._s3_last_success_time)
        metrics.start_time.set(self.started_at.timestamp())
        self._tasks = [
            self.watcher_task,
            asyncio.create_task(self._check_s3(), name="s3-check"),
            asyncio.create_task(self._clean_stale_uploads(), name="stale-uploads"),
            asyncio.create_task(self._retry_failed_aborts(), name="failed-aborts"),
            asyncio.create_task(self._keep_disk_budget(), name="disk-budget"),
            asyncio.create_task(self._count_capture_failures(), name="capture-failures"),
            asyncio.create_task(self._give_back_memory_when_idle(), name="give-back-memory"),
        ]
        if config.capture_mode != "off":
            self._tasks.append(asyncio.create_task(self._watch_capture(), name="capture-check"))
        if config.heartbeat:
            self._tasks.append(
                asyncio.create_task(heartbeat.keep_beating(config.heartbeat), name="heartbeat")
            )
        if config.self_test:
            # Shipping is not held until the self-test has answered: while S3 cannot be reached,
            # failed uploads must be counted (the alerts read them), and each object is verified
            # by its ETag anyway.
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
        companions.sweep(self.config.watch_dir, names, time.time())

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop watching, give uploads in progress the shutdown timeout, cancel the rest, stop HTTP."""
        log.info("stopping: in-flight uploads have %.0fs to finish", self.config.shutdown_timeout)
        # A stopping watcher and cancelled workers are not failures: probes and scrapes during a
        # rolling update must not report the pod as broken.
        self._stop.set()
        await cancel_and_wait(self._tasks)
        await self.pipeline.close(grace=self.config.shutdown_timeout)
        await self._stack.aclose()
        log.info("stopped", extra={"event": "stopped"})

    async def serve(self, *, handle_signals: bool = True) -> None:
        await self.startup()
        # The handlers stay installed during shutdown: a second signal there must exit at once.
        with _signal_handlers(self.stop) if handle_signals else contextlib.nullcontext():
            try:
                await self.wait()
            finally:
                await self.shutdown()

    # Probes ---------------------------------------------------------------------------------

    def _health(self) -> Health:
        now = time.monotonic()
        stopping = self._stop.is_set()
        wedged = [
            w.number
            for w in self.pipeline.workers
            if w.busy_since is not None
            and now - max(w.last_beat, self.store.last_progress) > self.config.stall_timeout
        ]
        return Health(
            watcher_running=stopping or not self.watcher_task.done(),
            wedged=wedged,
            dead=[] if stopping else self.pipeline.dead_workers(),
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        state = self._health()
        return state.ok, {
            "watcher": "running" if state.watcher_running else "stopped",
            "workers": {"total": len(self.pipeline.workers), "wedged": state.wedged, "dead": state.dead},
        }

    def s3_reachable(self) -> bool:
        last = self.store.last_success
        return self.s3_check_ok and last is not None and time.monotonic() - last < S3_REACHABLE_WINDOW

    def _s3_last_success_time(self) -> float:
        last = self.store.last_success
        return 0.0 if last is None else time.time() - (time.monotonic() - last)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready once this node's pod can take cores: S3 is reported, not required (see http.py)."""
        watching = self.watcher.watching
        s3_ok = self.s3_reachable()
        reasons = []
        if not watching:
            reasons.append("watch not established")
        if self.self_test_failure:
            reasons.append(f"S3 self-test failed: {self.self_test_failure}")
        body: dict[str, Any] = {"watching": watching, "s3": "ok" if s3_ok else "failing", "reasons": reasons}
        if not s3_ok:
            body["s3_error"] = self.store.last_error
        return not reasons, body

    async def _check_s3(self) -> None:
        """A cheap HeadBucket now and then keeps coredump_shipper_s3_reachable current when idle."""

        async def check(attempt: int) -> bool:
            try:
                await self.store.head_bucket()
            except S3Error:
                self.s3_check_ok = False
            else:
                self.s3_check_ok = True
            return False  # for the whole run

        await repeat_until(check, lambda attempt: S3_CHECK_INTERVAL)

    async def _self_test(self, client: S3Client) -> None:
        """Write a probe object and a 2-part upload once S3 answers; say which call and setting fail.

        While the store keeps other bytes than were sent, shipping is held (every core stays on disk)
        and the test runs again after a backoff until it passes."""
        attempt = 0
        while True:
            checks = await self._run_self_test(client)
            if not any(check.corrupts for check in checks):
                if self.pipeline.held:
                    log.info("shipping cores again", extra={"event": "self_test"})
                self.pipeline.resume()
                return
            attempt += 1
            delay = self.store.backoff.delay(attempt)
            if attempt == 1:
                log.error(
                    "the store keeps other bytes than were sent: no core is shipped or deleted until a "
                    "self-test passes; next self-test in %.0fs",
                    delay,
                    extra={"event": "self_test"},
                )
            self.pipeline.hold()
            await asyncio.sleep(delay)

    async def _run_self_test(self, client: S3Client) -> Sequence[Check]:
        checks: Sequence[Check] = ()

        async def run(attempt: int) -> bool:
            nonlocal checks
            answered, checks = await self_test(self.config, client)
            if not answered and attempt == 0:  # said once: a TLS or credentials problem must reach the log
                (head,) = checks
                log.warning("S3 self-test waits for S3: %s; fix: %s", head.detail, head.fix)
            return answered

        await repeat_until(run, self.store.backoff.delay)
        failed = [check for check in checks if check.status == "FAIL"]
        warned = [check for check in checks if check.status == "WARN"]
        self.metrics.self_test.set(0 if failed else 1)
        self.metrics.self_test_warnings.set(len(warned))
        for check in warned:
            log.warning(
                "S3 self-test warning: %s: %s; fix: %s",
                check.name,
                check.detail,
                check.fix,
                extra={"event": "self_test", "error": check.detail},
            )
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
                "S3 self-test passed%s: PutObject, a 2-part multipart upload and their deletion work",
                f" with {len(warned)} warning(s)" if warned else "",
                extra={"event": "self_test"},
            )
        return checks

    async def _keep_disk_budget(self) -> None:
        budget = DiskBudget(
            self.config.watch_dir,
            self.config.max_use,
            self.config.keep_free,
            self.ignored,
            self.metrics,
            self.after_upload,
        )
        claims = self.pipeline.claims

        async def enforce(attempt: int) -> bool:
            try:
                await asyncio.to_thread(budget.enforce, claims)
            except OSError as error:  # the directory is gone for a while: the watcher waits for it
                log.debug("disk budget not checked: %s", error)
            return False  # for the whole run

        await repeat_until(enforce, lambda attempt: BUDGET_INTERVAL)

    async def _retry_failed_aborts(self) -> None:
        """An abort that failed during an outage is tried again once the store answers again, so its
        parts do not stay on the store (they cost space) until the next start."""
        store = self.store
        while True:
            await store.answered.wait()
            store.answered.clear()
            if store.unaborted:
                aborted = await store.retry_aborts()
                if aborted:
                    log.info("aborted %d multipart upload(s) whose abort had failed", aborted)
            await asyncio.sleep(ABORT_RETRY_PAUSE)

    async def _count_capture_failures(self) -> None:
        """The pipe receiver's records of cores it lost or cut short, into the metrics."""

        async def count(attempt: int) -> bool:
            counts = await asyncio.to_thread(failures.collect, self.config.watch_dir)
            for reason, number in counts.items():
                self.metrics.capture_failures.labels(reason).inc(number)
            return False  # for the whole run

        await repeat_until(count, lambda attempt: CAPTURE_FAILURES_INTERVAL)

    async def _watch_capture(self) -> None:
        """Read core_pattern and core_pipe_limit back every minute: capture can be switched off under us."""
        config = self.config
        expect = capturestate.for_config(config)
        last: tuple[bool, str | None] | None = None

        async def look(attempt: int) -> bool:
            nonlocal last
            state = await asyncio.to_thread(capturestate.check, expect)
            self.metrics.capture_configured.set(1 if state.configured else 0)
            if (state.configured, state.problem) != last:  # said when it changes, not every minute
                if state.configured:
                    log.info(
                        "capture configured: %s", state.describe(), extra={"event": "capture_configured"}
                    )
                else:
                    log.error(
                        "capture NOT configured: %s; found %s; cores are not sent here until node setup "
                        "runs again (a rollout of the DaemonSet) or the line is restored",
                        state.problem,
                        state.describe(),
                        extra={"event": "capture_not_configured", "error": state.problem},
                    )
            last = state.configured, state.problem
            return False  # for the whole run

        await repeat_until(look, lambda attempt: CAPTURE_CHECK_INTERVAL)

    async def _give_back_memory_when_idle(self) -> None:
        """Once the pipeline has stayed idle for an interval after work, return its memory."""
        seen = self.pipeline.finished

        async def release(attempt: int) -> bool:
            nonlocal seen
            finished = self.pipeline.finished
            if finished != seen and self.pipeline.idle:
                # Work ended since the last look and none is waiting: the burst is over. Between
                # bursts nothing is released twice, and a busy pipeline keeps its buffers.
                seen = finished
                self.store.drop_spare_buffers()
                heap.give_back_free_pages()
            return False  # for the whole run

        await repeat_until(release, lambda attempt: MEMORY_RELEASE_INTERVAL)

    async def _clean_stale_uploads(self) -> None:
        """Abort this node's multipart uploads left by a killed process; retried until S3 answers."""
        own = self.own_keys
        if own is None:
            log.warning(
                "--key-template does not set this node's keys apart ({node} needs a literal after it, "
                "and a segment of its own when fields come before it): stale uploads are not cleaned up"
            )
            return
        prefix = own.prefix

        async def clean(attempt: int) -> bool:
            try:
                aborted = await self.store.abort_stale_uploads(own, self.started_at)
            except S3Error as error:
                if error.transient:
                    log.debug("stale upload clean-up postponed: %s", error)
                    return False
                # 501/405 and the like never clear: asking again would only fill the log.
                log.warning(
                    "stale multipart uploads under %r are not cleaned up: %s; this store cannot "
                    "list or abort them: add an AbortIncompleteMultipartUpload lifecycle rule",
                    prefix,
                    error,
                    extra={"event": "stale_uploads", "error": str(error)},
                )
                return True
            if aborted:
                log.warning("aborted %d stale multipart upload(s) under %r", aborted, prefix)
            return True

        await repeat_until(clean, self.store.backoff.delay)


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
