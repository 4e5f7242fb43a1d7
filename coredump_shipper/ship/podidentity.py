"""Which pod a core came from, and what that adds to its key, metadata, manifest and tags.

A core names its pod by UID (pipe capture reads it from the crashing process's cgroup) or by host
name (`%h` in a file name; inside a pod that is the pod's name). The UID is certain; a host name is
only trusted when exactly one pod of this node that was alive at the crash has it, and never for
hostNetwork pods (their host name is the node's). When the receiver's crash facts exist the cgroup
was read, so the UID alone decides: a process outside any pod may set its own host name to a
victim pod's name (`unshare -u`), and must not get the victim's namespace, key or Event.
Shipping never waits on the API for more than `--pod-lookup-timeout`: a core without a match ships
with the fields it has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from coredump_shipper.bucket.keys import METADATA_LIMIT, header_safe, label_field
from coredump_shipper.core.facts import CoreFacts
from coredump_shipper.kube.api import TRANSPORT_ERRORS, KubeError
from coredump_shipper.kube.pods import Container, Pod, PodCache
from coredump_shipper.ops.metrics import Metrics

log = logging.getLogger(__name__)
# Room kept in the 2 KiB of x-amz-meta-* for the sha256 a single-part upload adds later.
SHA256_RESERVE = len("sha256") + 64
# Why a core has no pod fields, once per reason in the log (the counter has every occurrence).
REASONS = {
    "no_identity": "its file name gives no pod host name (add %h to core_pattern and --filename-pattern),"
    " or its crash facts name no pod (the process was not in one: its host name is not trusted)",
    "not_found": "no pod of this node has its UID or host name",
    "ambiguous": "more than one pod of this node had its host name at the crash",
    "host_network": "its host name is that of a hostNetwork pod, which is the node's own",
    "unavailable": "the Kubernetes API did not answer in time",
}


@dataclasses.dataclass(frozen=True)
class Match:
    pod: Pod
    container: Container | None


def pod_fields(match: Match, labels: tuple[str, ...]) -> dict[str, Any]:
    """Template values (and, made header-safe, metadata) that a matched pod adds."""
    pod, container = match.pod, match.container
    values: dict[str, Any] = {
        "namespace": pod.namespace,
        "pod": pod.name,
        "pod_uid": pod.uid,
        "workload_kind": pod.owner_kind or "Pod",
        "workload": pod.owner_name or pod.name,
        "container": container.name if container else None,
        "image": container.image if container else None,
        "image_id": container.image_id if container else None,
    }
    for name in labels:
        values[label_field(name)] = pod.label(name)
    return values


def choose_container(pod: Pod, container_id: str | None) -> Container | None:
    """The container by its runtime ID, else the pod's only regular container."""
    if container_id:
        wanted = container_id.rpartition("://")[2]
        for container in pod.containers:
            if container.container_id and container.container_id == wanted:
                return container
        return None
    return pod.containers[0] if pod.regular_containers == 1 else None


class PodIdentity:
    """Adds pod fields to a core's facts, from the node's pod cache."""

    def __init__(self, cache: PodCache, labels: tuple[str, ...], timeout: float, metrics: Metrics) -> None:
        self.cache = cache
        self.labels = labels
        self.timeout = timeout
        self.metrics = metrics
        self._said: set[str] = set()

    async def enrich(self, facts: CoreFacts) -> tuple[CoreFacts, Pod | None]:
        """The facts with pod fields added when the pod is known; never raises for API trouble."""
        match = await self.find(facts)
        if match is None:
            return facts, None
        return self.apply(facts, match), match.pod

    async def find(self, facts: CoreFacts) -> Match | None:
        """The core's pod and container, or None (counted and said once per reason)."""
        values = facts.template_values
        try:
            result, match = await asyncio.wait_for(self._find(values, facts.by_uid_only), self.timeout)
        except TimeoutError:
            # A cache that is current and still lacks the pod: not found; else the API is the problem.
            known = self.cache.synced.is_set() and self.cache.last_error is None
            result, match = ("not_found" if known else "unavailable"), None
        self.metrics.enrichment.labels(result).inc()
        if match is None:
            self._say_why(result, values)
        return match

    def apply(self, facts: CoreFacts, match: Match) -> CoreFacts:
        """`facts` with the fields of its pod (found now, or pinned when the core was found)."""
        values = facts.template_values
        added = pod_fields(match, self.labels)
        merged = {**values, **{k: v for k, v in added.items() if v is not None}}
        merged["hostname"] = values.get("pod")
        metadata = merge_metadata(facts.metadata, added)
        return dataclasses.replace(facts, template_values=merged, metadata=metadata)

    async def _find(self, values: Mapping[str, Any], by_uid_only: bool) -> tuple[str, Match | None]:
        uid, hostname = values.get("pod_uid"), values.get("pod")
        if by_uid_only:
            hostname = None
        if not uid and not hostname:
            return "no_identity", None
        crash = values.get("crash_time")
        moment = crash.timestamp() if isinstance(crash, datetime) else None
        await self.cache.synced.wait()  # bounded by the caller's timeout
        while True:
            result, pod = self._lookup(uid, hostname, moment)
            if pod is not None:
                return "matched", await self._with_container(pod, values.get("container_id"))
            if result != "not_found":
                return result, None
            # Just created, and the watch has not told yet: wait for the next change (bounded).
            self.cache.refresh()
            await self.cache.changed.wait()

    def _lookup(self, uid: Any, hostname: Any, moment: float | None) -> tuple[str, Pod | None]:
        if uid:
            pod = self.cache.by_uid(str(uid))
            return ("matched", pod) if pod else ("not_found", None)
        candidates = self.cache.by_hostname(str(hostname), moment)
        if any(p.host_network for p in candidates):
            return "host_network", None
        if len(candidates) > 1:
            return "ambiguous", None
        return ("matched", candidates[0]) if candidates else ("not_found", None)

    async def _with_container(self, pod: Pod, container_id: Any) -> Match:
        container = choose_container(pod, str(container_id) if container_id else None)
        if container is None and container_id and pod.deleted is None:
            # A container restarted a moment ago: its new ID may not have reached the watch yet.
            try:
                fresh = await self.cache.get(pod.namespace, pod.name)
            except (KubeError, *TRANSPORT_ERRORS) as error:
                log.debug("fresh read of pod %s/%s failed: %s", pod.namespace, pod.name, error)
                fresh = None
            if fresh is not None and fresh.uid == pod.uid:
                pod, container = fresh, choose_container(fresh, str(container_id))
        return Match(pod, container)

    def _say_why(self, result: str, values: Mapping[str, Any]) -> None:
        reason = REASONS.get(result, result)
        if result == "unavailable" and self.cache.last_error:
            reason += f" ({self.cache.last_error})"
        level = logging.DEBUG if result in self._said else logging.WARNING
        self._said.add(result)
        log.log(
            level,
            "core %r ships without pod fields: %s",
            values.get("filename"),
            reason,
            extra={"event": "enrichment", "reason": result},
        )


def merge_metadata(base: Mapping[str, str], added: Mapping[str, Any]) -> dict[str, str]:
    """`base` with the pod's fields: the real pod name replaces the host name, the rest is appended
    while S3's 2 KiB of user metadata lasts (the tail of `base` goes first if it must)."""
    extra: dict[str, str] = {}
    for name, value in added.items():
        if value is None or value == "":
            continue
        extra[name.lower().replace("_", "-")] = header_safe(str(value))
    if "pod" in extra and base.get("pod") and base["pod"] != extra["pod"]:
        extra["hostname"] = base["pod"]
    out = {**{k: v for k, v in base.items() if k not in extra}}
    ordered = {**extra, **out}
    total, result = 0, {}
    for key, value in ordered.items():
        if total + len(key) + len(value) > METADATA_LIMIT - SHA256_RESERVE:
            continue
        result[key] = value
        total += len(key) + len(value)
    # Keep the original field order first: readers expect cluster and node at the top.
    return {k: result[k] for k in (*base.keys(), *extra.keys()) if k in result}
