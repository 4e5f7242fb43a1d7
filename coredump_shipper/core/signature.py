"""Which crash is this: a signature computed from the core alone, without symbols or the program's files.

From the notes the kernel writes (the dumping thread's registers in the first NT_PRSTATUS, the signal
in NT_SIGINFO, the mapped files in NT_FILE) and the first page of each mapped ELF file (dumped by
default, `coredump_filter` bit 4, so each module's build-id note is in the core), every frame is named
`module + offset`: the module by its GNU build-id (else its file name), the offset in the module's own
address space (what `addr2line -e MODULE` takes), so the same crash gets the same frames whatever the
address space layout, node or restart.

Frames above the faulting PC come from the frame-pointer chain where the program keeps one (built with
`-fno-omit-frame-pointer`, Go, distributions built with frame pointers): each record is (saved frame
pointer, return address), and a record counts only while it lies in the stack above the stack
pointer, climbs, is aligned and returns into executable file-backed memory. Where no valid chain
starts at the frame-pointer register (the C library is usually built without frame pointers, so
inside abort() the register holds anything), the first return address above the C library's frames
is found by scanning the stack from the stack pointer, and the chain is picked up from the first
valid record above it; without any record, the scan's return-address candidates are the frames.
The text of the modules is not in the core (file-backed code is not dumped), so there is no unwinding
information to do better: the scan is a heuristic, stable for one build but not exact.

The signature hashes the signal and the top three frames (as ABRT does); for SIGABRT, after dropping
the leading C library frames (abort, raise, assert and pthread_kill live there). A Go program dies in its
runtime (a fatal panic goes through sigpanic, gopanic, fatalpanic, crash, raise), whose frames
cannot be told from the program's without symbols, so for Go executables every frame of the chain
(up to MAX_FRAMES) counts. A core with no usable registers still gets a signature, from the program
name and signal (method "none").

Cost is bounded: the program headers, the notes (MAX_NOTES_BYTES), one header page per module and
at most STACK_BUDGET bytes of stack, read with pread and counted; never the whole core.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import posixpath
import re
import struct
from dataclasses import dataclass, field
from typing import Final

from coredump_shipper.core.elf import (
    ELF_MAGIC,
    EM_AARCH64,
    EM_X86_64,
    ET_CORE,
    NT_FILE,
    NT_PRSTATUS,
    PHDR_CHUNK,
    PT_LOAD,
    PT_NOTE,
)
from coredump_shipper.core.name import signal_name

NT_SIGINFO: Final = 0x53494749
NT_GNU_BUILD_ID: Final = 3
NT_GO_BUILD_ID: Final = 4
PF_X: Final = 1
SIGABRT: Final = 6

HASH_FRAMES: Final = 3  # frames in the hash of a C-like program (ABRT's choice)
MAX_FRAMES: Final = 16  # frames reported, and hashed for Go programs
MAX_PHDRS: Final = 1 << 17  # vm.max_map_count is 65530 by default
MAX_NOTES_BYTES: Final = 4 << 20  # NT_FILE of a process with tens of thousands of mappings
MAX_MODULES: Final = 512  # build-ids read (one header page each)
STACK_BUDGET: Final = 64 * 1024  # stack bytes read at most, for the chain and the scan together
SCAN_WORDS: Final = 2048  # words scanned above the stack pointer for a return address (16 KiB)
PAGE: Final = 4096
SHORT: Final = 12  # hex digits of the short signature
_PR_REG: Final = 112  # offset of pr_reg in the LP64 elf_prstatus (x86_64 and aarch64 agree)
# Register indices in pr_reg: x86_64 user_regs_struct; aarch64 x0..x30, sp, pc.
_REGS: Final = {EM_X86_64: (16, 19, 4, None), EM_AARCH64: (32, 31, 29, 30)}  # pc, sp, fp, lr
# The C library, glibc or musl: abort(), raise(), assert's __assert_fail, pthread_kill.
_C_LIBRARY: Final = re.compile(r"^(libc\.so(\.\d+)?|libc-[0-9.]+\.so|ld-musl-.*\.so\.\d+|libc\.musl-.*)$")
_HEX: Final = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Module:
    path: str
    base: int  # lowest address the file is mapped at
    bias: int  # load bias: runtime address - address in the file's own ELF view
    build_id: str = ""
    go: bool = False

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or self.path

    @property
    def ident(self) -> str:
        """What a frame is named by: the build-id, else the file name."""
        return self.build_id or self.name

    @property
    def is_c_library(self) -> bool:
        return _C_LIBRARY.match(self.name) is not None


@dataclass(frozen=True)
class Frame:
    module: Module | None
    offset: int  # in the module's ELF view; the absolute address when there is no module

    @property
    def ident(self) -> str:
        return f"{self.module.ident}+0x{self.offset:x}" if self.module else f"0x{self.offset:x}"

    @property
    def shown(self) -> str:
        return f"{self.module.name}+0x{self.offset:x}" if self.module else f"0x{self.offset:x}"

    @property
    def address(self) -> int:
        """Where it was in the crashed process."""
        return self.offset + self.module.bias if self.module else self.offset


@dataclass(frozen=True)
class Signature:
    """A crash signature: `short` (hex) and the parts it hashes; `bytes_read` is the cost."""

    short: str
    method: str  # fp, fp+scan, scan, pc, none
    signal: int | None
    si_code: int | None
    frames: tuple[Frame, ...]  # all frames found, innermost first
    hashed: tuple[Frame, ...]  # the ones in the hash
    modules: tuple[Module, ...]
    executable: Module | None
    bytes_read: int = 0

    def metadata(self) -> dict[str, str]:
        """Short fields for x-amz-meta-* (each under 256 bytes)."""
        out = {
            "signature": self.short,
            "signature-method": self.method,
            "signature-frames": " ".join(f.shown for f in self.hashed)[:250],
        }
        named = {f.module.name: f.module.build_id for f in self.hashed if f.module and f.module.build_id}
        if named:
            out["signature-modules"] = " ".join(f"{n}={b}" for n, b in named.items())[:250]
        return out

    def details(self) -> dict[str, str]:
        """Longer fields for the manifest only: every frame, and every module's build-id."""
        return {
            "frames": " ".join(f.shown for f in self.frames),
            "modules": "\n".join(f"{m.build_id or '-'} {m.path}" for m in self.modules),
        }


@dataclass(frozen=True)
class _Load:
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    executable: bool


@dataclass
class _Reader:
    """pread on the core, counting bytes; memory reads through the PT_LOAD segments."""

    fd: int
    size: int
    loads: list[_Load] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    bytes_read: int = 0
    stack_bytes: int = 0
    pages: dict[int, bytes] = field(default_factory=dict)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset >= self.size or length <= 0:
            return b""
        data = os.pread(self.fd, min(length, self.size - offset), offset)
        self.bytes_read += len(data)
        return data

    def segment(self, address: int) -> _Load | None:
        index = bisect.bisect_right(self.starts, address) - 1
        if index < 0:
            return None
        load = self.loads[index]
        return load if address < load.vaddr + load.memsz else None

    def memory(self, address: int, length: int) -> bytes:
        """Bytes of the process at `address`, short where not dumped (holes read as zeros)."""
        load = self.segment(address)
        if load is None:
            return b""
        within = address - load.vaddr
        if within >= load.filesz:
            return b""
        return self.read(load.offset + within, min(length, load.filesz - within))

    def stack_word(self, address: int) -> int | None:
        """A word of the stack, one page read at a time and within STACK_BUDGET."""
        page = address & ~(PAGE - 1)
        data = self.pages.get(page)
        if data is None:
            if self.stack_bytes >= STACK_BUDGET:
                return None
            data = self.memory(page, PAGE)
            self.stack_bytes += PAGE
            self.pages[page] = data
        at = address - page
        if at + 8 > len(data):
            return None
        value: int = struct.unpack_from("<Q", data, at)[0]
        return value


def compute(fd: int, size: int, program: str = "", exe_path: str | None = None) -> Signature:
    """The signature of the core open on `fd` (`size` bytes); `program` names it when there are no
    frames, `exe_path` (from elfcore: the mapping holding the entry point) picks the executable.
    Never raises because of the file's content; OSError from reading the descriptor propagates."""
    reader = _Reader(fd, size)
    try:
        return _compute(reader, program, exe_path)
    except (struct.error, ValueError, OverflowError):
        return _fallback(reader, program, None, None, ())


def _fallback(
    reader: _Reader, program: str, signal: int | None, si_code: int | None, modules: tuple[Module, ...]
) -> Signature:
    text = f"none\n{signal or 0}\n{program}"
    return Signature(
        short=hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:SHORT],
        method="none",
        signal=signal,
        si_code=si_code,
        frames=(),
        hashed=(),
        modules=modules,
        executable=None,
        bytes_read=reader.bytes_read,
    )


def _compute(reader: _Reader, program: str, exe_path: str | None) -> Signature:
    header = reader.read(0, 64)
    if len(header) < 64 or header[:4] != ELF_MAGIC or header[4] != 2 or header[5] != 1:
        return _fallback(reader, program, None, None, ())
    e_type, machine = struct.unpack_from("<HH", header, 16)
    phoff, phentsize, phnum = struct.unpack_from("<Q", header, 32)[0], *struct.unpack_from("<HH", header, 54)
    if e_type != ET_CORE or machine not in _REGS or phentsize != 56:
        return _fallback(reader, program, None, None, ())
    notes = _scan(reader, phoff, min(phnum, MAX_PHDRS))
    regs, signal, si_code, files = _notes(reader, notes)
    modules, by_start = _modules(reader, files)
    if regs is None:
        return _fallback(reader, program, signal, si_code, modules)
    pc_at, sp_at, fp_at, lr_at = _REGS[machine]
    count = len(regs)
    if max(pc_at, sp_at, fp_at) >= count:
        return _fallback(reader, program, signal, si_code, modules)
    pc, sp, fp = regs[pc_at], regs[sp_at], regs[fp_at]
    lr = regs[lr_at] if lr_at is not None and lr_at < count else None
    locate = _Locator(by_start, files, reader)
    addresses, method = _unwind(reader, locate, pc, sp, fp, lr)
    frames = tuple(locate.frame(a) for a in addresses)
    executable = next((m for m in modules if m.path == (exe_path or _main_path(files))), None)
    hashed = _hashed(frames, signal, executable)
    if not hashed:
        return _fallback(reader, program, signal, si_code, modules)
    text = "\n".join([f"signal {signal or 0}", *(f.ident for f in hashed)])
    return Signature(
        short=hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:SHORT],
        method=method,
        signal=signal,
        si_code=si_code,
        frames=frames,
        hashed=hashed,
        modules=modules,
        executable=executable,
        bytes_read=reader.bytes_read,
    )


def _hashed(frames: tuple[Frame, ...], signal: int | None, executable: Module | None) -> tuple[Frame, ...]:
    kept = list(frames)
    if signal == SIGABRT:
        # abort(), raise(), assert's __assert_fail, pthread_kill: where the C library stopped the
        # program, the same for every abort. Their caller is what tells aborts apart. A fault inside
        # the C library (strlen of NULL) keeps its frames: where it faulted says what went wrong.
        while len(kept) > 1 and kept[0].module is not None and kept[0].module.is_c_library:
            kept.pop(0)
    if executable is not None and executable.go:
        return tuple(kept[:MAX_FRAMES])
    return tuple(kept[:HASH_FRAMES])


def _scan(reader: _Reader, phoff: int, phnum: int) -> list[tuple[int, int]]:
    notes: list[tuple[int, int]] = []
    loads: list[_Load] = []
    entry = struct.Struct("<IIQQQQQQ")
    for first in range(0, phnum, PHDR_CHUNK):
        n = min(PHDR_CHUNK, phnum - first)
        raw = reader.read(phoff + first * entry.size, n * entry.size)
        for p_type, flags, offset, vaddr, _paddr, filesz, memsz, _align in entry.iter_unpack(
            raw[: len(raw) - len(raw) % entry.size]
        ):
            if p_type == PT_LOAD and memsz:
                loads.append(_Load(vaddr, memsz, offset, filesz, bool(flags & PF_X)))
            elif p_type == PT_NOTE and len(notes) < 16:
                notes.append((offset, filesz))
        if len(raw) < n * entry.size:
            break
    loads.sort(key=lambda load: load.vaddr)
    reader.loads = loads
    reader.starts = [load.vaddr for load in loads]
    return notes


def _iter_notes(data: bytes) -> list[tuple[bytes, int, bytes]]:
    out = []
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        if desc_at + descsz > len(data):
            break
        out.append((data[name_at : name_at + namesz].rstrip(b"\0"), ntype, data[desc_at : desc_at + descsz]))
        pos = desc_at + ((descsz + 3) & ~3)
    return out


_File = tuple[int, int, int, str]  # start, end, file page offset (in pages), path


def _notes(
    reader: _Reader, segments: list[tuple[int, int]]
) -> tuple[tuple[int, ...] | None, int | None, int | None, list[_File]]:
    regs: tuple[int, ...] | None = None
    signal: int | None = None
    si_code: int | None = None
    files: list[_File] = []
    budget = MAX_NOTES_BYTES
    for offset, filesz in segments:
        data = reader.read(offset, min(filesz, budget))
        budget -= len(data)
        for name, ntype, desc in _iter_notes(data):
            if name != b"CORE":
                continue
            # Only the first of each: the dumping thread's notes come before the other threads'.
            if ntype == NT_PRSTATUS and regs is None and len(desc) > _PR_REG + 8:
                count = (len(desc) - _PR_REG - 4) // 8
                regs = struct.unpack_from(f"<{count}Q", desc, _PR_REG)
                if signal is None:
                    signal = struct.unpack_from("<h", desc, 12)[0] or None
            elif ntype == NT_SIGINFO and si_code is None and len(desc) >= 12:
                signo, _errno, si_code = struct.unpack_from("<iii", desc, 0)
                signal = signo or signal
            elif ntype == NT_FILE and not files:
                files = _file_note(desc)
        if budget <= 0:
            break
    return regs, signal, si_code, files


def _file_note(desc: bytes) -> list[_File]:
    if len(desc) < 16:
        return []
    count = min(struct.unpack_from("<Q", desc, 0)[0], (len(desc) - 16) // 24)
    names = desc[16 + 24 * count :].split(b"\0", count)[:count]
    out = []
    for i, raw in enumerate(names):
        start, end, pgoff = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
        out.append((start, end, pgoff, raw.decode("utf-8", "backslashreplace")))
    return out


def _main_path(files: list[_File]) -> str:
    # Without AT_ENTRY (elfcore's answer), the lowest mapping: PIE and non-PIE programs sit below
    # their libraries.
    return files[0][3] if files else ""


def _modules(reader: _Reader, files: list[_File]) -> tuple[tuple[Module, ...], dict[str, Module]]:
    bases: dict[str, int] = {}
    for start, _end, pgoff, path in files:
        if pgoff == 0 and path not in bases:
            bases[path] = start
        elif path not in bases:
            bases.setdefault(path, start - pgoff * PAGE)
    modules = []
    for index, (path, base) in enumerate(sorted(bases.items(), key=lambda item: item[1])):
        if index >= MAX_MODULES:
            modules.append(Module(path, base, base))
            continue
        modules.append(_module(reader, path, base))
    return tuple(modules), {m.path: m for m in modules}


def _module(reader: _Reader, path: str, base: int) -> Module:
    """The build-id from the module's first page, as dumped by the kernel."""
    head = reader.memory(base, PAGE)
    if len(head) < 64 or head[:4] != ELF_MAGIC or head[4] != 2 or head[5] != 1:
        return Module(path, base, base)
    phoff = struct.unpack_from("<Q", head, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", head, 54)
    if phentsize != 56 or phoff + phnum * 56 > len(head):
        return Module(path, base, base)
    first_load: int | None = None
    notes: list[tuple[int, int]] = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, _paddr, filesz, _memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", head, phoff + 56 * i
        )
        if p_type == PT_LOAD and first_load is None:
            first_load = vaddr - offset
        elif p_type == PT_NOTE and offset + filesz <= len(head):
            # Notes beyond the dumped first page are not in the core.
            notes.append((offset, filesz))
    bias = base - (first_load & ~(PAGE - 1)) if first_load is not None else base
    build_id, go = _module_notes(head, notes)
    return Module(path, base, bias, build_id, go)


def _module_notes(head: bytes, notes: list[tuple[int, int]]) -> tuple[str, bool]:
    """The GNU build-id (hex) and whether a Go build-id note says it is a Go program."""
    build_id = ""
    go = False
    for offset, filesz in notes:
        for name, ntype, desc in _iter_notes(head[offset : offset + filesz]):
            if name == b"GNU" and ntype == NT_GNU_BUILD_ID and not build_id and 0 < len(desc) <= 64:
                build_id = desc.hex()
            elif name == b"Go" and ntype == NT_GO_BUILD_ID:
                go = True
    return (build_id if _HEX.match(build_id) else ""), go


class _Locator:
    """Which module an address belongs to, and whether it is executable code."""

    def __init__(self, by_path: dict[str, Module], files: list[_File], reader: _Reader) -> None:
        self.reader = reader
        self.ranges = sorted((start, end, by_path[p]) for start, end, _pg, p in files if p in by_path)
        self.starts = [r[0] for r in self.ranges]

    def module(self, address: int) -> Module | None:
        index = bisect.bisect_right(self.starts, address) - 1
        if index >= 0 and address < self.ranges[index][1]:
            return self.ranges[index][2]
        return None

    def is_code(self, address: int) -> bool:
        """In an executable mapping of a file: where a return address points."""
        load = self.reader.segment(address)
        return load is not None and load.executable and self.module(address) is not None

    def frame(self, address: int) -> Frame:
        module = self.module(address)
        return Frame(module, address - module.bias) if module else Frame(None, address)


def _unwind(
    reader: _Reader, locate: _Locator, pc: int, sp: int, fp: int, lr: int | None
) -> tuple[list[int], str]:
    stack = reader.segment(sp)
    if stack is None:
        return [pc], "pc"
    top = stack.vaddr + stack.memsz
    addresses = [pc]
    # The C library is built without frame pointers: a function of it at the PC kept no record, and
    # the return address into its caller lies between the stack pointer and the first record.
    in_c_library = (module := locate.module(pc)) is not None and module.is_c_library
    if not in_c_library and _valid_record(reader, locate, fp, sp, top):
        if lr is not None and locate.is_code(lr) and not _same_function_return(reader, fp, lr):
            addresses.append(lr)  # arm64: a leaf function keeps its return address in the link register
        return addresses + _chain(reader, locate, fp, top), "fp"
    # No chain from the register, or the PC in the C library: scan the stack.
    candidates, first_record = _scan_stack(reader, locate, sp, top)
    if first_record is not None:
        return addresses + candidates + _chain(reader, locate, first_record, top), "fp+scan"
    if candidates:
        return addresses + candidates[: MAX_FRAMES - 1], "scan"
    return addresses, "pc"


def _scan_stack(reader: _Reader, locate: _Locator, sp: int, top: int) -> tuple[list[int], int | None]:
    """Words above `sp` that point into code (return addresses, likely), up to the first valid
    frame record, and that record's address if there is one within SCAN_WORDS."""
    candidates: list[int] = []
    address = sp
    for _ in range(SCAN_WORDS):
        if address + 8 > top:
            break
        word = reader.stack_word(address)
        if word is None:
            break
        if _valid_record(reader, locate, address, sp, top):
            return candidates, address
        if locate.is_code(word):
            candidates.append(word)
        address += 8
    return candidates, None


def _same_function_return(reader: _Reader, fp: int, lr: int) -> bool:
    # A non-leaf arm64 function saved the link register in its record: then it is not a frame of its own.
    return reader.stack_word(fp + 8) == lr


def _valid_record(reader: _Reader, locate: _Locator, fp: int, sp: int, top: int) -> bool:
    if fp % 16 or not sp <= fp < top - 16:
        return False
    saved, ret = reader.stack_word(fp), reader.stack_word(fp + 8)
    if saved is None or ret is None or not locate.is_code(ret):
        return False
    return saved == 0 or (fp < saved < top and saved % 16 == 0)


def _chain(reader: _Reader, locate: _Locator, fp: int, top: int) -> list[int]:
    out: list[int] = []
    while len(out) < MAX_FRAMES - 1 and fp:
        saved, ret = reader.stack_word(fp), reader.stack_word(fp + 8)
        if saved is None or ret is None or not locate.is_code(ret):
            break
        out.append(ret)
        if saved != 0 and not (fp < saved < top and saved % 16 == 0):
            break
        fp = saved
    return out


def describe(sig: Signature) -> str:
    """One line for logs and Events: the short hash and the frames it was made from."""
    frames = " < ".join(f.shown for f in sig.hashed)
    name = signal_name(sig.signal) if sig.signal else "no signal"
    return f"{sig.short} ({name} at {frames})" if frames else f"{sig.short} ({name}, no frames)"
