"""Socket capture with the real kernel: core_pattern "@@PATH" and `coredump-receive serve`.

Crashing processes are not changed in any way; the kernel connects to the server, which reads the
crashing task's identity from its pidfd, accepts or rejects, and stores the core as the pipe
receiver does. The machine's core_pattern is changed only under the shared lock and always restored
(testkit/socketcapture.py `kernel_core_pattern`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from testkit.bucket import Bucket
from testkit.receiver import TEMP_PREFIX, build_receiver, pod_cgroup, unavailable
from testkit.socketcapture import (
    Server,
    crash,
    current_pattern,
    kernel_core_pattern,
    require_socket_capture,
    slow_cgroup,
)
from testkit.waiting import wait_until_sync
from tests.kernel.test_pipe_capture import (
    OTHER_PYTHON,
    OTHER_UID,
    SHIPPER_UID,
    _crash_as_other_uid_unseen,
    _crash_as_root,
    _ready,
    _start_shipper_unprivileged,
)

SEGFAULT = (
    "import os, signal, time\n"
    "data = bytearray(1024 * 1024)\n"
    "for i in range(0, len(data), 4096): data[i] = 7\n"
    "print(time.time(), flush=True)\n"
    "os.kill(os.getpid(), signal.SIGSEGV)\n"
)
# A core of ~256 MiB that does not compress into holes: random pages.
BIG_SEGFAULT = SEGFAULT.replace("bytearray(1024 * 1024)", "bytearray(os.urandom(256 * 1024 * 1024))")


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """Reachable by the unprivileged shipper; named so that a killed run's pattern is repaired."""
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _dirs(base: Path, owner: int = 0) -> tuple[Path, Path]:
    """The core directory (owned by the shipper) and the server's private socket directory."""
    watch, run = base / "cores", base / "run"
    watch.mkdir(mode=0o700)
    os.chown(watch, owner, owner)
    run.mkdir(mode=0o700)
    return watch, run / "coredump.sock"


def _facts(watch: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(watch.glob(".core.*.crash.json"))]


@pytest.mark.slow
def test_cores_of_any_uid_reach_s3_through_the_socket(bucket: Bucket, base_dir: Path) -> None:
    require_socket_capture()
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (util-linux) is missing")
    build_receiver()
    watch, sock = _dirs(base_dir, SHIPPER_UID)
    pod_uid, container_id = str(uuid.uuid4()), hashlib.sha256(os.urandom(8)).hexdigest()
    daemon, port, view = _start_shipper_unprivileged(watch, bucket, base_dir)
    server = Server(sock, watch, "-m", "1G", "-f", "1%", "-t", "60")
    try:
        wait_until_sync(lambda: _ready(port) or daemon.poll() is not None, timeout=30)
        assert daemon.poll() is None, "the shipper exited"
        with server, pod_cgroup(pod_uid, container_id) as procs, kernel_core_pattern(f"@@{sock}"):
            _crash_as_root(base_dir / "none", procs)
            _crash_as_other_uid_unseen(base_dir, watch, procs)
        assert not current_pattern().startswith("@@")
        assert server.stats()["stored"] == 2, server.log
        wait_until_sync(lambda: len(bucket.core_keys()) == 2, timeout=60)
        wait_until_sync(lambda: os.listdir(watch) == [], timeout=20)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=30)
        shutil.rmtree(view)
    assert daemon.returncode == 0, log.decode()[-3000:]

    by_uid = {}
    for key in bucket.core_keys():
        meta = bucket.head(key)["Metadata"]
        manifest = json.loads(bucket.get(key + ".manifest.json"))
        content = bucket.content(key)
        assert hashlib.sha256(content).hexdigest() == manifest["sha256"]
        assert manifest["size"] == str(len(content)) and len(content) > 2 * 1024 * 1024
        assert (manifest["elf"], manifest["truncated"], manifest["capture"]) == ("core", "false", "socket")
        assert meta["signal"] == "11"
        assert meta["pid"].isdigit() and meta["global-pid"].isdigit()
        by_uid[meta["uid"]] = (key, meta, manifest)
    assert set(by_uid) == {"0", str(OTHER_UID)}
    # The kernel names a process after the file it executed (`comm`): the test's own interpreter for
    # root's crash, /usr/bin/python3 for the other uid's.
    assert by_uid["0"][1]["exe"] == Path(sys.executable).name[:15]
    assert by_uid[str(OTHER_UID)][1]["exe"] == Path(OTHER_PYTHON).name
    key, meta, manifest = by_uid["0"]
    assert (meta["pod-uid"], meta["container-id"]) == (pod_uid, container_id)
    assert manifest["cgroup"].endswith(f"cri-containerd-{container_id}.scope")
    assert key.startswith(f"test/node-1/{pod_uid}/{container_id}/core.")
    key, meta, _ = by_uid[str(OTHER_UID)]
    assert meta["gid"] == str(OTHER_UID) and meta["pod-uid"] == pod_uid  # both in the pod: scope pod
    assert key.startswith(f"test/node-1/{pod_uid}/{container_id}/core.")


def test_a_crash_the_policy_refuses_leaves_no_file_and_is_counted(base_dir: Path) -> None:
    require_socket_capture()
    build_receiver()
    watch, sock = _dirs(base_dir)
    # A floor of the whole filesystem: the pipe receiver would store an empty core cut short
    # ("keep-free"); the socket server says no before the kernel writes anything.
    with Server(sock, watch, "-f", "100%") as server, kernel_core_pattern(f"@@{sock}"):
        signo, dumped, _ = crash(SEGFAULT)
    assert (signo, dumped) == (signal.SIGSEGV, False)
    assert os.listdir(watch) == []
    stats = server.stats()
    assert (stats["rejected"], stats["stored"], stats["failed"]) == ({"keep-free": 1}, 0, 0), server.log
    assert "core rejected (keep-free)" in server.log


def test_a_root_crash_with_rlimit_core_zero_is_stored_complete(base_dir: Path) -> None:
    require_socket_capture()
    build_receiver()
    watch, sock = _dirs(base_dir)

    no_core_limit = "import resource\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    with Server(sock, watch) as server, kernel_core_pattern(f"@@{sock}"):
        signo, dumped, _ = crash(no_core_limit + SEGFAULT)
    assert (signo, dumped) == (signal.SIGSEGV, True)
    (facts,) = _facts(watch)
    core = watch / f"core.{facts['hostname']}.python3.sig11.{facts['global_pid']}.{facts['time']}"
    assert core.stat().st_size == facts["size"] and facts["truncated"] is False
    assert core.read_bytes()[:4] == b"\x7fELF"
    assert (core.stat().st_uid, core.stat().st_mode & 0o777) == (0, 0o600)
    assert server.stats()["stored"] == 1


@pytest.mark.slow
def test_a_slow_reader_does_not_hang_the_crash_past_the_deadline(base_dir: Path) -> None:
    require_socket_capture()
    build_receiver()
    watch, sock = _dirs(base_dir)
    deadline = 2
    # The server gets 1% of a CPU: reading a 256 MiB core would take it well over a minute.
    with (
        slow_cgroup(1) as procs,
        Server(sock, watch, "-t", str(deadline)) as server,
        kernel_core_pattern(f"@@{sock}"),
    ):
        assert server.process is not None
        procs.write_text(f"{server.process.pid}\n")
        signo, _, seconds = crash(BIG_SEGFAULT)
    assert signo == signal.SIGSEGV
    assert seconds < deadline + 3, f"the crashing process took {seconds:.1f} s to die"
    (facts,) = _facts(watch)
    assert (facts["truncated"], facts["truncated_reason"]) == (True, "deadline")
    assert int(str(facts["size"])) < 256 * 1024 * 1024
    assert server.stats()["truncated"] == 1


def test_a_restart_hands_core_pattern_over_and_loses_no_core(base_dir: Path) -> None:
    """What a DaemonSet rollout does: a new server takes the socket over, the old one leaves the
    pattern alone; the last one to stop points the kernel at the pipe receiver."""
    require_socket_capture()
    receiver = build_receiver()
    watch, sock = _dirs(base_dir)
    fallback = pipe_line(str(receiver), str(watch), 1 << 30, DiskLimit(percent=1), 60, scope="all")
    saved = base_dir / "run" / "pipe-core_pattern"  # as node setup leaves it for the chart's server
    saved.write_text(fallback + "\n")
    options = ("-claim-pattern", "-fallback-file", str(saved))
    # The old server in a mount namespace of its own, as in its container: the kernel takes a
    # socket pattern only from the initial mount namespace, which the server enters to write it.
    old = Server(sock, watch, *options, own_mounts=True)
    new = Server(sock, watch, *options)
    try:
        with kernel_core_pattern("core"):
            old.start()
            assert current_pattern() == f"@@{sock}"
            crash(SEGFAULT)
            new.start()
            assert old.stop() == 0
            assert current_pattern() == f"@@{sock}" and sock.is_socket(), old.log
            crash(SEGFAULT)
            assert new.stop() == 0
            assert current_pattern() == fallback and not sock.exists(), new.log
            crash(SEGFAULT)
    finally:
        old.close()
        new.close()
    assert (old.stats()["stored"], new.stats()["stored"]) == (1, 1)
    assert "handed back" in new.log and "handed back" not in old.log
    facts = _facts(watch)
    assert len(facts) == 3 and len(list(watch.glob("core.*"))) == 3
    assert all(f["signal"] == 11 and f["comm"] == "python3" and not f["truncated"] for f in facts)


def test_crashes_beyond_max_clients_wait_for_a_slot_instead_of_being_dropped(base_dir: Path) -> None:
    require_socket_capture()
    build_receiver()
    watch, sock = _dirs(base_dir)
    # One slot and a slow server: the second crash arrives while the first is being received.
    with (
        slow_cgroup(5) as procs,
        Server(sock, watch, "-max-clients", "1", "-t", "60") as server,
        kernel_core_pattern(f"@@{sock}"),
    ):
        assert server.process is not None
        procs.write_text(f"{server.process.pid}\n")
        script = SEGFAULT.replace("bytearray(1024 * 1024)", "bytearray(os.urandom(32 * 1024 * 1024))")
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: crash(script), range(2)))
    assert [(signo, dumped) for signo, dumped, _ in results] == [(signal.SIGSEGV, True)] * 2
    assert len(_facts(watch)) == 2 and not any(f["truncated"] for f in _facts(watch))
    stats = server.stats()
    assert (stats["stored"], stats["rejected"]) == (2, {}), server.log


def test_with_no_shipper_alive_the_server_refuses_as_the_pipe_receiver_does(base_dir: Path) -> None:
    """The pipe line's -a (no heartbeat from the shipper within the window: nothing stored) holds for
    the socket server too, read from the same line and the same heartbeat file."""
    require_socket_capture()
    receiver = build_receiver()
    watch, sock = _dirs(base_dir)
    saved = base_dir / "run" / "pipe-core_pattern"
    saved.write_text(pipe_line(str(receiver), str(watch), 0, DiskLimit(), 60, "1h", scope="all") + "\n")
    heartbeat = base_dir / "run" / "alive" / "heartbeat"
    with Server(sock, watch, "-fallback-file", str(saved)) as server, kernel_core_pattern(f"@@{sock}"):
        refused = crash(SEGFAULT)
        heartbeat.parent.mkdir()
        heartbeat.touch()  # owned by root, the directory's owner here: a shipper alive
        stored = crash(SEGFAULT)
    assert (refused[:2], stored[:2]) == ((signal.SIGSEGV, False), (signal.SIGSEGV, True))
    stats = server.stats()
    assert (stats["rejected"], stats["stored"]) == ({"no-shipper": 1}, 1), server.log
    assert len(_facts(watch)) == 1
