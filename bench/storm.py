"""A core storm: many cores at once in a running daemon's directory, against the original script.

The daemon (`--storm-limit 0`, so every core is shipped, not just its metadata) is started fresh and
waits, ready; then every core, written beforehand to a staging directory on the same filesystem, is
renamed into its watch directory in one burst. The script (bench/seed_script.sh: `inotifywait |
while read; aws s3 cp`) sees only `close_write`, so its cores are written straight into its
directory, as fast as Python can write them. The script uploads one core at a time with one `aws`
process each, so its rate does not depend on how many cores wait: it is timed on a subset.

Figures: drain rate (cores / seconds from the first core's appearance to the last object's
completion at the sink, manifests included for the daemon), CPU seconds per core (the daemon's
from /proc while it runs; the script's from wait4, every aws process included), and peak RSS (the
daemon's VmHWM over its whole life; the script's largest process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.contestants import AWS, BUCKET, REPO, child_env
from bench.daemon import DaemonFailed, running
from bench.inputs import MiB, make_realistic_core
from bench.measure import kill_group, launch, launched_costs
from bench.targets import NullSink, Target

SCRIPT = REPO / "bench" / "seed_script.sh"
PROGRAM = "stormapp"
DAEMON_LABEL = "coredump-shipper run"
SCRIPT_LABEL = "original script (inotifywait, aws s3 cp)"


@dataclass
class StormResult:
    """One storm drained by one contestant."""

    contestant: str
    cores: int  # cores in the storm
    timed: int  # cores timed (the script: a subset)
    core_bytes: int
    seconds: float | None = None
    cpu_s: float | None = None
    peak_rss_mib: float | None = None
    error: str = ""

    @property
    def rate(self) -> float | None:
        return self.timed / self.seconds if self.seconds else None

    @property
    def cpu_per_core(self) -> float | None:
        return self.cpu_s / self.timed if self.cpu_s is not None and self.timed else None


def _make_core(path: Path, size: int) -> Path:
    """One core: a 1 MiB one half random, half zeros; larger ones as the realistic core."""
    if size > MiB:
        return make_realistic_core(path, size)
    with path.open("wb") as out:
        out.write(os.urandom(size // 2))
        out.write(bytes(size - size // 2))
    return path


def _copy(source: Path, target: Path) -> None:
    # cp, not Python: the harness's own peak RSS must stay small (see bench/launch.py).
    subprocess.run(["cp", "--sparse=always", str(source), str(target)], check=True)


def _names(count: int, size: int) -> list[str]:
    stamp = int(time.time())
    return [f"core.{PROGRAM}.sig11.{size // MiB}m{index}.{stamp}" for index in range(count)]


def _wait_drained(sink: NullSink, seen: int, names: list[str], manifests: bool, timeout: float) -> float:
    """Completion time of the last object for `names` (cores, and manifests if asked)."""
    wanted = {name: 2 if manifests else 1 for name in names}
    last = 0.0
    deadline = time.monotonic() + timeout
    while wanted and time.monotonic() < deadline:
        objects = sink.completed_since(seen)
        seen += len(objects)
        for obj in objects:
            key = str(obj["key"]).removesuffix(".manifest.json").removesuffix(".zst")
            name = key[key.find(f"core.{PROGRAM}.") :]
            if name in wanted:
                wanted[name] -= 1
                last = max(last, float(obj["completed_at"]))
                if not wanted[name]:
                    del wanted[name]
        time.sleep(0.2)
    if wanted:
        raise DaemonFailed(f"{len(wanted)} storm cores not shipped within {timeout:.0f}s")
    return last


def storm_daemon(target: Target, work: Path, logs: Path, count: int, size: int) -> StormResult:
    result = StormResult(DAEMON_LABEL, count, count, size)
    staging = work / f"storm-staging-{size // MiB}m"
    staging.mkdir(exist_ok=True)
    names = _names(count, size)
    template = _make_core(work / f"storm-template-{size // MiB}m", size)
    for name in names:
        _copy(template, staging / name)
    watch = work / f"storm-watch-{size // MiB}m"
    try:
        with running(target.endpoint, watch, logs / f"storm-daemon-{size // MiB}m.log") as daemon:
            daemon.wait_ready()
            time.sleep(3.0)  # the start-up self-test's probe objects are not part of the storm
            seen = target.sink.count()
            cpu = daemon.cpu_seconds()
            appeared = time.time()
            for name in names:
                (staging / name).rename(watch / name)
            last = _wait_drained(target.sink, seen, names, True, 60.0 + count * size / 20e6)
            deadline = time.monotonic() + 30.0
            while any(watch.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            result.cpu_s = daemon.cpu_seconds() - cpu
            result.seconds = last - appeared
            result.peak_rss_mib = daemon.memory_mib()[1]
            daemon.stop()
    except (DaemonFailed, OSError) as exc:
        result.error = str(exc)
    return result


def _descendant(pid: int, command: str) -> int | None:
    """The first process named `command` under `pid` (breadth first)."""
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        try:
            children = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except OSError:
            continue
        for child in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == command:
                    return child
            queue.append(child)
    return None


def storm_script(target: Target, work: Path, logs: Path, count: int, timed: int, size: int) -> StormResult:
    """The same storm for the script, timed on its first `timed` cores."""
    result = StormResult(SCRIPT_LABEL, count, timed, size)
    watch = work / f"script-watch-{size // MiB}m"
    watch.mkdir(exist_ok=True)
    env = child_env(target.endpoint) | {
        "PATH": f"{AWS.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "LOCAL_PATH": str(watch),
        "S3_BUCKET": BUCKET,
        "CLUSTER_NAME": "bench",
        "NODE_NAME": "script",
    }
    log_path = logs / f"storm-script-{size // MiB}m.log"
    names = _names(timed, size)
    template = _make_core(work / f"storm-template-{size // MiB}m", size)
    result_path = logs / f"storm-script-{size // MiB}m.rusage.json"
    with log_path.open("wb") as log:
        proc = launch(["bash", str(SCRIPT)], env, log, result_path)
        try:
            deadline = time.monotonic() + 20.0
            while b"Watches established" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise DaemonFailed(f"the script did not start watching (see {log_path})")
                time.sleep(0.05)
            seen = target.sink.count()
            appeared = time.time()
            for name in names:
                _copy(template, watch / name)
            last = _wait_drained(target.sink, seen, names, False, 60.0 + timed * (2.0 + size / 30e6))
            result.seconds = last - appeared
        except (DaemonFailed, OSError) as exc:
            result.error = str(exc)
        finally:
            # Ending inotifywait ends the loop; bash then reaps every aws it ran, so the launcher's
            # wait4 on bash counts all of them.
            watcher = _descendant(proc.pid, "inotifywait")
            if watcher is not None:
                os.kill(watcher, signal.SIGTERM)
            try:
                proc.wait(30.0)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.wait()
    costs = launched_costs(result_path)
    if costs:
        result.cpu_s = costs["user_s"] + costs["sys_s"]
        result.peak_rss_mib = costs["max_rss_kib"] / 1024
    return result
