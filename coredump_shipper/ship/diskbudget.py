"""Protecting the node's disk while cores cannot be shipped, modelled on systemd-coredump.

`--max-use` caps the space the watched directory's cores take; `--keep-free` keeps that much of the
filesystem free. When either is exceeded, the oldest cores not being uploaded are deleted first, each
one logged loudly and counted as dropped{reason="disk_budget"}. Space is counted in allocated blocks,
not apparent size: cores are sparse, and a 100 MB core may occupy 34 KB.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.core import companions
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship.afterupload import AfterUpload
from coredump_shipper.ship.claims import Claims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Core:
    name: str
    mtime: float
    allocated: int
    inode: int
    shipped: bool  # keep mode: already in the bucket, so deleting it loses nothing


class DiskBudget:
    def __init__(
        self,
        watch_dir: Path,
        max_use: DiskLimit,
        keep_free: DiskLimit,
        ignored: Callable[[str], bool],
        metrics: Metrics,
        after_upload: AfterUpload,
    ) -> None:
        # Required, not optional: in keep mode the policy knows which kept files are already shipped.
        self.after_upload = after_upload
        self.watch_dir = watch_dir
        self.max_use = max_use
        self.keep_free = keep_free
        self.ignored = ignored
        self.metrics = metrics

    def limits(self) -> tuple[int, int]:
        """(max bytes the cores may use, bytes to keep free) for the filesystem as it is now."""
        fs = os.statvfs(self.watch_dir)
        total = fs.f_blocks * fs.f_frsize
        return self.max_use.resolve(total), self.keep_free.resolve(total)

    def _cores(self) -> list[_Core]:
        cores = []
        for name in os.listdir(self.watch_dir):
            if self.ignored(name):
                continue
            try:
                st = os.lstat(self.watch_dir / name)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                shipped = self.after_upload.shipped_stat(name, st)
                cores.append(_Core(name, st.st_mtime, st.st_blocks * 512, st.st_ino, shipped))
        # Kept copies of shipped cores go first, then the oldest unshipped ones.
        return sorted(cores, key=lambda core: (not core.shipped, core.mtime, core.name))

    def usage(self) -> int:
        """Bytes the cores in the directory occupy on disk."""
        return sum(core.allocated for core in self._cores())

    def enforce(self, claims: Claims) -> list[str]:
        """Delete cores until both limits hold, oldest first (kept copies of shipped cores before
        any unshipped one; never one a worker claims). Returns the unshipped ones lost. Blocking."""
        max_use, keep_free = self.limits()
        cores = self._cores()
        used = sum(core.allocated for core in cores)
        fs = os.statvfs(self.watch_dir)
        free = fs.f_bavail * fs.f_frsize
        self.metrics.disk_usage.set(used)
        self.metrics.disk_limit.labels("max_use").set(max_use)
        self.metrics.disk_limit.labels("keep_free").set(keep_free)
        dropped: list[str] = []
        for core in cores:
            over_use = max_use > 0 and used > max_use
            under_free = keep_free > 0 and free < keep_free
            if not (over_use or under_free):
                break
            # A core that occupies no blocks (all holes) frees nothing: deleting it would only lose it.
            if core.allocated == 0 or not claims.delete_unclaimed(self.watch_dir / core.name, core.inode):
                continue
            companions.remove(self.watch_dir, core.name)  # the receiver's facts, the pinned pod
            used -= core.allocated
            free += core.allocated
            if core.shipped:
                log.info(
                    "deleted the kept copy of shipped core %r to free space", str(self.watch_dir / core.name)
                )
                continue
            dropped.append(core.name)
            self.metrics.dropped.labels("disk_budget").inc()
            log.error(
                "DROPPED core %r (%d bytes on disk) to protect the node: cores use %d bytes "
                "(--max-use %d), %d bytes free (--keep-free %d)",
                str(self.watch_dir / core.name),
                core.allocated,
                used + core.allocated,
                max_use,
                free - core.allocated,
                keep_free,
                extra={"event": "dropped", "reason": "disk_budget", "file": str(self.watch_dir / core.name)},
            )
        self.metrics.disk_usage.set(used)
        return dropped
