"""Shipping one core: open it safely, name it, upload it, then delete or record it.

Used by the daemon's workers and by the one-shot `ship` command alike, so both name and store cores
the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coredump_shipper.bucket.fleetindex import entry_key
from coredump_shipper.bucket.manifest import Manifest, manifest_key
from coredump_shipper.core.facts import CoreFacts, core_uses_pid, gather, truncation_hint
from coredump_shipper.core.file import CoreFile
from coredump_shipper.core.signature import describe as describe_signature
from coredump_shipper.errors import FileChanged, S3Error
from coredump_shipper.kube.pods import CAPTURE_ANNOTATION
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.s3.store import S3Store, UploadResult
from coredump_shipper.ship.afterupload import AfterUpload
from coredump_shipper.ship.dayindex import DayIndex
from coredump_shipper.ship.pinning import PodPins
from coredump_shipper.ship.settings import ShipperSettings
from coredump_shipper.ship.sightings import Sighting, Sightings
from coredump_shipper.ship.storm import StormLimiter, storm_key, storm_scope

if TYPE_CHECKING:
    from coredump_shipper.kube.pods import Pod
    from coredump_shipper.ship.kube import Kube

log = logging.getLogger(__name__)
EXCLUDED_BECAUSE = {
    "namespace": "its namespace matches --exclude-namespaces",
    "pod_selector": "its pod does not match --pod-selector",
    "pod_annotation": f'its pod is annotated {CAPTURE_ANNOTATION}: "false"',
}
MAX_SAID = 1024  # workloads whose exclusion was logged; past this each is logged at debug level


async def _close_deleted(core: CoreFile) -> None:
    """Close a deleted core's last descriptor in a thread: that is when the filesystem frees its
    blocks (about 0.4 ms for 1 MiB, 25 ms for 64 MiB, seconds for a big core on ext4), which would
    stall the event loop, and with it every upload and probe, in a storm."""
    fd, core.fd = core.fd, -1  # CoreFile.close must not close it again, even if we are cancelled
    if fd >= 0:
        await asyncio.to_thread(os.close, fd)


class Shipper:
    def __init__(
        self,
        settings: ShipperSettings,
        store: S3Store,
        metrics: Metrics,
        after_upload: AfterUpload,
        *,
        kube: Kube | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.after_upload = after_upload
        self.kube = kube
        self.fields = settings.template_fields
        self.keys = settings.keys
        self.pattern = settings.core_names.with_uses_pid(core_uses_pid())
        self.storm = StormLimiter(settings.storm_limit, settings.storm_window)
        self.storage = settings.storage
        self.capture_filter = settings.capture_filter
        self._said_excluded: set[tuple[str, str, str]] = set()
        self.pins = PodPins(kube.identity, self._gather) if kube is not None else None
        self.sightings = Sightings(store.client, store.bucket, settings.cluster_name)
        self.day_index = DayIndex(store, settings.cluster_name)
        metrics.storm_limit.set(settings.storm_limit)
        metrics.storm_window.set(settings.storm_window)

    async def ship(self, path: Path) -> str | None:
        """Ship one file; its key, or None when no core object was stored (shipped before, in keep
        mode, or over the storm limit). Raises SkipFile, FileChanged or S3Error; the file stays."""
        started = time.monotonic()
        with CoreFile(path) as core:
            if self.after_upload.shipped(core.name, core.identity):
                return None
            facts = await asyncio.to_thread(self._gather, core)
            facts, pod = await self._identify(core, facts)
            excluded = self.capture_filter.excluded(pod) if pod is not None else None
            if pod is not None and excluded is not None:
                await self._exclude(core, pod, excluded)
                return None
            key = self.keys.render(facts.template_values)
            if facts.info.truncated:
                self.metrics.truncated_cores.inc()
                log.warning(
                    "shipping truncated core %r: %s",
                    str(path),
                    truncation_hint(facts.info),
                    extra={"event": "truncated_core", "file": str(path)},
                )
            admitted = self.storm.admit(storm_key(facts.template_values, facts.program), core.name)
            if admitted:
                result = await self._upload(core, key, facts)
                self._finish(core, key)
            else:
                await self._metadata_only(core, key, facts)
            if self.after_upload.removes_file:
                await _close_deleted(core)
            shown = key if admitted else manifest_key(key)
            await self._announce(pod, facts, shown, metadata_only=not admitted)
            if not admitted:
                return None
        seconds = time.monotonic() - started
        self.metrics.uploads.labels("success").inc()
        self.metrics.core_bytes.inc(core.size)
        self.metrics.upload_duration.observe(seconds)
        self.metrics.last_success.set(time.time())
        signature = facts.signature
        log.info(
            "[coredump] '%s' has been uploaded to 's3://%s/%s' signature %s",
            path,
            self.store.bucket,
            key,
            describe_signature(signature) if signature else "unknown",
            extra={
                "event": "uploaded",
                "file": str(path),
                "key": key,
                "signature": signature.short if signature else None,
                "bytes": core.size,
                "bytes_sent": result.bytes_sent,
                "duration_seconds": round(seconds, 3),
            },
        )
        return key

    def found(self, path: Path) -> None:
        """The daemon found a new core: pin its pod now, while the pod still exists (never waits)."""
        if self.pins is not None:
            self.pins.found(path)

    async def close(self) -> None:
        await self.day_index.close()
        if self.pins is not None:
            await self.pins.close()

    def _gather(self, core: CoreFile) -> CoreFacts:
        """Blocking: what the name, the headers and the receiver's facts say about the core."""
        settings = self.settings
        facts = gather(core, self.pattern, settings.cluster_name, settings.node_name, settings.compression)
        # Every template field present (None when unknown).
        values = {name: None for name in self.fields} | facts.template_values
        return dataclasses.replace(facts, template_values=values)

    async def _identify(self, core: CoreFile, facts: CoreFacts) -> tuple[CoreFacts, Pod | None]:
        """The facts plus the pod's fields when its pod is known (pinned when the core was found)."""
        if self.kube is None or self.pins is None:
            return facts, None
        match = await self.pins.match(core, facts)
        if match is None:
            return facts, None
        return self.kube.identity.apply(facts, match), match.pod

    async def _announce(self, pod: Pod | None, facts: CoreFacts, key: str, *, metadata_only: bool) -> None:
        if self.kube is None or pod is None or self.kube.events is None:
            return
        sighting: Sighting | None = None
        if facts.signature is not None:
            sighting = await self.sightings.seen(facts.signature.short)
        self.kube.core_shipped(pod, facts, key, metadata_only=metadata_only, sighting=sighting)

    async def _write_manifest(self, manifest: Manifest, object_args: dict[str, Any]) -> None:
        """The manifest, then the core's fleet index entries (fleetindex.py): by signature (the
        Event's count) and by day (`ls`, dayindex.py). They are a convenience: shipping goes on if
        they cannot be written (a day entry is written with the next core's)."""
        await self.store.put_json(manifest_key(manifest.key), manifest.to_json(), object_args)
        entry = entry_key(manifest.fields)
        if entry is not None:
            try:
                await self.store.put_json(entry, {}, object_args)
            except S3Error as error:
                log.warning(
                    "fleet index entry for %r not written (its signature's count misses it): %s",
                    manifest.key,
                    error,
                    extra={"event": "index_failed", "key": manifest.key},
                )
        await self.day_index.record(manifest.fields, object_args)

    async def _upload(self, core: CoreFile, key: str, facts: CoreFacts) -> UploadResult:
        object_args = self.storage.args(facts.template_values)
        result = await self.store.upload(core, key, metadata=facts.metadata, object_args=object_args)
        # Written last: a manifest means its core object is complete.
        manifest = Manifest.for_core(
            key,
            self.store.bucket,
            {**facts.metadata, **facts.details},
            result.sha256,
            result.bytes_sent,
            result.verification,
        )
        await self._write_manifest(manifest, object_args)
        return result

    async def _metadata_only(self, core: CoreFile, key: str, facts: CoreFacts) -> None:
        """A core over the storm limit: store what is known about it, not the core itself."""
        manifest = Manifest.rate_limited_core(key, self.store.bucket, {**facts.metadata, **facts.details})
        await self._write_manifest(manifest, self.storage.args(facts.template_values))
        self._finish(core, key)
        self.metrics.dropped.labels("rate_limited").inc()
        log.warning(
            "DROPPED core %r: over --storm-limit %d cores of %r%s per %.0fs; its metadata is in %r",
            str(core.path),
            self.storm.limit,
            facts.program,
            f" of {scope}" if (scope := storm_scope(facts.template_values)) else " on this node",
            self.storm.window,
            manifest_key(key),
            extra={"event": "dropped", "reason": "rate_limited", "file": str(core.path), "key": key},
        )

    async def _exclude(self, core: CoreFile, pod: Pod, reason: str) -> None:
        """A core of an excluded pod: deleted without upload, counted, said once per workload."""
        if not core.remove():
            raise FileChanged(f"{str(core.path)!r} was replaced before it was deleted")
        await _close_deleted(core)
        self.metrics.excluded.labels(reason).inc()
        workload = pod.owner_name or pod.name
        said = (reason, pod.namespace, workload)
        level = logging.DEBUG if said in self._said_excluded else logging.WARNING
        if len(self._said_excluded) < MAX_SAID:
            self._said_excluded.add(said)
        log.log(
            level,
            "deleted core %r unshipped: %s (pod %s/%s)",
            str(core.path),
            EXCLUDED_BECAUSE[reason],
            pod.namespace,
            pod.name,
            extra={"event": "excluded", "reason": reason, "file": str(core.path)},
        )

    def _finish(self, core: CoreFile, key: str) -> None:
        # Checked once more: a file rewritten after the upload completed must be shipped again.
        core.check_unchanged()
        self.after_upload.finish(core, key)
