"""coredump-receive, the core_pattern pipe helper, run as the kernel runs it: real files, real
mounts (a tiny tmpfs for a full disk), hostile names, planted links and FIFOs, a slow writer."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.core.facts import gather
from coredump_shipper.core.file import CoreFile
from coredump_shipper.core.name import CoreNamePattern
from testkit.cores import gcore, kernel_core
from testkit.receiver import RECEIVER, ROOT, build_receiver, receive, unavailable

NAME = "core.web-7d9f.myapp.sig11.{pid}.1700000000"
MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def _receiver() -> Path:
    return build_receiver()


@pytest.fixture
def core_dir(tmp_path: Path) -> Path:
    """The watched directory as the chart prepares it: owned by the shipper's uid (here 65534)."""
    path = tmp_path / "cores"
    path.mkdir(mode=0o700)
    os.chown(path, 65534, 65534)
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "cds-test", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def facts_of(directory: Path, name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((directory / f".{name}.crash.json").read_bytes())
    return loaded


SPOOL = ".coredump-receive.failures"


def entries(directory: Path) -> set[str]:
    """The directory's files, without the spool of failure records (see `failures`)."""
    return set(os.listdir(directory)) - {SPOOL}


def failures(directory: Path) -> list[str]:
    """The reasons of the failure records the receiver left for the shipper."""
    spool = directory / SPOOL
    if not spool.exists():
        return []
    return sorted(json.loads((spool / name).read_bytes())["reason"] for name in os.listdir(spool))


def test_go_unit_tests_on_amd64_and_on_emulated_arm64() -> None:
    """Argument parsing, hostile values and cgroup lines of every layout (receiver/receiver_test.go),
    built for and run on both architectures the image ships (arm64 under qemu-user)."""
    if not shutil.which("qemu-aarch64-static"):
        unavailable("qemu-aarch64-static is not installed (apt-get install qemu-user-static)")
    done = subprocess.run(
        ["make", "-s", "receiver-test"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok ") and "arm64" not in line for line in lines), done.stdout
    assert any(line.startswith("ok (arm64, emulated) ") for line in lines), done.stdout


def test_binaries_are_static_for_amd64_and_arm64() -> None:
    for binary, machine in ((RECEIVER, 62), (RECEIVER.with_name("coredump-receive-arm64"), 183)):
        header = binary.read_bytes()[:64]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == machine
        # No PT_INTERP program header: nothing for the kernel to load from the host.
        assert b"/lib64/ld-linux" not in binary.read_bytes() and b"/lib/ld-linux" not in binary.read_bytes()
        if shutil.which("file"):
            done = subprocess.run(["file", str(binary)], capture_output=True, text=True, check=False)
            assert "statically linked" in done.stdout
    version = subprocess.run([str(RECEIVER), "--version"], capture_output=True, text=True, check=True)
    from coredump_shipper import __version__

    assert version.stdout.split() == ["coredump-receive", __version__]


def test_stores_core_sparse_and_hands_it_to_the_directory_owner(core_dir: Path) -> None:
    data = os.urandom(MiB) + bytes(32 * MiB) + b"tail"
    done = receive(core_dir, data)
    assert done.returncode == 0, done.stderr
    name = NAME.format(pid=os.getpid())
    assert entries(core_dir) == {name, f".{name}.crash.json"}  # no temporary file left
    core = core_dir / name
    assert core.read_bytes() == data
    st = core.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)
    assert st.st_blocks * 512 < 2 * MiB  # the zeros are holes, not blocks
    sidecar = (core_dir / f".{name}.crash.json").stat()
    assert (sidecar.st_uid, stat.S_IMODE(sidecar.st_mode)) == (65534, 0o600)
    facts = facts_of(core_dir, name)
    assert facts["inode"] == st.st_ino and facts["size"] == len(data)
    assert facts["global_pid"] == os.getpid() and facts["pid"] == os.getpid()
    assert (facts["uid"], facts["gid"], facts["signal"], facts["time"]) == (1000, 1000, 11, 1_700_000_000)
    assert facts["truncated"] is False and "truncated_reason" not in facts
    assert facts["exe_path"] == os.readlink("/proc/self/exe")
    assert facts["cgroup"]  # this process's own cgroup path, whatever it is


def test_hostile_hostname_and_comm_stay_inside_the_directory(core_dir: Path) -> None:
    hostname, comm = "../../etc/\x1b[31mx y", ".NET TP\tWorker$(id)"
    done = receive(core_dir, b"core", hostname=hostname, comm=comm)
    assert done.returncode == 0, done.stderr
    (name,) = [n for n in entries(core_dir) if not n.startswith(".")]
    assert name == f"core..._.._etc___31mx_y..NET_TP_Worker_.sig11.{os.getpid()}.1700000000"
    facts = facts_of(core_dir, name)
    assert (facts["hostname"], facts["comm"]) == (hostname, comm)  # the real values, JSON-escaped


def test_planted_symlink_and_fifo_at_the_temporary_names(core_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not touch")
    pid = os.getpid()
    (core_dir / f".coredump-receive.{pid}.core.tmp").symlink_to(secret)
    os.mkfifo(core_dir / f".coredump-receive.{pid}.crash.tmp")
    done = receive(core_dir, b"the core")
    assert done.returncode == 0, done.stderr
    assert secret.read_text() == "do not touch"
    name = NAME.format(pid=pid)
    assert (core_dir / name).read_bytes() == b"the core"
    assert (core_dir / f".coredump-receive.{pid}.core.tmp").is_symlink()
    assert stat.S_ISFIFO((core_dir / f".coredump-receive.{pid}.crash.tmp").lstat().st_mode)
    assert len(entries(core_dir)) == 4  # the two plants, the core and its facts: no temporary file


def test_planted_entries_at_the_final_names_are_never_replaced(core_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("do not touch")
    base = NAME.format(pid=os.getpid())
    (core_dir / base).symlink_to(secret)  # the core's name is taken
    os.mkfifo(core_dir / f".{base}.1.crash.json")  # and the facts' name of the next one
    done = receive(core_dir, b"the core")
    assert done.returncode == 0, done.stderr
    assert (core_dir / base).is_symlink() and secret.read_text() == "do not touch"
    assert (core_dir / f"{base}.2").read_bytes() == b"the core"
    assert facts_of(core_dir, f"{base}.2")["size"] == len(b"the core")
    assert entries(core_dir) == {base, f".{base}.1.crash.json", f"{base}.2", f".{base}.2.crash.json"}


def test_full_disk_keeps_what_was_written_and_its_facts(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2m") as small:
        data = os.urandom(8 * MiB)
        done = receive(small, data, "-x", "0")
        assert done.returncode == 0, done.stderr
        name = NAME.format(pid=os.getpid())
        assert entries(small) == {name, f".{name}.crash.json"}
        stored = (small / name).read_bytes()
        assert 0 < len(stored) < 2 * MiB and data.startswith(stored)
        facts = facts_of(small, name)
        assert facts["truncated_reason"] == "no-space" and facts["size"] == len(stored)
        assert b"cut short" in done.stderr and done.stderr.count(b"\n") == 1
        assert failures(small) == ["no-space"]


def test_keep_free_floor_stops_writing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "8m") as fs:
        done = receive(fs, os.urandom(8 * MiB), "-f", "50%", "-x", "0")
        assert done.returncode == 0, done.stderr
        name = NAME.format(pid=os.getpid())
        facts = facts_of(fs, name)
        assert facts["truncated_reason"] == "keep-free"
        assert 2 * MiB < (fs / name).stat().st_size <= 4 * MiB
        free = os.statvfs(fs)
        assert free.f_bavail * free.f_frsize >= 4 * MiB - 64 * 1024  # the floor held (bar the facts)
        assert failures(fs) == ["keep-free"]


def test_max_size_cuts_the_core(core_dir: Path) -> None:
    done = receive(core_dir, os.urandom(MiB), "-m", "64K")
    assert done.returncode == 0, done.stderr
    name = NAME.format(pid=os.getpid())
    assert (core_dir / name).stat().st_size == 64 * 1024
    assert facts_of(core_dir, name)["truncated_reason"] == "max-size"
    assert failures(core_dir) == ["max-size"]


def test_truncated_stdin_is_stored_and_shipped_as_truncated(core_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    real = kernel_core(source, touch_mib=4) or gcore(source)
    if real is None:
        unavailable("no real core: core_pattern does not write into the cwd and gdb is missing")
    whole = real.read_bytes()
    done = receive(core_dir, whole[: len(whole) // 2])  # the kernel stopped writing half-way
    assert done.returncode == 0, done.stderr
    name = NAME.format(pid=os.getpid())
    assert (core_dir / name).read_bytes() == whole[: len(whole) // 2]
    with CoreFile(core_dir / name) as core:
        facts = gather(core, CoreNamePattern.compile("core.%h.%e.sig%s.%P.%t"), "c", "n", "zstd")
    assert facts.info.truncated and facts.metadata["truncated"] == "true"
    assert facts.metadata["capture"] == "pipe"
    written = json.loads((core_dir / f".{name}.crash.json").read_text())
    assert written["capture"] == "pipe"  # the receiver's own word, not the shipper's default


def test_slow_writer_hits_the_deadline(core_dir: Path) -> None:
    pid = os.getpid()
    args = [
        str(RECEIVER),
        "-s",
        "all",
        "-d",
        "1",
        "-t",
        "1",
        str(core_dir),
        str(pid),
        "0",
        "0",
        "6",
        "1700000000",
    ]
    args += ["h", "slow"]
    started = time.monotonic()
    with subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdin is not None and child.stderr is not None
        child.stdin.write(b"x" * 1000)
        child.stdin.flush()
        code = child.wait(timeout=10)  # stdin is still open: only the deadline ends it
        elapsed = time.monotonic() - started
        log = child.stderr.read()
        child.stdin.close()
    assert code == 0, log
    assert 1.0 <= elapsed < 8, elapsed
    name = f"core.h.slow.sig6.{pid}.1700000000"
    assert (core_dir / name).read_bytes() == b"x" * 1000
    assert facts_of(core_dir, name)["truncated_reason"] == "deadline"


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["DIR", "1", "0", "0", "11", "5", "h"],
        ["relative/dir", "1", "0", "0", "11", "5", "h", "e"],
        ["DIR", "not-a-pid", "0", "0", "11", "5", "h", "e"],
        ["-m", "lots", "DIR", "1", "0", "0", "11", "5", "h", "e"],
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_leave_nothing(core_dir: Path, args: list[str]) -> None:
    argv = [str(core_dir) if arg == "DIR" else arg for arg in args]
    done = subprocess.run([str(RECEIVER), *argv], input=b"core", capture_output=True, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(b"coredump-receive: bad arguments") and done.stderr.count(b"\n") == 1
    assert entries(core_dir) == set()


def test_missing_directory_exits_1_with_one_line(tmp_path: Path) -> None:
    done = receive(tmp_path / "missing", b"core")
    assert done.returncode == 1
    assert b"core not stored" in done.stderr and done.stderr.count(b"\n") == 1


def test_directory_given_as_a_symlink_is_refused(core_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(core_dir)
    done = receive(link, b"core")
    assert done.returncode == 1
    assert entries(core_dir) == set()


def test_hundred_mib_core_throughput(core_dir: Path) -> None:
    """A 100 MiB core shaped like a real one (half random pages, half never-touched zeros)."""
    page = 4096
    block = os.urandom(page) + bytes(page)
    data = block * (100 * MiB // len(block))
    started = time.monotonic()
    done = receive(core_dir, data)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    core = core_dir / NAME.format(pid=os.getpid())
    assert core.stat().st_size == len(data)
    print(f"100 MiB core received in {elapsed:.2f}s, {core.stat().st_blocks * 512 // MiB} MiB on disk")
    assert elapsed < 20


def test_host_process_is_not_stored_with_the_default_scope(core_dir: Path) -> None:
    """This test process is in no pod: with the receiver's default scope its core is dropped,
    recorded for the shipper, and said in one line."""
    done = receive(core_dir, os.urandom(MiB), scope=None, comm="kubelet")
    assert done.returncode == 0, done.stderr
    assert entries(core_dir) == set()
    assert failures(core_dir) == ["scope"]
    assert done.stderr.count(b"\n") == 1 and b"not in a Kubernetes pod" in done.stderr
    (record,) = os.listdir(core_dir / SPOOL)
    spool = (core_dir / SPOOL).stat()
    assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (65534, 0o700)
    written = (core_dir / SPOOL / record).stat()
    assert (written.st_uid, stat.S_IMODE(written.st_mode)) == (65534, 0o600)
    assert json.loads((core_dir / SPOOL / record).read_bytes())["comm"] == "kubelet"


def test_suid_safe_dump_is_read_only_for_the_shipper_and_marked(core_dir: Path) -> None:
    done = receive(core_dir, b"privileged memory", dump_mode=2, uid=101)
    assert done.returncode == 0, done.stderr
    name = NAME.format(pid=os.getpid())
    st = (core_dir / name).stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o400)
    assert facts_of(core_dir, name)["dump_mode"] == 2
    assert failures(core_dir) == []


def test_suid_safe_dump_is_never_handed_to_the_uid_that_crashed(core_dir: Path) -> None:
    """A host user whose uid is the shipper's crashes a setuid program: the dump (root's memory)
    must not become that user's file."""
    done = receive(core_dir, b"root's secrets", dump_mode=2, uid=65534)
    assert done.returncode == 0, done.stderr
    assert entries(core_dir) == set() and failures(core_dir) == ["suid-owner"]
    assert b"suid-safe dump" in done.stderr and done.stderr.count(b"\n") == 1
    # A line without -d (an older core_pattern during an upgrade) gets the same caution.
    done = receive(core_dir, b"root's secrets", dump_mode=None, uid=65534)
    assert entries(core_dir) == set() and failures(core_dir) == ["suid-owner", "suid-owner"]


def test_write_error_keeps_what_was_written_and_marks_it(core_dir: Path) -> None:
    """A write that fails (here EFBIG under RLIMIT_FSIZE) keeps the part written, marked cut short."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    data = os.urandom(4 * MiB)
    args = [
        str(RECEIVER),
        "-s",
        "all",
        "-d",
        "1",
        str(core_dir),
        str(os.getpid()),
        "0",
        "0",
        "11",
        "5",
        "h",
        "e",
    ]
    done = subprocess.run(
        args, input=data, capture_output=True, preexec_fn=small_files, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    name = f"core.h.e.sig11.{os.getpid()}.5"
    stored = (core_dir / name).read_bytes()
    assert len(stored) == MiB and data.startswith(stored)
    facts = facts_of(core_dir, name)
    assert facts["truncated_reason"] == "write-error" and facts["size"] == MiB
    assert failures(core_dir) == ["write-error"]


def test_a_planted_link_at_the_spool_is_not_followed(core_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (core_dir / SPOOL).symlink_to(elsewhere)
    done = receive(core_dir, b"core", "-m", "2")
    assert done.returncode == 0, done.stderr
    assert os.listdir(elsewhere) == []
    assert b"failure not recorded" in done.stderr and done.stderr.count(b"\n") == 1
    assert (core_dir / NAME.format(pid=os.getpid())).read_bytes() == b"co"  # the core itself is kept


def test_the_spool_stops_growing_when_nobody_reads_it(core_dir: Path) -> None:
    for _ in range(258):
        receive(core_dir, b"", scope=None)
    assert len(failures(core_dir)) == 256


def _concurrent(
    directory: Path, count: int, size: int, *options: str
) -> list[subprocess.CompletedProcess[bytes]]:
    """`count` receivers writing at the same time: their input is fed in turns, 1 MiB each."""
    children = []
    for index in range(count):
        args = [str(RECEIVER), "-s", "all", "-d", "1", *options, str(directory), str(os.getpid())]
        args += ["0", "0", "11", str(index), "h", "e"]
        children.append(subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE))
    block = os.urandom(MiB)
    errors = []

    def feed(child: subprocess.Popen[bytes]) -> None:
        assert child.stdin is not None
        try:
            for _ in range(size // MiB):
                child.stdin.write(block)
                child.stdin.flush()
        except BrokenPipeError:
            pass  # the receiver stopped at a limit, as the kernel sees it too
        except OSError as error:
            errors.append(error)
        finally:
            with contextlib.suppress(BrokenPipeError):
                child.stdin.close()

    feeders = [threading.Thread(target=feed, args=(child,)) for child in children]
    for thread in feeders:
        thread.start()
    for thread in feeders:
        thread.join(timeout=120)
    done = []
    for child in children:
        assert child.stderr is not None
        code = child.wait(timeout=60)
        done.append(subprocess.CompletedProcess(child.args, code, b"", child.stderr.read()))
        child.stderr.close()
    assert errors == []
    return done


@pytest.mark.parametrize(("option", "reason"), [("-f", "keep-free"), ("-x", "max-use")])
def test_concurrent_receivers_hold_the_floor_and_the_cap(tmp_path: Path, option: str, reason: str) -> None:
    """Three receivers of 90 MiB at once with 100 MiB of room (above the floor, or under the cap):
    together they stop at the limit instead of each spending the whole room."""
    with tmpfs(tmp_path / "fs", "400m") as fs:
        (fs / "older-core").write_bytes(os.urandom(20 * MiB))  # counts against the cap
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
        limit = f"{(free - 100 * MiB) // MiB}M" if option == "-f" else "120M"
        others = ["-x", "0"] if option == "-f" else []
        done = _concurrent(fs, 3, 90 * MiB, option, limit, *others)
        assert [d.returncode for d in done] == [0, 0, 0], [d.stderr for d in done]
        cores = [fs / n for n in entries(fs) if n.startswith("core.")]
        assert len(cores) == 3
        written = sum(core.stat().st_blocks * 512 for core in cores)
        assert 90 * MiB < written <= 100 * MiB + 3 * MiB, written / MiB  # one grant each at most
        if option == "-f":
            left = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
            assert left >= free - 103 * MiB - 64 * 1024, (free - left) / MiB
        reasons = [str(facts_of(fs, core.name).get("truncated_reason", "")) for core in cores]
        assert reason in reasons
        assert failures(fs) == sorted(r for r in reasons if r)
