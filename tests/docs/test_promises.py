"""Promises of the docs (README.md, docs/how-it-works.md, docs/guarantees.md, docs/operations.md,
docs/performance.md) that had no test of their own, each checked through the daemon as `run` wires it."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
import pytest

from coredump_shipper.daemon.service import Service
from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, daemon_args, running
from testkit.faultproxy import FaultProxy, ThreadedFaultProxy
from testkit.servers import S3Endpoint
from testkit.waiting import wait_until, wait_until_sync

MiB = 1024 * 1024
S3_XML = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def key_for(name: str) -> str:
    return f"test/node-1.{name}.zst"


def arrive_without_event(watch_dir: Path, name: str, data: bytes) -> None:
    """Put a finished file into the directory without IN_CLOSE_WRITE or IN_MOVED_TO, as a write by
    another NFS client appears: a hard link made from outside (IN_CREATE only), then the outside
    name removed (the file then has one link, like any core)."""
    outside = watch_dir.parent / f"outside-{name}"
    write_file(outside, data)
    os.link(outside, watch_dir / name)
    outside.unlink()


@pytest.mark.parametrize("rescan", ["0.3s", "0"])
async def test_periodic_rescan_finds_files_inotify_never_reported(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, rescan: str
) -> None:
    async with running(make_config(rescan_interval=rescan)) as service:
        arrive_without_event(watch_dir, "core.silent", b"no event for me")
        if rescan == "0":  # the control: without the timer nothing finds it
            await asyncio.sleep(1.0)
            assert bucket.core_keys() == [] and service.pipeline.pending == 0
            return
        await wait_until(lambda: bucket.core_keys() == [key_for("core.silent")], timeout=10)
    assert bucket.content(key_for("core.silent")) == b"no event for me"


CHART_KEY = "{cluster}/{namespace}/{workload}/{crash_time:%Y-%m-%d}/{node}/{filename}"


@pytest.mark.parametrize(
    ("template", "key"),
    [
        (None, "{cluster}/{node}.core.{what}"),  # the shipper's default: a literal prefix
        (CHART_KEY, "{cluster}/ns/app/2026-01-02/{node}/core.{what}"),  # fields before {node}
    ],
)
async def test_stale_upload_clean_up_touches_only_this_nodes_uploads_begun_before_start(
    make_config: ConfigFactory, bucket: Bucket, s3_server: S3Endpoint, template: str | None, key: str
) -> None:
    begun: dict[str, datetime] = {}  # upload id -> when it was really begun

    def start(key: str) -> None:
        upload = bucket.client.create_multipart_upload(Bucket=bucket.name, Key=key)
        begun[upload["UploadId"]] = datetime.now(UTC)

    def real_times(body: bytes) -> bytes:
        """moto answers one fixed Initiated time (2010) for every upload: give each its own."""
        root = ElementTree.fromstring(body)  # noqa: S314 - the test's own moto on loopback
        for upload in root.iter(f"{S3_XML}Upload"):
            upload_id = upload.findtext(f"{S3_XML}UploadId") or ""
            initiated = upload.find(f"{S3_XML}Initiated")
            if initiated is not None and upload_id in begun:
                initiated.text = begun[upload_id].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        edited: bytes = ElementTree.tostring(root, xml_declaration=True, encoding="UTF-8")
        return edited

    def named(cluster: str, node: str, what: str) -> str:
        return key.format(cluster=cluster, node=node, what=what)

    start(named("test", "node-1", "killed"))  # this node, before start: the only one to abort
    start(named("test", "node-10", "other"))  # a node whose name extends this one's
    start(named("test", "node-2", "other"))
    start(named("other-cluster", "node-1", "other"))
    settings = {} if template is None else {"key_template": template}
    async with FaultProxy(s3_server.url) as proxy:
        # The listing is held a while, so an upload can begin after the start and before it.
        proxy.faults.latency(1.5, ops={"ListMultipartUploads"})
        proxy.faults.rewrite_response(real_times, ops={"ListMultipartUploads"})
        async with running(make_config(endpoint_url=proxy.url, **settings)):
            await wait_until(lambda: proxy.faults.stats().requests.get("ListMultipartUploads", 0) == 1)
            start(named("test", "node-1", "new"))  # this node, begun after start: a live upload
            await wait_until(lambda: proxy.faults.stats().requests.get("AbortMultipartUpload", 0) == 1)
            await asyncio.sleep(0.3)
        aborts = proxy.faults.stats().requests.get("AbortMultipartUpload", 0)
    left = sorted(upload["Key"] for upload in bucket.incomplete_uploads())
    assert aborts == 1
    assert left == sorted(
        [
            named("other-cluster", "node-1", "other"),
            named("test", "node-1", "new"),
            named("test", "node-10", "other"),
            named("test", "node-2", "other"),
        ]
    )


async def test_state_file_is_private_atomic_and_a_reused_name_ships_again(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    state = watch_dir / ".coredump-shipper-state.json"
    metrics = Metrics(process=False)
    async with running(make_config(after_upload="keep"), metrics) as service:
        write_file(watch_dir / "core.a", b"first crash")
        await wait_until(lambda: state.exists() and service.pipeline.pending == 0)
        first_inode = state.stat().st_ino
        assert stat.S_IMODE(state.stat().st_mode) == 0o600, "the record names cores: private"
        # The same name, a new core (new inode): it must be shipped again, not taken as recorded.
        (watch_dir / "core.a").unlink()
        write_file(watch_dir / "core.a", b"second crash, same name")
        await wait_until(lambda: metrics.uploads.labels("success")._value.get() == 2)
        await wait_until(lambda: service.pipeline.pending == 0)
    # Atomic: each save is a new file renamed over the old one, never a rewrite in place.
    assert state.stat().st_ino != first_inode
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert [p.name for p in watch_dir.iterdir() if p.name.endswith(".tmp")] == []
    record = json.loads(state.read_text())
    assert list(record["files"]) == ["core.a"] and record["files"]["core.a"]["key"] == key_for("core.a")
    assert bucket.content(key_for("core.a")) == b"second crash, same name"
    assert (watch_dir / "core.a").read_bytes() == b"second crash, same name"


def test_a_second_signal_exits_at_once(bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    with ThreadedFaultProxy(s3_server.url) as proxy:
        stall = proxy.faults.stall(ops={"PutObject"})
        args = daemon_args(watch, bucket.name, proxy.url, "--shutdown-timeout", "60")
        proc = subprocess.Popen(
            [sys.executable, "-m", "coredump_shipper", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            write_file(watch / "core.stuck", b"held by the proxy")
            wait_until_sync(lambda: stall.holding == 1, timeout=30)
            proc.send_signal(signal.SIGTERM)  # graceful: would wait up to 60 s for the upload
            time.sleep(0.5)
            assert proc.poll() is None, "the first signal waits for the upload"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            elapsed = time.monotonic() - started
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    assert elapsed < 2, f"took {elapsed:.1f}s"
    assert b"second SIGTERM: exiting now" in err
    assert (watch / "core.stuck").read_bytes() == b"held by the proxy", "the file stays"


async def test_http_server_answers_until_the_end_of_shutdown(
    make_config: ConfigFactory, watch_dir: Path, s3_server: S3Endpoint
) -> None:
    async with FaultProxy(s3_server.url) as proxy:
        stall = proxy.faults.stall(ops={"PutObject"})
        config = make_config(endpoint_url=proxy.url, shutdown_timeout="1.5s")
        service = Service(config, Metrics(process=False))
        await service.startup()
        try:
            await wait_until(lambda: service.watcher.watching)
            write_file(watch_dir / "core.slow", b"held")
            await wait_until(lambda: stall.holding == 1)
            stopping = asyncio.create_task(service.shutdown())
            host, port = config.listen
            answers = []
            async with aiohttp.ClientSession() as session:
                while not stopping.done():
                    with_time = time.monotonic()
                    try:
                        async with session.get(f"http://{host}:{port}/metrics") as response:
                            answers.append((with_time, response.status))
                    except aiohttp.ClientError:
                        break
                    await asyncio.sleep(0.1)
            await stopping
            ended = time.monotonic()
        finally:
            proxy.faults.remove(stall)
    served = [t for t, status in answers if status == 200]
    assert len(served) >= 10, answers
    # Scrapes were answered during the whole grace period, up to its last tenths of a second.
    assert ended - served[-1] < 0.5, f"last answer {ended - served[-1]:.2f}s before the end"


def _sparse_core(path: Path, size: int, data_every: int, seed: int) -> int:
    """`size` bytes, mostly holes, with 1 MiB of random data every `data_every` bytes. Data bytes."""
    rng = random.Random(seed)
    written = 0
    with path.open("wb") as handle:
        for offset in range(0, size, data_every):
            handle.seek(offset)
            handle.write(rng.randbytes(MiB))
            written += MiB
        handle.truncate(size)
    return written


def _proc_field(pid: int, name: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/{name}")


def test_multipart_core_of_1_gib_bounded_memory_and_holes_not_read(
    bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    core = tmp_path / "core.sparse"
    data = _sparse_core(core, 1024 * MiB, 64 * MiB, seed=3)  # 16 MiB of data: a 3-part upload
    args = daemon_args(watch, bucket.name, s3_server.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "coredump_shipper", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until_sync(lambda: _proc_field(proc.pid, "status", "VmHWM") > 0)
        time.sleep(1.5)  # started: imports and the S3 client are in the baseline
        read_before = _proc_field(proc.pid, "io", "rchar")
        core.rename(watch / "core.sparse")
        wait_until_sync(lambda: not (watch / "core.sparse").exists(), timeout=90, interval=0.1)
        read = _proc_field(proc.pid, "io", "rchar") - read_before
        peak_mib = _proc_field(proc.pid, "status", "VmHWM") / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    key = "test/node-1.core.sparse.zst"
    assert bucket.head(key)["ETag"].strip('"').endswith("-3"), "a multipart upload"
    # Only the data regions are read: the 1008 MiB of holes become zeros without a read.
    assert read < data + 8 * MiB, f"read {read / MiB:.0f} MiB for {data / MiB:.0f} MiB of data"
    # Generous: the design figure is ~85 MiB; a copy of the core or of every part would be far above.
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB"
    with core.parent.joinpath("restored").open("wb") as out:
        out.write(bucket.content(key))
    assert core.parent.joinpath("restored").stat().st_size == 1024 * MiB, err.decode()[-2000:]


async def test_sockets_and_devices_are_skipped_and_each_skip_logged_once(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a device node")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(watch_dir / "core.socket"))
    os.mknod(watch_dir / "core.device", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    caplog.set_level(logging.WARNING, logger="coredump_shipper")
    metrics = Metrics(process=False)
    try:
        # A rescan every 0.2 s offers both names again and again: each skip is said once.
        async with running(make_config(rescan_interval="0.2s"), metrics):
            write_file(watch_dir / "core.real", b"a real one")
            await wait_until(lambda: bucket.core_keys() == [key_for("core.real")])
            await asyncio.sleep(1.0)
    finally:
        listener.close()
    assert metrics.skipped_files.labels("socket")._value.get() == 1
    assert metrics.skipped_files.labels("device")._value.get() == 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(said) == 2, said
    assert any("core.socket" in line for line in said) and any("core.device" in line for line in said)
    assert sorted(os.listdir(watch_dir)) == ["core.device", "core.socket"], "skipped files stay"


async def test_same_size_rewrite_during_a_single_put_is_shipped_again(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, s3_server: S3Endpoint
) -> None:
    core = watch_dir / "core.rewritten"
    metrics = Metrics(process=False)
    async with FaultProxy(s3_server.url) as proxy:
        held = proxy.faults.stall(ops={"PutObject"}, times=1)  # the first PutObject: the core
        async with running(make_config(endpoint_url=proxy.url), metrics) as service:
            write_file(core, b"A" * 4096)
            await wait_until(lambda: held.holding == 1)
            # Same size, same inode, other bytes: only the mtime tells.
            with core.open("r+b") as handle:
                handle.write(b"B" * 4096)
            proxy.faults.remove(held)
            await wait_until(lambda: not core.exists() and service.pipeline.pending == 0)
    assert metrics.upload_retries._value.get() >= 1
    assert metrics.uploads.labels("success")._value.get() == 1
    assert bucket.content(key_for("core.rewritten")) == b"B" * 4096


async def test_stale_upload_clean_up_spares_an_upload_whose_id_has_not_arrived_yet(
    make_config: ConfigFactory, bucket: Bucket, s3_server: S3Endpoint, watch_dir: Path
) -> None:
    """The store lists an upload as soon as it creates it, before its id reaches the shipper; moto
    also dates every upload 2010. The clean-up must not take the shipper's own new upload for a dead
    one's and abort it under the worker."""
    data = random.Random(7).randbytes(12 * MiB)  # incompressible: two parts
    write_file(watch_dir / "core.early", data)  # there at start: a worker takes it at once
    async with FaultProxy(s3_server.url) as proxy:
        proxy.faults.late(3.0, ops={"CreateMultipartUpload"}, times=1)  # created, the id held back
        proxy.faults.latency(1.0, ops={"ListMultipartUploads"})  # listed meanwhile
        async with running(make_config(endpoint_url=proxy.url)) as service:
            await wait_until(lambda: service.pipeline.pending == 0, timeout=30)
        requests = proxy.faults.stats().requests
    assert requests.get("ListMultipartUploads", 0) == 1
    assert requests.get("AbortMultipartUpload", 0) == 0, "the clean-up aborted the shipper's own upload"
    assert requests.get("CreateMultipartUpload", 0) == 1, "shipped on the first try"
    assert bucket.content(key_for("core.early")) == data
    assert bucket.incomplete_uploads() == []


async def test_an_idle_daemon_lets_go_of_the_buffers_a_burst_needed(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst the part and read buffers are let go (and free heap pages trimmed), so an idle
    node does not keep a burst's peak memory for ever."""
    monkeypatch.setattr("coredump_shipper.daemon.service.MEMORY_RELEASE_INTERVAL", 0.2)
    async with running(make_config(part_size="5MiB", compression="none")) as service:
        for n in range(2):  # multipart cores: part buffers and read buffers are taken and kept
            staged = watch_dir.parent / f"core.burst.{n}"
            staged.write_bytes(os.urandom(11 * 1024 * 1024))
            staged.rename(watch_dir / staged.name)
        await wait_until(lambda: not any(watch_dir.glob("core.burst.*")), timeout=60)
        await wait_until(lambda: service.store.kept_buffer_bytes == 0, timeout=10)
        assert len(bucket.keys()) >= 2


# `coredump-shipper run` as the image starts it, with one addition: SIGUSR1 writes glibc's own account
# of its arenas (malloc_info's XML) to the file named first on the command line.
MALLOC_INFO_RUN = """
import ctypes, signal, sys
from coredump_shipper.cli import main

libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]

def write_malloc_info(signum, frame):
    stream = libc.fopen(sys.argv[1].encode() + b".part", b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    import os
    os.rename(sys.argv[1] + ".part", sys.argv[1])

signal.signal(signal.SIGUSR1, write_malloc_info)
sys.exit(main(sys.argv[2:]))
"""


def test_the_threads_that_ship_a_core_allocate_where_malloc_trim_reaches(
    bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    """docs/performance.md: after a burst RSS comes back near the idle figure. malloc_trim returns
    the free top of the main arena only, so the threads that read, compress and hash a core must
    not get arenas of their own (glibc gives each allocating thread one unless told otherwise)."""
    watch = tmp_path / "cores"
    watch.mkdir()
    report = tmp_path / "malloc-info.xml"
    args = daemon_args(watch, bucket.name, s3_server.url, "--part-size", "5MiB")
    proc = subprocess.Popen(
        [sys.executable, "-c", MALLOC_INFO_RUN, str(report), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        staged = tmp_path / "core.threads"
        staged.write_bytes(os.urandom(12 * MiB))  # three zstd parts: read, compressed and hashed in threads
        staged.rename(watch / staged.name)
        wait_until_sync(lambda: bucket.core_keys() != [], timeout=60)
        proc.send_signal(signal.SIGUSR1)
        wait_until_sync(report.exists, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert bucket.head(key_for("core.threads"))["ETag"].strip('"').endswith("-3"), "a multipart upload"
    heaps = ElementTree.fromstring(report.read_text()).findall("heap")  # noqa: S314 - glibc wrote it
    assert [heap.get("nr") for heap in heaps] == ["0"], "threads allocate in arenas of their own"
