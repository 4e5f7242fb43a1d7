"""Pipe capture end to end with the real kernel: core_pattern pipes to coredump-receive, processes
crash with no change to them (a root one with RLIMIT_CORE=0 inside a pod's cgroup, one of another
uid in another pod's cgroup and a mount namespace that cannot see the core directory, and one that
dropped root to uid 101 as nginx's workers do, with fs.suid_dumpable=2), and a shipper running as an
unprivileged uid ships the three cores, complete, with their crash facts. A host process (in no
pod) crashes too: the receiver drops it (the default capture scope) and the shipper counts it.

The machine's core_pattern is changed only inside `pipe_core_pattern` (under the shared lock, put
back in a finally; a killed run is repaired at the next session start, see testkit/receiver.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from testkit.bucket import Bucket
from testkit.daemon import daemon_args
from testkit.receiver import (
    CORE_PATTERN,
    TEMP_PREFIX,
    build_receiver,
    pipe_core_pattern,
    pod_cgroup,
    unavailable,
)
from testkit.waiting import wait_until_sync

SHIPPER_UID = 65534  # nobody: owns the core directory, nothing else
OTHER_UID = 4242
DROPPED_UID = 101  # nginx's workers on Debian
# The other uid cannot reach this venv's interpreter (it may live under /root): it runs Debian's.
OTHER_PYTHON = "/usr/bin/python3"
CRASH = (
    "import os, signal, sys\n"
    "hidden = sys.argv[1]\n"
    "if os.path.exists(hidden): sys.exit(3)  # the directory must be out of sight\n"
    "data = bytearray(2 * 1024 * 1024)\n"
    "for i in range(0, len(data), 4096): data[i] = 7\n"
    "if len(sys.argv) > 2:  # drop root without exec, as nginx's master does for its workers\n"
    "    uid = int(sys.argv[2]); os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)\n"
    "print(os.getpid(), flush=True)  # the kernel's %P: the test runs in the host's pid namespace\n"
    "os.kill(os.getpid(), signal.SIGSEGV)\n"
)


@pytest.fixture
def base_dir() -> Iterator[Path]:
    """A directory the unprivileged shipper can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _crash_as_root(hidden: Path, procs: Path | None, *drop_to: str) -> int:
    def setup() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if procs is not None:
            procs.write_text(f"{os.getpid()}\n")

    return _crashed(
        subprocess.run(
            [sys.executable, "-c", CRASH, "/nonexistent", *drop_to],
            preexec_fn=setup,
            check=False,
            capture_output=True,
        )
    )


def _crashed(child: subprocess.CompletedProcess[bytes]) -> int:
    """The pid the crashed process printed; it must have died of SIGSEGV."""
    assert child.returncode == -signal.SIGSEGV, (child.returncode, child.stderr)
    return int(child.stdout)


def _crash_as_other_uid_unseen(base: Path, watch: Path, procs: Path) -> int:
    # A private mount namespace with a tmpfs over the base: the watch directory does not exist there.
    script = (
        f'mount -t tmpfs hidden "{base}" && exec setpriv --reuid {OTHER_UID} --regid {OTHER_UID} '
        f'--clear-groups {OTHER_PYTHON} -c "$0" "$1"'
    )
    return _crashed(
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, CRASH, str(watch)],
            preexec_fn=lambda: procs.write_text(f"{os.getpid()}\n"),
            check=False,
            capture_output=True,
        )
    )


def _key_pid(key: str) -> int:
    """The crashed process's global pid in a key ending in core.<h>.<e>.sig<s>.<P>.<t>[.zst]."""
    name = key.rsplit("/", 1)[-1].removesuffix(".zst")
    return int(name.split(".")[-2])


def _reachable_by_others(path: Path) -> bool:
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])


# Binds the venv's packages and the checkout under a directory any uid may enter, in a mount
# namespace of the daemon's own (gone with it), then drops to the unprivileged uid.
_VIEW_SCRIPT = (
    'mount --bind "$1" "$3/site" && mount --bind "$2" "$3/src" && uid=$4 && shift 4 && '
    'exec setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"'
)


def _run_as(uid: int, view: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix, started as root, that runs this venv's Python as `uid`.

    The venv's interpreter and packages may sit where `uid` cannot reach them: a pyenv under /root,
    or a checkout whose parent directories are private (CI may clone anywhere). Then the system
    Python of the same version runs with the venv's site-packages and the checkout bound (read
    only is not needed: the daemon writes nothing there) under `view`, inside a private mount
    namespace, so nothing on the machine is changed and nothing is left mounted.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    site = Path(sys.prefix) / "lib" / f"python{version}" / "site-packages"
    checkout = Path(__file__).resolve().parents[2]
    python = Path(sys.executable)
    if not _reachable_by_others(python):
        python = Path(f"/usr/bin/python{version}")
        if not python.exists() or not _reachable_by_others(python):
            unavailable(f"no Python {version} that uid {uid} may run")
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", str(python)]
    if all(_reachable_by_others(path) for path in (site, checkout)):
        env = {} if python == Path(sys.executable) else {"PYTHONPATH": f"{checkout}:{site}"}
        return drop, env
    for name in ("site", "src"):
        (view / name).mkdir()
    view.chmod(0o755)
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _VIEW_SCRIPT, "sh"]
    return [*prefix, str(site), str(checkout), str(view), str(uid), str(python)], {
        "PYTHONPATH": f"{view / 'src'}:{view / 'site'}"
    }


def _start_shipper_unprivileged(
    watch: Path, bucket: Bucket, base_dir: Path
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`coredump-shipper run` as SHIPPER_UID, keys by pod UID and container ID: (process, port, the
    private view of the checkout it runs from, for the caller to remove)."""
    args = daemon_args(
        watch,
        bucket.name,
        bucket.endpoint.url,
        "--key-template",
        "{cluster}/{node}/{pod_uid}/{container_id}/{filename}",
        "--filename-pattern",
        "core.%h.%e.sig%s.%P.%t",
    )
    port = int(args[args.index("--listen") + 1].rsplit(":", 1)[1])
    view = Path(tempfile.mkdtemp(prefix="cds-view-", dir="/tmp"))
    python, extra_env = _run_as(SHIPPER_UID, view)
    env = {**os.environ, **extra_env, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONDONTWRITEBYTECODE": "1"}
    daemon = subprocess.Popen(
        [*python, "-m", "coredump_shipper", *args], env=env, cwd=base_dir, stderr=subprocess.PIPE
    )
    return daemon, port, view


def _capture_failures(port: int, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("coredump_shipper_capture_failures_total{") and f'reason="{reason}"' in line
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


@pytest.mark.slow
def test_cores_of_any_uid_reach_s3_through_the_pipe(bucket: Bucket, base_dir: Path) -> None:
    if os.geteuid() != 0 or not os.access(CORE_PATTERN, os.W_OK):
        unavailable("writing kernel.core_pattern needs root on the host")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} (util-linux) is missing")
    receiver = build_receiver()
    watch = base_dir / "cores"
    watch.mkdir(mode=0o700)
    os.chown(watch, SHIPPER_UID, SHIPPER_UID)
    pod_uid, container_id = str(uuid.uuid4()), hashlib.sha256(os.urandom(8)).hexdigest()
    other_pod, other_container = str(uuid.uuid4()), hashlib.sha256(os.urandom(8)).hexdigest()

    daemon, port, view = _start_shipper_unprivileged(watch, bucket, base_dir)
    try:
        wait_until_sync(lambda: _ready(port) or daemon.poll() is not None, timeout=30)
        assert daemon.poll() is None, "the shipper exited"
        line = pipe_line(str(receiver), str(watch), 1 << 30, DiskLimit(percent=1), 60)
        with (
            pod_cgroup(pod_uid, container_id) as procs,
            pod_cgroup(other_pod, other_container, "cgroupfs-crio") as other_procs,
            pipe_core_pattern(line, suid_dumpable=2),
        ):
            # core_pattern is global: other crashes on the machine meanwhile come here too, so the
            # test looks at its own processes' cores only (by pid).
            mine = {
                _crash_as_root(base_dir / "none", procs),
                _crash_as_other_uid_unseen(base_dir, watch, other_procs),
                _crash_as_root(base_dir / "none", procs, str(DROPPED_UID)),
            }
            host = _crash_as_root(base_dir / "none", None)  # a host process: not stored
        assert CORE_PATTERN.read_text().strip() != line
        wait_until_sync(lambda: mine <= {_key_pid(key) for key in bucket.core_keys()}, timeout=60)
        wait_until_sync(lambda: _capture_failures(port, "scope") >= 1, timeout=20)
        # Delete mode: each core and its crash facts leave the node once shipped; the failure record
        # is gone once counted (records are named <time>.<pid>.<n>.json).
        spool = watch / ".coredump-receive.failures"
        wait_until_sync(
            lambda: (
                not [n for n in os.listdir(watch) if any(f".{pid}." in n for pid in mine)]
                and not [n for n in os.listdir(spool) if n.split(".")[1] == str(host)]
            ),
            timeout=20,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=30)
        shutil.rmtree(view)  # empty mount points: the mounts went with the daemon's namespace
    assert daemon.returncode == 0, log.decode()[-3000:]

    # %e is the crashed task's comm: the name under which its interpreter was run (a venv's `python`,
    # `python3` or `python3.11`), cut to 15 bytes.
    comm = {
        "0": Path(sys.executable).name[:15],
        str(DROPPED_UID): Path(sys.executable).name[:15],
        str(OTHER_UID): Path(OTHER_PYTHON).name[:15],
    }
    by_uid = {}
    for key in [key for key in bucket.core_keys() if _key_pid(key) in mine]:
        meta = bucket.head(key)["Metadata"]
        manifest = json.loads(bucket.get(key + ".manifest.json"))
        content = bucket.content(key)
        assert hashlib.sha256(content).hexdigest() == manifest["sha256"]
        assert manifest["size"] == str(len(content)) and len(content) > 2 * 1024 * 1024
        assert (manifest["elf"], manifest["truncated"], manifest["capture"]) == ("core", "false", "pipe")
        assert meta["signal"] == "11" and meta["exe"] == comm[meta["uid"]], (meta, comm)
        assert meta["pid"].isdigit() and meta["global-pid"].isdigit()
        by_uid[meta["uid"]] = (key, meta, manifest)
    assert set(by_uid) == {"0", str(OTHER_UID), str(DROPPED_UID)}
    key, meta, manifest = by_uid["0"]
    assert (meta["pod-uid"], meta["container-id"]) == (pod_uid, container_id)
    assert manifest["pod-uid"] == pod_uid and manifest["cgroup"].endswith(
        f"cri-containerd-{container_id}.scope"
    )
    assert key.startswith(f"test/node-1/{pod_uid}/{container_id}/core.")
    assert meta["dump-mode"] == "1"
    key, meta, _ = by_uid[str(OTHER_UID)]
    assert meta["gid"] == str(OTHER_UID) and meta["dump-mode"] == "1"
    assert key.startswith(f"test/node-1/{other_pod}/{other_container}/core.")
    # The worker that dropped root: shipped, marked as a suid-safe dump (docs/security.md).
    key, meta, manifest = by_uid[str(DROPPED_UID)]
    assert (meta["dump-mode"], manifest["dump-mode"], meta["pod-uid"]) == ("2", "2", pod_uid)
