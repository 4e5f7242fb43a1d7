"""This node's pods, kept current by list + watch, for naming the pod a core came from.

Only pods with `spec.nodeName=NODE` are listed and watched, and only the few fields the shipper uses
are kept, so memory stays small whatever the pods carry. The watch resumes from the last
resourceVersion seen; when the server has compacted it away (410 Gone) the pods are listed again.
A pod that crashed may be deleted before its core is read (a Job's pod, a deleted Deployment), so
deleted pods stay known for a while, bounded in number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coredump_shipper.kube.api import PODS, TRANSPORT_ERRORS, KubeClient, KubeError

log = logging.getLogger(__name__)
WATCH_SECONDS = 300  # the server ends each watch after this; it is resumed from the last version
LIST_PAGE = 250
DELETED_KEEP_SECONDS = 900.0
DELETED_KEEP_MAX = 256
RETRY_MAX_DELAY = 30.0
# Clocks of the node and the API server differ a little: a crash time this close to a pod's creation or
# deletion still counts as inside its life.
CLOCK_SLACK = 5.0
# A pod's own opt-out: its cores are deleted unshipped (they may hold secrets the team will not ship).
CAPTURE_ANNOTATION = "coredump-shipper.io/capture"


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    image_id: str | None = None
    container_id: str | None = None  # without the runtime prefix (containerd://)
    section: str = "containers"  # or initContainers, ephemeralContainers: for an Event's fieldPath


@dataclass(frozen=True)
class Pod:
    """What the shipper keeps of one pod."""

    uid: str
    namespace: str
    name: str
    hostname: str  # what %h shows inside the pod
    host_network: bool
    labels: tuple[tuple[str, str], ...]
    containers: tuple[Container, ...]  # regular containers first, then init and ephemeral ones
    regular_containers: int
    owner_kind: str | None
    owner_name: str | None
    created: float | None
    deleted: float | None = None  # epoch seconds when it left the API
    capture_opt_out: bool = False  # annotated coredump-shipper.io/capture: "false"

    def alive_at(self, moment: float) -> bool:
        if self.created is not None and moment < self.created - CLOCK_SLACK:
            return False
        return self.deleted is None or moment <= self.deleted + CLOCK_SLACK

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_hostname(name: str, spec: Mapping[str, Any]) -> str:
    """The kubelet's rule: spec.hostname or the pod name, cut to 63 characters without a trailing - or ."""
    hostname = str(spec.get("hostname") or name)
    if len(hostname) > 63:
        hostname = hostname[:63].rstrip("-.")
    return hostname


def _containers(spec: Mapping[str, Any], status: Mapping[str, Any]) -> tuple[Container, ...]:
    statuses: dict[str, Mapping[str, Any]] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for item in status.get(key) or []:
            statuses[str(item.get("name", ""))] = item
    out = []
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for item in spec.get(key) or []:
            name = str(item.get("name", ""))
            seen = statuses.get(name, {})
            container_id = str(seen.get("containerID") or "").rpartition("://")[2] or None
            out.append(Container(name, str(item.get("image", "")), seen.get("imageID") or None, container_id))
    return tuple(out)


def parse_pod(item: Mapping[str, Any], wanted_labels: Iterable[str]) -> Pod | None:
    meta, spec, status = item.get("metadata") or {}, item.get("spec") or {}, item.get("status") or {}
    uid, name = meta.get("uid"), meta.get("name")
    if not uid or not name:
        return None
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    owner_kind, owner_name = (owner.get("kind"), owner.get("name")) if owner else (None, None)
    if owner_kind == "ReplicaSet" and owner_name:
        # A ReplicaSet made by a Deployment is named <deployment>-<pod-template-hash>; reading the
        # ReplicaSet's own owner would need `get replicasets`, which the shipper is not given.
        template_hash = labels.get("pod-template-hash")
        if template_hash and owner_name.endswith("-" + template_hash):
            owner_kind, owner_name = "Deployment", owner_name[: -len(template_hash) - 1]
    return Pod(
        uid=str(uid),
        namespace=str(meta.get("namespace", "")),
        name=str(name),
        hostname=pod_hostname(str(name), spec),
        host_network=bool(spec.get("hostNetwork")),
        labels=tuple((n, str(labels[n])) for n in wanted_labels if n in labels),
        containers=_containers(spec, status),
        regular_containers=len(spec.get("containers") or []),
        owner_kind=owner_kind,
        owner_name=owner_name,
        created=_epoch(meta.get("creationTimestamp")),
        deleted=None,
        capture_opt_out=str(annotations.get(CAPTURE_ANNOTATION, "")).strip().lower() == "false",
    )


class Gone(Exception):
    """The watch's resourceVersion is no longer available (410): list again."""


class PodCache:
    """The node's pods by UID, from list + watch. `run()` is the task that keeps it current."""

    def __init__(
        self,
        client: KubeClient,
        node: str,
        wanted_labels: Iterable[str] = (),
        *,
        watch_seconds: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.node = node
        self.wanted_labels = tuple(wanted_labels)
        self.watch_seconds = watch_seconds if watch_seconds is not None else WATCH_SECONDS
        self.clock = clock
        self.pods: dict[str, Pod] = {}
        self.deleted: OrderedDict[str, Pod] = OrderedDict()
        self.synced = asyncio.Event()
        self.changed = asyncio.Event()
        self.last_error: str | None = None
        self.relists = 0
        self.watching = True  # False once the watch was refused: the pods are listed again instead
        self._refresh = asyncio.Event()

    @property
    def selector(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.node}"}

    async def run(self) -> None:
        """List, then watch from the listed version; on any failure wait and start again."""
        attempt = 0
        while True:
            try:
                version = await self.relist()
                attempt = 0
                self.last_error = None
                while True:
                    version = await self._follow(version)
            except Gone:
                self.relists += 1
                log.info("pod watch expired (410 Gone): listing this node's pods again")
                continue
            except KubeError as error:
                self._failed(f"{error}", error.status)
            except TRANSPORT_ERRORS as error:
                self._failed(f"{type(error).__name__}: {error}", 0)
            attempt += 1
            await self._sleep(min(RETRY_MAX_DELAY, 0.5 * 2**attempt))

    async def _follow(self, version: str) -> str:
        """Watch from `version`; without the right to watch, wait and list again."""
        if not self.watching:
            await self._sleep(self.watch_seconds)
            return await self.relist()
        try:
            return await self._watch(version)
        except KubeError as error:
            if error.status != 403:
                raise
            self.watching = False
            log.warning(
                "pods cannot be watched (%s): listing them every %ds instead; grant `watch` on pods",
                error.message,
                self.watch_seconds,
            )
            return version

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short when a look-up asks for fresh pods."""
        self._refresh.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refresh.wait(), seconds)

    def _failed(self, reason: str, status: int) -> None:
        if reason != self.last_error:
            hint = " (grant get, list and watch on pods)" if status in {401, 403} else ""
            log.warning("listing this node's pods failed: %s%s; cores ship without pod fields", reason, hint)
        self.last_error = reason

    async def relist(self) -> str:
        """List the node's pods afresh; deleted ones are remembered. Returns the list's resourceVersion."""
        pods: dict[str, Pod] = {}
        params = {**self.selector, "limit": str(LIST_PAGE)}
        while True:
            page = await self.client.call("list", PODS, params=params, seconds=60.0)
            for item in page.get("items") or []:
                pod = parse_pod(item, self.wanted_labels)
                if pod is not None:
                    pods[pod.uid] = pod
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                break
            params = {**params, "continue": str(meta["continue"])}
        now = self.clock()
        for uid, pod in self.pods.items():
            if uid not in pods:  # deleted while nobody watched
                self._remember_deleted(pod, now)
        self.pods = pods
        self._changed()
        self.synced.set()
        return str(meta.get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        params = {
            **self.selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_seconds),
        }
        async for event in self.client.watch(PODS, params, seconds=self.watch_seconds + 30):
            kind, item = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if item.get("code") == 410:
                    raise Gone()
                raise KubeError(int(item.get("code") or 0), str(item.get("message", "watch error")))
            version = str((item.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            pod = parse_pod(item, self.wanted_labels)
            if pod is None:
                continue
            if kind == "DELETED":
                self.pods.pop(pod.uid, None)
                self._remember_deleted(pod, self.clock())
            else:
                self.pods[pod.uid] = pod
            self._changed()
        return version

    def _remember_deleted(self, pod: Pod, now: float) -> None:
        self.deleted[pod.uid] = Pod(**{**pod.__dict__, "deleted": now})
        self.deleted.move_to_end(pod.uid)
        while len(self.deleted) > DELETED_KEEP_MAX:
            self.deleted.popitem(last=False)
        while self.deleted:
            oldest = next(iter(self.deleted.values()))
            if oldest.deleted is not None and now - oldest.deleted <= DELETED_KEEP_SECONDS:
                break
            self.deleted.popitem(last=False)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def refresh(self) -> None:
        """Ask for fresh pods now (a look-up missed) instead of at the next scheduled list."""
        self._refresh.set()

    # Look-ups -----------------------------------------------------------------------------------

    def by_uid(self, uid: str) -> Pod | None:
        return self.pods.get(uid) or self.deleted.get(uid)

    def by_hostname(self, hostname: str, moment: float | None) -> list[Pod]:
        """Pods whose %h is `hostname`, alive at `moment` if known (a name is reused by StatefulSets)."""
        found = [p for p in (*self.pods.values(), *self.deleted.values()) if p.hostname == hostname]
        if moment is not None:
            found = [p for p in found if p.alive_at(moment)]
        return found

    async def get(self, namespace: str, name: str) -> Pod | None:
        """One pod read afresh (its container statuses may be newer than the watch has told)."""
        item = await self.client.call("get", PODS, namespace=namespace, name=name, seconds=5.0)
        pod = parse_pod(item, self.wanted_labels)
        if pod is not None and (item.get("spec") or {}).get("nodeName") == self.node:
            self.pods[pod.uid] = pod
        return pod
