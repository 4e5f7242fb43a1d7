"""Real kernel core dumps for tests and the demo: crash a child whose cwd is the target directory.

On this machine kernel.core_pattern is `core` (relative), so the kernel writes `core` (or `core.PID`
with core_uses_pid) into the crashing process's cwd. Where the pattern sends cores elsewhere (a pipe to
systemd-coredump or apport, an absolute path), `kernel_core` returns None and callers skip or fall back
to gcore. The machine's core_pattern is never changed.
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


def core_pattern() -> str:
    try:
        return CORE_PATTERN.read_text().strip()
    except OSError:
        return "unknown"


def cores_land_in_cwd() -> bool:
    pattern = core_pattern()
    return not pattern.startswith("|") and "/" not in pattern


def skip_reason() -> str:
    return f"kernel.core_pattern is {core_pattern()!r}: cores do not land in the crashing process's cwd"


def _raise_core_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (limit, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def kernel_core(directory: Path, touch_mib: int = 0, limit: int = resource.RLIM_INFINITY) -> Path | None:
    """Crash a Python child (after it touches `touch_mib` MiB of memory) with cwd=directory.

    Returns the core file the kernel wrote, or None if it wrote none there.
    """
    if not cores_land_in_cwd():
        return None
    before = set(directory.iterdir())
    program = (
        "import os, signal\n"
        f"data = bytearray({touch_mib} * 1024 * 1024)\n"
        "for i in range(0, len(data), 4096): data[i] = (i // 4096) % 251 + 1\n"
        "os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    subprocess.run(
        [sys.executable, "-c", program],
        cwd=directory,
        preexec_fn=lambda: _raise_core_limit(limit),
        check=False,
    )
    # The kernel has finished writing before the parent's wait() returns, but be lenient.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [p for p in set(directory.iterdir()) - before if p.name.startswith("core")]
        if new:
            return new[0]
        time.sleep(0.02)
    return None


def gcore(directory: Path) -> Path | None:
    """A core of a live child made by gdb's gcore (the fallback where the kernel writes elsewhere)."""
    tool = shutil.which("gcore")
    if tool is None:
        return None
    child = subprocess.Popen(["sleep", "60"])
    try:
        target = directory / "core.gcore"
        # Written beside the directory and renamed in, so a watcher sees only the finished file.
        scratch = directory.parent / "gcore-tmp"
        subprocess.run(
            [tool, "-o", str(scratch), str(child.pid)], capture_output=True, check=False, timeout=60
        )
        made = directory.parent / f"gcore-tmp.{child.pid}"
        if not made.exists():
            return None
        made.rename(target)
        return target
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def write_file(path: Path, data: bytes) -> None:
    """Write like the kernel does: one open, writes, one close (a single IN_CLOSE_WRITE)."""
    with path.open("wb") as handle:
        handle.write(data)
