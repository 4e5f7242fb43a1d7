"""Part sizes, table-driven and for every size: within S3's 10,000 parts and a store's own cap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coredump_shipper.config.settings import load_config
from coredump_shipper.s3.parts import MAX_PARTS, MIN_PART, MiB, UploadFormat, choose_part_size, compress_bound
from coredump_shipper.s3.settings import store_settings

TiB = 1024**4


@pytest.mark.parametrize(
    ("size", "configured", "compressed", "part"),
    [
        (0, 8 * MiB, True, 8 * MiB),
        (100 * MiB, 8 * MiB, False, 8 * MiB),
        (100 * MiB, 1 * MiB, False, MIN_PART),
        (100 * MiB, 5_500_000, False, 6 * MiB),
        (80_000 * MiB, 8 * MiB, False, 8 * MiB),
        (80_001 * MiB, 8 * MiB, False, 9 * MiB),
        (5 * TiB, 8 * MiB, False, 525 * MiB),
        (5 * TiB, 8 * MiB, True, 527 * MiB),
    ],
)
def test_part_size_table(size: int, configured: int, compressed: bool, part: int) -> None:
    assert choose_part_size(size, configured, compressed) == part


def test_part_size_for_a_store_capped_at_1000_parts() -> None:
    # Swift's s3api: 1,000 parts; a 10 GiB core then needs parts of 11 MiB, not the configured 8.
    assert choose_part_size(10 * 1024 * MiB, 8 * MiB, False, max_parts=1000) == 11 * MiB


def test_the_stores_upload_format_comes_from_the_settings() -> None:
    required = {"watch_dir": "/", "bucket": "cores", "node_name": "n"}
    compressed = store_settings(
        load_config({**required, "part_size": "16MiB", "max_parts": "1000"}, {})
    ).upload_format
    assert compressed == UploadFormat(16 * MiB, 1000, 1) and compressed.content_type == "application/zstd"
    assert compressed.part_size_for(16_000 * MiB) == 17 * MiB  # compress_bound(16,000 MiB) / 1,000 parts
    plain = store_settings(load_config({**required, "compression": "none"}, {})).upload_format
    assert plain.compression_level is None and plain.content_type == "application/octet-stream"
    assert plain.part_size_for(100) == plain.part_size == 8 * MiB


@given(st.integers(0, 5 * TiB), st.integers(5 * MiB, 64 * MiB), st.booleans())
def test_part_size_never_needs_more_than_10000_parts(size: int, configured: int, compressed: bool) -> None:
    part = choose_part_size(size, configured, compressed)
    total = compress_bound(size) if compressed else size
    assert part % MiB == 0 and part >= max(MIN_PART, configured)
    assert -(-total // part) <= MAX_PARTS
