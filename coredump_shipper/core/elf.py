"""What an ELF core file says about itself: is it a core, for which machine, is it complete, and
the signal, command and executable recorded in its notes.

Only ``os.pread`` on a descriptor the caller opened: this module never opens paths. Every read is
bounded (program headers read in chunks and capped in number, notes capped in bytes) so a hostile
or corrupt file costs a bounded amount of memory and time, and its content never raises.

Header facts (class, machine, completeness) are read for any ELF file of either byte order. Notes
are decoded for little-endian 64-bit x86_64 and aarch64 cores, whose ``elf_prstatus`` and
``elf_prpsinfo`` layouts are the same; other cores give header facts only.

The executable path comes from NT_FILE: the mapping that contains the program's entry point
(AT_ENTRY from NT_AUXV) is the main executable, even for PIE programs and when libraries are
mapped below it. Without AT_ENTRY the lowest file mapping is used. NT_FILE holds the path the
kernel resolved (``/usr/bin/python3.11`` rather than the ``python3`` symlink that was run).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Final

from coredump_shipper.core.name import printable, signal_name

ELF_MAGIC: Final = b"\x7fELF"
ET_CORE: Final = 4
PT_LOAD: Final = 1
PT_NOTE: Final = 4
PN_XNUM: Final = 0xFFFF

NT_PRSTATUS: Final = 1
NT_PRPSINFO: Final = 3
NT_AUXV: Final = 6
NT_FILE: Final = 0x46494C45
AT_NULL: Final = 0
AT_ENTRY: Final = 9

EM_X86_64: Final = 62
EM_AARCH64: Final = 183
MACHINES: Final = {
    2: "sparc",
    3: "i386",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390",
    40: "arm",
    43: "sparcv9",
    EM_X86_64: "x86_64",
    EM_AARCH64: "aarch64",
    243: "riscv",
    258: "loongarch",
}

# Bounds against hostile files. Linux allows vm.max_map_count (65530 by default) mappings, one
# program header each; 2**20 leaves ample room. The notes needed (the dumping thread's PRSTATUS,
# then PRPSINFO, AUXV and FILE) come first in the PT_NOTE segment, so a MiB is plenty.
MAX_PHDRS: Final = 1 << 20
PHDR_CHUNK: Final = 4096
MAX_NOTES_BYTES: Final = 1 << 20
MAX_NOTES: Final = 4096
MAX_ARGS_CHARS: Final = 200
_MAX_OFFSET: Final = 2**63 - 1  # off_t: os.pread rejects larger offsets

# Offsets in the LP64 Linux structures (x86_64 and aarch64 agree up to pr_reg).
_PRSTATUS_CURSIG: Final = 12  # after struct elf_siginfo { int si_signo, si_code, si_errno; }
_PRSTATUS_PID: Final = 32
_PRSTATUS_MIN: Final = 36
_PRPSINFO_FNAME: Final = slice(40, 56)
_PRPSINFO_PSARGS: Final = slice(56, 136)


@dataclass(frozen=True, slots=True)
class CoreInfo:
    """Facts read from a core file's headers and notes; ``None`` where unknown."""

    is_elf_core: bool
    is_elf: bool = False
    elf_class: int | None = None
    machine: str | None = None
    size: int = 0
    expected_size: int | None = None
    truncated: bool = False
    signal: int | None = None
    signal_name: str | None = None
    pid: int | None = None
    comm: str | None = None
    args: str | None = None
    exe_path: str | None = None

    def as_dict(self) -> dict[str, str]:
        """Fields for object metadata: ``elf`` (core, not-core, not-elf), ``truncated`` (true,
        false), and machine, signal, signal_name, pid, comm, args (at most 200 characters) and
        exe_path when known. Values are valid Unicode; sanitise them for keys and headers."""
        if self.is_elf_core:
            elf = "core"
        elif self.is_elf:
            elf = "not-core"
        else:
            elf = "not-elf"
        out = {"elf": elf, "truncated": "true" if self.truncated else "false"}
        for f in fields(self):
            name = f.name
            value = getattr(self, name)
            if value is None or name not in _DICT_FIELDS:
                continue
            text = printable(value) if isinstance(value, str) else str(value)
            out[name] = text[:MAX_ARGS_CHARS] if name == "args" else text
        return out


_DICT_FIELDS: Final = frozenset({"machine", "signal", "signal_name", "pid", "comm", "args", "exe_path"})


@dataclass(frozen=True, slots=True)
class _Layout:
    order: str  # "<" or ">"
    is64: bool

    @property
    def word(self) -> str:
        return "Q" if self.is64 else "I"

    @property
    def phentsize(self) -> int:
        return 56 if self.is64 else 32


@dataclass(frozen=True, slots=True)
class _Header:
    e_type: int
    machine: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int


def inspect_core(fd: int, size: int) -> CoreInfo:
    """Read the headers and notes of the core open on ``fd`` (``size`` bytes long).

    Never raises because of the file's content; OSError from reading the descriptor itself
    (EIO, EBADF) propagates.
    """
    size = min(max(size, 0), _MAX_OFFSET)
    ident = _pread(fd, 16, 0, size)
    if len(ident) < 16 or ident[:4] != ELF_MAGIC or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return CoreInfo(is_elf_core=False, size=size)
    layout = _Layout(order="<" if ident[5] == 1 else ">", is64=ident[4] == 2)
    header = _read_header(fd, size, layout)
    if header is None:
        # Magic but no room for the rest of the header: a core cut off at its very start.
        return CoreInfo(is_elf_core=False, is_elf=True, elf_class=_bits(layout), size=size)
    machine = MACHINES.get(header.machine, f"EM_{header.machine}")
    if header.e_type != ET_CORE:
        return CoreInfo(is_elf_core=False, is_elf=True, elf_class=_bits(layout), machine=machine, size=size)
    expected, notes = _scan_phdrs(fd, size, layout, header)
    info = CoreInfo(
        is_elf_core=True,
        is_elf=True,
        elf_class=_bits(layout),
        machine=machine,
        size=size,
        expected_size=expected,
        truncated=size < expected,
    )
    if layout.order == "<" and layout.is64 and header.machine in (EM_X86_64, EM_AARCH64):
        info = _with_notes(info, _read_notes(fd, size, notes))
    return info


def _bits(layout: _Layout) -> int:
    return 64 if layout.is64 else 32


def _pread(fd: int, length: int, offset: int, size: int) -> bytes:
    """Up to ``length`` bytes at ``offset``, never past ``size``; short at end of file."""
    if offset < 0 or offset >= size or length <= 0:
        return b""
    length = min(length, size - offset)
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def _read_header(fd: int, size: int, layout: _Layout) -> _Header | None:
    # e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize,
    # e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    fmt = struct.Struct(layout.order + ("HHIQQQIHHHHHH" if layout.is64 else "HHIIIIIHHHHHH"))
    raw = _pread(fd, fmt.size, 16, size)
    if len(raw) < fmt.size:
        return None
    e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = fmt.unpack(raw)
    if phnum == PN_XNUM:
        # More segments than fit in e_phnum: the real count is section header 0's sh_info.
        phnum = _xnum_phnum(fd, size, layout, shoff)
    return _Header(e_type, machine, phoff, shoff, phentsize, phnum, shentsize, shnum)


def _xnum_phnum(fd: int, size: int, layout: _Layout, shoff: int) -> int:
    if shoff == 0:
        return PN_XNUM  # malformed: take the count at face value
    info_at = 44 if layout.is64 else 28
    raw = _pread(fd, 4, shoff + info_at, size)
    if len(raw) < 4:
        return PN_XNUM
    count: int = struct.unpack(layout.order + "I", raw)[0]
    return count


def _scan_phdrs(fd: int, size: int, layout: _Layout, header: _Header) -> tuple[int, list[tuple[int, int]]]:
    """The size a complete file must have, and the (offset, size) of the PT_NOTE segments."""
    expected = 64 if layout.is64 else 52
    if header.shoff:
        expected = max(expected, header.shoff + max(header.shnum, 1) * header.shentsize)
    if header.phentsize != layout.phentsize or header.phnum == 0:
        return expected, []
    expected = max(expected, header.phoff + header.phnum * header.phentsize)
    # p_type, then p_flags and six 64-bit words, or seven 32-bit words with p_flags sixth.
    unpacker = struct.Struct(layout.order + ("IIQQQQQQ" if layout.is64 else "IIIIIIII"))
    notes: list[tuple[int, int]] = []
    count = min(header.phnum, MAX_PHDRS)
    for first in range(0, count, PHDR_CHUNK):
        n = min(PHDR_CHUNK, count - first)
        raw = _pread(fd, n * unpacker.size, header.phoff + first * unpacker.size, size)
        for fields_ in unpacker.iter_unpack(raw[: len(raw) - len(raw) % unpacker.size]):
            if layout.is64:
                p_type, _flags, offset, _vaddr, _paddr, filesz = fields_[:6]
            else:
                p_type, offset, _vaddr, _paddr, filesz = fields_[:5]
            expected = max(expected, offset + filesz)
            if p_type == PT_NOTE and len(notes) < 16:
                notes.append((offset, filesz))
        if len(raw) < n * unpacker.size:
            break  # the table runs past the end of the file
    return expected, notes


def _read_notes(fd: int, size: int, segments: list[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
    """(type, descriptor) of each "CORE" note, within MAX_NOTES_BYTES and MAX_NOTES."""
    budget = MAX_NOTES_BYTES
    seen = 0
    for offset, filesz in segments:
        data = _pread(fd, min(filesz, budget), offset, size)
        budget -= len(data)
        pos = 0
        while pos + 12 <= len(data) and seen < MAX_NOTES:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name_at = pos + 12
            desc_at = name_at + _align4(namesz)
            if desc_at + descsz > len(data):
                break
            seen += 1
            if data[name_at : name_at + namesz].rstrip(b"\0") == b"CORE":
                yield ntype, data[desc_at : desc_at + descsz]
            pos = desc_at + _align4(descsz)
        if budget <= 0:
            return


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _with_notes(info: CoreInfo, notes: Iterator[tuple[int, bytes]]) -> CoreInfo:
    sig: int | None = None
    pid: int | None = None
    comm: str | None = None
    args: str | None = None
    entry: int | None = None
    mappings: list[tuple[int, int, str]] = []
    for ntype, desc in notes:
        # Only the first of each: the dumping thread's PRSTATUS comes before the other threads'.
        if ntype == NT_PRSTATUS and sig is None and len(desc) >= _PRSTATUS_MIN:
            sig = struct.unpack_from("<h", desc, _PRSTATUS_CURSIG)[0]
            pid = struct.unpack_from("<i", desc, _PRSTATUS_PID)[0]
        elif ntype == NT_PRPSINFO and comm is None and len(desc) >= _PRPSINFO_PSARGS.stop:
            comm = _cstring(desc[_PRPSINFO_FNAME])
            args = _cstring(desc[_PRPSINFO_PSARGS]).rstrip(" ")
        elif ntype == NT_AUXV and entry is None:
            entry = _auxv_entry(desc)
        elif ntype == NT_FILE and not mappings:
            mappings = _file_mappings(desc)
    return replace(
        info,
        signal=sig if sig and sig > 0 else None,
        signal_name=signal_name(sig) if sig and sig > 0 else None,
        pid=pid if pid and pid > 0 else None,
        comm=comm or None,
        args=args or None,
        exe_path=_executable(mappings, entry),
    )


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _auxv_entry(desc: bytes) -> int | None:
    for key, value in struct.iter_unpack("<QQ", desc[: len(desc) - len(desc) % 16]):
        if key == AT_NULL:
            break
        if key == AT_ENTRY:
            return int(value)
    return None


def _file_mappings(desc: bytes) -> list[tuple[int, int, str]]:
    """NT_FILE: count, page size, count x (start, end, file page offset), then count paths."""
    if len(desc) < 16:
        return []
    count, _page_size = struct.unpack_from("<QQ", desc, 0)
    count = min(count, (len(desc) - 16) // 24)
    names_at = 16 + 24 * count
    names = desc[names_at:].split(b"\0", count)[:count]
    mappings = []
    for i, name in enumerate(names):
        start, end, _pgoff = struct.unpack_from("<QQQ", desc, 16 + 24 * i)
        mappings.append((start, end, name.decode("utf-8", "backslashreplace")))
    return mappings


def _executable(mappings: list[tuple[int, int, str]], entry: int | None) -> str | None:
    if not mappings:
        return None
    if entry is not None:
        for start, end, path in mappings:
            if start <= entry < end:
                return path or None
    return min(mappings)[2] or None
