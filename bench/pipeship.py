"""Crash -> object in S3 through pipe capture (coredump-receive + the daemon) against file capture.

A process fills N MiB and crashes (SIGSEGV) on the real kernel. kernel.core_pattern either pipes
the core to the receiver (the chart's line: `-d %d -f 15% -s all`, core_pipe_limit 128), which
stores it and its facts in the watched directory, or is the chart's file pattern
(`DIR/core.%h.%e.sig%s.%p.%t`), the kernel writing the core there itself. One `coredump-shipper run`
(`--after-upload delete`, `--storm-limit 0`) watches that directory for both and ships to the HTTPS
null sink (bench/nullsink.py behind haproxy).

Figures, per capture and size (medians of the repetitions, the two captures alternating):
- crash -> object: the crashing process's last `time.time()` before SIGSEGV to the sink's
  completion time of the core object; crash -> process gone: to its reaping (the kernel holds it
  until its core is written, or until the receiver exits);
- CPU seconds per GiB of core, summed over everything that moves the bytes: the dump (the kernel
  writes the core in the crashing process's context: its wait4 rusage minus what it had used before
  the crash), the receiver (the kernel starts it outside any process of ours, so the line runs it
  through a two-line shell wrapper that moves itself into a cgroup v2 directory made for the run and
  execs the receiver: that cgroup's `cpu.stat` usage counts every receiver, exited ones included),
  and the shipper (the daemon, moved into a cgroup of its own at start: microseconds, where
  /proc/PID/stat counts 10 ms ticks), from before the crash until it has deleted the core;
- peak disk: the most the watched directory's files occupied (allocated blocks, sampled every 10 ms).

Then a burst: COUNT processes crash at once; all received (core objects at the sink), time from
the release to the last object (manifests included), the same CPU sums, and peak disk.

The crashing process keeps its N MiB in a shared anonymous mapping and sets its coredump_filter to
0x12 (shared anonymous memory and ELF headers), so the interpreter's own ~5 MiB of heap stays out
and the core is the size asked for. The memory cycles 1 MiB runs of random bytes and written zeros
(half random, as the realistic core of the other rows).

Needs root and a cgroup v2 hierarchy; core_pattern is changed only under testkit/receiver.py's lock,
always restored, and a run killed half-way is repaired at the next start (its paths carry
TEMP_PREFIX).

    .venv/bin/python -m bench.pipeship [--sizes 1,100,1024] [--reps 3] [--burst 50,32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.capture import PIPE_LIMIT
from bench.daemon import Daemon, DaemonFailed, running
from bench.inputs import GiB, MiB
from bench.targets import NullSink, Target
from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from testkit.receiver import (
    TEMP_PREFIX,
    build_receiver,
    cgroup2_root,
    pipe_core_pattern,
    remove_cgroup,
    repair_core_pattern,
)

PIPE, FILE = "pipe", "file"
MODES = (PIPE, FILE)
NAME_PATTERN = "core.%h.%e.sig%s.%p.%t"  # the chart's filenamePattern and file-mode corePattern

KEEP_FREE = DiskLimit(percent=15)  # the daemon's and the chart's default

_CRASHER = """\
import mmap, os, resource, signal, sys, time
size = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # file capture
with open("/proc/self/coredump_filter", "w") as f:
    f.write("0x12")
mem = mmap.mmap(-1, size)
run = 1 << 20
for start in range(0, size, 2 * run):
    mem[start : start + run] = os.urandom(min(run, size - start))
    mem[start + run : start + 2 * run] = bytes(len(mem[start + run : start + 2 * run]))
print("ready", flush=True)
sys.stdin.read()
used = resource.getrusage(resource.RUSAGE_SELF)
print(time.time(), used.ru_utime + used.ru_stime, flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
"""
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Crash:
    """One crash's own figures, from the crashing process."""

    pid: int
    crashed_at: float = 0.0
    gone_at: float = 0.0
    dump_cpu_s: float = 0.0
    dumped: bool = False


class Crasher:
    """A process holding `mib` MiB that crashes when its stdin is closed."""

    def __init__(self, mib: int) -> None:
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-S", "-c", _CRASHER, str(mib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.crash = Crash(self.proc.pid)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise DaemonFailed("a crashing process did not get ready")

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def reap(self) -> Crash:
        assert self.proc.stdout is not None
        said = self.proc.stdout.read().split()
        self.proc.stdout.close()
        # wait4, not Popen.wait: the raw status (WCOREDUMP) and the rusage, which includes the dump.
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.crash.gone_at = time.time()
        self.proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.crash.dumped = os.WIFSIGNALED(status) and os.WCOREDUMP(status)
        if len(said) == 2:
            self.crash.crashed_at = float(said[0])
            self.crash.dump_cpu_s = usage.ru_utime + usage.ru_stime - float(said[1])
        return self.crash


class DiskPeak:
    """The most the directory's files occupied (allocated blocks), sampled in a thread."""

    def __init__(self, directory: Path, interval: float = 0.01) -> None:
        self.directory = directory
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        used = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # gone between listing and stat
                    if entry.is_file(follow_symlinks=False):
                        used += entry.stat(follow_symlinks=False).st_blocks * 512
        return used

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            self._stop.wait(self.interval)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def accounting_cgroup(name: str) -> Iterator[Path]:
    """A cgroup v2 directory to count its processes' CPU in microseconds (cpu.stat, exited
    processes included; /proc/PID/stat counts in 10 ms ticks); removed afterwards."""
    root = cgroup2_root()
    if root is None or not (root / "cpu.stat").exists():
        raise DaemonFailed("no cgroup v2 hierarchy with cpu.stat to count the receiver's CPU")
    group = root / f"{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        remove_cgroup(group)


def cgroup_cpu_s(group: Path) -> float:
    for line in (group / "cpu.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "usage_usec":
            return int(value) / 1e6
    raise DaemonFailed(f"no usage_usec in {group}/cpu.stat")


def receiver_wrapper(base: Path, group: Path, receiver: Path) -> Path:
    """What the line runs: join the accounting cgroup, then become the receiver (same arguments,
    same stdin; the shell's own start-up is not counted, the exec and everything after is)."""
    script = base / "r"
    script.write_text(f'#!/bin/sh\necho $$ > {group}/cgroup.procs\nexec {receiver} "$@"\n')
    script.chmod(0o755)
    return script


def pattern_for(mode: str, helper: Path, watch: Path) -> str:
    if mode == PIPE:
        return pipe_line(str(helper), str(watch), 32 * GiB, KEEP_FREE, 600, scope="all")
    return f"{watch}/{NAME_PATTERN}"


@dataclass
class ShipResult:
    """One crash (or one burst) shipped through one capture."""

    mode: str
    mib: int
    count: int = 1
    received: int = 0  # core objects completed at the sink
    dumped: int = 0
    core_bytes: int = 0  # all cores together, from the objects' `size` metadata
    crash_to_object_s: list[float] = field(default_factory=list)  # per core
    crash_to_gone_s: list[float] = field(default_factory=list)  # per core
    to_last_object_s: float = 0.0  # burst: release -> last object, manifests included
    dump_cpu_s: float = 0.0
    receiver_cpu_s: float = 0.0
    shipper_cpu_s: float = 0.0
    peak_disk_bytes: int = 0
    error: str = ""

    @property
    def total_cpu_s(self) -> float:
        return self.dump_cpu_s + self.receiver_cpu_s + self.shipper_cpu_s

    def per_gib(self, cpu_s: float) -> float:
        return cpu_s / (self.core_bytes / GiB) if self.core_bytes else 0.0


def _is_core(obj: dict[str, Any]) -> bool:
    """The core itself, not its manifest (`.manifest.json`) or its fleet index entry (no `size`)."""
    return not str(obj["key"]).endswith(".json") and "size" in obj["metadata"]


def _wait_cores(sink: NullSink, seen: int, count: int, timeout: float) -> None:
    """Until `count` core objects have completed at the sink after the first `seen` objects."""
    deadline = time.monotonic() + timeout
    objects: list[dict[str, Any]] = []
    while sum(map(_is_core, objects)) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DaemonFailed(
                f"{sum(map(_is_core, objects))} of {count} cores shipped within {timeout:.0f}s"
            )
        sink.wait_for(seen + len(objects) + 1, min(left, 30.0))
        objects += sink.completed_since(seen + len(objects))


def _wait_emptied(watch: Path, timeout: float = 60.0) -> None:
    """Until the daemon has deleted every core and facts file (its CPU is counted to here)."""
    deadline = time.monotonic() + timeout
    while any(p.is_file() for p in watch.iterdir()):
        if time.monotonic() > deadline:
            raise DaemonFailed(f"files left in {watch}: {sorted(p.name for p in watch.iterdir())}")
        time.sleep(0.01)


@dataclass(frozen=True)
class Rig:
    """A daemon watching `watch`, in a cgroup of its own (`ship`), and the receivers' cgroup."""

    daemon: Daemon
    sink: NullSink
    watch: Path
    helper: Path  # what the pipe line runs: the receiver through its cgroup wrapper
    receive: Path
    ship: Path

    def cpu(self) -> tuple[float, float]:
        """(receivers, shipper) CPU seconds so far."""
        return cgroup_cpu_s(self.receive), cgroup_cpu_s(self.ship)


def crash_and_ship(rig: Rig, mode: str, count: int, mib: int, timeout: float) -> ShipResult:
    """`count` processes of `mib` MiB crash at once (released together); everything shipped."""
    result = ShipResult(mode, mib, count)
    crashers = [Crasher(mib) for _ in range(count)]
    for crasher in crashers:
        crasher.wait_ready()
    seen = rig.sink.count()
    receiver_before, shipper_before = rig.cpu()
    with DiskPeak(rig.watch) as disk:
        released = time.time()
        for crasher in crashers:
            crasher.release()
        crashes = {c.proc.pid: c.reap() for c in crashers}
        # A core the kernel or the receiver dropped never comes: the wait then fails.
        _wait_cores(rig.sink, seen, count, timeout)
        # The daemon deletes a core once its manifest and index entry are written: all objects are in.
        _wait_emptied(rig.watch)
    receiver_after, shipper_after = rig.cpu()
    objects = rig.sink.completed_since(seen)
    result.receiver_cpu_s = receiver_after - receiver_before
    result.shipper_cpu_s = shipper_after - shipper_before
    result.peak_disk_bytes = disk.peak
    result.to_last_object_s = max(float(o["completed_at"]) for o in objects) - released
    result.dumped = sum(c.dumped for c in crashes.values())
    result.dump_cpu_s = sum(c.dump_cpu_s for c in crashes.values())
    for obj in filter(_is_core, objects):
        metadata = obj["metadata"]
        crash = crashes.get(int(metadata.get("pid", 0)))
        result.received += 1
        result.core_bytes += int(metadata.get("size", 0))
        if crash is not None:
            result.crash_to_object_s.append(float(obj["completed_at"]) - crash.crashed_at)
            result.crash_to_gone_s.append(crash.gone_at - crash.crashed_at)
    return result


@contextlib.contextmanager
def rig(target: Target, logs: Path, receiver: Path | None = None) -> Iterator[Rig]:
    """A temp dir (named for repair), the watched directory, the two cgroups, the wrapper, and a
    ready daemon. `receiver`: another build to measure (default: `make receiver`'s)."""
    if os.geteuid() != 0:
        raise DaemonFailed("needs root (kernel.core_pattern)")
    repair_core_pattern()
    receiver = receiver or build_receiver()
    with (
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir="/var/tmp") as base,
        accounting_cgroup("receive") as receive,
        accounting_cgroup("ship") as ship,
    ):
        watch = Path(base) / "cores"
        helper = receiver_wrapper(Path(base), receive, receiver)
        extra = ["--filename-pattern", NAME_PATTERN, "--capture-mode", "off"]
        with running(target.endpoint, watch, logs / "pipeship-daemon.log", extra) as daemon:
            (ship / "cgroup.procs").write_text(f"{daemon.proc.pid}\n")
            daemon.wait_ready()
            time.sleep(3.0)  # the start-up self-test's probe objects are not part of the figures
            yield Rig(daemon, target.sink, watch, helper, receive, ship)
            daemon.stop()


def run_pipe_ship(
    target: Target,
    logs: Path,
    sizes: Sequence[int],
    reps: int,
    burst: tuple[int, int] | None,
    receiver: Path | None = None,
    modes: Sequence[str] = MODES,
) -> tuple[list[ShipResult], list[ShipResult]]:
    """Each size `reps` times through each capture (alternating, the first one rotating), then the
    burst once through each. The pattern is set, under the lock, for one mode's crashes at a time."""
    singles: list[ShipResult] = []
    bursts: list[ShipResult] = []
    try:
        with rig(target, logs, receiver) as setup:
            for rep in range(reps):
                for mode in [*modes[rep % len(modes) :], *modes[: rep % len(modes)]]:
                    with pipe_core_pattern(pattern_for(mode, setup.helper, setup.watch), PIPE_LIMIT):
                        for mib in sizes:
                            singles.append(crash_and_ship(setup, mode, 1, mib, 600))
                            _say(singles[-1])
            if burst:
                count, mib = burst
                for mode in modes:
                    with pipe_core_pattern(pattern_for(mode, setup.helper, setup.watch), PIPE_LIMIT):
                        bursts.append(crash_and_ship(setup, mode, count, mib, 120 + count * mib * MiB / 20e6))
                        _say(bursts[-1])
    except (DaemonFailed, OSError, AssertionError) as exc:  # AssertionError: the pattern changed under us
        failed = ShipResult("-", 0, error=str(exc))
        (bursts if burst else singles).append(failed)
    return singles, bursts


def _say(result: ShipResult) -> None:
    print(
        f"[pipeship] {result.mode} {result.count} x {result.mib} MiB: {result.received} received, "
        f"to last object {result.to_last_object_s:.2f}s, CPU dump {result.dump_cpu_s:.3f} "
        f"receiver {result.receiver_cpu_s:.3f} shipper {result.shipper_cpu_s:.3f}, "
        f"peak disk {result.peak_disk_bytes / MiB:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def crash_table(results: Sequence[ShipResult]) -> str:
    """Medians per capture and size."""
    lines = [
        "| Core | Capture | Crash -> object s | Crash -> process gone s | CPU-s/GiB: dump (kernel) "
        "| receiver | shipper | total | Peak disk MiB | Runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r.mib, r.mode) for r in results if not r.error}, key=lambda k: (k[0], MODES.index(k[1])))
    for mib, mode in keys:
        runs = [r for r in results if (r.mib, r.mode) == (mib, mode) and not r.error]
        size = _median([r.core_bytes / MiB for r in runs])

        def per_gib(part: str, runs: list[ShipResult] = runs) -> str:
            return f"{_median([r.per_gib(getattr(r, part)) for r in runs]):.2f}"

        receiver = per_gib("receiver_cpu_s") if mode == PIPE else "-"
        lines.append(
            f"| {size:.0f} MiB | {mode} | {_median([_median(r.crash_to_object_s) for r in runs]):.3f} | "
            f"{_median([_median(r.crash_to_gone_s) for r in runs]):.3f} | {per_gib('dump_cpu_s')} | "
            f"{receiver} | {per_gib('shipper_cpu_s')} | {per_gib('total_cpu_s')} | "
            f"{_median([r.peak_disk_bytes / MiB for r in runs]):.0f} | {len(runs)} |"
        )
    return "\n".join(lines)


def burst_table(results: Sequence[ShipResult]) -> str:
    lines = [
        "| Capture | Received | Release -> last object s | Crash -> object median / max s "
        "| CPU-s/GiB: dump | receiver | shipper | total | Peak disk MiB (of MiB of cores) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.mode} | {r.error} | | | | | | | |")
            continue
        receiver = f"{r.per_gib(r.receiver_cpu_s):.2f}" if r.mode == PIPE else "-"
        lines.append(
            f"| {r.mode} | {r.received}/{r.count} | {r.to_last_object_s:.2f} | "
            f"{_median(r.crash_to_object_s):.2f} / {max(r.crash_to_object_s, default=0):.2f} | "
            f"{r.per_gib(r.dump_cpu_s):.2f} | {receiver} | {r.per_gib(r.shipper_cpu_s):.2f} | "
            f"{r.per_gib(r.total_cpu_s):.2f} | {r.peak_disk_bytes / MiB:.0f} ({r.core_bytes / MiB:.0f}) |"
        )
    return "\n".join(lines)


def pipe_ship_section(singles: Sequence[ShipResult], bursts: Sequence[ShipResult], reps: int) -> list[str]:
    """The report's headings and tables, or nothing."""
    sections: list[str] = []
    failed = [r for r in [*singles, *bursts] if r.error]
    if singles and not all(r.error for r in singles):
        sections += [
            f"### Crash -> S3: pipe capture (receiver + daemon) against file capture, HTTPS null sink "
            f"(medians of {reps})",
            crash_table(singles),
        ]
    good = [r for r in bursts if not r.error]
    if good:
        sections += [
            f"### Crash burst -> S3: {good[0].count} processes of {good[0].mib} MiB crash at once",
            burst_table(bursts),
        ]
    if failed:
        sections += ["\n".join(f"- crash -> S3: {r.error}" for r in failed)]
    return sections


def parse_sizes(spec: str) -> list[int]:
    return [int(v) for v in spec.split(",") if int(v) > 0] if spec else []


def parse_burst(spec: str) -> tuple[int, int] | None:
    count, mib = (int(v) for v in spec.split(","))
    return (count, mib) if count > 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    from bench.targets import https_target, run_nullsink

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1,100,1024", help="MiB each crashing process fills")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--burst", default="50,32", help="COUNT,MIB crashing at once (0,0: none)")
    parser.add_argument("--receiver", type=Path, help="another receiver build to measure")
    parser.add_argument("--modes", default="pipe,file", help="captures to run, in this order")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cds-bench-") as work:
        logs = Path(work) / "logs"
        logs.mkdir()
        with run_nullsink(logs) as sink, https_target("nullsink-https", sink, Path(work)) as target:
            singles, bursts = run_pipe_ship(
                target,
                logs,
                parse_sizes(args.sizes),
                args.reps,
                parse_burst(args.burst),
                args.receiver,
                args.modes.split(","),
            )
    print("\n\n".join(pipe_ship_section(singles, bursts, args.reps)))
    print(
        f"\n1-minute load average {load[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end "
        f"({os.cpu_count()} cores)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
