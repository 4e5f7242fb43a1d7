"""A `CoreDumped` Event on the crashed pod, where its owners look: `kubectl describe pod`, `get events`.

Sent after the core's manifest is written, by a task of its own, so shipping never waits for the
API. A crash loop makes one Event per pod whose series count grows (a PATCH), not one Event per
core; a token bucket bounds the calls a node makes whatever happens. events.k8s.io/v1 is used, or
core/v1 where the API server does not serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coredump_shipper.kube.api import CORE_EVENTS, EVENTS, TRANSPORT_ERRORS, KubeClient, KubeError
from coredump_shipper.kube.pods import Pod
from coredump_shipper.ops.metrics import Metrics

log = logging.getLogger(__name__)
CONTROLLER = "coredump-shipper"
REASON = "CoreDumped"
SERIES_WINDOW = 600.0  # cores of one pod this close together count in one Event's series
BURST = 20  # API calls for Events a node may make at once...
REFILL_SECONDS = 3.0  # ...and then one per this many seconds
QUEUE = 100
TRACKED_PODS = 512
NOTE_LIMIT = 1024  # the API's limit on an Event's note


@dataclass(frozen=True)
class CoreNotice:
    pod: Pod
    container: str | None
    program: str
    signal: str
    url: str
    metadata_only: bool
    signature: str = ""
    seen: str = ""  # "new on this cluster", "seen 41 times on this cluster"


@dataclass
class _Series:
    api: str  # "events.k8s.io" or "v1"
    name: str
    count: int
    first: float
    last: float


def note_for(notice: CoreNotice) -> str:
    container = f" in container {notice.container}" if notice.container else ""
    if notice.metadata_only:
        text = (
            f"{notice.program}{container} dumped core ({notice.signal}); over the node's core storm limit, "
            f"only its metadata was kept: {notice.url}"
        )
    else:
        text = f"{notice.program}{container} dumped core ({notice.signal}); core: {notice.url}"
    if notice.signature:
        seen = f" ({notice.seen})" if notice.seen else ""
        text += f"; signature {notice.signature}{seen}"
    return text.encode()[:NOTE_LIMIT].decode(errors="ignore")


def _micro(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _seconds(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Queues notices and sends them as Events; `run()` is its task."""

    def __init__(
        self,
        client: KubeClient,
        node: str,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.node = node
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        self.queue: asyncio.Queue[CoreNotice] = asyncio.Queue(QUEUE)
        self.series: OrderedDict[str, _Series] = OrderedDict()
        self.api = "events.k8s.io"
        self._tokens = float(BURST)
        self._filled = monotonic()
        self._said: set[str] = set()

    def notify(self, notice: CoreNotice) -> None:
        """Never blocks: a full queue means the API is far behind, and the notice is dropped."""
        try:
            self.queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.metrics.events.labels("dropped").inc()

    async def run(self) -> None:
        while True:
            notice = await self.queue.get()
            try:
                await self._send(notice)
            except KubeError as error:
                self.metrics.events.labels("failed").inc()
                self._say(f"status {error.status}", f"Event on pod {notice.pod.name} not sent: {error}")
            except TRANSPORT_ERRORS as error:
                self.metrics.events.labels("failed").inc()
                self._say("transport", f"Event on pod {notice.pod.name} not sent: {error!r}")
            finally:
                self.queue.task_done()

    def _say(self, kind: str, message: str) -> None:
        level = logging.DEBUG if kind in self._said else logging.WARNING
        self._said.add(kind)
        hint = " (grant create and patch on events)" if "403" in kind else ""
        log.log(level, "%s%s", message, hint, extra={"event": "pod_event", "reason": kind})

    def _take_token(self) -> bool:
        now = self.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._filled) / REFILL_SECONDS)
        self._filled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _send(self, notice: CoreNotice) -> None:
        now = self.clock()
        # Stored cores and metadata-only ones (over the storm limit) say different things: two series.
        tracked = f"{notice.pod.uid}/{'metadata' if notice.metadata_only else 'core'}"
        series = self.series.get(tracked)
        if series is not None and now - series.last > SERIES_WINDOW:
            series = None
        if series is not None:
            series.count += 1
            series.last = now
            self.series.move_to_end(tracked)
        if not self._take_token():
            # The count is kept: the next PATCH that gets through carries the whole series.
            self.metrics.events.labels("rate_limited").inc()
            return
        if series is not None:
            try:
                await self._patch(notice.pod, series)
                self.metrics.events.labels("updated").inc()
                return
            except KubeError as error:
                if error.status != 404:
                    raise
                # The Event expired (the API server keeps them an hour by default): start a new one.
        self.series[tracked] = await self._create(notice, now)
        while len(self.series) > TRACKED_PODS:
            self.series.popitem(last=False)
        self.metrics.events.labels("created").inc()

    async def _create(self, notice: CoreNotice, now: float) -> _Series:
        pod = notice.pod
        name = f"{pod.name}.{uuid.uuid4().hex[:16]}"
        if self.api == "events.k8s.io":
            try:
                body = self._v1(notice, name, now)
                await self.client.call("create", EVENTS, namespace=pod.namespace, body=body)
                return _Series("events.k8s.io", name, 1, now, now)
            except KubeError as error:
                # A 404 for a missing namespace says "namespaces ... not found"; this one means the
                # server does not serve events.k8s.io/v1 at all (before Kubernetes 1.19): core/v1.
                if error.status != 404 or "could not find the requested resource" not in error.message:
                    raise
                self.api = "v1"
                log.info("events.k8s.io/v1 is not served: CoreDumped Events use core/v1")
        body = self._core(notice, name, now)
        await self.client.call("create", CORE_EVENTS, namespace=pod.namespace, body=body)
        return _Series("v1", name, 1, now, now)

    async def _patch(self, pod: Pod, series: _Series) -> None:
        if series.api == "events.k8s.io":
            body: dict[str, Any] = {
                "series": {"count": series.count, "lastObservedTime": _micro(series.last)}
            }
            await self.client.call("patch", EVENTS, namespace=pod.namespace, name=series.name, body=body)
        else:
            body = {"count": series.count, "lastTimestamp": _seconds(series.last)}
            await self.client.call("patch", CORE_EVENTS, namespace=pod.namespace, name=series.name, body=body)

    def _regarding(self, notice: CoreNotice) -> dict[str, Any]:
        pod = notice.pod
        ref: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": pod.namespace,
            "name": pod.name,
            "uid": pod.uid,
        }
        if notice.container:
            section = next((c.section for c in pod.containers if c.name == notice.container), "containers")
            ref["fieldPath"] = f"spec.{section}{{{notice.container}}}"
        return ref

    def _v1(self, notice: CoreNotice, name: str, now: float) -> dict[str, Any]:
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": notice.pod.namespace},
            "eventTime": _micro(now),
            "reportingController": CONTROLLER,
            "reportingInstance": self.node[:128],
            "action": "DumpCore",
            "reason": REASON,
            "type": "Warning",
            "regarding": self._regarding(notice),
            "note": note_for(notice),
        }

    def _core(self, notice: CoreNotice, name: str, now: float) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": notice.pod.namespace},
            "involvedObject": self._regarding(notice),
            "reason": REASON,
            "message": note_for(notice),
            "type": "Warning",
            "source": {"component": CONTROLLER, "host": self.node},
            "firstTimestamp": _seconds(now),
            "lastTimestamp": _seconds(now),
            "count": 1,
        }

    async def drain(self, seconds: float) -> None:
        """At shutdown: give queued notices a moment to go out."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), seconds)
