"""The narrow settings values the shipper and its Kubernetes side receive, built from Config here.

As in s3/settings.py: each part's signature says what it depends on, and tests build these directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from coredump_shipper.bucket.keys import KeyTemplate
from coredump_shipper.config.settings import Config
from coredump_shipper.config.storageoptions import StorageOptions
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.kube.podfilter import CaptureFilter


@dataclass(frozen=True)
class ShipperSettings:
    """How one core is named, described and stored, and how many of a kind a storm may ship."""

    cluster_name: str
    node_name: str
    keys: KeyTemplate
    core_names: CoreNamePattern
    template_fields: tuple[str, ...]
    compression: str
    storage: StorageOptions
    capture_filter: CaptureFilter
    storm_limit: int
    storm_window: float


@dataclass(frozen=True)
class KubeSettings:
    """Where the Kubernetes API is, which pods are this node's, what a core's pod adds, and Events."""

    kubernetes: str
    kubeconfig: str | None
    node_name: str
    bucket: str
    pod_labels: tuple[str, ...]
    pod_lookup_timeout: float
    capture_filter: CaptureFilter
    events: bool


def shipper_settings(config: Config) -> ShipperSettings:
    return ShipperSettings(
        cluster_name=config.cluster_name,
        node_name=config.node_name,
        keys=config.keys,
        core_names=config.core_names,
        template_fields=config.template_fields,
        compression=config.compression,
        storage=config.storage,
        capture_filter=config.capture_filter,
        storm_limit=config.storm_limit,
        storm_window=config.storm_window,
    )


def kube_settings(config: Config) -> KubeSettings:
    return KubeSettings(
        kubernetes=config.kubernetes,
        kubeconfig=config.kubeconfig,
        node_name=config.node_name,
        bucket=config.bucket,
        pod_labels=config.pod_labels,
        pod_lookup_timeout=config.pod_lookup_timeout,
        capture_filter=config.capture_filter,
        events=config.events,
    )
