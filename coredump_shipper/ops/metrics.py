"""Every metric the shipper exports, registered on an injected registry (a fresh one per test)."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    gc_collector,
    platform_collector,
    process_collector,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from coredump_shipper import __version__
from coredump_shipper.capture.failures import REASONS as CAPTURE_FAILURE_REASONS

PREFIX = "coredump_shipper"
# Core uploads take from tens of milliseconds (1 MiB on a LAN) to many minutes (10 GiB over a WAN).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
SKIP_REASONS = (
    "symlink",
    "directory",
    "fifo",
    "socket",
    "device",
    "not_regular",
    "unreadable",
    "vanished",
)
DROP_REASONS = ("disk_budget", "rate_limited")
ENRICHMENT_RESULTS = ("matched", "not_found", "ambiguous", "host_network", "no_identity", "unavailable")
EVENT_RESULTS = ("created", "updated", "rate_limited", "dropped", "failed")
# The values of excluded_total{reason}, as capturefilter.REASONS (kept here: metrics import nothing).
EXCLUDE_REASONS = ("namespace", "pod_selector", "pod_annotation")


class Metrics:
    """The shipper's metrics. Label values are fixed sets: never file, pod or key names."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        # A `*_created` gauge per counter and histogram doubles the series and no rule reads them.
        # prometheus_client only offers this switch process-wide; this registry is the process's only one.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if process:
            process_collector.ProcessCollector(registry=r)
            platform_collector.PlatformCollector(registry=r)
            gc_collector.GCCollector(registry=r)

        def name(short: str) -> str:
            return f"{PREFIX}_{short}"

        self.build_info = Info(name("build"), "Version of the running shipper.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        self.cores_detected = Counter(
            name("cores_detected"), "Core files found in the watched directory.", registry=r
        )
        self.uploads = Counter(
            name("uploads"), "Upload attempts of whole files, by result.", ["result"], registry=r
        )
        self.upload_bytes = Counter(name("upload_bytes"), "Bytes sent to S3 (after compression).", registry=r)
        self.core_bytes = Counter(
            name("core_bytes"), "Bytes of core files shipped (before compression).", registry=r
        )
        self.upload_duration = Histogram(
            name("upload_duration_seconds"),
            "Time to ship one core, from opening it to its object being complete.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upload_retries = Counter(
            name("upload_retries"), "S3 calls and whole-file uploads tried again.", registry=r
        )
        self.queue_depth = Gauge(name("queue_depth"), "Files waiting for a worker.", registry=r)
        self.pending_files = Gauge(
            name("pending_files"), "Cores on disk found but not yet shipped.", registry=r
        )
        self.pending_bytes = Gauge(
            name("pending_bytes"), "Bytes of cores on disk found but not yet shipped.", registry=r
        )
        self.skipped_files = Counter(
            name("skipped_files"),
            "Files not shipped (not regular, vanished...), by reason.",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            name("dropped"),
            "Cores deleted or not shipped to protect the node, by reason.",
            ["reason"],
            registry=r,
        )
        self.capture_failures = Counter(
            name("capture_failures"),
            "Cores the pipe receiver did not store, or stored cut short, by reason.",
            ["reason"],
            registry=r,
        )
        self.inotify_overflows = Counter(
            name("inotify_overflows"),
            "inotify queue overflows (each triggers a rescan).",
            registry=r,
        )
        self.last_success = Gauge(
            name("last_success_timestamp_seconds"),
            "Unix time of the last shipped core.",
            registry=r,
        )
        self.truncated_cores = Counter(
            name("truncated_cores"),
            "Cores shipped whose ELF headers say they are incomplete.",
            registry=r,
        )
        self.disk_usage = Gauge(
            name("disk_usage_bytes"),
            "Space (allocated blocks) the cores in the watched directory take.",
            registry=r,
        )
        self.disk_limit = Gauge(
            name("disk_limit_bytes"),
            "The disk budget in force: --max-use and --keep-free in bytes.",
            ["limit"],
            registry=r,
        )
        self.storm_limit = Gauge(
            name("storm_limit_cores"),
            "Cores of one program of one workload shipped per window before rate limiting.",
            registry=r,
        )
        self.storm_window = Gauge(
            name("storm_window_seconds"),
            "The window of the storm limit (per workload and program).",
            registry=r,
        )
        self.integrity_failures = Counter(
            name("integrity_failures"),
            "Objects whose ETag shows the store kept other bytes than were sent (removed; the core is kept).",
            registry=r,
        )
        # Read when scraped (set_function), from the shipper's periodic S3 check.
        self.s3_reachable = Gauge(
            name("s3_reachable"),
            "1 while S3 answers: the last periodic check (HeadBucket every 15 s) succeeded and an S3 call"
            " succeeded in the last minute; 0 otherwise, also before the first answer.",
            registry=r,
        )
        self.s3_last_success = Gauge(
            name("s3_last_success_timestamp_seconds"),
            "Unix time of the last S3 call that succeeded (the periodic check or an upload); 0: none yet.",
            registry=r,
        )
        self.start_time = Gauge(
            name("start_time_seconds"),
            "Unix time this shipper process started (a change means a restart).",
            registry=r,
        )
        self.self_test = Gauge(
            name("self_test_success"),
            "1 if the start-up S3 self-test passed, 0 if it failed, -1 before it ran or when it is off.",
            registry=r,
        )
        self.self_test.set(-1)
        self.self_test_warnings = Gauge(
            name("self_test_warnings"),
            "Checks of the start-up S3 self-test that passed with a warning (e.g. no ListMultipartUploads).",
            registry=r,
        )
        # Health and backlog age are read when scraped (set_function), so they are never stale.
        self.healthy = Gauge(
            name("healthy"),
            "1 while /healthz passes (watcher running, no wedged or dead worker), else 0.",
            registry=r,
        )
        self.healthy.set(1)
        self.workers_wedged = Gauge(
            name("workers_wedged"),
            "Workers busy with no S3 call finished for --stall-timeout, or dead: each fails /healthz.",
            registry=r,
        )
        self.watcher_running = Gauge(
            name("watcher_running"), "1 while the directory watcher runs, else 0.", registry=r
        )
        self.oldest_pending_age = Gauge(
            name("oldest_pending_age_seconds"),
            "Age of the oldest core waiting to be shipped, from its modification time (0: none waits).",
            registry=r,
        )
        self.most_failed_attempts = Gauge(
            name("pending_failed_attempts_max"),
            "The most failed upload attempts of one core still waiting to be shipped.",
            registry=r,
        )
        self._kubernetes_metrics(r)
        self._capture_metrics(r)
        for limit in ("max_use", "keep_free"):
            self.disk_limit.labels(limit)
        for result in ("success", "failure"):
            self.uploads.labels(result)
        for reason in SKIP_REASONS:
            self.skipped_files.labels(reason)
        for counter, reasons in (
            (self.dropped, DROP_REASONS),
            (self.capture_failures, CAPTURE_FAILURE_REASONS),
        ):
            for reason in reasons:
                counter.labels(reason)

    def _kubernetes_metrics(self, r: CollectorRegistry) -> None:
        """Pod identity and Events: what the Kubernetes API gave and what was said to it."""
        self.enrichment = Counter(
            f"{PREFIX}_enrichment",
            "Cores looked up in the Kubernetes API for their pod, by result (matched or why not).",
            ["result"],
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}_events",
            "CoreDumped Events on pods: created, updated (series), rate_limited, dropped, failed.",
            ["result"],
            registry=r,
        )
        for result in ENRICHMENT_RESULTS:
            self.enrichment.labels(result)
        for result in EVENT_RESULTS:
            self.events.labels(result)

    def _capture_metrics(self, r: CollectorRegistry) -> None:
        """What is captured at all: cores excluded by choice, and whether the kernel sends cores here."""
        self.excluded = Counter(
            f"{PREFIX}_excluded",
            "Cores deleted unshipped because their pod is excluded: namespace, pod_selector, pod_annotation.",
            ["reason"],
            registry=r,
        )
        self.capture_configured = Gauge(
            f"{PREFIX}_capture_configured",
            "1 if the node's core_pattern (and core_pipe_limit) send cores to this shipper, 0 if not, "
            "-1 before the first check or with --capture-mode off.",
            registry=r,
        )
        self.capture_configured.set(-1)
        for reason in EXCLUDE_REASONS:
            self.excluded.labels(reason)


class Labelled(Collector):
    """A registry as scraped: every sample also carries `labels` (the node and the pod's namespace).

    The alert rules find each node's series by these labels, so they match whether Prometheus scrapes
    the pod through the Operator's monitors, annotations or a plain scrape config, whatever target
    labels that gives. Where a scrape sets the same label, both values are the pod's own.
    """

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self.registry = registry
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [
                sample._replace(labels={**self.labels, **sample.labels}) for sample in family.samples
            ]
            yield labelled
