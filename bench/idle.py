"""What a running daemon costs with nothing to ship: CPU per minute and RSS.

The daemon runs with its defaults (rescans, S3 checks, disk budget) while `/metrics` is scraped
every 15 s, as Prometheus would. Start-up work (imports, the S3 self-test, the stale-upload
clean-up) is left out: CPU is counted from a few seconds after `/readyz` answers 200. The window is
minutes, not an hour: CPU per hour is the per-minute figure times 60, and the report says so.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.daemon import DaemonFailed, running
from bench.targets import Target

SCRAPE_INTERVAL = 15.0
SETTLE_S = 5.0


@dataclass
class IdleResult:
    seconds: float = 0.0
    cpu_s: float | None = None
    scrapes: int = 0
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    error: str = ""

    @property
    def cpu_per_minute(self) -> float | None:
        return self.cpu_s / (self.seconds / 60) if self.cpu_s is not None and self.seconds else None


def run_idle_bench(target: Target, work: Path, logs: Path, seconds: float) -> IdleResult:
    result = IdleResult()
    try:
        with running(target.endpoint, work / "watch-idle", logs / "daemon-idle.log") as daemon:
            daemon.wait_ready()
            time.sleep(SETTLE_S)
            url = f"http://127.0.0.1:{daemon.port}/metrics"
            cpu = daemon.cpu_seconds()
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                with urllib.request.urlopen(url, timeout=5.0) as response:
                    response.read()
                result.scrapes += 1
                time.sleep(min(SCRAPE_INTERVAL, max(0.0, seconds - elapsed)))
            result.seconds = time.monotonic() - started
            result.cpu_s = daemon.cpu_seconds() - cpu
            result.rss_mib, result.peak_rss_mib = daemon.memory_mib()
            daemon.stop()
    except (DaemonFailed, OSError) as exc:
        result.error = str(exc)
    return result
