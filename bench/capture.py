"""A crash burst through pipe capture and through socket capture, on the real kernel.

N processes, each holding CORE_MIB of random memory, wait at a barrier and then all crash at once
(SIGSEGV). kernel.core_pattern points at the pipe receiver (`core_pipe_limit` 16, as the chart sets
it) or at `coredump-receive serve` (`@@PATH`, 16 slots, more wait). Both store into a directory of
their own; the shipper and S3 are left out, because everything after the directory is the same code
for both (the daemon rows measure it).

Figures: cores stored out of N; rate (cores / seconds from the release to the last core's rename);
crash -> stored latency (each core's rename time minus its process's crash time: median and max);
CPU seconds per stored core for the whole machine (/proc/stat, dumping included: the machine is shared,
so this is noisy) and, for socket capture, of the server alone (/proc/<pid>/stat).

Needs root on a kernel with `socket` in /proc/sys/kernel/core_modes; core_pattern is changed only
under testkit/receiver.py's lock and always restored.

    .venv/bin/python -m bench.capture [COUNT CORE_MIB]     # or `make bench` (--capture-burst)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from testkit.receiver import TEMP_PREFIX, build_receiver
from testkit.socketcapture import CORE_MODES, Server, kernel_core_pattern

PIPE, SOCKET = "pipe", "socket"
_CRASHER = (
    "import os, signal, sys, time\n"
    "data = bytearray(os.urandom(int(sys.argv[1]) * 1024 * 1024))\n"
    "print('ready', flush=True)\n"
    "sys.stdin.read()\n"  # the barrier: the harness closes every stdin at once
    "print(time.time(), flush=True)\n"
    "os.kill(os.getpid(), signal.SIGSEGV)\n"
)
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class CaptureResult:
    mode: str
    count: int
    core_mib: int
    stored: int = 0
    dumped: int = 0  # processes whose wait status says "core dumped"
    seconds: float = 0.0
    machine_cpu: float = 0.0
    server_cpu: float | None = None
    latency_median: float = 0.0
    latency_max: float = 0.0
    error: str = ""

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _process_cpu(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _burst(directory: Path, count: int, core_mib: int, result: CaptureResult) -> None:
    children = [
        subprocess.Popen(
            ["/usr/bin/python3", "-c", _CRASHER, str(core_mib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(count)
    ]
    for child in children:
        assert child.stdout is not None
        child.stdout.readline()  # ready
    started, busy = time.time(), _busy_seconds()
    for child in children:
        assert child.stdin is not None
        child.stdin.close()
    crashed: dict[int, float] = {}
    for child in children:
        assert child.stdout is not None
        said = child.stdout.read().split()
        child.stdout.close()
        _, status = os.waitpid(child.pid, 0)
        child.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        result.dumped += bool(os.WIFSIGNALED(status) and os.WCOREDUMP(status))
        if said:
            crashed[child.pid] = float(said[-1])
    # The processes are gone when their cores are stored (COREDUMP_WAIT, core_pipe_limit): no wait.
    cores = {int(p.name.split(".")[-2]): p for p in directory.glob("core.*")}
    result.stored = len(cores)
    result.machine_cpu = _busy_seconds() - busy
    if cores:
        renamed = {pid: path.stat().st_ctime for pid, path in cores.items()}
        result.seconds = max(renamed.values()) - started
        latencies = [renamed[pid] - crashed[pid] for pid in renamed if pid in crashed]
        result.latency_median = statistics.median(latencies)
        result.latency_max = max(latencies)


def capture_burst(mode: str, count: int, core_mib: int) -> CaptureResult:
    result = CaptureResult(mode, count, core_mib)
    if os.geteuid() != 0:
        result.error = "needs root (kernel.core_pattern)"
        return result
    supported = CORE_MODES.exists() and "socket" in CORE_MODES.read_text().split()
    if mode == SOCKET and not supported:
        result.error = "no coredump socket on this kernel (Linux 6.17+)"
        return result
    receiver = build_receiver()
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir="/var/tmp") as base:
        directory = Path(base) / "cores"
        directory.mkdir()
        if mode == PIPE:
            line = pipe_line(str(receiver), str(directory), 0, DiskLimit(), 600)
            with kernel_core_pattern(line, pipe_limit=16):
                _burst(directory, count, core_mib, result)
            return result
        sock = Path(base) / "coredump.sock"
        with Server(sock, directory) as server, kernel_core_pattern(f"@@{sock}"):
            assert server.process is not None
            before = _process_cpu(server.process.pid)
            _burst(directory, count, core_mib, result)
            result.server_cpu = _process_cpu(server.process.pid) - before
    return result


def capture_table(results: list[CaptureResult]) -> str:
    lines = [
        "| capture | cores stored | dumped | cores/s | crash -> stored median / max (s) "
        "| machine CPU-s per stored core | server CPU-s per stored core |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.mode} | {r.error} | | | | | |")
            continue
        per = max(r.stored, 1)  # per stored core: a dropped core costs (almost) nothing
        server = f"{r.server_cpu / per:.3f}" if r.server_cpu is not None else "n/a (kernel helpers)"
        lines.append(
            f"| {r.mode} | {r.stored}/{r.count} | {r.dumped} | {r.rate:.1f} | "
            f"{r.latency_median:.2f} / {r.latency_max:.2f} | {r.machine_cpu / per:.3f} | {server} |"
        )
    return "\n".join(lines)


def capture_bursts(spec: str) -> list[CaptureResult]:
    """`COUNT,MIB` (bench.run's --capture-burst): the burst through each capture; none for COUNT 0."""
    count, core_mib = (int(value) for value in spec.split(","))
    return [capture_burst(mode, count, core_mib) for mode in (PIPE, SOCKET)] if count > 0 else []


def capture_section(results: list[CaptureResult]) -> list[str]:
    """The report's heading and table, or nothing."""
    if not results:
        return []
    first = results[0]
    heading = (
        f"### Crash burst: {first.count} processes with {first.core_mib} MiB of random memory each "
        "crash at once (bench/capture.py)"
    )
    return [heading, capture_table(results)]


def main(argv: list[str]) -> int:
    spec = ",".join(argv[:2]) if len(argv) >= 2 else "50,8"
    print("\n\n".join(capture_section(capture_bursts(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
