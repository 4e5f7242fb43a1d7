"""The shipper as a real process: exit codes, one-line config errors, signals, S3 arriving late."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import daemon_args
from testkit.faultproxy import ThreadedFaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.servers.moto import run_moto
from testkit.waiting import wait_until_sync


def shipper(*args: str, env: Mapping[str, str] | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
    proc: subprocess.Popen[bytes] = subprocess.Popen(
        [sys.executable, "-m", "coredump_shipper", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[call-overload]
    )
    return proc


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["run", "--watch-dir", "/tmp"], {}, "--bucket"),
        (["run", "--bucket", "cores", "--watch-dir", "/nonexistent/dir"], {}, "--watch-dir"),
        (
            ["run", "--bucket", "cores", "--watch-dir", "/tmp", "--key-template", "{nope}/{filename}"],
            {},
            "--key-template",
        ),
        (["run", "--bucket", "cores", "--watch-dir", "/tmp", "--workers", "many"], {}, "--workers"),
        (
            ["run", "--watch-dir", "/tmp"],
            {"S3_BUCKET": "cores", "COREDUMP_SHIPPER_PART_SIZE": "1k"},
            "--part-size",
        ),
        (["ship", "f", "--bucket", "cores", "--compression", "lz4"], {}, "--compression"),
        (["run", "--bucket", "cores", "--watch-dir", "/tmp", "--bogus", "1"], {}, "--bogus"),
    ],
)
def test_bad_config_exits_2_with_one_line(args: list[str], env: dict[str, str], setting: str) -> None:
    proc = shipper(*args, env=env)
    _, err = proc.communicate(timeout=30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1, lines
    assert setting in lines[0] and "Traceback" not in lines[0]


def test_original_script_variables_are_accepted(bucket: Bucket, tmp_path: Path) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    write_file(watch / "core.legacy", b"legacy")
    env = {
        "LOCAL_PATH": str(watch),
        "S3_BUCKET": bucket.name,
        "NODE_NAME": "n9",
        "CLUSTER_NAME": "prod",
        "AWS_ENDPOINT_URL_S3": bucket.endpoint.url,
        "COREDUMP_SHIPPER_COMPRESSION": "none",
        "COREDUMP_SHIPPER_LISTEN": f"127.0.0.1:{free_port()}",
    }
    proc = shipper("run", env=env)
    try:
        wait_until_sync(lambda: "prod/n9.core.legacy" in bucket.keys())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert bucket.get("prod/n9.core.legacy") == b"legacy"
    assert b"[coredump] '" + str(watch / "core.legacy").encode() + b"' has been uploaded to 's3://" in err


def test_ship_command_exit_status(bucket: Bucket, tmp_path: Path) -> None:
    good = tmp_path / "core.good"
    write_file(good, b"good")
    proc = shipper(
        "ship", str(good), "--bucket", bucket.name, "--endpoint-url", bucket.endpoint.url, "--node-name", "n"
    )
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert good.exists(), "ship never deletes"
    assert bucket.content("unknown/n.core.good.zst") == b"good"

    proc = shipper(
        "ship",
        str(good),
        str(tmp_path / "missing"),
        "--bucket",
        bucket.name,
        "--endpoint-url",
        bucket.endpoint.url,
        "--ship-attempts",
        "2",
    )
    proc.communicate(timeout=60)
    assert proc.returncode == 1


def test_s3_unreachable_at_start_then_reachable(tmp_path: Path) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    write_file(watch / "core.early", b"before S3")
    port = free_port()
    proc = shipper(*daemon_args(watch, "late-bucket", f"http://127.0.0.1:{port}"))
    try:
        time.sleep(1)
        write_file(watch / "core.while-down", b"while S3 is down")
        time.sleep(4)
        assert sorted(os.listdir(watch)) == ["core.early", "core.while-down"]
        with run_moto(tmp_path, port=port) as endpoint:
            late = Bucket(endpoint, "late-bucket")
            wait_until_sync(lambda: len(late.core_keys()) == 2, timeout=30)
            assert late.content("test/node-1.core.early.zst") == b"before S3"
            wait_until_sync(lambda: os.listdir(watch) == [])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_sigterm_during_multipart_exits_cleanly_and_next_run_ships(
    bucket: Bucket, s3_server: S3Endpoint, tmp_path: Path
) -> None:
    watch = tmp_path / "cores"
    watch.mkdir()
    data = os.urandom(40 * 1024 * 1024)
    options = ("--part-size", "5MiB", "--parts-in-flight", "1", "--compression", "none")
    with ThreadedFaultProxy(s3_server.url) as slow:
        # 8 parts at >= 0.3 s each: the upload outlasts the 0.5 s shutdown timeout on any machine.
        slow.faults.latency(0.3, ops={"UploadPart"})
        args = daemon_args(watch, bucket.name, slow.url, *options, "--shutdown-timeout", "0.5")
        proc = shipper(*args)
        try:
            write_file(tmp_path / "core.huge", data)
            (tmp_path / "core.huge").rename(watch / "core.huge")
            wait_until_sync(
                lambda: slow.stats().requests.get("UploadPart", 0) >= 1, timeout=30, interval=0.02
            )
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            proc.kill()
        parts_sent = slow.stats().requests.get("UploadPart", 0)
    assert proc.returncode == 0
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"
    assert parts_sent < 8, "the upload finished before the signal: nothing was interrupted"
    assert b"shutdown timeout: cancelling 1 upload" in err, err.decode()[-3000:]
    assert bucket.incomplete_uploads() == [], err.decode()[-3000:]
    assert bucket.core_keys() == []
    assert (watch / "core.huge").stat().st_size == len(data)

    proc = shipper(*daemon_args(watch, bucket.name, s3_server.url, *options))
    try:
        wait_until_sync(lambda: bucket.core_keys() != [], timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert bucket.content("test/node-1.core.huge") == data
    assert not (watch / "core.huge").exists()
