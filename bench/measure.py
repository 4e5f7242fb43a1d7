"""Run one contestant as a child process and take its wall time, CPU time and peak RSS."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LAUNCHER = Path(__file__).resolve().parent / "launch.py"


@dataclass(frozen=True)
class Measurement:
    """What one command cost, from wait4's rusage in bench/launch.py (user+sys, ru_maxrss)."""

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


def launch(
    argv: Sequence[str], env: Mapping[str, str], out: IO[bytes], result: Path
) -> subprocess.Popen[bytes]:
    """Start argv under bench/launch.py, which writes its costs to `result` when it ends.

    In a session of its own, so that a timeout can kill the command along with the launcher.
    """
    command = [sys.executable, "-S", str(LAUNCHER), str(result), *argv]
    return subprocess.Popen(
        command, env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def launched_costs(result: Path) -> dict[str, float]:
    """The launcher's figures; empty if it was killed before writing them."""
    try:
        costs: dict[str, float] = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return costs


def run_measured(
    argv: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    timeout: float = 600.0,
) -> Measurement:
    """Run argv to completion (killed after `timeout`), output to `log`."""
    result = log.with_suffix(".rusage.json")
    result.unlink(missing_ok=True)
    with log.open("wb") as out:
        proc = launch(argv, env, out, result)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code = proc.wait()
    costs = launched_costs(result)
    return Measurement(
        wall_s=costs.get("wall_s", 0.0),
        user_s=costs.get("user_s", 0.0),
        sys_s=costs.get("sys_s", 0.0),
        max_rss_kib=int(costs.get("max_rss_kib", 0)),
        returncode=code if costs else -1,
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
