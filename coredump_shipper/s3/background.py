"""Work on a core's bytes beside the thread that compresses them: SHA-256 and read-ahead.

hashlib, zstd and `preadv` all release the GIL. Hashing (and reading) chunk N in a helper thread
while the calling thread compresses chunk N-1 puts both cores of a small node to work on one file,
instead of one core doing read, hash and compress in turn. Each file has at most one job in the
helper pool at a time and waits for it before queuing the next, so the hash sees the bytes in order
and no buffer is reused while a job may still read it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cpus_available(cgroup: str = "/sys/fs/cgroup") -> float:
    """CPUs this process may use: its affinity, capped by a CFS quota (a pod's CPU limit; cgroup
    v2 `cpu.max` or v1 `cpu.cfs_quota_us`, as seen from inside the container)."""
    cpus = float(len(os.sched_getaffinity(0)))
    root = Path(cgroup)
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text(encoding="ascii").split()
            if period_file is not None:
                fields.append((root / period_file).read_text(encoding="ascii").strip())
        except OSError:
            continue
        if len(fields) == 2 and fields[0] not in ("max", "-1") and int(fields[1]) > 0:
            return min(cpus, int(fields[0]) / int(fields[1]))
        return cpus
    return cpus


# A helper thread only overlaps work when a second CPU is there to run it; under a CPU limit below
# that it would only add hand-offs (about a tenth more CPU per GiB when the cores are contended).
OVERLAP = cpus_available() >= 1.5

# Enough for every worker's file to have its job running. Threads start on first use and idle
# ones cost nothing.
POOL_THREADS = 4
_POOL = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="bytes")


class Helper:
    """One file's lane in the helper pool: at most one job in flight, run in submission order."""

    def __init__(self) -> None:
        self._pending: Future[object] | None = None

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Run `job` in the pool once the previous job has finished (its error is raised here)."""
        self.wait()
        future = _POOL.submit(job)
        self._pending = future  # type: ignore[assignment]
        return future

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()


class BackgroundSha256:
    """SHA-256 whose updates run in a helper lane; `hexdigest()` waits for them."""

    def __init__(self, helper: Helper) -> None:
        self._helper = helper
        self._hash = hashlib.sha256()

    def update_now(self, data: memoryview) -> None:
        """Hash in the calling thread (the helper must be idle)."""
        self._hash.update(data)

    def update_later(self, data: memoryview) -> None:
        """Hash in the helper; `data` must not change until the helper has been waited for."""
        self._helper.submit(lambda: self._hash.update(data))

    def hexdigest(self) -> str:
        self._helper.wait()
        return self._hash.hexdigest()
