"""Run one contestant as a child process and take its wall time, CPU time and peak RSS."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Measurement:
    """What one child process cost, from os.wait4's rusage (children's user+sys, ru_maxrss)."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    returncode: int
    output_tail: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def wait_measured(proc: subprocess.Popen[bytes], started: float) -> tuple[float, int, resource.struct_rusage]:
    """Reap `proc` with wait4 so its rusage is this one process tree's, not a running total."""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    # Popen must learn the exit status, or it warns that the child is still running.
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, proc.returncode, usage


def run_measured(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    timeout: float = 600.0,
) -> Measurement:
    """Run argv to completion (killed after `timeout`), output to `log`."""
    with log.open("wb") as out:
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            out.write(f"cannot start {argv[0]}: {exc}\n".encode())
            return Measurement(0.0, 0.0, 0.0, 0, 127, str(exc))
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            wall, code, usage = wait_measured(proc, started)
        finally:
            killer.cancel()
    return Measurement(
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,
        returncode=code,
        output_tail=tail(log),
    )


def tail(path: Path, limit: int = 600) -> str:
    data = path.read_bytes()[-limit:]
    return data.decode("utf-8", "replace").strip()


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-int(fraction * 100) * len(ordered) // 100))
    return ordered[min(rank, len(ordered)) - 1]
