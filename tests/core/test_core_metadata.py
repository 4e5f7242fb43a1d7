"""Crash metadata from file names and ELF headers, in keys and object metadata, with real cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import kernel_core, skip_reason
from testkit.daemon import ConfigFactory, running
from testkit.waiting import wait_until

PATTERN = "core.%h.%e.sig%s.%p.%t"
TEMPLATE = "{cluster}/{node}/{pod}/{exe}/{crash_time:%Y-%m-%d}/{filename}"


def crash(scratch: Path, **kwargs: int) -> Path:
    scratch.mkdir(exist_ok=True)
    core = kernel_core(scratch, **kwargs)
    if core is None:
        pytest.skip(skip_reason())
    return core


async def test_fields_from_name_and_headers_reach_key_and_metadata(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    core = crash(tmp_path / "scratch")
    name = "core.web-7d9f.python3.sig11.4242.1764210000"
    metrics = Metrics(process=False)
    async with running(make_config(filename_pattern=PATTERN, key_template=TEMPLATE), metrics):
        core.rename(watch_dir / name)
        await wait_until(lambda: bucket.core_keys() != [])
    (key,) = bucket.core_keys()
    assert key == f"test/node-1/web-7d9f/python3/2025-11-27/{name}.zst"
    meta = bucket.head(key)["Metadata"]
    assert meta["pod"] == "web-7d9f" and meta["exe"] == "python3"
    assert meta["signal"] == "11" and meta["signal-name"] == "SIGSEGV"
    assert meta["pid"] == "4242" and meta["crash-time"] == "2025-11-27T02:20:00Z"
    assert meta["elf"] == "core" and meta["truncated"] == "false" and meta["name-matched"] == "true"
    assert meta["comm"].startswith("python") and "python" in meta["exe-path"]
    assert sum(len(k) + len(v) for k, v in meta.items()) < 2048, "S3 limits user metadata to 2 KiB"
    manifest = json.loads(bucket.get(key + ".manifest.json"))
    assert manifest["pod"] == "web-7d9f" and len(manifest["sha256"]) == 64
    assert metrics.truncated_cores._value.get() == 0


async def test_truncated_core_is_shipped_flagged_and_counted(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    core = crash(tmp_path / "scratch", limit=64 * 1024)
    metrics = Metrics(process=False)
    async with running(make_config(), metrics):
        core.rename(watch_dir / "core.cut")
        await wait_until(lambda: bucket.core_keys() != [])
    (key,) = bucket.core_keys()
    meta = bucket.head(key)["Metadata"]
    assert meta["truncated"] == "true" and meta["elf"] == "core"
    assert metrics.truncated_cores._value.get() == 1


async def test_unmatched_and_hostile_names_still_ship(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    async with running(make_config(filename_pattern=PATTERN, key_template=TEMPLATE)):
        (watch_dir / "not-a-core-name").write_bytes(b"plain")
        (watch_dir / "core....sig11.1.1").write_bytes(b"dots")
        await wait_until(lambda: len(bucket.core_keys()) == 2)
    keys = bucket.core_keys()
    assert "test/node-1/unknown/unknown/" in keys[0] or "test/node-1/unknown/unknown/" in keys[1]
    assert all("/../" not in key and "/./" not in key for key in keys)
    meta = [bucket.head(key)["Metadata"] for key in keys]
    assert {m["elf"] for m in meta} == {"not-elf"}
