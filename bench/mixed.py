"""Memory under a mixed load: cores of very different sizes at once, then a minute of idleness.

Five cores land together in the running daemon's directory over HTTPS (a 1 KiB one, 20 MiB and
150 MiB realistic cores, a sparse 1 GiB core and one with an odd name), as a busy node produces
them. The figures are the daemon's RSS before, its peak (VmHWM) while shipping them, and its RSS a
minute after the last one left: the memory an idle daemon gives back after a burst.

Alone (`make bench` runs it once among the daemon rows), with medians of several runs and the
daemon's CPU seconds for the burst:

    .venv/bin/python -m bench.mixed --reps 3
    .venv/bin/python -m bench.mixed --reps 3 --env MALLOC_TRIM_THRESHOLD_=131072   # a glibc tunable
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.daemon import DaemonFailed, running
from bench.inputs import MiB, make_realistic_core
from bench.targets import Target, https_target, run_nullsink

SETTLE_S = 5.0
AFTER_S = 60.0
DRAIN_TIMEOUT_S = 900.0


@dataclass
class MixedResult:
    idle_rss_mib: float | None = None
    peak_rss_mib: float | None = None
    after_rss_mib: float | None = None  # AFTER_S after the last core left
    drain_s: float | None = None
    cpu_s: float | None = None  # the daemon's, from the first rename until the last core left
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


def run_mixed_bench(
    target: Target, work: Path, logs: Path, env: Mapping[str, str] | None = None
) -> MixedResult:
    result = MixedResult()
    staged = _stage(work / "mixed-staging")
    try:
        watch = work / "watch-mixed"
        with running(target.endpoint, watch, logs / "daemon-mixed.log", env=env) as daemon:
            daemon.wait_ready()
            time.sleep(SETTLE_S)
            result.idle_rss_mib = daemon.memory_mib()[0]
            cpu = daemon.cpu_seconds()
            started = time.monotonic()
            for core in staged:
                core.rename(daemon.watch_dir / core.name)
            while any(not p.name.startswith(".") for p in daemon.watch_dir.iterdir()):
                if time.monotonic() - started > DRAIN_TIMEOUT_S:
                    raise DaemonFailed(f"cores still waiting after {DRAIN_TIMEOUT_S:.0f} s")
                time.sleep(0.1)
            result.drain_s = time.monotonic() - started
            result.cpu_s = daemon.cpu_seconds() - cpu
            time.sleep(AFTER_S)
            result.after_rss_mib, result.peak_rss_mib = daemon.memory_mib()
            daemon.stop()
    except (DaemonFailed, OSError) as exc:
        result.error = str(exc)
    return result


def _median(values: Sequence[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3, help="daemons started, one after another (medians)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="added to the daemon's environment"
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    results: list[MixedResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as scratch:
        work = Path(scratch)
        with run_nullsink(work) as sink, https_target("nullsink-https", sink, work) as target:
            for rep in range(args.reps):
                run = work / f"rep-{rep}"
                run.mkdir()
                result = run_mixed_bench(target, run, run, env)
                print(f"run {rep + 1}: {asdict(result)}", file=sys.stderr, flush=True)
                if result.error:
                    return 1
                results.append(result)
    fields = ("idle_rss_mib", "peak_rss_mib", "after_rss_mib", "drain_s", "cpu_s")
    medians = {name: _median([getattr(result, name) for result in results]) for name in fields}
    print(" ".join(f"{name}={value:.1f}" for name, value in medians.items() if value is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
