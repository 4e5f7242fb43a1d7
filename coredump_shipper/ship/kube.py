"""The daemon's Kubernetes side as one part: the node's pod cache, pod look-ups and Events.

On when the daemon runs in a pod with a service account token, or with `--kubeconfig`; off with
`--kubernetes off` or when neither is there. Nothing here can stop a core from shipping: the API
being down, slow or forbidding a call only means fewer fields and no Event, counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from coredump_shipper.core.facts import CoreFacts
from coredump_shipper.errors import ConfigError
from coredump_shipper.kube.access import resolve
from coredump_shipper.kube.api import KubeClient
from coredump_shipper.kube.events import CoreNotice, EventRecorder
from coredump_shipper.kube.pods import Pod, PodCache
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship.podidentity import PodIdentity
from coredump_shipper.ship.settings import KubeSettings
from coredump_shipper.ship.sightings import Sighting
from coredump_shipper.stopping import cancel_and_wait

log = logging.getLogger(__name__)
EVENT_DRAIN_SECONDS = 2.0


@dataclass
class Kube:
    cache: PodCache
    identity: PodIdentity
    events: EventRecorder | None
    bucket: str

    async def enrich(self, facts: CoreFacts) -> tuple[CoreFacts, Pod | None]:
        return await self.identity.enrich(facts)

    def core_shipped(
        self,
        pod: Pod | None,
        facts: CoreFacts,
        key: str,
        *,
        metadata_only: bool,
        sighting: Sighting | None = None,
    ) -> None:
        """Queue the pod's CoreDumped Event (never waits)."""
        if pod is None or self.events is None:
            return
        values: dict[str, Any] = facts.template_values
        signal = values.get("signal_name") or (f"signal {values['signal']}" if values.get("signal") else None)
        self.events.notify(
            CoreNotice(
                pod=pod,
                container=values.get("container"),
                program=str(values.get("exe") or facts.program),
                signal=signal or "unknown signal",
                url=f"s3://{self.bucket}/{key}",
                metadata_only=metadata_only,
                signature=facts.signature.short if facts.signature else "",
                seen=sighting.text() if sighting else "",
            )
        )


@contextlib.asynccontextmanager
async def kube_features(settings: KubeSettings, metrics: Metrics) -> AsyncIterator[Kube | None]:
    access = resolve(settings.kubernetes, settings.kubeconfig, os.environ)
    if access is None:
        if settings.capture_filter.configured:
            log.warning(
                "no Kubernetes API: --exclude-namespaces and --pod-selector cannot apply; every core ships"
            )
        elif settings.kubernetes != "off":
            log.info("no Kubernetes API (not in a pod, no --kubeconfig): cores get no pod fields or Events")
        yield None
        return
    try:
        client = KubeClient(access)
        await client.__aenter__()
    except (OSError, ssl.SSLError) as error:
        raise ConfigError("--kubeconfig", f"{access.source}: {error}") from None
    try:
        # The selector's labels are kept too: the capture filter reads them from the pinned pod.
        labels = tuple(dict.fromkeys((*settings.pod_labels, *settings.capture_filter.label_keys)))
        cache = PodCache(client, settings.node_name, labels)
        identity = PodIdentity(cache, settings.pod_labels, settings.pod_lookup_timeout, metrics)
        recorder = EventRecorder(client, settings.node_name, metrics) if settings.events else None
        tasks = [asyncio.create_task(cache.run(), name="pod-cache")]
        if recorder is not None:
            tasks.append(asyncio.create_task(recorder.run(), name="pod-events"))
        log.info(
            "Kubernetes API at %s (%s): pods of node %s%s",
            access.server,
            access.source,
            settings.node_name,
            ", CoreDumped Events on" if recorder else "",
        )
        try:
            yield Kube(cache, identity, recorder, settings.bucket)
        finally:
            if recorder is not None:
                await recorder.drain(EVENT_DRAIN_SECONDS)
            await cancel_and_wait(tasks)
    finally:
        await client.__aexit__(None, None, None)
