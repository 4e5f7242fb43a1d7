"""ELF core inspection against real kernel cores, gcore cores, hand-cut files and garbage."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coredump_shipper.core.elf import (
    MAX_ARGS_CHARS,
    NT_AUXV,
    NT_FILE,
    NT_PRPSINFO,
    NT_PRSTATUS,
    CoreInfo,
    inspect_core,
)

SLEEP = shutil.which("sleep") or "/bin/sleep"


def _inspect_path(path: Path) -> CoreInfo:
    fd = os.open(path, os.O_RDONLY)
    try:
        return inspect_core(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _inspect_bytes(data: bytes) -> CoreInfo:
    fd = os.memfd_create("core")
    try:
        os.write(fd, data)
        return inspect_core(fd, len(data))
    finally:
        os.close(fd)


# --- real kernel cores ----------------------------------------------------------------------


def _no_core_reason() -> str:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    return (
        f"the kernel wrote no core file in the child's directory (core_pattern={pattern!r}, "
        f"hard RLIMIT_CORE={hard}); these tests need a relative file core_pattern such as 'core'"
    )


def _take_core(directory: Path) -> Path:
    cores = sorted(directory.glob("core*"))  # "core", or "core.<pid>" with core_uses_pid=1
    if not cores:
        pytest.skip(_no_core_reason())
    return cores[0]


def _crash_sleep(directory: Path, sig: signal.Signals) -> Path:
    """Start `sleep` with core dumps allowed, kill it with `sig`: its core's path."""
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    if hard == 0:
        pytest.skip(_no_core_reason())
    proc = subprocess.Popen([SLEEP, "60"], cwd=directory)
    try:
        # Popen returns once `sleep` runs, so the signal cannot hit the forked Python child.
        resource.prlimit(proc.pid, resource.RLIMIT_CORE, (hard, hard))
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _take_core(directory)


@pytest.fixture(scope="module")
def sleep_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete kernel core of `sleep` killed by SIGSEGV (written once per module)."""
    return _crash_sleep(tmp_path_factory.mktemp("full"), signal.SIGSEGV)


def test_complete_kernel_core(sleep_core: Path) -> None:
    info = _inspect_path(sleep_core)
    size = sleep_core.stat().st_size
    assert info.is_elf_core
    assert info.elf_class == 64
    assert info.machine == os.uname().machine
    assert info.size == size
    assert info.expected_size == size  # the kernel's last segment ends at the end of the file
    assert not info.truncated
    assert (info.signal, info.signal_name) == (signal.SIGSEGV, "SIGSEGV")
    assert info.comm == "sleep"
    assert info.args == f"{SLEEP} 60"
    assert info.exe_path == os.path.realpath(SLEEP)
    assert info.pid is not None
    assert info.pid > 0
    assert info.as_dict() == {
        "elf": "core",
        "truncated": "false",
        "machine": os.uname().machine,
        "signal": "11",
        "signal_name": "SIGSEGV",
        "pid": str(info.pid),
        "comm": "sleep",
        "args": f"{SLEEP} 60",
        "exe_path": os.path.realpath(SLEEP),
    }


def _crash_python(directory: Path, soft_limit: str, crash: str) -> Path:
    """Run Python code that sets its own soft RLIMIT_CORE, then crashes: its core's path.

    The child raises its own limit, so no preexec_fn runs in this (maybe threaded) process.
    """
    code = (
        "import os, resource, signal\n"
        "hard = resource.getrlimit(resource.RLIMIT_CORE)[1]\n"
        f"resource.setrlimit(resource.RLIMIT_CORE, ({soft_limit}, hard))\n"
        f"{crash}\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=directory, check=False, timeout=60)
    return _take_core(directory)


def test_python_core_of_a_self_inflicted_sigabrt(tmp_path: Path) -> None:
    info = _inspect_path(_crash_python(tmp_path, "hard", "os.abort()"))
    assert info.is_elf_core
    assert not info.truncated
    assert (info.signal, info.signal_name) == (signal.SIGABRT, "SIGABRT")
    assert info.comm == Path(sys.executable).name[:15]
    assert info.exe_path == os.path.realpath(sys.executable)
    assert info.args is not None
    assert info.args.startswith(f"{sys.executable} -c")  # pr_psargs: the first 80 bytes of argv


def test_core_cut_short_by_a_small_rlimit_core(tmp_path: Path) -> None:
    # The kernel counts only the bytes it writes, not the holes it skips: a process with little
    # non-zero memory (sleep) fits in 64 KiB. An interpreter's heap does not.
    core = _crash_python(tmp_path, "64 * 1024", "os.kill(os.getpid(), signal.SIGSEGV)")
    size = core.stat().st_size
    assert size <= 64 * 1024
    info = _inspect_path(core)
    assert info.is_elf_core
    assert info.truncated
    assert info.expected_size is not None
    assert info.expected_size > size
    # The headers and notes come first, so what the crash was is still known.
    assert (info.signal_name, info.comm) == ("SIGSEGV", Path(sys.executable).name[:15])
    assert info.as_dict()["truncated"] == "true"


@pytest.mark.parametrize(
    ("keep", "elf", "truncated", "knows_full_size"),
    [
        (0, "not-elf", False, False),
        (3, "not-elf", False, False),
        (17, "not-core", False, False),  # magic, but the header itself is cut off
        (64, "core", True, False),  # header only: the program headers are missing
        (200, "core", True, False),  # a few program headers
        (-4096, "core", True, True),
        (-1, "core", True, True),
    ],
)
def test_core_cut_by_hand(
    sleep_core: Path, tmp_path: Path, keep: int, elf: str, truncated: bool, knows_full_size: bool
) -> None:
    data = sleep_core.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:keep])
    info = _inspect_path(cut)
    assert info.as_dict()["elf"] == elf
    assert info.truncated is truncated
    if truncated:
        assert info.expected_size is not None
        assert info.expected_size > len(data[:keep])
    if knows_full_size:
        assert info.expected_size == len(data)
        assert (info.signal_name, info.comm) == ("SIGSEGV", "sleep")


def test_core_with_bytes_appended_is_not_truncated(sleep_core: Path, tmp_path: Path) -> None:
    longer = tmp_path / "longer"
    longer.write_bytes(sleep_core.read_bytes() + b"\0" * 100)
    info = _inspect_path(longer)
    assert info.is_elf_core
    assert not info.truncated


def _bytes_read_by_this_thread() -> int:
    """rchar of /proc/thread-self/io: every byte read(2)/pread(2) returned to this thread."""
    text = Path("/proc/thread-self/io").read_text()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("rchar:")))


def test_sparse_core_reads_only_what_it_needs(sleep_core: Path, tmp_path: Path) -> None:
    # Cores are mostly memory the inspection does not need: it reads headers and notes, never the
    # segments. A hole of 1 GiB after the real core makes any bulk read show up in the count.
    sparse = tmp_path / "sparse"
    shutil.copyfile(sleep_core, sparse)
    with sparse.open("r+b") as handle:
        handle.truncate(sleep_core.stat().st_size + 1024**3)
    fd = os.open(sparse, os.O_RDONLY)
    try:
        calibration = _bytes_read_by_this_thread()
        before = _bytes_read_by_this_thread()
        info = inspect_core(fd, os.fstat(fd).st_size)
        after = _bytes_read_by_this_thread()
    finally:
        os.close(fd)
    overhead = before - calibration  # one read of the io file itself, counted in `after` too
    read = after - before - overhead
    assert info.is_elf_core and info.comm == "sleep"
    notes = _note_bytes(sleep_core)
    assert 0 < read <= notes + 64 * 1024, f"read {read} bytes; the notes are {notes}"
    assert read < sleep_core.stat().st_size / 4


def _note_bytes(core: Path) -> int:
    """The size of the PT_NOTE segments of a 64-bit little-endian core (this machine's kind)."""
    data = core.read_bytes()
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    total = 0
    for n in range(phnum):
        p_type, _, _, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + n * phentsize)
        if p_type == 4:  # PT_NOTE
            total += p_filesz
    return total


@pytest.fixture
def live_sleep() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([SLEEP, "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_gcore_core(tmp_path: Path, live_sleep: subprocess.Popen[bytes]) -> None:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gcore (from gdb) is not installed")
    done = subprocess.run(
        [gcore, "-o", str(tmp_path / "gcore"), str(live_sleep.pid)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    core = tmp_path / f"gcore.{live_sleep.pid}"
    if done.returncode != 0 or not core.exists():
        pytest.skip(f"gcore could not attach: {done.stderr.decode(errors='replace')[-300:]}")
    info = _inspect_path(core)
    assert info.is_elf_core
    assert not info.truncated
    assert info.expected_size == core.stat().st_size  # gcore's section headers are counted
    assert info.comm == "sleep"
    assert info.args is not None
    assert info.args.startswith(SLEEP)  # gdb writes the program's path, maybe without arguments
    assert info.exe_path == os.path.realpath(SLEEP)
    assert info.pid == live_sleep.pid
    assert info.signal is None  # a live process: no signal caused this dump


# --- plain files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "elf"),
    [
        (b"", "not-elf"),
        (b"\x7fEL", "not-elf"),
        (b"hello, world\n" * 100, "not-elf"),
        (b"\x7fELF" + b"\0" * 60, "not-elf"),  # neither class nor byte order
        (b"PK\x03\x04" + b"\0" * 100, "not-elf"),  # an archive someone dropped in the directory
    ],
)
def test_not_elf(content: bytes, elf: str) -> None:
    info = _inspect_bytes(content)
    assert not info.is_elf_core
    assert info.as_dict() == {"elf": elf, "truncated": "false"}


def test_elf_program_is_not_a_core() -> None:
    info = _inspect_path(Path(sys.executable).resolve())
    assert info.as_dict() == {"elf": "not-core", "truncated": "false", "machine": os.uname().machine}


def test_reads_only_through_the_descriptor_and_keeps_its_offset(sleep_core: Path) -> None:
    fd = os.open(sleep_core, os.O_RDONLY)
    try:
        os.lseek(fd, 123, os.SEEK_SET)
        inspect_core(fd, os.fstat(fd).st_size)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123  # pread only: the uploader's reads are unaffected
    finally:
        os.close(fd)


# --- synthetic cores: layouts the machine cannot produce, and hostile headers -----------------


def _note(ntype: int, desc: bytes, name: bytes = b"CORE\0") -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def _prstatus(sig: int, pid: int) -> bytes:
    desc = bytearray(336)
    struct.pack_into("<h", desc, 12, sig)
    struct.pack_into("<i", desc, 32, pid)
    return bytes(desc)


def _prpsinfo(comm: bytes, args: bytes) -> bytes:
    desc = bytearray(136)
    desc[40 : 40 + len(comm[:16])] = comm[:16]
    desc[56 : 56 + len(args[:80])] = args[:80]
    return bytes(desc)


def _nt_file(mappings: list[tuple[int, int, bytes]]) -> bytes:
    head = struct.pack("<QQ", len(mappings), 4096)
    ranges = b"".join(struct.pack("<QQQ", start, end, 0) for start, end, _ in mappings)
    return head + ranges + b"".join(path + b"\0" for _, _, path in mappings)


def _auxv(entry: int) -> bytes:
    return struct.pack("<QQQQQQ", 6, 4096, 9, entry, 0, 0)


DEFAULT_NOTES = (
    _note(NT_PRSTATUS, _prstatus(11, 42))
    + _note(NT_PRPSINFO, _prpsinfo(b"worker", b"worker --fast "))
    + _note(NT_AUXV, _auxv(0x5000_1234))
    + _note(
        NT_FILE,
        _nt_file([(0x1000, 0x2000, b"/lib/ld.so"), (0x5000_0000, 0x5001_0000, b"/app/worker")]),
    )
)


def build_core(
    *,
    notes: bytes = DEFAULT_NOTES,
    machine: int = 62,
    e_type: int = 4,
    order: str = "<",
    is64: bool = True,
    load_size: int = 4096,
    phnum: int | None = None,
) -> bytes:
    """A minimal ELF core: header, PT_NOTE and one PT_LOAD, then the note and load bytes."""
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    note_at = ehsize + 2 * phentsize
    load_at = note_at + len(notes)
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if order == "<" else 2, 1]) + b"\0" * 9
    count = 2 if phnum is None else phnum
    if is64:
        header = struct.pack(
            order + "HHIQQQIHHHHHH", e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, count, 0, 0, 0
        )
        phdrs = struct.pack(order + "IIQQQQQQ", 4, 0, note_at, 0, 0, len(notes), 0, 4)
        phdrs += struct.pack(order + "IIQQQQQQ", 1, 6, load_at, 0x7000, 0, load_size, load_size, 4096)
    else:
        header = struct.pack(
            order + "HHIIIIIHHHHHH", e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, count, 0, 0, 0
        )
        phdrs = struct.pack(order + "IIIIIIII", 4, note_at, 0, 0, len(notes), 0, 0, 4)
        phdrs += struct.pack(order + "IIIIIIII", 1, load_at, 0x7000, 0, load_size, load_size, 6, 4096)
    return ident + header + phdrs + notes + b"\xaa" * load_size


def test_synthetic_core_is_read_like_a_real_one() -> None:
    info = _inspect_bytes(build_core())
    assert info == CoreInfo(
        is_elf_core=True,
        is_elf=True,
        elf_class=64,
        machine="x86_64",
        size=len(build_core()),
        expected_size=len(build_core()),
        signal=11,
        signal_name="SIGSEGV",
        pid=42,
        comm="worker",
        args="worker --fast",
        exe_path="/app/worker",  # the mapping holding AT_ENTRY, not the lowest one
    )


@pytest.mark.parametrize(
    ("machine", "order", "is64", "facts"),
    [
        (183, "<", True, ("aarch64", 64, "worker")),
        (243, "<", True, ("riscv", 64, None)),  # header facts only
        (9999, "<", True, ("EM_9999", 64, None)),
        (21, ">", True, ("ppc64", 64, None)),
        (62, ">", True, ("x86_64", 64, None)),  # big-endian x86_64 does not exist: no notes
        (3, "<", False, ("i386", 32, None)),
        (40, "<", False, ("arm", 32, None)),
    ],
)
def test_other_machines_give_header_facts(
    machine: int, order: str, is64: bool, facts: tuple[str, int, str | None]
) -> None:
    data = build_core(machine=machine, order=order, is64=is64)
    info = _inspect_bytes(data)
    assert info.is_elf_core
    assert (info.machine, info.elf_class, info.comm) == facts
    assert info.expected_size == len(data)
    assert not info.truncated
    assert _inspect_bytes(data[:-1]).truncated


def test_exe_path_without_auxv_is_the_lowest_mapping() -> None:
    notes = _note(NT_FILE, _nt_file([(0x9000, 0xA000, b"/b"), (0x1000, 0x2000, b"/a")]))
    assert _inspect_bytes(build_core(notes=notes)).exe_path == "/a"


def test_args_are_cut_in_the_dict() -> None:
    notes = _note(NT_PRPSINFO, _prpsinfo(b"x", b"y" * 80))
    info = _inspect_bytes(build_core(notes=notes))
    assert info.args == "y" * 80
    long_info = CoreInfo(is_elf_core=True, args="z" * 1000)
    assert len(long_info.as_dict()["args"]) == MAX_ARGS_CHARS


@pytest.mark.parametrize(
    "notes",
    [
        _note(NT_PRSTATUS, b"\x01" * 10),  # too short to hold pr_cursig and pr_pid
        _note(NT_PRPSINFO, b"x" * 100),  # too short to hold pr_psargs
        _note(NT_FILE, struct.pack("<QQ", 2**64 - 1, 4096)),  # a count no descriptor can hold
        _note(NT_FILE, b"\0" * 7),
        _note(NT_AUXV, b"\xff" * 33),
        _note(NT_PRSTATUS, _prstatus(11, 1), name=b"LINUX\0"),  # not a CORE note
        struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 1),  # sizes past the segment
        struct.pack("<III", 0, 0, 1) * 10_000,  # many empty notes
        _note(NT_PRPSINFO, _prpsinfo(b"\xff\xfe\n", b"a\x00b")),
    ],
)
def test_bad_notes_give_partial_info(notes: bytes) -> None:
    info = _inspect_bytes(build_core(notes=notes))
    assert info.is_elf_core
    assert not info.truncated
    for value in info.as_dict().values():
        value.encode("utf-8")


def test_undecodable_comm_is_escaped() -> None:
    notes = _note(NT_PRPSINFO, _prpsinfo(b"w\xffk\n", b"w\xffk --x"))
    info = _inspect_bytes(build_core(notes=notes))
    assert (info.comm, info.args) == ("w\\xffk\n", "w\\xffk --x")


def test_not_a_core_elf() -> None:
    assert _inspect_bytes(build_core(e_type=2)).as_dict() == {
        "elf": "not-core",
        "truncated": "false",
        "machine": "x86_64",
    }


@pytest.mark.parametrize(
    ("patch", "truncated", "notes_read"),
    [
        # (offset, struct format, value) written over the synthetic core's ELF64 header
        ((32, "<Q", 2**63), True, False),  # e_phoff far past the end
        ((32, "<Q", 2**64 - 1), True, False),
        ((54, "<H", 57), False, False),  # an e_phentsize ELF64 cannot have: no segments read
        ((56, "<H", 0), False, False),  # no program headers at all
        ((56, "<H", 0xFFFF), True, True),  # PN_XNUM without a section header to hold the count
        ((64 + 56 + 8, "<Q", 2**64 - 1), True, True),  # a PT_LOAD offset past any file
        ((64 + 56 + 32, "<Q", 2**64 - 1), True, True),  # a PT_LOAD size past any file
        ((64 + 8, "<Q", 2**62), True, False),  # the PT_NOTE segment past the end
        ((64 + 32, "<Q", 2**64 - 1), True, True),  # a PT_NOTE size past the end: read what is there
    ],
)
def test_hostile_headers(patch: tuple[int, str, int], truncated: bool, notes_read: bool) -> None:
    data = bytearray(build_core())
    offset, fmt, value = patch
    struct.pack_into(fmt, data, offset, value)
    info = _inspect_bytes(bytes(data))
    assert info.is_elf_core
    assert info.truncated is truncated
    assert (info.comm == "worker") is notes_read


def test_huge_program_header_count_is_bounded() -> None:
    # PN_XNUM with section header 0 claiming 2**32-1 segments, over a 64 MiB sparse file of zeros.
    data = bytearray(build_core())
    struct.pack_into("<Q", data, 40, len(data))  # e_shoff: right after the core
    struct.pack_into("<HHH", data, 56, 0xFFFF, 64, 1)  # e_phnum=PN_XNUM, e_shentsize, e_shnum
    section0 = bytearray(64)
    struct.pack_into("<I", section0, 44, 0xFFFFFFFF)  # sh_info
    data += section0
    fd = os.memfd_create("huge")
    try:
        os.write(fd, data)
        os.ftruncate(fd, 64 << 20)
        started = time.monotonic()
        info = inspect_core(fd, 64 << 20)
        elapsed = time.monotonic() - started
    finally:
        os.close(fd)
    assert info.is_elf_core
    assert info.truncated  # a table of 2**32 entries cannot fit in 64 MiB
    assert elapsed < 10


# --- properties: garbage never raises -----------------------------------------------------


def _check_invariants(info: CoreInfo, size: int) -> None:
    assert info.size == size
    if info.truncated:
        assert info.expected_size is not None
        assert info.expected_size > size
    if not info.is_elf_core:
        assert info.signal is None
        assert info.comm is None
    for value in info.as_dict().values():
        value.encode("utf-8")


ELF_PREFIXES = [
    b"",
    b"\x7fELF\x02\x01\x01",
    b"\x7fELF\x01\x01\x01",
    b"\x7fELF\x02\x02\x01",
    b"\x7fELF\x01\x02\x01",
]


@given(st.sampled_from(ELF_PREFIXES), st.binary(max_size=2048))
def test_garbage_never_raises(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    _check_invariants(_inspect_bytes(data), len(data))


@given(
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=16),
    st.integers(0, 4096),
    st.sampled_from(["<", ">"]),
    st.booleans(),
)
def test_mutated_cores_never_raise(changes: list[tuple[int, int]], cut: int, order: str, is64: bool) -> None:
    data = bytearray(build_core(order=order, is64=is64, load_size=256))
    for offset, byte in changes:
        if offset < len(data):
            data[offset] = byte
    mutated = bytes(data[: len(data) - cut] if cut < len(data) else data)
    _check_invariants(_inspect_bytes(mutated), len(mutated))


@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
)
def test_hostile_note_sizes_never_raise(count: int, page: int, namesz: int, descsz: int, tail: bytes) -> None:
    notes = (
        struct.pack("<III", namesz, descsz, NT_FILE)
        + b"CORE\0\0\0\0"
        + struct.pack("<QQ", count, page)
        + tail
    )
    data = build_core(notes=notes)
    _check_invariants(_inspect_bytes(data), len(data))
