"""Helpers for tests of socket capture: run `coredump-receive serve`, crash processes, slow a cgroup.

Like the pipe tests, they change kernel.core_pattern only under testkit/receiver.py's LOCK_PATH,
always put the old value back, and name their directories with TEMP_PREFIX (a killed run is
repaired by `repair_core_pattern`). Unlike `pipe_core_pattern`, `kernel_core_pattern` lets the
server itself rewrite the pattern while the block runs (that is what the server's start and stop do).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from testkit.receiver import (
    CORE_PATTERN,
    PIPE_LIMIT,
    RECEIVER,
    TEMP_PREFIX,
    core_pattern_lock,
    remove_cgroup,
    unavailable,
)

CORE_MODES = Path("/proc/sys/kernel/core_modes")


def require_socket_capture() -> None:
    if os.geteuid() != 0 or not os.access(CORE_PATTERN, os.W_OK):
        unavailable("writing kernel.core_pattern needs root on the host")
    try:
        modes = CORE_MODES.read_text().split()
    except OSError:
        modes = []
    if "socket" not in modes:
        unavailable("this kernel has no coredump socket (Linux 6.17+: /proc/sys/kernel/core_modes)")


@contextlib.contextmanager
def kernel_core_pattern(line: str, pipe_limit: int = 16) -> Iterator[None]:
    """Hold the lock, set `line`, and restore the machine's pattern and pipe limit whatever happened."""
    with core_pattern_lock():
        old_pattern = CORE_PATTERN.read_text().rstrip("\n")
        old_limit = PIPE_LIMIT.read_text().strip()
        try:
            CORE_PATTERN.write_text(line + "\n")
            PIPE_LIMIT.write_text(f"{pipe_limit}\n")
            yield
        finally:
            CORE_PATTERN.write_text(old_pattern + "\n")
            PIPE_LIMIT.write_text(old_limit + "\n")


def current_pattern() -> str:
    return CORE_PATTERN.read_text().rstrip("\n")


class Server:
    """`coredump-receive serve` as the chart's container runs it, stopped with SIGTERM."""

    def __init__(
        self, socket: Path, directory: Path, *options: str, stats_name: str = "", own_mounts: bool = False
    ) -> None:
        self.socket = socket
        self.stats_path = socket.parent / (stats_name or f"{socket.name}.{uuid.uuid4().hex[:6]}.stats.json")
        # own_mounts: in a mount namespace of its own, as in a container (gone with the process).
        prefix = ["unshare", "--mount", "--propagation", "private"] if own_mounts else []
        self.args = [*prefix, str(RECEIVER), "serve", "-socket", str(socket), "-stats", str(self.stats_path)]
        # Most tests crash processes outside any pod: the default scope (pod) would drop them.
        self.args += ["-s", "all", *options, str(directory)]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = ""

    def start(self) -> Server:
        self.process = subprocess.Popen(self.args, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not self.stats_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start: {self.log}")
            time.sleep(0.02)
        return self

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.stats_path.read_text())
        return data

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=30)
        self.log = err.decode(errors="replace")
        return self.process.returncode

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop it if it runs (a test that failed half-way leaves none behind)."""
        if self.process is not None and self.process.returncode is None:
            self.stop()


def crash(script: str, *args: str, user: int | None = None) -> tuple[int, bool, float]:
    """Run `script` (which ends in a fatal signal) and wait: (signal, core dumped?, seconds from the
    moment the script printed its last line to its death)."""
    command = ["/usr/bin/python3", "-c", script, *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert child.stdout is not None
    said = child.stdout.read()
    _, status = os.waitpid(child.pid, 0)  # not child.wait(): WCOREDUMP is in the raw status
    ended = time.time()
    child.stdout.close()
    assert os.WIFSIGNALED(status), f"status {status:#x}"
    child.returncode = -os.WTERMSIG(status)
    lines = said.decode().split()
    started = float(lines[-1]) if lines else ended
    return os.WTERMSIG(status), os.WCOREDUMP(status), ended - started


@contextlib.contextmanager
def slow_cgroup(percent: int) -> Iterator[Path]:
    """A cgroup with a CPU quota of `percent` of one CPU (cgroup2 cpu.max, or v1 cpu's CFS quota);
    yields its cgroup.procs. Removed afterwards (its processes must be gone by then)."""
    name = f"{TEMP_PREFIX}slow-{uuid.uuid4().hex[:8]}"
    period = 100_000
    quota = period * percent // 100
    candidates = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")]
    v2 = next((p for p in candidates if "cpu" in _read(p / "cgroup.controllers").split()), None)
    if v2 is not None:
        if "cpu" not in _read(v2 / "cgroup.subtree_control").split():
            unavailable("the cgroup2 cpu controller is not enabled at the root")
        group = v2 / name
        group.mkdir()
        (group / "cpu.max").write_text(f"{quota} {period}\n")
    elif Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists():
        group = Path("/sys/fs/cgroup/cpu") / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(f"{period}\n")
        (group / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    else:
        unavailable("no cpu cgroup controller to slow the server down")
    try:
        yield group / "cgroup.procs"
    finally:
        remove_cgroup(group)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
