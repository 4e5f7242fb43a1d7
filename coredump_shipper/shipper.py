"""Shipping one core: open it safely, name it, upload it, then delete or record it.

Used by the daemon's workers and by the one-shot `ship` command alike, so both name and store cores
the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from coredump_shipper.config import Config, storage_options, template_fields
from coredump_shipper.corefile import CoreFile
from coredump_shipper.corename import CoreNamePattern
from coredump_shipper.errors import FileChanged
from coredump_shipper.facts import CoreFacts, core_uses_pid, gather, truncation_hint
from coredump_shipper.metrics import Metrics
from coredump_shipper.naming import KeyTemplate
from coredump_shipper.parts import choose_part_size
from coredump_shipper.record import ShippedRecord
from coredump_shipper.storm import StormLimiter
from coredump_shipper.uploader import S3Store, UploadResult

if TYPE_CHECKING:
    from coredump_shipper.kube import Kube
    from coredump_shipper.pods import Pod

log = logging.getLogger(__name__)
MANIFEST_SUFFIX = ".manifest.json"


class Shipper:
    def __init__(
        self,
        config: Config,
        store: S3Store,
        metrics: Metrics,
        *,
        delete_after: bool,
        record: ShippedRecord | None = None,
        kube: Kube | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.delete_after = delete_after
        self.record = record
        self.kube = kube
        self.fields = template_fields(config)
        self.compressed = config.compression == "zstd"
        self.keys = KeyTemplate(config.key_template, self.fields, ".zst" if self.compressed else "")
        self.pattern = CoreNamePattern.compile(config.filename_pattern, uses_pid=core_uses_pid())
        self.storm = StormLimiter(config.storm_limit, config.storm_window)
        self.storage = storage_options(config)
        metrics.storm_limit.set(config.storm_limit)
        metrics.storm_window.set(config.storm_window)

    async def ship(self, path: Path) -> str | None:
        """Ship one file; its key, or None when no core object was stored (shipped before, in keep
        mode, or over the storm limit). Raises SkipFile, FileChanged or UploadError; the file stays."""
        started = time.monotonic()
        with CoreFile(path) as core:
            if self.record is not None and self.record.contains(core.name, core.identity):
                return None
            facts = await asyncio.to_thread(
                gather,
                core,
                self.pattern,
                self.config.cluster_name,
                self.config.node_name,
                self.config.compression,
            )
            facts, pod = await self._identify(facts)
            key = self.keys.render(facts.template_values)
            if facts.info.truncated:
                self.metrics.truncated_cores.inc()
                log.warning(
                    "shipping truncated core %r: %s",
                    str(path),
                    truncation_hint(facts.info),
                    extra={"event": "truncated_core", "file": str(path)},
                )
            if not self.storm.admit(facts.program, core.name):
                await self._metadata_only(core, key, facts)
                self._announce(pod, facts, key + MANIFEST_SUFFIX, metadata_only=True)
                return None
            result = await self._upload(core, key, facts)
            self._finish(core, key)
            self._announce(pod, facts, key, metadata_only=False)
        seconds = time.monotonic() - started
        self.metrics.uploads.labels("success").inc()
        self.metrics.core_bytes.inc(core.size)
        self.metrics.upload_duration.observe(seconds)
        self.metrics.last_success.set(time.time())
        log.info(
            "[coredump] '%s' has been uploaded to 's3://%s/%s'",
            path,
            self.store.bucket,
            key,
            extra={
                "event": "uploaded",
                "file": str(path),
                "key": key,
                "bytes": core.size,
                "bytes_sent": result.bytes_sent,
                "duration_seconds": round(seconds, 3),
            },
        )
        return key

    async def _identify(self, facts: CoreFacts) -> tuple[CoreFacts, Pod | None]:
        """Every template field present (None when unknown), plus the pod's when the API knows it."""
        values = {name: None for name in self.fields} | facts.template_values
        facts = dataclasses.replace(facts, template_values=values)
        if self.kube is None:
            return facts, None
        return await self.kube.enrich(facts)

    def _announce(self, pod: Pod | None, facts: CoreFacts, key: str, *, metadata_only: bool) -> None:
        if self.kube is not None:
            self.kube.core_shipped(pod, facts, key, metadata_only=metadata_only)

    async def _upload(self, core: CoreFile, key: str, facts: CoreFacts) -> UploadResult:
        part_size = choose_part_size(core.size, self.config.part_size, self.compressed, self.config.max_parts)
        object_args = self.storage.args(facts.template_values)
        result = await self.store.upload(
            core,
            key,
            facts.metadata,
            part_size,
            self.config.compression_level if self.compressed else None,
            "application/zstd" if self.compressed else "application/octet-stream",
            object_args,
        )
        # Written last: a manifest means its core object is complete.
        await self.store.put_json(
            key + MANIFEST_SUFFIX,
            {
                **facts.metadata,
                "key": key,
                "bucket": self.store.bucket,
                "sha256": result.sha256,
                "stored-bytes": result.bytes_sent,
            },
            object_args,
        )
        return result

    async def _metadata_only(self, core: CoreFile, key: str, facts: CoreFacts) -> None:
        """A core over the storm limit: store what is known about it, not the core itself."""
        await self.store.put_json(
            key + MANIFEST_SUFFIX,
            {**facts.metadata, "key": key, "bucket": self.store.bucket, "rate-limited": "true"},
            self.storage.args(facts.template_values),
        )
        self._finish(core, key)
        self.metrics.dropped.labels("rate_limited").inc()
        log.warning(
            "DROPPED core %r: over --storm-limit %d cores of %r per %.0fs; its metadata is in %r",
            str(core.path),
            self.storm.limit,
            facts.program,
            self.storm.window,
            key + MANIFEST_SUFFIX,
            extra={"event": "dropped", "reason": "rate_limited", "file": str(core.path), "key": key},
        )

    def _finish(self, core: CoreFile, key: str) -> None:
        # Checked once more: a file rewritten after the upload completed must be shipped again.
        core.check_unchanged()
        if self.record is not None:
            self.record.add(core.name, core.identity, key)
        elif self.delete_after and not core.remove():
            raise FileChanged(f"{str(core.path)!r} was replaced after upload")
