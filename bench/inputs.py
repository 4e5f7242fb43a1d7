"""Benchmark inputs: a synthetic core shaped like real core memory, and a real kernel core."""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30

# Core memory alternates between pages full of high-entropy data and pages of zeros; about half of
# the zero runs were never touched and the kernel leaves them as holes in the file.
RUN_BYTES = MiB


def make_realistic_core(path: Path, size: int) -> Path:
    """Write `size` bytes: 1 MiB runs cycling random, hole, random, written zeros."""
    zeros = bytes(RUN_BYTES)
    with path.open("wb") as out:
        for index in range(size // RUN_BYTES):
            kind = index % 4
            if kind in (0, 2):
                out.write(os.urandom(RUN_BYTES))
            elif kind == 1:
                out.seek(RUN_BYTES, os.SEEK_CUR)
            else:
                out.write(zeros)
        out.write(os.urandom(size % RUN_BYTES))
        # A trailing hole needs an explicit length.
        out.truncate(size)
    return path


# The child fills its heap the way a real program's memory looks: a third random (compressed or
# encrypted buffers), a third pointer-like words (heap structures), a third zero pages that were
# written (cleared buffers), plus an allocation it never touches (which the kernel leaves out).
_CHILD = textwrap.dedent(
    """
    import array, mmap, os, resource, signal, sys
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    third = int(sys.argv[1]) // 3
    keep = [bytearray(os.urandom(third))]
    words = array.array("Q", range(0x7F3A00000000, 0x7F3A00000000 + third, 8))
    keep.append(bytearray(words))
    del words
    cleared = bytearray(third)
    cleared[:: 4096] = bytes(len(range(0, third, 4096)))
    keep.append(cleared)
    untouched = mmap.mmap(-1, third)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGABRT)
    """
)


CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
# Whoever changes kernel.core_pattern on a shared machine holds this lock meanwhile.
CORE_PATTERN_LOCK = Path("/tmp/cds-core-pattern.lock")


def _relative_pattern(wait: float) -> str:
    """The core pattern once it is a relative file name again (another job on the machine may
    have pointed it elsewhere for a moment); raises after `wait` seconds."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        pattern = CORE_PATTERN.read_text().strip()
        if not pattern.startswith("|") and "/" not in pattern:
            return pattern
        if time.monotonic() > deadline:
            raise RuntimeError(f"kernel.core_pattern is {pattern!r}: no core lands in the child's cwd")
        if not said:
            print(
                f"kernel.core_pattern is {pattern!r}: waiting up to {wait:.0f}s for a relative one",
                file=sys.stderr,
            )
            said = True
        time.sleep(1.0)


def make_kernel_core(directory: Path, touched: int, wait: float = 1200.0) -> Path:
    """Let a child process that touched `touched` bytes abort, and return the core it left.

    Relies on a relative `kernel.core_pattern` (`core`, as on this machine), waiting up to `wait`
    seconds for it and holding the pattern's lock shared meanwhile; the pattern itself is never
    changed.
    """
    with CORE_PATTERN_LOCK.open("a") as lock:
        _relative_pattern(wait)
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            _relative_pattern(wait)
            return _abort_child(directory, touched)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _abort_child(directory: Path, touched: int) -> Path:
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard != resource.RLIM_INFINITY and hard < touched * 2:
        raise RuntimeError(f"the hard RLIMIT_CORE ({hard}) would truncate the core")
    workdir = directory / "kernel-core"
    workdir.mkdir(exist_ok=True)
    for stale in workdir.iterdir():
        stale.unlink()
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(touched)], cwd=workdir, check=False, timeout=120)
    if proc.returncode != -signal.SIGABRT:
        raise RuntimeError(f"core child exited with {proc.returncode}, expected SIGABRT")
    cores = [p for p in workdir.iterdir() if p.name == "core" or p.name.startswith("core.")]
    if not cores:
        raise RuntimeError(f"the child aborted but left no core in {workdir}")
    # Named the way the classic pattern `core.%e.sig%s.%t` would name it.
    target = directory / f"core.python3.sig{int(signal.SIGABRT)}.{int(time.time())}"
    cores[0].rename(target)
    return target


def warm_page_cache(path: Path) -> None:
    """Read the whole file so it starts in the page cache, as a core the kernel just wrote does.

    Without this the order of contestants would matter: the shipper drops what it has read from
    the cache (POSIX_FADV_DONTNEED), so whoever runs after it would read from disk.
    """
    buffer = bytearray(8 * MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        while os.readv(fd, [buffer]):
            pass
    finally:
        os.close(fd)


def describe(path: Path) -> dict[str, int | str]:
    """Size on disk and apparent size: real cores are sparse."""
    st = path.stat()
    return {"path": str(path), "bytes": st.st_size, "disk_bytes": st.st_blocks * 512}
