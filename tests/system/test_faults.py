"""Never lose a core: fault scenarios, each ending with a ledger check.

Ledger check: every core created is in the bucket with identical content (sha256 of the stored object,
decompressed), no core is left behind in delete mode, and no multipart upload is left incomplete.
Faults come from testkit/faultproxy.py between the shipper and a real moto server. With
FAULT_FIGURES_DIR=DIR set, each scenario writes its figures (faults injected, cores created
and verified, orphans) to DIR/faults.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, daemon_args, running
from testkit.faultproxy import FaultProxy, ProxyStats, ThreadedFaultProxy
from testkit.servers import S3Endpoint
from testkit.waiting import wait_until, wait_until_sync

MiB = 1024 * 1024


def core_like(size: int, seed: int) -> bytes:
    """Half random, half zero pages, like process memory."""
    rng = random.Random(seed)
    page = 4096
    return b"".join(
        rng.randbytes(page) if rng.random() < 0.5 else bytes(page) for _ in range(size // page)
    ) + rng.randbytes(size % page)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ledger(
    bucket: Bucket, created: dict[str, str], watch_dir: Path, *, key_suffix: str = ".zst"
) -> dict[str, int]:
    """Assert every created core (name -> sha256) is stored intact; return the figures."""
    keys = set(bucket.core_keys())
    verified = 0
    for name, digest in created.items():
        key = f"test/node-1.{name}{key_suffix}"
        assert key in keys, f"{name} was lost"
        assert sha(bucket.content(key)) == digest, f"{name} is corrupt in the bucket"
        verified += 1
    assert len(keys) == len(created), f"unexpected objects: {sorted(keys - set(created))}"
    left = [n for n in os.listdir(watch_dir) if not n.startswith(".")]
    assert left == [], f"cores left behind: {left}"
    orphans = bucket.incomplete_uploads()
    assert orphans == [], f"incomplete multipart uploads left: {orphans}"
    return {"created": len(created), "verified": verified, "orphans": len(orphans)}


def record(scenario: str, figures: dict[str, Any], stats: ProxyStats | None = None) -> None:
    directory = os.environ.get("FAULT_FIGURES_DIR")
    if not directory:
        return
    line = {"scenario": scenario, **figures}
    if stats is not None:
        line |= {"requests": stats.total_requests, "faults": dict(stats.faults)}
    with Path(directory, "faults.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\n")


@pytest.fixture
async def proxy(s3_server: S3Endpoint) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(s3_server.url) as front:
        yield front


def write_cores(watch_dir: Path, count: int, size: int, prefix: str = "core") -> dict[str, str]:
    created = {}
    for n in range(count):
        data = core_like(size, n)
        write_file(watch_dir / f"{prefix}.{n}", data)
        created[f"{prefix}.{n}"] = sha(data)
    return created


async def test_s3_down_for_a_while_then_back(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    await proxy.down()
    async with running(make_config(endpoint_url=proxy.url, connect_timeout="0.5s")) as service:
        created = write_cores(watch_dir, 10, 64 * 1024)
        await wait_until(lambda: service.metrics.uploads.labels("failure")._value.get() >= 3)
        await proxy.up()
        await wait_until(lambda: service.pipeline.pending == 0, timeout=30)
    record("s3_down_then_back", ledger(bucket, created, watch_dir), proxy.faults.stats())


async def test_errors_and_connection_resets_lose_nothing(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    proxy.faults.fail(500, ratio=0.15, seed=1)
    proxy.faults.fail(503, ratio=0.15, seed=2)
    # aiohttp resends an idempotent request once on a broken connection: resets must repeat to be seen.
    proxy.faults.reset_mid_body(ratio=0.3, ops={"UploadPart", "PutObject"}, seed=3)
    config = make_config(endpoint_url=proxy.url, part_size="5MiB")
    async with running(config) as service:
        created = write_cores(watch_dir, 20, 100 * 1024)
        created |= write_cores(watch_dir, 2, 12 * MiB, prefix="core.big")
        await wait_until(lambda: len(bucket.core_keys()) == 22, timeout=90)
        await wait_until(lambda: service.pipeline.pending == 0)
    stats = proxy.faults.stats()
    assert stats.faults.get("http_500", 0) > 0 and stats.faults.get("http_503", 0) > 0
    assert stats.faults.get("reset", 0) > 0
    record("errors_and_resets", ledger(bucket, created, watch_dir), stats)


async def test_inotify_overflow_rescan_ships_every_core(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy
) -> None:
    max_events = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if max_events > 100_000:
        pytest.skip(f"max_queued_events is {max_events}: too many events to force an overflow quickly")
    stall = proxy.faults.stall(ops={"PutObject"})
    metrics = Metrics(process=False)
    config = make_config(endpoint_url=proxy.url, queue_size=1, workers=1)
    async with running(config, metrics):
        # One core stalls in the worker, one fills the queue, the third blocks the producer:
        # from then on nobody reads the inotify descriptor.
        created = write_cores(watch_dir, 3, 4096)
        await wait_until(lambda: stall.holding == 1)
        await wait_until(lambda: metrics.cores_detected._value.get() == 3)
        # Alternate two ignored files so the kernel cannot merge identical events.
        for n in range(max_events + 100):
            with (watch_dir / f".noise{n % 2}").open("wb"):
                pass
        created |= write_cores(watch_dir, 5, 4096, prefix="core.after")
        proxy.faults.remove(stall)
        await wait_until(lambda: len(bucket.core_keys()) == 8, timeout=60)
    assert metrics.inotify_overflows._value.get() >= 1
    for n in range(2):
        (watch_dir / f".noise{n}").unlink()
    record("inotify_overflow", ledger(bucket, created, watch_dir) | {"overflow_events": max_events + 100})


async def test_watched_directory_deleted_and_recreated(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    async with running(make_config()) as service:
        created = write_cores(watch_dir, 1, 4096, prefix="core.first")
        await wait_until(lambda: len(bucket.core_keys()) == 1 and not any(watch_dir.iterdir()))
        watch_dir.rmdir()
        await wait_until(lambda: not service.watcher.watching)
        watch_dir.mkdir()
        await wait_until(lambda: service.watcher.watching, timeout=10)
        created |= write_cores(watch_dir, 3, 4096, prefix="core.second")
        await wait_until(lambda: len(bucket.core_keys()) == 4)
        await wait_until(lambda: service.pipeline.pending == 0)
    record("directory_recreated", ledger(bucket, created, watch_dir))


@pytest.mark.parametrize("change", ["truncated", "replaced"])
async def test_core_changed_during_upload_is_never_reported_with_wrong_content(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, proxy: FaultProxy, change: str
) -> None:
    proxy.faults.latency(0.3, ops={"UploadPart"})
    metrics = Metrics(process=False)
    config = make_config(endpoint_url=proxy.url, part_size="5MiB", parts_in_flight=1)
    core = watch_dir / "core.moving"
    async with running(config, metrics) as service:
        write_file(core, os.urandom(30 * MiB))
        await wait_until(lambda: proxy.faults.stats().requests.get("UploadPart", 0) >= 1)
        final = core_like(7 * MiB, 42)
        if change == "truncated":
            with core.open("r+b") as handle:
                handle.truncate(0)
                handle.write(final)
        else:
            write_file(watch_dir.parent / "replacement", final)
            (watch_dir.parent / "replacement").rename(core)
        await wait_until(lambda: service.pipeline.pending == 0 and not core.exists(), timeout=60)
    assert metrics.uploads.labels("success")._value.get() == 1
    record(f"changed_during_upload_{change}", ledger(bucket, {"core.moving": sha(final)}, watch_dir))


def _shipper_process(watch: Path, endpoint: str, bucket: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "coredump_shipper", *daemon_args(watch, bucket, endpoint, *extra)]
    return subprocess.Popen(command, stderr=subprocess.DEVNULL)


def test_sigkill_mid_multipart_then_restart_ships_once_and_cleans_up(
    bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    data = core_like(200 * MiB, 7)
    args = ("--part-size", "5MiB", "--compression", "none")
    with ThreadedFaultProxy(s3_server.url) as slow:
        slow.faults.latency(0.2, ops={"UploadPart"})
        first = _shipper_process(watch, slow.url, bucket.name, *args)
        try:
            # Written beside the directory and renamed in, as a finished core appears: a 200 MiB
            # write seen half-way by the start-up scan would make a first, aborted upload.
            write_file(tmp_path / "core.killed", data)
            (tmp_path / "core.killed").rename(watch / "core.killed")
            wait_until_sync(lambda: slow.stats().requests.get("UploadPart", 0) >= 3, timeout=60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        stats = slow.stats()
    orphaned = bucket.incomplete_uploads()
    assert len(orphaned) == 1, "the killed process cannot abort its own upload"
    # The second run goes through a proxy too: its request log shows an overwrite, which the
    # bucket's single object would hide.
    with ThreadedFaultProxy(s3_server.url) as watched:
        second = _shipper_process(watch, watched.url, bucket.name, *args)
        try:
            wait_until_sync(lambda: not (watch / "core.killed").exists(), timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        again = watched.stats().requests
    completed = stats.requests.get("CompleteMultipartUpload", 0) + again.get("CompleteMultipartUpload", 0)
    assert completed == 1, f"the core was stored {completed} times"
    puts = stats.requests.get("PutObject", 0) + again.get("PutObject", 0)
    assert puts == 2, "one manifest and one fleet index entry, once"
    assert again.get("AbortMultipartUpload", 0) == 1, "the orphan is aborted by the second run"
    figures = ledger(bucket, {"core.killed": sha(data)}, watch, key_suffix="")
    record("sigkill_mid_multipart", figures | {"orphans_cleaned": len(orphaned)}, stats)


def test_burst_of_1000_small_cores(bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    proc = _shipper_process(watch, s3_server.url, bucket.name, "--queue-size", "8")
    started = time.monotonic()
    try:
        created = write_cores(watch, 1000, MiB)
        wait_until_sync(
            lambda: proc.poll() is not None or not any(watch.iterdir()), timeout=300, interval=0.2
        )
        assert proc.poll() is None, "the shipper died"
        elapsed = time.monotonic() - started
        peak_mib = peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    figures = ledger(bucket, created, watch) | {"seconds": round(elapsed, 1), "peak_rss_mib": peak_mib}
    record("burst_1000x1MiB", figures)
    assert peak_mib < 150, f"peak RSS {peak_mib:.0f} MiB"


def peak_rss_mib(pid: int) -> float:
    """VmHWM: the peak since exec (wait4's ru_maxrss would include the forked test process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise AssertionError("no VmHWM")
