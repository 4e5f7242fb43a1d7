"""What each pass over a core's bytes costs here, and how much the helper thread overlaps them.

Run from the repository root: `python -m bench.passes [--size-mib 512]`. In this process, on the
realistic core (read from the page cache):

- one row per pass alone: reading (`preadv`), SHA-256 (the manifest's), zstd level 1, MD5 (what a
  Content-MD5 would cost), CRC32 (zlib), and CRC32C / CRC64NVME, S3's hardware-accelerated
  checksums, when `awscrt` is importable. Not in `.venv`: botocore imports awscrt whenever it is
  installed (0.2 s more per process, and other code paths), so measure in a venv of its own:
  `python3 -m venv /tmp/crc && /tmp/crc/bin/pip install awscrt zstandard` then
  `PYTHONPATH=. /tmp/crc/bin/python -m bench.passes`;
- `PartSource` filling every part of the file as the uploader does, with the helper thread
  (hash and read-ahead beside zstd) and with every helper job run inline (the old serial order):
  wall and CPU seconds, and how much of the shorter pass the overlap hid; and once more without
  the parts' MD5 (what the store's ETags are compared with), to price that check.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import resource
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import zstandard

from bench.inputs import MiB, make_realistic_core, warm_page_cache
from coredump_shipper.s3 import parts
from coredump_shipper.s3.background import Helper

CHUNK = MiB


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _chunks(path: Path) -> Iterator[memoryview]:
    buffer = bytearray(CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        while got := os.preadv(fd, [buffer], offset):
            offset += got
            yield memoryview(buffer)[:got]
    finally:
        os.close(fd)


def _timed(action: Callable[[], Any]) -> tuple[float, float]:
    cpu, wall = _cpu(), time.perf_counter()
    action()
    return time.perf_counter() - wall, _cpu() - cpu


def _read(path: Path) -> object:
    return sum(len(chunk) for chunk in _chunks(path))


def _digest(name: str) -> Callable[[Path], object]:
    def run(path: Path) -> object:
        h = hashlib.new(name)
        for chunk in _chunks(path):
            h.update(chunk)
        return h.hexdigest()

    return run


def _crc(function: Callable[[Any, int], int]) -> Callable[[Path], object]:
    def run(path: Path) -> object:
        value = 0
        for chunk in _chunks(path):
            value = function(chunk, value)
        return value

    return run


def _zstd(path: Path) -> object:
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    out = sum(len(compressor.compress(chunk)) for chunk in _chunks(path))
    return out + len(compressor.flush())


def _passes() -> dict[str, Callable[[Path], object]]:
    passes: dict[str, Callable[[Path], object]] = {
        "read (preadv, page cache)": _read,
        "SHA-256 (hashlib/OpenSSL)": _digest("sha256"),
        "zstd level 1": _zstd,
        "MD5": _digest("md5"),
        "CRC32 (zlib)": _crc(zlib.crc32),
    }
    try:
        checksums: Any = importlib.import_module("awscrt.checksums")
    except ImportError:
        return passes
    passes["CRC32C (awscrt)"] = _crc(checksums.crc32c)
    if hasattr(checksums, "crc64nvme"):
        passes["CRC64NVME (awscrt)"] = _crc(checksums.crc64nvme)
    return passes


class _Inline(Helper):
    """Runs each job at once in the calling thread: the serial order, for comparison."""

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(job())
        return future


class _NoMd5:
    """Stands in for hashlib in `parts` to measure filling without the parts' MD5."""

    class _Null:
        def update(self, data: object) -> None:
            pass

        def digest(self) -> bytes:
            return b""

    @classmethod
    def md5(cls, *args: object, **kwargs: object) -> _NoMd5._Null:
        return cls._Null()


def _fill_all(path: Path, inline: bool, md5: bool = True) -> None:
    size = path.stat().st_size
    part_size = parts.choose_part_size(size, 8 * MiB, compressed=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = parts.PartSource(fd, size, part_size, 1)
        if inline:
            source._helper = _Inline()
            source.sha256._helper = source._helper
        buffer = bytearray(part_size)
        names = vars(parts)
        real = names["hashlib"]
        if not md5:
            names["hashlib"] = _NoMd5
        try:
            while source.fill(buffer) is not None:
                pass
        finally:
            names["hashlib"] = real
        source.sha256.hexdigest()
    finally:
        os.close(fd)


def passes_table(path: Path) -> str:
    """Each pass over the bytes of `path` alone, in this process."""
    gib = path.stat().st_size / (1 << 30)
    lines = ["| Pass over the bytes (alone) | MB/s | CPU s per GiB |", "|---|---|---|"]
    for name, run in _passes().items():
        warm_page_cache(path)
        wall, cpu = _timed(lambda run=run: run(path))  # type: ignore[misc]
        lines.append(f"| {name} | {path.stat().st_size / wall / 1e6:.0f} | {cpu / gib:.2f} |")
    return "\n".join(lines)


def overlap_table(path: Path, reps: int = 3) -> str:
    """PartSource filling every part of `path`, serial and with the helper (medians of `reps`)."""
    gib = path.stat().st_size / (1 << 30)
    lines = ["| PartSource, zstd level 1, all parts | Wall s per GiB | CPU s per GiB |", "|---|---|---|"]
    walls, cpus = {}, {}
    variants = (
        ("every job inline (the old serial order)", True, True),
        ("helper thread hashes", False, True),
        ("helper thread hashes, no part MD5s (no ETag check)", False, False),
    )
    for label, inline, md5 in variants:
        runs = []
        for _ in range(reps):
            warm_page_cache(path)
            runs.append(_timed(lambda inline=inline, md5=md5: _fill_all(path, inline, md5)))  # type: ignore[misc]
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        walls[label], cpus[label] = wall, cpu
        lines.append(f"| {label} | {wall / gib:.2f} | {cpu / gib:.2f} |")
    serial, helper, no_md5 = walls.values()
    lines.append(f"| wall time saved by the overlap | {1 - helper / serial:.0%} | |")
    md5_cpu = list(cpus.values())[1] - list(cpus.values())[2]
    lines.append(
        f"| the parts' MD5 (ETag check) adds | {(helper - no_md5) / gib:.2f} | {md5_cpu / gib:.2f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cds-passes-") as tmp:
        path = make_realistic_core(Path(tmp) / "core.realistic", args.size_mib * MiB)
        print(f"{args.size_mib} MiB realistic core; load average {os.getloadavg()[0]:.2f}\n")
        print(passes_table(path))
        print()
        print(overlap_table(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
