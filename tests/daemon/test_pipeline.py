"""The daemon end to end, in-process: real inotify on tmp_path, a real S3 server on loopback."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import cores_land_in_cwd, kernel_core, skip_reason, write_file
from testkit.daemon import ConfigFactory, running
from testkit.waiting import wait_until


def key_for(name: str, compressed: bool = True) -> str:
    return f"test/node-1.{name}" + (".zst" if compressed else "")


async def test_ships_existing_new_renamed_empty_and_odd_names(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    before = {"core.before.1": os.urandom(3000), "core with spaces": b"spaces" * 100}
    for name, data in before.items():
        write_file(watch_dir / name, data)
    during = {
        "core.during": os.urandom(70_000),
        "empty-core": b"",
        "core\nnewline": b"newline",
        os.fsdecode(b"core.\xff\xfe.bytes"): b"not utf-8",
    }
    async with running(make_config()):
        for name, data in during.items():
            write_file(watch_dir / name, data)
        outside = tmp_path / "renamed"
        write_file(outside, b"moved in")
        outside.rename(watch_dir / "core.renamed")
        expected = before | during | {"core.renamed": b"moved in"}
        await wait_until(lambda: len(bucket.core_keys()) == len(expected))
        await wait_until(lambda: not os.listdir(watch_dir))

    keys = bucket.core_keys()
    assert "test/node-1.core with spaces.zst" in keys
    assert "test/node-1.core%0Anewline.zst" in keys
    assert "test/node-1.core.%FF%FE.bytes.zst" in keys
    for name, data in expected.items():
        stored = [k for k in keys if bucket.head(k)["Metadata"]["size"] == str(len(data))]
        assert any(bucket.content(k) == data for k in stored), name


async def test_real_kernel_core_is_shipped_byte_identical(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    if not cores_land_in_cwd():
        pytest.skip(skip_reason())
    # Keep mode leaves the kernel's own file, so the object is compared with the very bytes the
    # kernel wrote (two crashes of one program can differ by a page of stack or heap).
    async with running(make_config(after_upload="keep")):
        core = kernel_core(watch_dir)
        assert core is not None
        await wait_until(lambda: bucket.core_keys() != [])
    (key,) = bucket.core_keys()
    shipped = bucket.content(key)
    written = core.read_bytes()
    assert shipped[:4] == b"\x7fELF" and shipped[16] == 4  # ET_CORE
    assert len(shipped) == len(written) and shipped == written
    manifest = json.loads(bucket.get(key + ".manifest.json"))
    assert manifest["sha256"] == hashlib.sha256(written).hexdigest()


@pytest.mark.parametrize("compression", ["zstd", "none"])
async def test_large_file_goes_multipart_and_is_identical(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, compression: str
) -> None:
    # Random bytes cannot be compressed, so both modes need several 5 MiB parts.
    data = os.urandom(50 * 1024 * 1024 + 12345)
    async with running(make_config(part_size="5MiB", compression=compression)):
        write_file(watch_dir / "core.big", data)
        await wait_until(lambda: bucket.core_keys() != [], timeout=60)
    (key,) = bucket.core_keys()
    assert key == key_for("core.big", compression == "zstd")
    assert bucket.head(key)["ETag"].endswith('-11"'), "expected a multipart upload of 11 parts"
    assert bucket.content(key) == data
    assert bucket.incomplete_uploads() == []


async def test_queue_of_one_loses_nothing(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    files = {f"core.{n}": os.urandom(1000 + n) for n in range(30)}
    async with running(make_config(queue_size=1, workers=2)) as service:
        for name, data in files.items():
            write_file(watch_dir / name, data)
        await wait_until(lambda: len(bucket.core_keys()) == 30, timeout=60)
        await wait_until(lambda: service.pipeline.pending == 0)
    assert {bucket.content(key_for(name)) for name in files} == set(files.values())
    assert os.listdir(watch_dir) == []


async def test_keep_mode_does_not_ship_again_after_restart(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    write_file(watch_dir / "core.kept", b"keep me")
    config = make_config(after_upload="keep")
    async with running(config):
        await wait_until(lambda: len(bucket.core_keys()) == 1)
    first = bucket.head(key_for("core.kept"))
    assert (watch_dir / "core.kept").read_bytes() == b"keep me"

    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        write_file(watch_dir / "core.new", b"new one")
        await wait_until(lambda: len(bucket.core_keys()) == 2)
        await wait_until(lambda: service.pipeline.pending == 0)
    assert metrics.uploads.labels("success")._value.get() == 1  # only core.new
    assert bucket.head(key_for("core.kept"))["LastModified"] == first["LastModified"]


async def test_odd_files_are_skipped_and_never_block(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the watched directory")
    # Present at start: found by the start-up scan.
    (watch_dir / "core.link").symlink_to(secret)
    os.link(secret, watch_dir / "core.hardlink")
    os.mkfifo(watch_dir / "core.fifo")
    (watch_dir / "core.dir").mkdir()
    metrics = Metrics(process=False)
    async with running(make_config(), metrics):
        # Arriving while running: a symlink renamed in (MOVED_TO) and a FIFO closed by a writer.
        (tmp_path / "link2").symlink_to(secret)
        (tmp_path / "link2").rename(watch_dir / "core.link2")
        fd = os.open(watch_dir / "core.fifo", os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)
        for n in range(3):
            write_file(watch_dir / f"core.real{n}", b"real %d" % n)
        await wait_until(lambda: len(bucket.core_keys()) == 3)
        await wait_until(lambda: metrics.skipped_files.labels("symlink")._value.get() == 2)
    assert bucket.core_keys() == [key_for(f"core.real{n}") for n in range(3)]
    assert secret.exists() and (watch_dir / "core.link").is_symlink()
    assert metrics.skipped_files.labels("fifo")._value.get() == 1
    assert metrics.skipped_files.labels("directory")._value.get() == 1
    assert metrics.skipped_files.labels("hardlink")._value.get() == 1
    assert (watch_dir / "core.hardlink").exists() and secret.read_bytes() == b"outside the watched directory"
