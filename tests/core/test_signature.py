"""Crash signatures of real programs crashed for real: the same crash gets the same signature in
every process (ASLR), a different crash a different one, and the frames agree with gdb's `bt`."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.core.elf import inspect_core
from coredump_shipper.core.signature import HASH_FRAMES, Signature, compute
from testkit.crashprograms import build_c, build_go, crash, gdb_backtrace, gdb_frames


def signature_of(core: Path) -> Signature:
    fd = os.open(core, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return compute(fd, size, "program", inspect_core(fd, size).exe_path)
    finally:
        os.close(fd)


@pytest.fixture(scope="module", params=[True, False], ids=["frame-pointers", "no-frame-pointers"])
def c_program(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c(tmp_path_factory.mktemp("c"), frame_pointers=request.param)


@pytest.fixture(scope="module")
def go_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_go(tmp_path_factory.mktemp("go"))


@pytest.fixture
def crashes(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "crashes"


def test_same_abort_same_signature_across_processes(c_program: Path, crashes: Path) -> None:
    first = signature_of(crash(c_program, "a", crashes / "1"))
    second = signature_of(crash(c_program, "a", crashes / "2"))
    assert first.executable is not None and second.executable is not None
    # ASLR placed the program (and its libraries) elsewhere: the signature does not care.
    assert first.executable.base != second.executable.base
    assert first.short == second.short
    assert [f.ident for f in first.frames] == [f.ident for f in second.frames]
    # abort()'s own frames (pthread_kill, raise, abort in libc) are not in the hash.
    assert len(first.hashed) == HASH_FRAMES
    assert all(f.module is not None and f.module.path == str(c_program) for f in first.hashed)
    assert first.frames[0].module is not None and first.frames[0].module.is_c_library
    # The program's build-id names its frames, not its path.
    assert first.executable.build_id and first.hashed[0].ident.startswith(first.executable.build_id + "+0x")


def test_two_abort_call_sites_differ(c_program: Path, crashes: Path) -> None:
    a = signature_of(crash(c_program, "a", crashes / "a"))
    b = signature_of(crash(c_program, "b", crashes / "b"))
    segv = signature_of(crash(c_program, "segv", crashes / "segv"))
    assert len({a.short, b.short, segv.short}) == 3
    assert segv.signal == 11 and a.signal == 6
    # The fault is in the program itself: its first frame is the faulting PC.
    assert segv.hashed[0] == segv.frames[0]


def test_fault_inside_the_c_library_keeps_its_frame(c_program: Path, crashes: Path) -> None:
    strlen = signature_of(crash(c_program, "strlen", crashes / "strlen"))
    segv = signature_of(crash(c_program, "segv", crashes / "segv"))
    assert strlen.signal == 11 and strlen.short != segv.short
    first = strlen.hashed[0].module
    assert first is not None and first.is_c_library
    assert [f.module.path if f.module else "" for f in strlen.hashed[1:]] == [str(c_program)] * 2


@pytest.mark.parametrize("how", ["a", "segv", "strlen"])
def test_frames_agree_with_gdb(c_program: Path, crashes: Path, how: str) -> None:
    core = crash(c_program, how, crashes)
    sig = signature_of(core)
    ours = [frame.address for frame in sig.frames]
    backtrace = gdb_backtrace(c_program, core)
    theirs = [address for address, _ in backtrace]
    shown = " ".join(map(hex, ours)) + " vs gdb " + " ".join(map(hex, theirs))
    # From the crash out to main (past it, the C library's start-up code keeps main's address on
    # the stack, which a scan takes for a frame: beyond what is hashed).
    to_main = theirs[: [name for _, name in backtrace].index("main") + 1]
    assert to_main[-1] in ours, shown
    ours = ours[: ours.index(to_main[-1]) + 1]
    # gdb unwinds with the binaries' unwind tables. Every frame reported is one of gdb's, in order
    # (inside the C library, built without frame pointers, a frame can be missed)...
    assert is_subsequence(ours, to_main), shown
    # ...and the program's own frames are all there.
    assert sig.executable is not None
    program = sig.executable
    in_program = [a for a in to_main if program.base <= a < program.base + (1 << 20)]
    assert len(in_program) >= 2
    assert [a for a in ours if a in in_program] == in_program, shown


def is_subsequence(short: list[int], long: list[int]) -> bool:
    rest = iter(long)
    return all(any(item == other for other in rest) for item in short)


@pytest.mark.timeout(600)  # the first build of Go's runtime into .cache takes minutes on a busy machine
def test_go_program(go_program: Path, crashes: Path) -> None:
    a1 = signature_of(crash(go_program, "a", crashes / "a1"))
    a2 = signature_of(crash(go_program, "a", crashes / "a2"))
    b = signature_of(crash(go_program, "b", crashes / "b"))
    assert a1.executable is not None and a1.executable.go
    assert a1.method in {"fp", "fp+scan"}
    assert a1.short == a2.short
    assert a1.short != b.short
    # Go's runtime frames are not told from the program's: the whole chain is hashed.
    assert len(a1.hashed) > HASH_FRAMES
    theirs = gdb_frames(go_program, crashes / "a1" / os.listdir(crashes / "a1")[0])
    ours = [frame.address for frame in a1.frames]
    # gdb knows Go's runtime frames by their symbols; ours are the same addresses, in order.
    assert [a for a in ours if a in theirs] == [a for a in theirs if a in ours]
    assert len(set(ours) & set(theirs)) >= 3


def test_4_gib_core_costs_a_few_pages(tmp_path: Path) -> None:
    program = build_c(tmp_path, frame_pointers=True)
    core = crash(program, "big", tmp_path / "big")
    size = core.stat().st_size
    assert size > 4 << 30
    started = time.perf_counter()
    sig = signature_of(core)
    seconds = time.perf_counter() - started
    assert sig.method in {"fp", "fp+scan"} and sig.hashed
    assert sig.bytes_read < 256 * 1024, sig.bytes_read
    assert seconds < 2.0, seconds
    print(
        f"4 GiB core ({size} bytes, {core.stat().st_blocks * 512} on disk): "
        f"{sig.bytes_read} bytes read in {seconds * 1000:.1f} ms"
    )


def test_cut_cores_and_garbage_never_raise(c_program: Path, crashes: Path, tmp_path: Path) -> None:
    data = crash(c_program, "a", crashes).read_bytes()
    for cut in (0, 10, 64, 100, 1000, 4096, len(data) // 3, len(data) // 2, len(data) - 1):
        fd = os.memfd_create("cut")
        try:
            os.write(fd, data[:cut])
            sig = compute(fd, cut, "program")
        finally:
            os.close(fd)
        assert len(sig.short) == 12
    fd = os.memfd_create("garbage")
    try:
        noise = bytes(data[:64]) + os.urandom(100_000)
        os.write(fd, noise)
        assert compute(fd, len(noise), "program").short
    finally:
        os.close(fd)


# --- register layouts, on cores built here (arm64 cannot be crashed on an x86_64 machine) ---------

MODULE = 0x5555_0000_0000
STACK = 0x7FFF_0000_0000
BUILD_ID = bytes(range(1, 21))


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    return struct.pack("<III", len(name) + 1, len(desc), ntype) + _pad4(name + b"\0") + _pad4(desc)


def _module_page() -> bytes:
    """The first page of a shared object: ELF header, a PT_LOAD and a PT_NOTE with its build-id."""
    note = _note(b"GNU", 3, BUILD_ID)
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 3, 183, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    )
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 0x10000, 0x10000, 0x1000)
    phdrs += struct.pack("<IIQQQQQQ", 4, 4, 0x100, 0x100, 0x100, len(note), len(note), 4)
    page = bytearray(4096)
    page[: len(header) + len(phdrs)] = header + phdrs
    page[0x100 : 0x100 + len(note)] = note
    return bytes(page)


def _synthetic_core(machine: int, regs: dict[int, int], count: int, stack_words: dict[int, int]) -> bytes:
    """An ELF core: notes (PRSTATUS, SIGINFO, FILE), the module's first page and a stack page."""
    pr_reg = [0] * count
    for index, value in regs.items():
        pr_reg[index] = value
    prstatus = struct.pack("<iii", 11, 0, 0) + struct.pack("<h", 11) + bytes(112 - 14)
    prstatus += struct.pack(f"<{count}Q", *pr_reg) + struct.pack("<i", 1) + bytes(4)
    siginfo = struct.pack("<iii", 11, 0, 1) + bytes(116)
    path = b"/usr/lib/libcrashy.so\0"
    nt_file = struct.pack("<QQ", 1, 4096) + struct.pack("<QQQ", MODULE, MODULE + 0x10000, 0) + path
    notes = (
        _note(b"CORE", 1, prstatus)
        + _note(b"CORE", 0x53494749, siginfo)
        + _note(b"CORE", 0x46494C45, nt_file)
    )
    stack = bytearray(0x2000)
    for address, value in stack_words.items():
        struct.pack_into("<Q", stack, address - STACK, value)
    phnum = 3
    notes_at = 64 + 56 * phnum
    module_at = (notes_at + len(notes) + 4095) & ~4095
    stack_at = module_at + 4096
    header = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 4, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    )
    phdrs = struct.pack("<IIQQQQQQ", 4, 0, notes_at, 0, 0, len(notes), 0, 0)
    phdrs += struct.pack("<IIQQQQQQ", 1, 5, module_at, MODULE, 0, 4096, 0x10000, 4096)  # r-x
    phdrs += struct.pack("<IIQQQQQQ", 1, 6, stack_at, STACK, 0, len(stack), len(stack), 4096)  # rw-
    core = bytearray(header + phdrs + notes)
    core += bytes(module_at - len(core)) + _module_page() + stack
    return bytes(core)


def _compute(data: bytes) -> Signature:
    fd = os.memfd_create("synthetic")
    try:
        os.write(fd, data)
        return compute(fd, len(data), "crashy")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("machine", "count", "pc", "sp", "fp", "lr"),
    [(62, 27, 16, 19, 4, None), (183, 34, 32, 31, 29, 30)],
    ids=["x86_64", "arm64"],
)
def test_register_layouts(machine: int, count: int, pc: int, sp: int, fp: int, lr: int | None) -> None:
    first, second = STACK + 0x100, STACK + 0x200
    regs = {pc: MODULE + 0x1111, sp: STACK + 0x80, fp: first}
    if lr is not None:
        regs[lr] = MODULE + 0x1500  # a leaf's return address, not saved in any record
    words = {first: second, first + 8: MODULE + 0x2222, second: 0, second + 8: MODULE + 0x3333}
    sig = _compute(_synthetic_core(machine, regs, count, words))
    expected = [0x1111] + ([0x1500] if lr is not None else []) + [0x2222, 0x3333]
    assert sig.method == "fp"
    assert [f.offset for f in sig.frames] == expected
    assert all(f.module is not None and f.module.build_id == BUILD_ID.hex() for f in sig.frames)
    assert sig.signal == 11 and sig.si_code == 1
    assert sig.metadata()["signature-frames"] == " ".join(f"libcrashy.so+0x{o:x}" for o in expected[:3])
    # A frame pointer outside the stack: no chain from the register; the scan finds the record.
    regs[fp] = 0x1234
    scanned = _compute(_synthetic_core(machine, regs, count, words))
    assert scanned.method == "fp+scan"
    assert [f.offset for f in scanned.frames][-2:] == [0x2222, 0x3333]
