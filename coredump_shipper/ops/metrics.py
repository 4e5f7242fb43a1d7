"""Every metric the shipper exports, one table row each, registered on an injected registry (a fresh
one per test)."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Spec:
    """One metric: the Metrics attribute that holds it, its kind, name (after the prefix), help and labels.

    `values` are the label values whose series exist from the start (at 0), so rules and dashboards
    see every reason before the first one happens; `initial` is a gauge's value before it is first set.
    """

    attribute: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    initial: float | None = None


# Registered in this order, which is the order of the README's metrics table.
METRICS: tuple[Spec, ...] = (
    Spec("cores_detected", Counter, "cores_detected", "Core files found in the watched directory."),
    Spec(
        "uploads",
        Counter,
        "uploads",
        "Upload attempts of whole files, by result.",
        ("result",),
        ("success", "failure"),
    ),
    Spec("upload_bytes", Counter, "upload_bytes", "Bytes sent to S3 (after compression)."),
    Spec("core_bytes", Counter, "core_bytes", "Bytes of core files shipped (before compression)."),
    Spec(
        "upload_duration",
        Histogram,
        "upload_duration_seconds",
        "Time to ship one core, from opening it to its object being complete.",
    ),
    Spec("upload_retries", Counter, "upload_retries", "S3 calls and whole-file uploads tried again."),
    Spec("queue_depth", Gauge, "queue_depth", "Files waiting for a worker."),
    Spec("pending_files", Gauge, "pending_files", "Cores on disk found but not yet shipped."),
    Spec("pending_bytes", Gauge, "pending_bytes", "Bytes of cores on disk found but not yet shipped."),
    Spec(
        "skipped_files",
        Counter,
        "skipped_files",
        "Files not shipped (not regular, vanished...), by reason.",
        ("reason",),
        SKIP_REASONS,
    ),
    Spec(
        "dropped",
        Counter,
        "dropped",
        "Cores deleted or not shipped to protect the node, by reason.",
        ("reason",),
        DROP_REASONS,
    ),
    Spec(
        "capture_failures",
        Counter,
        "capture_failures",
        "Cores the pipe receiver did not store, or stored cut short, by reason.",
        ("reason",),
        CAPTURE_FAILURE_REASONS,
    ),
    Spec(
        "inotify_overflows", Counter, "inotify_overflows", "inotify queue overflows (each triggers a rescan)."
    ),
    Spec("last_success", Gauge, "last_success_timestamp_seconds", "Unix time of the last shipped core."),
    Spec(
        "truncated_cores",
        Counter,
        "truncated_cores",
        "Cores shipped whose ELF headers say they are incomplete.",
    ),
    Spec(
        "disk_usage",
        Gauge,
        "disk_usage_bytes",
        "Space (allocated blocks) the cores in the watched directory take.",
    ),
    Spec(
        "disk_limit",
        Gauge,
        "disk_limit_bytes",
        "The disk budget in force: --max-use and --keep-free in bytes.",
        ("limit",),
        ("max_use", "keep_free"),
    ),
    Spec(
        "storm_limit",
        Gauge,
        "storm_limit_cores",
        "Cores of one program of one workload shipped per window before rate limiting.",
    ),
    Spec(
        "storm_window",
        Gauge,
        "storm_window_seconds",
        "The window of the storm limit (per workload and program).",
    ),
    Spec(
        "integrity_failures",
        Counter,
        "integrity_failures",
        "Objects whose ETag shows the store kept other bytes than were sent (removed; the core is kept).",
    ),
    # s3_reachable, healthy and oldest_pending_age are read when scraped (set_function, by the
    # daemon), so they are never stale.
    Spec(
        "s3_reachable",
        Gauge,
        "s3_reachable",
        "1 while S3 answers: the last periodic check (HeadBucket every 15 s) succeeded and an S3 call"
        " succeeded in the last minute; 0 otherwise, also before the first answer.",
    ),
    Spec(
        "s3_last_success",
        Gauge,
        "s3_last_success_timestamp_seconds",
        "Unix time of the last S3 call that succeeded (the periodic check or an upload); 0: none yet.",
    ),
    Spec(
        "start_time",
        Gauge,
        "start_time_seconds",
        "Unix time this shipper process started (a change means a restart).",
    ),
    Spec(
        "self_test",
        Gauge,
        "self_test_success",
        "1 if the start-up S3 self-test passed, 0 if it failed, -1 before it ran or when it is off.",
        initial=-1,
    ),
    Spec(
        "self_test_warnings",
        Gauge,
        "self_test_warnings",
        "Checks of the start-up S3 self-test that passed with a warning (e.g. no ListMultipartUploads).",
    ),
    Spec(
        "healthy",
        Gauge,
        "healthy",
        "1 while /healthz passes (watcher running, no wedged or dead worker), else 0.",
        initial=1,
    ),
    Spec(
        "workers_wedged",
        Gauge,
        "workers_wedged",
        "Workers busy with no S3 call finished for --stall-timeout, or dead: each fails /healthz.",
    ),
    Spec("watcher_running", Gauge, "watcher_running", "1 while the directory watcher runs, else 0."),
    Spec(
        "oldest_pending_age",
        Gauge,
        "oldest_pending_age_seconds",
        "Age of the oldest core waiting to be shipped, from its modification time (0: none waits).",
    ),
    Spec(
        "most_failed_attempts",
        Gauge,
        "pending_failed_attempts_max",
        "The most failed upload attempts of one core still waiting to be shipped.",
    ),
    # Pod identity and Events: what the Kubernetes API gave and what was said to it.
    Spec(
        "enrichment",
        Counter,
        "enrichment",
        "Cores looked up in the Kubernetes API for their pod, by result (matched or why not).",
        ("result",),
        ENRICHMENT_RESULTS,
    ),
    Spec(
        "events",
        Counter,
        "events",
        "CoreDumped Events on pods: created, updated (series), rate_limited, dropped, failed.",
        ("result",),
        EVENT_RESULTS,
    ),
    # What is captured at all: cores excluded by choice, and whether the kernel sends cores here.
    Spec(
        "excluded",
        Counter,
        "excluded",
        "Cores deleted unshipped because their pod is excluded: namespace, pod_selector, pod_annotation.",
        ("reason",),
        EXCLUDE_REASONS,
    ),
    Spec(
        "capture_configured",
        Gauge,
        "capture_configured",
        "1 if the node's core_pattern (and core_pipe_limit) send cores to this shipper, 0 if not, "
        "-1 before the first check or with --capture-mode off.",
        initial=-1,
    ),
)


def register(spec: Spec, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
    """The metric of one table row, registered, with its fixed label values' series created."""
    name = f"{PREFIX}_{spec.name}"
    metric: Counter | Gauge | Histogram
    if spec.kind is Histogram:
        metric = Histogram(name, spec.help, spec.labels, buckets=DURATION_BUCKETS, registry=registry)
    else:
        metric = spec.kind(name, spec.help, spec.labels, registry=registry)
    for value in spec.values:
        metric.labels(value)
    if spec.initial is not None and isinstance(metric, Gauge):
        metric.set(spec.initial)
    return metric


class Metrics:
    """The shipper's metrics (the METRICS table, plus build info). Label values are fixed sets: never
    file, pod or key names."""

    # One attribute per row of METRICS (tests/ops/test_metrics.py checks that they match).
    cores_detected: Counter
    uploads: Counter
    upload_bytes: Counter
    core_bytes: Counter
    upload_duration: Histogram
    upload_retries: Counter
    queue_depth: Gauge
    pending_files: Gauge
    pending_bytes: Gauge
    skipped_files: Counter
    dropped: Counter
    capture_failures: Counter
    inotify_overflows: Counter
    last_success: Gauge
    truncated_cores: Counter
    disk_usage: Gauge
    disk_limit: Gauge
    storm_limit: Gauge
    storm_window: Gauge
    integrity_failures: Counter
    s3_reachable: Gauge
    s3_last_success: Gauge
    start_time: Gauge
    self_test: Gauge
    self_test_warnings: Gauge
    healthy: Gauge
    workers_wedged: Gauge
    watcher_running: Gauge
    oldest_pending_age: Gauge
    most_failed_attempts: Gauge
    enrichment: Counter
    events: Counter
    excluded: Counter
    capture_configured: Gauge

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
        self.build_info = Info(f"{PREFIX}_build", "Version of the running shipper.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})
        for spec in METRICS:
            setattr(self, spec.attribute, register(spec, r))


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
