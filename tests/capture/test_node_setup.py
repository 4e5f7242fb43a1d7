"""docker/node-setup.sh, the pipe-mode node setup, run for real against stand-in sysctl files.

The real init container writes /proc/sys/kernel; here SYSCTL_ROOT points at plain files so the
script's logic (save once, atomic install, the line, restore) runs without touching the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import ALIVE_WINDOW, pipe_line
from coredump_shipper.config.settings import SETTINGS_BY_NAME
from testkit.daemon import ConfigFactory, running
from testkit.receiver import (
    CORE_PATTERN,
    PIPE_LIMIT,
    ROOT,
    TEMP_PREFIX,
    build_receiver,
    core_pattern_lock,
    pod_cgroup,
    unavailable,
)
from testkit.waiting import wait_until

SCRIPT = ROOT / "docker" / "node-setup.sh"
SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cds-ns-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(tmp_path: Path, action: str, script: Path = SCRIPT, **env: str) -> subprocess.CompletedProcess[str]:
    values = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SYSCTL_ROOT": str(tmp_path / "sysctl"),
        "RECEIVER_DIR": str(tmp_path / "lib"),
        "RECEIVER_SOURCE": str(build_receiver()),
        "CORE_DIR": str(tmp_path / "cores"),
        "DIR_UID": "65534",
        "DIR_GID": "65534",
        "COREDUMP_SHIPPER_KEEP_FREE": "10%",
        "HOST_OS_RELEASE": str(tmp_path / "os-release"),
        **env,
    }
    return subprocess.run(
        ["sh", str(script), action], env=values, capture_output=True, text=True, check=False
    )


def node(tmp_path: Path, pattern: str, pipe_limit: str = "0", suid_dumpable: str = "0") -> Path:
    """Stand-in /proc/sys with the three settings node setup changes, as the kernel shows them."""
    sysctl = tmp_path / "sysctl"
    (sysctl / "kernel").mkdir(parents=True, exist_ok=True)
    (sysctl / "fs").mkdir(exist_ok=True)
    (sysctl / "kernel" / "core_pattern").write_text(pattern + "\n")
    (sysctl / "kernel" / "core_pipe_limit").write_text(pipe_limit + "\n")
    (sysctl / "fs" / "suid_dumpable").write_text(suid_dumpable + "\n")
    return sysctl


def values(sysctl: Path) -> tuple[str, str, str]:
    return (
        (sysctl / "kernel" / "core_pattern").read_text(),
        (sysctl / "kernel" / "core_pipe_limit").read_text(),
        (sysctl / "fs" / "suid_dumpable").read_text(),
    )


def test_install_saves_installs_and_restore_puts_back(short_tmp: Path) -> None:
    tmp_path = short_tmp  # the paths end up in a core_pattern line of at most 127 bytes
    sysctl = node(tmp_path, "|/usr/share/apport/apport %p %s")
    done = run(tmp_path, "install")
    assert done.returncode == 0, done.stderr
    lib = tmp_path / "lib"
    helper = lib / "coredump-receive"
    line = pipe_line(
        str(helper),
        str(tmp_path / "cores"),
        32 << 30,
        DiskLimit(percent=10),
        600,
        ALIVE_WINDOW,
        max_use=DiskLimit(percent=10),
    )
    assert values(sysctl) == (line + "\n", "128\n", "2\n")
    assert (lib / "saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (lib / "saved-core_pipe_limit").read_text() == "0\n"
    assert (lib / "saved-suid_dumpable").read_text() == "0\n"
    st = helper.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    assert helper.read_bytes() == build_receiver().read_bytes()
    cores = (tmp_path / "cores").stat()
    assert (cores.st_uid, cores.st_gid, stat.S_IMODE(cores.st_mode)) == (65534, 65534, 0o700)
    alive = lib / "alive"
    beat = (alive / "heartbeat").stat()
    assert (alive.stat().st_uid, beat.st_uid, stat.S_IMODE(alive.stat().st_mode)) == (65534, 65534, 0o755)
    assert sorted(os.listdir(lib)) == [
        "alive",
        "coredump-node-setup",
        "coredump-receive",
        "saved-core_pattern",
        "saved-core_pipe_limit",
        "saved-suid_dumpable",
    ]

    # A second install (a rollout) must not save its own line over the node's original values.
    again = run(tmp_path, "install", PIPE_LIMIT="8")
    assert again.returncode == 0, again.stderr
    assert (lib / "saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (sysctl / "kernel" / "core_pipe_limit").read_text() == "8\n"

    # The copy left on the node restores without the image, and takes the receiver away with it.
    restore = subprocess.run(
        ["sh", str(lib / "coredump-node-setup"), "restore"],
        env={"PATH": "/usr/bin:/bin", "SYSCTL_ROOT": str(sysctl), "RECEIVER_DIR": str(lib)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert values(sysctl) == ("|/usr/share/apport/apport %p %s\n", "0\n", "0\n")
    assert not lib.exists(), "the receiver, the saved values and the script are gone"


SYSTEMD = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"
APPORT = "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -F%F -- %E"


@pytest.mark.parametrize(
    ("pattern", "pipe_limit", "suid_dumpable"),
    [
        # systemd's 50-coredump.conf: Debian, Ubuntu without apport, Flatcar, RHCOS, AL2023
        (SYSTEMD, "16", "2"),
        # Ubuntu's apport (its unit writes the pattern and suid_dumpable at boot)
        (APPORT, "10", "2"),
        ("/core.%e.%p.%t", "0", "0"),  # GKE's own file pattern
    ],
)
def test_a_pattern_owned_by_the_host_is_saved_replaced_and_restored_exactly(
    short_tmp: Path, pattern: str, pipe_limit: str, suid_dumpable: str
) -> None:
    sysctl = node(short_tmp, pattern, pipe_limit, suid_dumpable)
    done = run(short_tmp, "install")
    assert done.returncode == 0, done.stderr
    installed = values(sysctl)
    assert installed[0].startswith(f"|{short_tmp}/lib/coredump-receive ")
    assert installed[1:] == ("128\n", "2\n")
    for _ in range(2):  # a second restore (a retried hook) changes nothing
        restored = run(short_tmp, "restore")
        assert restored.returncode == 0, restored.stderr
        assert values(sysctl) == (pattern + "\n", pipe_limit + "\n", suid_dumpable + "\n")


OURS = [
    # another capture.receiverDirectory, with options
    "|/home/kubernetes/bin/coredump-shipper/coredump-receive -m 32G -f 15%% /var/coredump %P %u %g %s %t %h",
    # an older version's line (no options)
    "|/var/lib/coredump-shipper/coredump-receive /var/coredump %P %u %g %s %t %h %e",
    # file mode's default pattern, in another coreDirectory.path
    "/data/cores/core.%h.%e.sig%s.%p.%t",
]


@pytest.mark.parametrize("ours", OURS)
def test_our_own_pattern_is_never_saved_nor_restored(short_tmp: Path, ours: str) -> None:
    sysctl = node(short_tmp, ours, "16", "2")
    done = run(short_tmp, "install")
    assert done.returncode == 0, done.stderr
    assert not (short_tmp / "lib" / "saved-core_pattern").exists()
    restored = run(short_tmp, "restore")
    assert restored.returncode == 0, restored.stderr
    assert values(sysctl) == ("core\n", "0\n", "0\n"), "the kernel's defaults"


def test_a_custom_file_mode_pattern_is_ours_too(short_tmp: Path) -> None:
    custom = "/var/coredump/%e-%p.core"
    sysctl = node(short_tmp, custom)
    assert run(short_tmp, "install", FILE_PATTERN=custom).returncode == 0
    assert not (short_tmp / "lib" / "saved-core_pattern").exists()
    assert run(short_tmp, "restore", FILE_PATTERN=custom).returncode == 0
    assert (sysctl / "kernel" / "core_pattern").read_text() == "core\n"


@pytest.mark.parametrize("saved", OURS)
def test_restore_never_writes_back_our_own_line_saved_by_an_older_version(
    short_tmp: Path, saved: str
) -> None:
    sysctl = node(short_tmp, OURS[1])
    lib = short_tmp / "lib"
    lib.mkdir()
    (lib / "saved-core_pattern").write_text(saved + "\n")
    (lib / "saved-core_pipe_limit").write_text("16\n")
    done = run(short_tmp, "restore")
    assert done.returncode == 0, done.stderr
    assert (sysctl / "kernel" / "core_pattern").read_text() == "core\n"


def test_restore_without_saved_values_leaves_a_working_pattern(tmp_path: Path) -> None:
    sysctl = node(tmp_path, "|/gone/coredump-receive /var/coredump %P")
    (tmp_path / "lib").mkdir()
    done = run(tmp_path, "restore")
    assert done.returncode == 0, done.stderr
    assert (sysctl / "kernel" / "core_pattern").read_text() == "core\n"


def test_install_refuses_a_line_the_kernel_would_cut(tmp_path: Path) -> None:
    sysctl = node(tmp_path, "core")
    done = run(tmp_path, "install", CORE_DIR=str(tmp_path / ("c" * 120)))
    assert done.returncode == 2 and "127" in done.stderr
    assert values(sysctl) == ("core\n", "0\n", "0\n"), "the node keeps its working settings"
    assert not (tmp_path / "lib").exists(), "nothing was changed on the node"


def test_the_default_floor_stays_above_the_kubelet_eviction_threshold(short_tmp: Path) -> None:
    """Cores must never push a node into DiskPressure: the kubelet hard-evicts pods at
    nodefs.available<10%, so the receiver's and the shipper's default floor keeps more free."""
    eviction_threshold = 10.0
    setting = SETTINGS_BY_NAME["keep-free"]
    default = setting.parse(setting.default or "")
    assert default.percent > eviction_threshold
    tmp_path = short_tmp
    sysctl = node(tmp_path, "core")
    done = run(tmp_path, "install", COREDUMP_SHIPPER_KEEP_FREE="")  # the chart's keepFree: "" (default)
    assert done.returncode == 0, done.stderr
    words = (sysctl / "kernel" / "core_pattern").read_text().split()
    floor = words[words.index("-f") + 1]
    assert floor.endswith("%%") and float(floor[:-2]) > eviction_threshold, floor


@pytest.mark.parametrize(
    ("options", "os_id", "advice"),
    [
        ("noexec", "cos", "/home/kubernetes/bin/coredump-shipper"),
        ("noexec", "flatcar", "/opt/bin/coredump-shipper"),
        ("noexec", "talos", "capture.mode=file"),
        ("ro", "debian", "/var/lib/coredump-shipper"),
    ],
)
def test_a_receiver_directory_the_kernel_cannot_execute_from_is_refused(
    short_tmp: Path, options: str, os_id: str, advice: str
) -> None:
    """A real mount (a tmpfs in a private mount namespace, gone with it) that is noexec or read-only:
    the install stops with one line naming the setting and a directory that works on that OS."""
    if shutil.which("unshare") is None:
        unavailable("unshare (util-linux) is not installed")
    sysctl = node(short_tmp, SYSTEMD, "16", "2")
    (short_tmp / "os-release").write_text(f'NAME="x"\nID={os_id}\n')
    lib = short_tmp / "lib"
    lib.mkdir()
    script = 'mount -t tmpfs -o "$1" cds-test "$2" && shift 2 && exec "$@"'
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env |= {
        "SYSCTL_ROOT": str(sysctl), "RECEIVER_DIR": str(lib), "RECEIVER_SOURCE": str(build_receiver()),
        "CORE_DIR": str(short_tmp / "cores"), "DIR_UID": "65534", "DIR_GID": "65534",
        "HOST_OS_RELEASE": str(short_tmp / "os-release"),
    }  # fmt: skip
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", options, str(lib),
         "sh", str(SCRIPT), "install"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("capture.receiverDirectory: ") and advice in done.stderr, done.stderr
    assert values(sysctl) == (SYSTEMD + "\n", "16\n", "2\n"), "nothing changed on the node"
    assert not (short_tmp / "cores").exists()


def _real_settings() -> tuple[str, str, str]:
    return (
        CORE_PATTERN.read_text(),
        PIPE_LIMIT.read_text(),
        SUID_DUMPABLE.read_text(),
    )


def test_the_real_kernel_runs_the_receiver_node_setup_installed_and_restore_puts_the_node_back() -> None:
    """node-setup.sh against the machine's own /proc/sys: the kernel pipes a real crash (in a
    pod-shaped cgroup) to the receiver installed in an executable directory, and restore brings back
    the machine's values exactly and takes the receiver away."""
    base = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))  # repaired at start-up if left behind
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RECEIVER_DIR": str(base / "lib"),
        "RECEIVER_SOURCE": str(build_receiver()),
        "CORE_DIR": str(base / "cores"),
        "DIR_UID": "65534",
        "DIR_GID": "65534",
        "COREDUMP_SHIPPER_MAX_CORE_SIZE": "0",  # the temporary paths are long: the line stays in 127 bytes
    }
    try:
        with core_pattern_lock():
            before = _real_settings()
            try:
                done = subprocess.run(
                    ["sh", str(SCRIPT), "install"], env=env, capture_output=True, text=True, check=False
                )
                assert done.returncode == 0, done.stderr
                assert CORE_PATTERN.read_text().startswith(f"|{base}/lib/coredump-receive ")
                assert SUID_DUMPABLE.read_text() == "2\n"
                with pod_cgroup(str(uuid.uuid4()), "ab" * 32) as procs:
                    child = subprocess.run(
                        ["sh", "-c", 'echo $$ > "$0"; kill -SEGV $$', str(procs)], check=False
                    )
                assert child.returncode == -signal.SIGSEGV
                cores = [p for p in (base / "cores").iterdir() if p.name.startswith("core.")]
                assert len(cores) == 1, sorted(os.listdir(base / "cores"))
                assert cores[0].read_bytes()[:4] == b"\x7fELF"
                # No shipper alive for longer than the receiver's window (-a 1h): nothing is stored.
                stale = time.time() - 2 * 3600
                os.utime(base / "lib" / "alive" / "heartbeat", (stale, stale))
                with pod_cgroup(str(uuid.uuid4()), "cd" * 32) as procs:
                    child = subprocess.run(
                        ["sh", "-c", 'echo $$ > "$0"; kill -SEGV $$', str(procs)], check=False
                    )
                assert child.returncode == -signal.SIGSEGV
                names = os.listdir(base / "cores")
                assert [n for n in names if n.startswith("core.")] == [cores[0].name], names
                restored = subprocess.run(
                    ["sh", str(base / "lib" / "coredump-node-setup"), "restore"],
                    env={"PATH": "/usr/bin:/bin", "RECEIVER_DIR": str(base / "lib")},
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                assert restored.returncode == 0, restored.stderr
                assert _real_settings() == before
                assert not (base / "lib").exists()
            finally:
                SUID_DUMPABLE.write_text(before[2])
                PIPE_LIMIT.write_text(before[1])
                CORE_PATTERN.write_text(before[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_the_daemon_keeps_the_receiver_storing_and_without_it_nothing_is_stored(
    short_tmp: Path, make_config: ConfigFactory
) -> None:
    """The whole chain without the kernel: node setup installs the receiver and the shipper's
    heartbeat directory; the daemon, as `run` wires it with --heartbeat (the chart's value), keeps the
    heartbeat fresh; the installed receiver, run with the line's -a 1h as the kernel would, stores a
    core; with the heartbeat older than an hour (the shipper gone), it stores nothing."""
    node(short_tmp, "core")
    assert run(short_tmp, "install").returncode == 0
    lib, cores = short_tmp / "lib", short_tmp / "cores"
    heartbeat = lib / "alive" / "heartbeat"
    stale = time.time() - 2 * 3600
    os.utime(heartbeat, (stale, stale))
    line = (short_tmp / "sysctl" / "kernel" / "core_pattern").read_text().split()
    options = line[1 : line.index(str(cores))]
    assert options[-2:] == ["-a", ALIVE_WINDOW]

    def crash(pid: int) -> subprocess.CompletedProcess[bytes]:
        # The kernel expands %d (the dump mode: 1 for an ordinary dump) and "%%".
        expanded = ("1" if o == "%d" else o.replace("%%", "%") for o in options)
        # -s all: this test process is in no pod (the capture scope is tests/kernel/test_pipe_kernel.py's).
        args = [str(lib / "coredump-receive"), *expanded, "-s", "all", str(cores)]
        args += [str(pid), "0", "0", "11", "1700000000", "web-1", "app"]
        return subprocess.run(args, input=b"\x7fELF core", capture_output=True, check=False, timeout=30)

    config = make_config(watch_dir=str(cores), heartbeat=str(heartbeat), after_upload="keep")
    async with running(config):
        await wait_until(lambda: time.time() - heartbeat.stat().st_mtime < 60)
        stored = crash(os.getpid())
        assert stored.returncode == 0, stored.stderr
    assert [n for n in os.listdir(cores) if n.startswith("core.")] != []
    before = sorted(os.listdir(cores))
    os.utime(heartbeat, (stale, stale))
    dropped = crash(os.getpid())
    assert dropped.returncode == 0 and b"no shipper alive" in dropped.stderr, dropped.stderr
    assert sorted(os.listdir(cores)) == before, "nothing stored without a shipper"


def test_an_upgrade_from_a_version_that_saved_two_values_saves_suid_dumpable_too(short_tmp: Path) -> None:
    sysctl = node(short_tmp, OURS[1], "16", "1")  # the node's suid_dumpable, untouched by that version
    lib = short_tmp / "lib"
    lib.mkdir()
    (lib / "saved-core_pattern").write_text(SYSTEMD + "\n")
    (lib / "saved-core_pipe_limit").write_text("4\n")
    assert run(short_tmp, "install").returncode == 0
    assert values(sysctl)[2] == "2\n"
    assert run(short_tmp, "restore").returncode == 0
    assert values(sysctl) == (SYSTEMD + "\n", "4\n", "1\n")
