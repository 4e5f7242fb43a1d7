"""coredump-receive with the real kernel (core_pattern pipes to it), without the daemon: the pod
and container the receiver reports for cgroup v2 layouts of every driver and runtime, the capture
scope, a process that dropped root (a suid-safe dump) and a burst of crashes at once.

Each test changes kernel.core_pattern (and core_pipe_limit, fs.suid_dumpable) only inside
`pipe_core_pattern`: under the shared lock, put back in a finally. The pattern is global: any other
process crashing on the machine meanwhile reaches this receiver too, so each test looks only at the
cores and records of the processes it crashed (by their global pid).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from testkit.receiver import (
    CORE_PATTERN,
    POD_CGROUP_LAYOUTS,
    ROOT,
    TEMP_PREFIX,
    build_receiver,
    pipe_core_pattern,
    pod_cgroup,
    unavailable,
)

SHIPPER_UID = 65534
DROPPED_UID = 101  # nginx's workers on Debian
SPOOL = ".coredump-receive.failures"
# Touches `mib` MiB, says it is ready, waits for standard input to close, then crashes.
CRASH = (
    "import os, signal, sys\n"
    "data = bytearray(int(sys.argv[1]) * 1024 * 1024)\n"
    "for i in range(0, len(data), 4096): data[i] = 7\n"
    "if len(sys.argv) > 2:  # drop root as nginx's master does for its workers: no exec\n"
    "    uid = int(sys.argv[2]); os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)\n"
    "sys.stdout.write('r'); sys.stdout.flush()\n"
    "sys.stdin.read()\n"
    "os.kill(os.getpid(), signal.SIGSEGV)\n"
)


@pytest.fixture
def watch() -> Iterator[Path]:
    if os.geteuid() != 0 or not os.access(CORE_PATTERN, os.W_OK):
        unavailable("writing kernel.core_pattern needs root on the host")
    base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/var/tmp"))
    path = base / "cores"
    path.mkdir(mode=0o700)
    os.chown(path, SHIPPER_UID, SHIPPER_UID)
    try:
        yield path
    finally:
        shutil.rmtree(base)


def line(directory: Path, scope: str = "pod") -> str:
    return pipe_line(str(build_receiver()), str(directory), 1 << 30, DiskLimit(), 60, scope=scope)


def crash_all(count: int, mib: int, procs: Path | None = None, drop_to: int | None = None) -> set[int]:
    """`count` processes crash at the same moment (their shared standard input closes); their pids."""
    read_end, write_end = os.pipe()
    extra = [str(drop_to)] if drop_to is not None else []
    children = []
    try:
        for _ in range(count):
            child = subprocess.Popen(
                [sys.executable, "-c", CRASH, str(mib), *extra], stdin=read_end, stdout=subprocess.PIPE
            )
            children.append(child)
            if procs is not None:
                procs.write_text(f"{child.pid}\n")
        os.close(read_end)
        read_end = -1
        for child in children:
            assert child.stdout is not None and child.stdout.read(1) == b"r"
    finally:
        if read_end >= 0:
            os.close(read_end)
        os.close(write_end)
        codes = [child.wait(timeout=120) for child in children]
        for child in children:
            if child.stdout is not None:
                child.stdout.close()
    assert codes == [-signal.SIGSEGV] * count
    return {child.pid for child in children}


def cores(directory: Path, pids: set[int]) -> list[Path]:
    """The cores of these processes (the receiver names them core.<h>.<e>.sig<s>.<pid>.<t>)."""
    return sorted(
        p for p in directory.iterdir() if p.name.startswith("core.") and int(p.name.split(".")[-2]) in pids
    )


def facts(core: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((core.parent / f".{core.name}.crash.json").read_bytes())
    return loaded


def failures(directory: Path, pids: set[int]) -> list[str]:
    spool = directory / SPOOL
    records = [
        json.loads((spool / name).read_bytes()) for name in (os.listdir(spool) if spool.exists() else [])
    ]
    return sorted(record["reason"] for record in records if record["global_pid"] in pids)


@pytest.mark.parametrize("layout", sorted(POD_CGROUP_LAYOUTS))
def test_cgroup_v2_layouts_name_the_pod_and_container(watch: Path, layout: str) -> None:
    """A process in a cgroup v2 directory shaped as each driver and runtime shape it crashes; the
    receiver reports that pod UID and container ID, and stores it with the default scope."""
    pod_uid, container_id = str(uuid.uuid4()), hashlib.sha256(os.urandom(8)).hexdigest()
    with pod_cgroup(pod_uid, container_id, layout) as procs, pipe_core_pattern(line(watch)):
        pids = crash_all(1, 1, procs)
    (core,) = cores(watch, pids)
    found = facts(core)
    assert (found["pod_uid"], found["container_id"]) == (pod_uid, container_id)
    expected = POD_CGROUP_LAYOUTS[layout].format(
        uid=pod_uid, uid_=pod_uid.replace("-", "_"), cid=container_id
    )
    assert str(found["cgroup"]).endswith(expected)
    assert found["dump_mode"] == 1 and failures(watch, pids) == []
    st = core.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (SHIPPER_UID, 0o600)


def test_host_process_is_dropped_by_default_and_stored_with_scope_all(watch: Path) -> None:
    with pipe_core_pattern(line(watch)):
        dropped = crash_all(1, 1)
    assert cores(watch, dropped) == [] and failures(watch, dropped) == ["scope"]
    with pipe_core_pattern(line(watch, scope="all")):
        stored = crash_all(1, 1)
    (core,) = cores(watch, stored)
    assert "pod_uid" not in facts(core) and failures(watch, stored) == []


def test_root_process_that_dropped_to_uid_101_is_shipped_as_a_suid_safe_dump(watch: Path) -> None:
    """As nginx's workers: started as root, setresuid(101) without exec, then a crash. With
    fs.suid_dumpable=2 the kernel dumps it in mode 2; the receiver stores it read-only, marked."""
    pod_uid, container_id = str(uuid.uuid4()), hashlib.sha256(os.urandom(8)).hexdigest()
    with pod_cgroup(pod_uid, container_id) as procs:
        with pipe_core_pattern(line(watch), suid_dumpable=0):  # the kernel's default: no core at all
            undumpable = crash_all(1, 1, procs, drop_to=DROPPED_UID)
        assert cores(watch, undumpable) == [] and failures(watch, undumpable) == []
        with pipe_core_pattern(line(watch), suid_dumpable=2):
            pids = crash_all(1, 1, procs, drop_to=DROPPED_UID)
    (core,) = cores(watch, pids)
    found = facts(core)
    assert (found["dump_mode"], found["uid"], found["pod_uid"]) == (2, DROPPED_UID, pod_uid)
    st = core.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (SHIPPER_UID, SHIPPER_UID, 0o400)
    assert core.read_bytes()[:4] == b"\x7fELF"


def chart_pipe_limit() -> int:
    values = yaml.safe_load((ROOT / "charts/coredump-shipper/values.yaml").read_text())
    limit: int = values["capture"]["pipeLimit"]
    return limit


@pytest.mark.slow
def test_burst_of_crashes_is_received_in_full_with_the_chart_pipe_limit(watch: Path) -> None:
    """40 processes crash at once (the issue's burst): with core_pipe_limit 16 the kernel skipped 24
    of them; with the chart's default every core arrives."""
    burst = 40
    limit = chart_pipe_limit()
    assert limit >= burst
    with pipe_core_pattern(line(watch, scope="all"), pipe_limit=limit):
        pids = crash_all(burst, 8)
    received = cores(watch, pids)
    assert len(received) == burst, f"{len(received)} of {burst} cores: the kernel skipped the rest"
    assert all(core.stat().st_size > 8 * 1024 * 1024 for core in received)
    assert failures(watch, pids) == []
