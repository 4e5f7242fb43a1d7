"""Memory under a mixed load: cores of very different sizes at once, then a minute of idleness.

Five cores land together in the running daemon's directory over HTTPS (a 1 KiB one, 20 MiB and
150 MiB realistic cores, a sparse 1 GiB core and one with an odd name), as a busy node produces
them. The figures are the daemon's RSS before, its peak (VmHWM) while shipping them, and its RSS a
minute after the last one left: the memory an idle daemon gives back after a burst.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import DaemonFailed, running
from bench.inputs import MiB, make_realistic_core
from bench.targets import Target

SETTLE_S = 5.0
AFTER_S = 60.0
DRAIN_TIMEOUT_S = 900.0


@dataclass
class MixedResult:
    idle_rss_mib: float | None = None
    peak_rss_mib: float | None = None
    after_rss_mib: float | None = None  # AFTER_S after the last core left
    drain_s: float | None = None
    error: str = ""


def _stage(directory: Path) -> list[Path]:
    """The five cores, written beside the watched directory so each lands in one rename."""
    directory.mkdir(exist_ok=True)
    tiny = directory / "core.tiny.sig6.1.1700000000"
    tiny.write_bytes(os.urandom(1024))
    sparse = directory / "core.sparse.sig11.4.1700000000"
    with sparse.open("wb") as out:
        out.write(os.urandom(MiB))
        out.truncate(1024 * MiB)
    return [
        tiny,
        make_realistic_core(directory / "core.mid.sig11.2.1700000000", 20 * MiB),
        make_realistic_core(directory / "core.big.sig11.3.1700000000", 150 * MiB),
        sparse,
        make_realistic_core(directory / "core.odd name\u00e9\n.sig11.5.1700000000", 5 * MiB),
    ]


def run_mixed_bench(target: Target, work: Path, logs: Path) -> MixedResult:
    result = MixedResult()
    staged = _stage(work / "mixed-staging")
    try:
        with running(target.endpoint, work / "watch-mixed", logs / "daemon-mixed.log") as daemon:
            daemon.wait_ready()
            time.sleep(SETTLE_S)
            result.idle_rss_mib = daemon.memory_mib()[0]
            started = time.monotonic()
            for core in staged:
                core.rename(daemon.watch_dir / core.name)
            while any(not p.name.startswith(".") for p in daemon.watch_dir.iterdir()):
                if time.monotonic() - started > DRAIN_TIMEOUT_S:
                    raise DaemonFailed(f"cores still waiting after {DRAIN_TIMEOUT_S:.0f} s")
                time.sleep(0.1)
            result.drain_s = time.monotonic() - started
            time.sleep(AFTER_S)
            result.after_rss_mib, result.peak_rss_mib = daemon.memory_mib()
            daemon.stop()
    except (DaemonFailed, OSError) as exc:
        result.error = str(exc)
    return result
