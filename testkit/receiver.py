"""Helpers for tests of the pipe receiver: build it, run it as the kernel would, restore core_pattern.

`kernel.core_pattern` is global to the machine. Tests that point it at the receiver hold
LOCK_PATH (the lock every hand-made change takes as well), always put the old value back, and
name their directories with TEMP_PREFIX so that a run killed half-way is repaired at the start of
the next one (see `repair_core_pattern`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECEIVER = ROOT / "build" / "coredump-receive"
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
PIPE_LIMIT = Path("/proc/sys/kernel/core_pipe_limit")
SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")
LOCK_PATH = "/tmp/cds-core-pattern.lock"
TEMP_PREFIX = "cds-pipe-test-"


def unavailable(reason: str) -> NoReturn:
    """Skip, except in CI, where a missing prerequisite is a broken set-up and must fail."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def build_receiver() -> Path:
    """`make receiver` (incremental): the tests never run a stale binary."""
    try:
        done = subprocess.run(
            ["make", "-s", "receiver"], cwd=ROOT, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        unavailable("make is not installed")
    if done.returncode != 0:
        if "go: not found" in done.stderr or "go: No such file" in done.stderr:
            unavailable("Go is not installed (apt-get install golang-go)")
        pytest.fail(f"make receiver failed: {done.stderr[-2000:]}")
    return RECEIVER


def receive(
    directory: Path,
    data: bytes,
    *options: str,
    pid: int | None = None,
    uid: int = 1000,
    hostname: str = "web-7d9f",
    comm: str = "myapp",
    signal: int = 11,
    when: int = 1_700_000_000,
    timeout: float = 60,
    scope: str | None = "all",
    dump_mode: int | None = 1,
) -> subprocess.CompletedProcess[bytes]:
    """Run the receiver with `data` on stdin, with the arguments the kernel would pass.

    By default as for an ordinary dump (`-d 1`) with every process in scope (`-s all`): the test
    process is in no pod. None leaves the option out (the receiver's own default).
    """
    defaults = [*(["-s", scope] if scope else []), *(["-d", str(dump_mode)] if dump_mode is not None else [])]
    args = [
        str(RECEIVER),
        *defaults,
        *options,
        str(directory),
        str(pid if pid is not None else os.getpid()),
        str(uid),
        str(uid),
        str(signal),
        str(when),
        hostname,
        comm,
    ]
    return subprocess.run(args, input=data, capture_output=True, timeout=timeout, check=False)


@contextlib.contextmanager
def core_pattern_lock() -> Iterator[None]:
    with open(LOCK_PATH, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def pipe_core_pattern(line: str, pipe_limit: int = 16, suid_dumpable: int | None = None) -> Iterator[None]:
    """Point the machine's core_pattern at `line` while the block runs; always restore it (and
    core_pipe_limit, and fs.suid_dumpable when the test sets it)."""
    with core_pattern_lock():
        old_pattern = CORE_PATTERN.read_text().rstrip("\n")
        old_limit = PIPE_LIMIT.read_text().strip()
        old_dumpable = SUID_DUMPABLE.read_text().strip()
        try:
            CORE_PATTERN.write_text(line + "\n")
            PIPE_LIMIT.write_text(f"{pipe_limit}\n")
            if suid_dumpable is not None:
                SUID_DUMPABLE.write_text(f"{suid_dumpable}\n")
            yield
        finally:
            now = CORE_PATTERN.read_text().rstrip("\n")
            PIPE_LIMIT.write_text(old_limit + "\n")
            SUID_DUMPABLE.write_text(old_dumpable + "\n")
            if now == line:
                CORE_PATTERN.write_text(old_pattern + "\n")
        if now != line:
            # Someone changed it without the lock: their value stays, and the crashes may have gone there.
            raise AssertionError(f"kernel.core_pattern was changed by another process meanwhile: {now!r}")


def repair_core_pattern() -> str | None:
    """Put back `core` if a killed run left the pattern piping (or connecting, or writing files)
    into one of its temporary directories (the bench's file-capture rows set a file pattern)."""
    try:
        with core_pattern_lock():
            pattern = CORE_PATTERN.read_text().strip()
            if TEMP_PREFIX in pattern:  # pipe, socket or file: only a run of ours names such a path
                CORE_PATTERN.write_text("core\n")
                PIPE_LIMIT.write_text("0\n")
                return pattern
    except OSError:
        return None
    return None


def cgroup2_root() -> Path | None:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def remove_cgroup(group: Path) -> None:
    """Remove a cgroup a test or the bench made, once its last processes have finished exiting
    (rmdir fails while any is left; up to 5 s)."""
    for _ in range(100):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


# The kubelet's cgroup of one container, by cgroup driver and runtime (relative to the hierarchy's
# root; a test puts them under a directory of its own).
POD_CGROUP_LAYOUTS = {
    "systemd-containerd": "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/"
    "cri-containerd-{cid}.scope",
    "systemd-crio": "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/"
    "crio-{cid}.scope",
    "systemd-guaranteed": "kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{cid}.scope",
    "cgroupfs-containerd": "kubepods/burstable/pod{uid}/{cid}",
    "cgroupfs-crio": "kubepods/besteffort/pod{uid}/crio-{cid}",
}


@contextlib.contextmanager
def pod_cgroup(pod_uid: str, container_id: str, layout: str = "systemd-containerd") -> Iterator[Path]:
    """A real cgroup v2 directory named as the kubelet and the runtime name a container's; yields
    its cgroup.procs. Removed afterwards (the processes put in it must have exited)."""
    root = cgroup2_root()
    if root is None:
        unavailable("no cgroup2 hierarchy mounted")
    top = root / f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}"
    relative = POD_CGROUP_LAYOUTS[layout].format(
        uid=pod_uid, uid_=pod_uid.replace("-", "_"), cid=container_id
    )
    leaf = top / relative
    try:
        leaf.mkdir(parents=True)
    except OSError as error:
        unavailable(f"cannot create a cgroup under {root}: {error}")
    try:
        yield leaf / "cgroup.procs"
    finally:
        for path in [leaf, *leaf.parents]:
            with contextlib.suppress(OSError):
                path.rmdir()
            if path == top:
                break


@contextlib.contextmanager
def sleeping_in(procs: Path) -> Iterator[int]:
    """A process that waits in the cgroup of `procs` (as a pod's container would); its pid."""
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        procs.write_text(f"{sleeper.pid}\n")
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()
