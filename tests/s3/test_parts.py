"""Cutting files into parts: round trips through zstd and raw, holes, part sizes, the sha256 and
each part's MD5."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import zstandard

from coredump_shipper.s3 import parts
from coredump_shipper.s3.background import cpus_available
from coredump_shipper.s3.parts import MIN_PART, MiB, PartSource

PART = MIN_PART  # 5 MiB


def make_file(path: Path, size: int, holes: bool) -> bytes:
    """A file of `size` bytes: random and zero runs, the zero runs left as holes if asked."""
    data = bytearray()
    with path.open("wb") as out:
        offset = 0
        while offset < size:
            run = min(MiB // 2, size - offset)
            if (offset // run) % 2 if run else 0:
                chunk = bytes(run)
                if holes:
                    out.seek(run, os.SEEK_CUR)
                else:
                    out.write(chunk)
            else:
                chunk = os.urandom(run)
                out.write(chunk)
            data += chunk
            offset += run
        out.truncate(size)
    return bytes(data)


@pytest.mark.parametrize("size", [0, 1, 4096, PART - 1, PART, PART + 1, 3 * PART + 12345])
@pytest.mark.parametrize("level", [None, 1])
@pytest.mark.parametrize("holes", [False, True])
def test_parts_restore_the_file_exactly(tmp_path: Path, size: int, level: int | None, holes: bool) -> None:
    path = tmp_path / "core"
    expected = make_file(path, size, holes)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = PartSource(fd, size, PART, level)
        # One buffer for every part, as the uploader's pool reuses them: nothing may leak across.
        buffer = bytearray(b"\xaa" * PART)
        parts = []
        while (part := source.fill(buffer)) is not None:
            parts.append(bytes(part))
    finally:
        os.close(fd)
    # S3's rule: every part but the last is at least 5 MiB; here each is exactly the part size.
    assert all(len(part) == PART for part in parts[:-1])
    assert len(parts[-1]) <= PART
    stored = b"".join(parts)
    assert source.bytes_out == len(stored)
    restored = zstandard.ZstdDecompressor().decompress(stored) if level is not None else stored
    assert restored == expected
    assert source.sha256.hexdigest() == hashlib.sha256(expected).hexdigest()
    # Each part's MD5, made while it was filled, is that of its bytes: what the store's ETag must be.
    assert source.digests == [hashlib.md5(part, usedforsecurity=False).digest() for part in parts]


def test_compressed_stream_is_a_standard_zstd_frame_with_size_and_checksum(tmp_path: Path) -> None:
    path = tmp_path / "core"
    expected = make_file(path, 2 * PART + 99, holes=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = PartSource(fd, len(expected), PART, 1)
        buffer = bytearray(PART)
        stored = b"".join(bytes(p) for p in iter(lambda: source.fill(buffer), None))
    finally:
        os.close(fd)
    params = zstandard.get_frame_parameters(stored)
    assert params.content_size == len(expected) and params.has_checksum
    corrupt = bytearray(stored)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(bytes(corrupt))


def test_incompressible_file_of_one_part_becomes_one_body(tmp_path: Path) -> None:
    # zstd adds a few bytes to random data: the single PutObject body grows past the part size.
    expected = os.urandom(PART)
    (tmp_path / "core").write_bytes(expected)
    fd = os.open(tmp_path / "core", os.O_RDONLY)
    try:
        source = PartSource(fd, PART, PART, 1)
        body = source.read_all(bytearray(PART))
    finally:
        os.close(fd)
    assert len(body) > PART
    assert source.body_md5 == hashlib.md5(body, usedforsecurity=False).hexdigest()
    assert zstandard.ZstdDecompressor().decompress(bytes(body)) == expected


def test_empty_file_is_one_empty_or_tiny_part(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    fd = os.open(tmp_path / "empty", os.O_RDONLY)
    try:
        assert bytes(PartSource(fd, 0, PART, None).read_all(bytearray(PART))) == b""
        frame = PartSource(fd, 0, PART, 1).read_all(bytearray(PART))
    finally:
        os.close(fd)
    assert zstandard.ZstdDecompressor().decompress(bytes(frame)) == b""


def test_interleaved_files_keep_their_bytes_and_read_buffers_stay_bounded(tmp_path: Path) -> None:
    # Workers fill parts of several files in turn, each file hashed by the helper thread while its
    # next chunk is read and compressed; read buffers pass from finished files to new ones.
    sizes = [4 * MiB, 6 * MiB + 7, 3 * MiB, 9 * MiB + 1]
    expected, fds, sources = [], [], []
    for index, size in enumerate(sizes):
        path = tmp_path / f"core{index}"
        expected.append(make_file(path, size, holes=index % 2 == 0))
        fds.append(os.open(path, os.O_RDONLY))
        sources.append(PartSource(fds[-1], size, PART, 1))
    stored: list[list[bytes]] = [[] for _ in sizes]
    buffer = bytearray(PART)
    try:
        for _ in range(8):
            for index, source in enumerate(sources):
                if (part := source.fill(buffer)) is not None:
                    stored[index].append(bytes(part))
    finally:
        for fd in fds:
            os.close(fd)
    for index, source in enumerate(sources):
        assert source.fill(buffer) is None
        assert zstandard.ZstdDecompressor().decompress(b"".join(stored[index])) == expected[index]
        assert source.sha256.hexdigest() == hashlib.sha256(expected[index]).hexdigest()
    assert len(parts._spare_read_buffers) <= parts.KEEP_READ_BUFFERS


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({}, None),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "50000 100000\n"}, 0.5),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "25000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.25),
    ],
)
def test_cpus_available_honours_a_cpu_limit(
    tmp_path: Path, files: dict[str, str], limit: float | None
) -> None:
    # The helper thread is used only where a second CPU can run it; a pod's CPU limit counts.
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = float(len(os.sched_getaffinity(0)))
    expected = affinity if limit is None else min(affinity, limit)
    assert cpus_available(str(tmp_path)) == expected
