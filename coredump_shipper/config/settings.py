"""Every setting in one table, parsed from flags or their environment twins into a frozen Config.

Each setting has a flag (`--watch-dir`), an environment twin (`COREDUMP_SHIPPER_WATCH_DIR`) and, for the
original script's variables, an alias (`LOCAL_PATH`). Values from every source go through the same
parser, so a bad value gives the same one-line error whichever way it came in.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from coredump_shipper.bucket.keys import TEMPLATE_FIELDS, KeyTemplate, label_fields
from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import DEFAULT_HELPER
from coredump_shipper.config.storageoptions import StorageOptions
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.errors import ConfigError
from coredump_shipper.kube.podfilter import CaptureFilter, Requirement, parse_selector

ENV_PREFIX = "COREDUMP_SHIPPER_"
MiB = 1024 * 1024
GiB = 1024 * MiB

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(text: str) -> int:
    """'8MiB' -> 8388608. Decimal and binary units, case-insensitive."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 8MiB, 512k, 1G)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """'90s', '2h', '1.5' (seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text)
    if not match or match.group(2) not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration (examples: 20s, 5m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_disk_limit(text: str) -> DiskLimit:
    stripped = text.strip()
    if stripped.endswith("%"):
        percent = float(stripped[:-1])
        if not 0 <= percent <= 100:
            raise ValueError(f"{text!r}: a percentage must be between 0% and 100%")
        return DiskLimit(percent=percent)
    return DiskLimit(bytes=parse_size(stripped))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text!r} must not be negative")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def _on_off(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"on", "true", "yes", "1"}:
        return True
    if lowered in {"off", "false", "no", "0"}:
        return False
    raise ValueError(f"{text!r} is not on or off")


def _globs(text: str) -> tuple[str, ...]:
    return tuple(glob.strip() for glob in text.split(",") if glob.strip())


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - a DaemonSet is scraped from outside


def _labels(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        # A label key: an optional DNS-subdomain prefix and a name of at most 63 characters.
        if not re.fullmatch(r"([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", name):
            raise ValueError(f"{name!r} is not a label key")
    return names


def _kubeconfig(text: str) -> str | None:
    # KUBECONFIG may list several files; the first one is used.
    return next((part for part in text.split(os.pathsep) if part), None)


def _text(text: str) -> str:
    return text


def _optional_text(text: str) -> str | None:
    return text or None


def _part_size(text: str) -> int:
    size = parse_size(text)
    if size < 5 * MiB or size > 5 * GiB:
        raise ValueError(f"{text!r} is outside S3's part size range 5MiB..5GiB")
    return size


def _max_parts(text: str) -> int:
    parts = int(text)
    if not 2 <= parts <= 10_000:
        raise ValueError(f"{text!r} is outside 2..10000 (S3's limit)")
    return parts


def _receive_timeout(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < 1:
        raise ValueError(f"{text!r} is shorter than 1s")
    return seconds


def _level(text: str) -> int:
    level = int(text)
    if not -7 <= level <= 22:
        raise ValueError(f"{text!r} is outside zstd's levels -7..22")
    return level


# Which commands take which settings: the daemon's, the uploading ones, and those that only read S3.
_DAEMON = frozenset({"run", "doctor"})
_UPLOAD = frozenset({"run", "ship", "doctor"})
_S3 = frozenset({"run", "ship", "doctor", "ls", "fetch"})
# What the core_pattern line for the pipe receiver is made of.
_PIPE = frozenset({"core-pattern", "doctor"})


@dataclass(frozen=True)
class Setting:
    """One configuration setting: its flag, parser, default and documentation."""

    name: str
    parse: Callable[[str], Any]
    default: str | None
    help: str
    aliases: tuple[str, ...] = ()
    commands: frozenset[str] = _UPLOAD

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "watch-dir",
        Path,
        "/var/coredump",
        "directory the kernel writes cores into",
        ("LOCAL_PATH",),
        _DAEMON | _PIPE,
    ),
    Setting("bucket", _text, None, "S3 bucket to ship cores to (required)", ("S3_BUCKET",), commands=_S3),
    Setting(
        "node-name",
        _text,
        "",
        "node name for keys and metadata (default: host name)",
        ("NODE_NAME",),
    ),
    Setting("cluster-name", _text, "unknown", "cluster name for keys and metadata", ("CLUSTER_NAME",)),
    Setting(
        "namespace",
        _optional_text,
        "",
        "the pod's namespace: a label of every metric, with the node name, so the chart's alerts match"
        " however Prometheus scrapes (the chart sets it)",
        ("POD_NAMESPACE",),
        commands=frozenset({"run"}),
    ),
    Setting(
        "endpoint-url",
        _optional_text,
        "",
        "S3 endpoint (default: botocore's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
        commands=_S3,
    ),
    Setting("region", _optional_text, "", "S3 region (default: the AWS chain, AWS_REGION)", commands=_S3),
    Setting(
        "addressing-style",
        _choice("auto", "path", "virtual"),
        "auto",
        "bucket addressing style",
        commands=_S3,
    ),
    Setting(
        "checksum-mode",
        _choice("when_required", "when_supported"),
        "when_required",
        "botocore request checksums; when_supported breaks many S3-compatible stores",
        commands=_S3,
    ),
    Setting(
        "ca-bundle",
        _optional_text,
        "",
        "CA bundle for HTTPS endpoints (default: AWS_CA_BUNDLE)",
        commands=_S3,
    ),
    Setting("connect-timeout", parse_duration, "10s", "S3 connect timeout", commands=_S3),
    Setting(
        "max-attempts",
        _positive_int,
        "5",
        "attempts of each S3 call before the file is retried later (backoff with jitter)",
        commands=_S3,
    ),
    Setting(
        "retry-mode",
        _choice("standard", "adaptive"),
        "standard",
        "botocore retry mode; adaptive also rate-limits the client when the store throttles",
        commands=_S3,
    ),
    Setting(
        "payload-signing",
        _choice("auto", "on", "off"),
        "auto",
        "SigV4 hash of each request body; auto: off over HTTPS (TLS protects it), on over plain HTTP",
        commands=_S3,
    ),
    Setting("sse", _choice("", "AES256", "aws:kms"), "", "server-side encryption (default: the bucket's)"),
    Setting("sse-kms-key-id", _optional_text, "", "KMS key for --sse aws:kms (default: the bucket key)"),
    Setting("storage-class", _optional_text, "", "storage class, e.g. STANDARD_IA (default: the store's)"),
    Setting(
        "acl", _optional_text, "", "canned ACL, e.g. bucket-owner-full-control for cross-account buckets"
    ),
    Setting(
        "tags",
        _optional_text,
        "",
        "object tags KEY=TEMPLATE,... with key template fields, e.g. node={node},exe={exe}",
    ),
    Setting(
        "max-parts",
        _max_parts,
        "10000",
        "most parts per upload; part size grows to fit (Swift's s3api allows 1000)",
    ),
    Setting(
        "self-test",
        _on_off,
        "on",
        "at start-up, write and delete a probe object and a 2-part upload (off: write-restricted keys)",
        commands=_DAEMON,
    ),
    Setting("read-timeout", parse_duration, "60s", "S3 read timeout", commands=_S3),
    Setting(
        "call-timeout",
        parse_duration,
        "2m",
        "deadline for one attempt of one S3 call (a part upload)",
        commands=_S3,
    ),
    Setting(
        "key-template",
        _text,
        "{cluster}/{node}.{filename}",
        (
            "object key template; fields: cluster, node, filename, pod, exe, exe_path, signal,"
            " signal_name, pid, global_pid, uid, gid, pod_uid, container_id, crash_time (takes a strftime"
            " spec), signature (the crash signature, docs/signatures.md); from the Kubernetes API:"
            " namespace, container, image, image_id, workload_kind, workload,"
            " label_<name> for each of --pod-labels (e.g. label_app_kubernetes_io_name)"
        ),
    ),
    Setting(
        "filename-pattern",
        _text,
        "core.%e.sig%s.%p.%t",
        "the node's core_pattern file name, to read crash fields from file names",
    ),
    Setting(
        "after-upload",
        _choice("delete", "keep"),
        "delete",
        "delete shipped cores, or keep them and record them in --state-file",
        commands=_DAEMON,
    ),
    Setting(
        "state-file",
        _optional_text,
        "",
        "record of shipped files in keep mode (default: WATCH_DIR/.coredump-shipper-state.json)",
        commands=_DAEMON,
    ),
    Setting("ignore", _globs, ".*,*.tmp,*.part,*~", "comma-separated globs of names never shipped"),
    Setting("workers", _positive_int, "2", "files uploaded at the same time"),
    Setting("queue-size", _positive_int, "64", "files waiting for a worker", commands=_DAEMON),
    Setting("part-size", _part_size, "8MiB", "multipart part size (raised for huge files)"),
    Setting(
        "parts-in-flight",
        _positive_int,
        "2",
        "part bodies in memory at once, across all workers (bounds memory)",
    ),
    Setting("compression", _choice("zstd", "none"), "zstd", "compress cores before upload"),
    Setting("compression-level", _level, "1", "zstd level"),
    Setting(
        "shutdown-timeout",
        parse_duration,
        "20s",
        "on SIGTERM, how long in-flight uploads may finish (keep below the pod's grace period)",
        commands=_DAEMON,
    ),
    Setting("retry-base-delay", parse_duration, "0.5s", "first retry delay (doubles each time)"),
    Setting("retry-max-delay", parse_duration, "60s", "longest delay between retries"),
    Setting(
        "ship-attempts",
        _positive_int,
        "5",
        "attempts per file for the one-shot ship command (the daemon retries forever)",
    ),
    Setting(
        "rescan-interval",
        parse_duration,
        "5m",
        "safety rescan of the directory for anything events missed (0 = off)",
        commands=_DAEMON,
    ),
    Setting(
        "max-use",
        parse_disk_limit,
        "10%",
        "most space cores may take in the watched directory (bytes or % of its filesystem; 0 = no cap);"
        " the pipe receiver stops writing there too",
        commands=_DAEMON | _PIPE,
    ),
    Setting(
        "keep-free",
        parse_disk_limit,
        "15%",
        "space to keep free on the watched filesystem (bytes or %; 0 = no floor); the pipe receiver's too. "
        "15% (systemd-coredump's KeepFree) stays above the kubelet's hard eviction threshold "
        "(nodefs.available<10%): cores never push the node into DiskPressure and evict pods",
        commands=_DAEMON | _PIPE,
    ),
    Setting(
        "max-core-size",
        parse_size,
        "32GiB",
        "pipe capture: the receiver keeps at most this much of a core and marks it cut short (0 = no cap)",
        commands=_PIPE,
    ),
    Setting(
        "capture-scope",
        _choice("pod", "all"),
        "pod",
        "pipe capture: whose cores the receiver stores. pod: only processes in a Kubernetes pod (by"
        ' cgroup); the rest are dropped, counted in capture_failures_total{reason="scope"}. all: host'
        " processes too. RISK: kubelet's, containerd's and login sessions' memory (node credentials,"
        " every pod's service-account tokens) then goes to the bucket (docs/security.md)",
        commands=_PIPE | _DAEMON,  # the daemon checks the line node setup wrote (capturecheck.py)
    ),
    Setting(
        "heartbeat",
        _optional_text,
        "",
        "pipe capture: a file the daemon touches every minute (node setup's <receiver directory>/alive/"
        "heartbeat); without it for the receiver's window (1h) the receiver stores nothing, so a node "
        "left without a shipper does not fill up with cores nobody ships (empty = off)",
        commands=_DAEMON,
    ),
    Setting(
        "receive-timeout",
        _receive_timeout,
        "10m",
        "pipe capture: deadline for the receiver to store one core (the crashed process waits for it)",
        commands=_PIPE,
    ),
    Setting(
        "capture-mode",
        _choice("auto", "pipe", "file", "socket", "off"),
        "auto",
        "what core_pattern must say, checked every minute (coredump_shipper_capture_configured):"
        " pipe: the core-pattern line for these settings; file: a pattern writing into --watch-dir;"
        " socket: the socket server's @@ pattern, or the pipe line it falls back to while it is down;"
        " auto: any of them; off: not checked",
        commands=_DAEMON,
    ),
    Setting(
        "receiver-path",
        _text,
        DEFAULT_HELPER,
        "pipe capture: where node setup installed coredump-receive (for --capture-mode pipe)",
        commands=_DAEMON,
    ),
    Setting(
        "pipe-limit",
        _non_negative_int,
        "16",
        "pipe capture: the least kernel.core_pipe_limit that counts as capture configured",
        commands=_DAEMON,
    ),
    Setting(
        "storm-limit",
        _non_negative_int,
        "10",
        "cores of one program of one workload (else pod) shipped per --storm-window; the rest keep"
        " metadata only (0 = no limit)",
    ),
    Setting("storm-window", parse_duration, "1h", "the window of --storm-limit"),
    Setting(
        "kubernetes",
        _choice("auto", "off"),
        "auto",
        "pod fields and Events from the Kubernetes API: auto uses the pod's service account, or"
        " --kubeconfig outside a pod",
        commands=_DAEMON,
    ),
    Setting(
        "kubeconfig",
        _kubeconfig,
        "",
        "kubeconfig for the Kubernetes API outside a pod (the first file of KUBECONFIG)",
        ("KUBECONFIG",),
        commands=_DAEMON,
    ),
    Setting(
        "pod-labels",
        _labels,
        "",
        "pod labels for metadata and key template fields label_<name>, e.g. app.kubernetes.io/name,team",
    ),
    Setting(
        "pod-lookup-timeout",
        parse_duration,
        "2s",
        "longest a core waits for its pod to be found in the API before it ships without pod fields",
        commands=_DAEMON,
    ),
    Setting(
        "exclude-namespaces",
        _globs,
        "",
        "comma-separated namespace globs whose cores are deleted unshipped (needs the Kubernetes API)",
        commands=_DAEMON,
    ),
    Setting(
        "pod-selector",
        parse_selector,
        "",
        "label selector (k=v, k!=v, k, !k; comma: and): cores of pods that do not match are deleted"
        " unshipped (needs the Kubernetes API)",
        commands=_DAEMON,
    ),
    Setting(
        "events",
        _on_off,
        "on",
        "a CoreDumped Event on the crashed pod (needs create and patch on events)",
        commands=_DAEMON,
    ),
    Setting(
        "stall-timeout",
        parse_duration,
        "5m",
        "a busy worker with no S3 progress for this long fails /healthz",
        commands=_DAEMON,
    ),
    Setting(
        "listen",
        _listen,
        "0.0.0.0:9823",
        "HTTP address for /healthz, /readyz and /metrics",
        commands=frozenset({"run", "check"}),
    ),
    Setting("log-format", _choice("text", "json"), "text", "log line format", commands=_S3),
    Setting("log-level", _choice("debug", "info", "warning", "error"), "info", "log level", commands=_S3),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Config:
    """Validated settings. Build it with `load_config`."""

    watch_dir: Path
    bucket: str
    node_name: str
    cluster_name: str
    namespace: str | None
    endpoint_url: str | None
    region: str | None
    addressing_style: str
    checksum_mode: str
    ca_bundle: str | None
    connect_timeout: float
    read_timeout: float
    call_timeout: float
    max_attempts: int
    retry_mode: str
    payload_signing: str
    sse: str
    sse_kms_key_id: str | None
    storage_class: str | None
    acl: str | None
    tags: str | None
    max_parts: int
    self_test: bool
    key_template: str
    filename_pattern: str
    after_upload: str
    state_file: str | None
    ignore: tuple[str, ...]
    workers: int
    queue_size: int
    part_size: int
    parts_in_flight: int
    compression: str
    compression_level: int
    shutdown_timeout: float
    retry_base_delay: float
    retry_max_delay: float
    ship_attempts: int
    rescan_interval: float
    max_use: DiskLimit
    keep_free: DiskLimit
    max_core_size: int
    capture_scope: str
    receive_timeout: float
    heartbeat: str | None
    capture_mode: str
    receiver_path: str
    pipe_limit: int
    storm_limit: int
    storm_window: float
    kubernetes: str
    kubeconfig: str | None
    pod_labels: tuple[str, ...]
    pod_lookup_timeout: float
    exclude_namespaces: tuple[str, ...]
    pod_selector: tuple[Requirement, ...]
    events: bool
    stall_timeout: float
    listen: tuple[str, int]
    log_format: str
    log_level: str

    # The settings that are small languages, parsed once (on first use: load_config touches each to
    # validate it) and handed to the parts as parsed values.
    @cached_property
    def keys(self) -> KeyTemplate:
        """--key-template, with the suffix of the stored objects (.zst when compressed)."""
        suffix = ".zst" if self.compression == "zstd" else ""
        return KeyTemplate(self.key_template, self.template_fields, suffix)

    @cached_property
    def core_names(self) -> CoreNamePattern:
        """--filename-pattern, read whatever kernel.core_uses_pid is (the shipper narrows it)."""
        return CoreNamePattern.compile(self.filename_pattern)

    @cached_property
    def storage(self) -> StorageOptions:
        """--sse, --sse-kms-key-id, --storage-class, --acl and --tags."""
        return StorageOptions.parse(
            self.sse or None,
            self.sse_kms_key_id,
            self.storage_class,
            self.acl,
            self.tags,
            self.template_fields,
        )

    @property
    def capture_filter(self) -> CaptureFilter:
        """--exclude-namespaces and --pod-selector (a pod's own annotation applies always)."""
        return CaptureFilter(self.exclude_namespaces or (), self.pod_selector or ())

    @property
    def template_fields(self) -> tuple[str, ...]:
        """Fields a key template or tag may use: the fixed ones and one per --pod-labels label."""
        return TEMPLATE_FIELDS + label_fields(self.pod_labels or ())

    @property
    def state_path(self) -> Path:
        return Path(self.state_file) if self.state_file else self.watch_dir / ".coredump-shipper-state.json"


def raw_value(setting: Setting, cli_values: Mapping[str, str | None], env: Mapping[str, str]) -> str | None:
    """The flag if given, else its environment twin, else an alias, else the default."""
    if cli_values.get(setting.attribute) is not None:
        return cli_values[setting.attribute]
    for name in (setting.env, *setting.aliases):
        if env.get(name, "") != "":
            return env[name]
    return setting.default


def load_config(
    cli_values: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
    command: str = "run",
    settings: Sequence[Setting] = SETTINGS,
) -> Config:
    """Parse and validate every setting; raise ConfigError naming the first bad one."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for setting in settings:
        # A setting the command does not take keeps its default, so Config stays fully typed.
        raw = raw_value(setting, cli_values, env) if command in setting.commands else setting.default
        if raw is None:
            if command not in setting.commands:
                values[setting.attribute] = None
                continue
            raise ConfigError(setting.flag, f"is required (or set {setting.env})")
        try:
            values[setting.attribute] = setting.parse(raw)
        except ValueError as error:
            raise ConfigError(setting.flag, str(error)) from None
    config = Config(**values)
    if not config.node_name:
        config = replace(config, node_name=socket.gethostname())
    _validate(config, command)
    return config


def _validate(config: Config, command: str) -> None:
    if config.bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,254}", config.bucket):
        raise ConfigError("--bucket", f"{config.bucket!r} is not a valid bucket name")
    # Parsed here, so a bad one stops the start with its one-line error.
    _ = config.keys, config.core_names, config.storage
    if config.kubernetes == "off" and config.capture_filter.configured:
        flag = "--exclude-namespaces" if config.exclude_namespaces else "--pod-selector"
        raise ConfigError(flag, "needs the Kubernetes API, but --kubernetes is off")
    if config.retry_max_delay < config.retry_base_delay:
        raise ConfigError("--retry-max-delay", "must not be shorter than --retry-base-delay")
    if command == "run":
        # `doctor` reports a bad watch directory in its table instead of stopping here.
        _validate_watch_dir(config.watch_dir)


def _validate_watch_dir(path: Path) -> None:
    if not path.is_dir():
        raise ConfigError("--watch-dir", f"{str(path)!r} is not an existing directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError("--watch-dir", f"{str(path)!r} is not readable by this user")
