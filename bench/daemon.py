"""`coredump-shipper run` against the null sink: start-up time, per-core latency, peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.contestants import BUCKET, SHIPPER, child_env
from bench.inputs import GiB, MiB, warm_page_cache
from bench.targets import NullSink, Target
from testkit.servers import S3Endpoint, free_port


@dataclass
class DaemonResult:
    """Figures for `coredump-shipper run` against the null sink."""

    startup_s: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    latency_cores: int = 0
    deleted: int = 0
    idle_rss_mib: float | None = None
    big: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str = ""


class DaemonFailed(Exception):
    """The daemon did not start, did not ship, or did not stop."""


class Daemon:
    """One `coredump-shipper run` process watching `watch_dir`, listening on a free port."""

    def __init__(
        self,
        endpoint: S3Endpoint,
        watch_dir: Path,
        log: Path,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.watch_dir = watch_dir
        self.log = log
        argv = [
            str(SHIPPER),
            "run",
            "--watch-dir",
            str(watch_dir),
            "--bucket",
            BUCKET,
            "--endpoint-url",
            endpoint.url,
            *(["--ca-bundle", endpoint.ca_bundle] if endpoint.ca_bundle else []),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--after-upload",
            "delete",
            # The latency test writes 20 cores of one program in seconds: exactly the crash loop
            # the storm limit exists to stop. Here every one of them must ship.
            "--storm-limit",
            "0",
            *extra,
        ]
        self._out = log.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, env=child_env(endpoint) | dict(env or {}), stdout=self._out, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from exec to the first `/readyz` 200."""
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise DaemonFailed(f"daemon exited with {self.proc.returncode} before ready")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.005)
        raise DaemonFailed(f"/readyz not 200 within {timeout}s")

    def cpu_seconds(self) -> float:
        """user + sys of every thread so far, from /proc (the daemon is still running)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: utime and stime are the 12th and 13th fields, in clock ticks.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS so far) in MiB, from /proc (the daemon is still running)."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(value.split()[0]) / 1024
        return values["VmRSS"], values["VmHWM"]

    def kill(self) -> None:
        """Tear down after a failure; figures from this daemon are discarded."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, reap, and return the daemon's peak RSS in MiB up to the stop.

        The peak is VmHWM from /proc, read just before the signal: it counts this process's own
        memory since exec, unlike wait4's ru_maxrss, which carries the harness's peak over.
        """
        if self.proc.poll() is not None:
            self._out.close()
            raise DaemonFailed(f"daemon already exited with {self.proc.returncode}")
        peak = self.memory_mib()[1]
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        finally:
            self._out.close()
        if code != 0:
            raise DaemonFailed(f"daemon exited with {code} on SIGTERM")
        return peak


@contextlib.contextmanager
def running(
    endpoint: S3Endpoint,
    watch: Path,
    log: Path,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Daemon]:
    """A daemon for the duration of the block; killed (figures discarded) if the block fails.

    `env`: variables added to the daemon's environment (e.g. a C library setting to compare).
    """
    watch.mkdir(exist_ok=True)
    daemon = Daemon(endpoint, watch, log, extra, env)
    try:
        yield daemon
    except BaseException:
        daemon.kill()
        raise


def _new_completion(sink: NullSink, seen: int, since: float, timeout: float) -> float:
    """Completion time of the first core object after the `seen` already counted.

    Sidecar objects (the shipper's `.json` manifest) are skipped: the core is what must land.
    """
    deadline = time.monotonic() + timeout
    count = seen + 1
    while (left := deadline - time.monotonic()) > 0:
        stats = sink.wait_for(count, left)
        for obj in stats.objects[seen:]:
            if float(obj["completed_at"]) >= since and not str(obj["key"]).endswith(".json"):
                return float(obj["completed_at"])
        count = len(stats.objects) + 1
    raise DaemonFailed(f"no core object completed within {timeout}s")


def measure_latency(daemon: Daemon, sink: NullSink, cores: int) -> tuple[list[float], int]:
    """Write 1 MiB cores one at a time; time each from close() to the sink's completion."""
    half = MiB // 2
    latencies: list[float] = []
    names: list[Path] = []
    for index in range(cores):
        seen = len(sink.stats().objects)
        path = daemon.watch_dir / f"core.bench.sig11.{index}.{int(time.time())}"
        names.append(path)
        with path.open("wb") as core:
            core.write(os.urandom(half))
            core.write(bytes(half))
        closed = time.time()
        latencies.append(_new_completion(sink, seen, closed, 30.0) - closed)
        # Let the after-upload step finish so the cores stay one at a time.
        time.sleep(0.1)
    time.sleep(0.5)
    deleted = sum(1 for path in names if not path.exists())
    return latencies, deleted


def ship_through_daemon(daemon: Daemon, sink: NullSink, core: Path, staging: Path) -> tuple[float, float]:
    """Drop a copy of `core` into the watch dir (IN_MOVED_TO); return (wall, CPU) seconds.

    Wall runs to the object's completion; CPU runs until the daemon has also deleted the file, so
    it is what one core costs a daemon that is already up. A sparse copy, not a hard link: the
    shipper never ships a file with a second name (it could be a link to a secret elsewhere).
    """
    staged = staging / core.name
    staged.unlink(missing_ok=True)
    subprocess.run(["cp", "--sparse=always", str(core), str(staged)], check=True)
    warm_page_cache(core)
    seen = len(sink.stats().objects)
    cpu = daemon.cpu_seconds()
    appeared = time.time()
    watched = daemon.watch_dir / core.name
    staged.rename(watched)
    wall = _new_completion(sink, seen, appeared, 600.0) - appeared
    deadline = time.monotonic() + 10.0
    while watched.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return wall, daemon.cpu_seconds() - cpu


def run_daemon_bench(
    target: Target,
    work: Path,
    logs: Path,
    starts: int,
    latency_cores: int,
    big_cores: Sequence[tuple[str, Path]],
) -> DaemonResult:
    """Start-ups, then latency and the large cores, each large core in a daemon of its own."""
    result = DaemonResult(latency_cores=latency_cores)
    sink = target.sink
    staging = work / "staging"
    staging.mkdir(exist_ok=True)
    try:
        for attempt in range(starts):
            log = logs / f"daemon-start-{attempt}.log"
            with running(target.endpoint, work / f"watch-start-{attempt}", log) as daemon:
                result.startup_s.append(daemon.wait_ready())
                rss = daemon.stop()
            result.idle_rss_mib = max(result.idle_rss_mib or 0.0, rss)
        for index, (name, core) in enumerate(big_cores):
            log = logs / f"daemon-big-{index}.log"
            with running(target.endpoint, work / f"watch-big-{index}", log) as daemon:
                daemon.wait_ready()
                if index == 0 and latency_cores:
                    result.latency_s, result.deleted = measure_latency(daemon, sink, latency_cores)
                wall, cpu = ship_through_daemon(daemon, sink, core, staging)
                rss = daemon.stop()
            size = core.stat().st_size
            result.big[name] = {
                "rss_mib": rss,
                "wall_s": wall,
                "mb_per_s": size / wall / 1e6,
                "cpu_per_gib": cpu / (size / GiB),
            }
    except (DaemonFailed, OSError) as exc:
        result.error = str(exc)
    return result
