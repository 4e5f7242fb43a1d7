"""/healthz, /readyz and /metrics over real HTTP, in every state; logs as an operator reads them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coredump_shipper import __version__
from coredump_shipper.config.settings import Config
from coredump_shipper.daemon import service as service_module
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import ConfigFactory, running
from testkit.faultproxy import FaultProxy, ThreadedFaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.waiting import wait_until, wait_until_sync


async def get(config: Config, path: str) -> tuple[int, str]:
    host, port = config.listen
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}{path}") as answer:
        return answer.status, await answer.text()


async def probe(config: Config, path: str) -> tuple[int, dict[str, Any]]:
    status, body = await get(config, path)
    return status, json.loads(body)


IDENTITY = ("namespace", "node")


async def scrape(config: Config) -> dict[str, float]:
    """Every sample of /metrics as 'name{label="v"}' -> value, less the labels naming the pod's node
    and namespace: every sample carries them (checked here), whatever its family."""
    status, body = await get(config, "/metrics")
    assert status == 200
    expected = {"node": config.node_name} | ({"namespace": config.namespace} if config.namespace else {})
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            identity = {k: sample.labels.pop(k) for k in IDENTITY if k in sample.labels}
            assert identity == expected, (sample.name, identity)
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: an S3 endpoint that hangs."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_ready_and_healthy_with_s3_up(make_config: ConfigFactory) -> None:
    config = make_config()
    async with running(config):
        await wait_until_async_status(config, "/readyz", 200)
        await wait_until_async(lambda m: m["coredump_shipper_s3_reachable"] == 1, config)
        status, body = await probe(config, "/healthz")
        assert status == 200 and body["watcher"] == "running" and body["workers"]["wedged"] == []
        status, body = await probe(config, "/readyz")
        assert body == {"status": "ok", "watching": True, "s3": "ok", "reasons": []}


async def wait_until_async_status(config: Config, path: str, status: int) -> None:
    for _ in range(200):
        if (await get(config, path))[0] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}")


async def test_s3_outage_is_exported_and_keeps_the_pod_ready_and_alive(
    make_config: ConfigFactory, s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HeadBucket failing on an idle shipper: coredump_shipper_s3_reachable drops to 0 (its own alert),
    /readyz reports it but stays 200 (a DaemonSet pod takes no traffic, and an outage is not a
    scheduling problem), /healthz too; one successful check brings it back to 1."""
    monkeypatch.setattr(service_module, "S3_CHECK_INTERVAL", 0.1)
    reachable, last = "coredump_shipper_s3_reachable", "coredump_shipper_s3_last_success_timestamp_seconds"
    async with FaultProxy(s3_server.url) as proxy:
        config = make_config(endpoint_url=proxy.url, max_attempts=1, namespace="coredumps")
        async with running(config):
            await wait_until_async(lambda m: m[reachable] == 1, config)
            assert abs((await scrape(config))[last] - time.time()) < 5
            failing = proxy.faults.fail(503, ops={"HeadBucket"})
            await wait_until(lambda: failing.injected >= 2)
            samples = await scrape(config)
            assert samples[reachable] == 0
            failed_since = samples[last]
            status, body = await probe(config, "/readyz")
            assert status == 200 and body["s3"] == "failing" and body["reasons"] == [], body
            assert "HeadBucket" in body["s3_error"], body
            status, body = await probe(config, "/healthz")
            assert status == 200, "liveness must not depend on S3"
            proxy.faults.remove(failing)
            samples = await wait_until_async(lambda m: m[reachable] == 1, config)
            assert samples[last] > failed_since
            status, body = await probe(config, "/readyz")
            assert status == 200 and body == {"status": "ok", "watching": True, "s3": "ok", "reasons": []}
        assert proxy.faults.stats().requests["HeadBucket"] > failing.injected


async def test_s3_not_reachable_before_its_first_answer(make_config: ConfigFactory) -> None:
    """An S3 endpoint that accepts and never answers: 0 from the start, not an old success."""
    async with silent_server() as port:
        config = make_config(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1)
        async with running(config):
            samples = await scrape(config)
            assert samples["coredump_shipper_s3_reachable"] == 0
            assert samples["coredump_shipper_s3_last_success_timestamp_seconds"] == 0
            status, body = await probe(config, "/readyz")
            assert status == 200 and body["s3"] == "failing", body


async def wait_until_async(
    predicate: Callable[[dict[str, float]], bool], config: Config, timeout: float = 10
) -> dict[str, float]:
    """Scrape until `predicate` holds for the samples; return them."""
    deadline = time.monotonic() + timeout
    while not predicate(samples := await scrape(config)):
        assert time.monotonic() < deadline, f"condition not met within {timeout}s: {samples}"
        await asyncio.sleep(0.05)
    return samples


async def test_not_ready_until_the_watch_is_established(make_config: ConfigFactory, watch_dir: Path) -> None:
    config = make_config()
    watch_dir.rmdir()
    async with running_without_waiting(config):
        status, body = await probe(config, "/readyz")
        assert status == 503 and "watch not established" in body["reasons"]
        watch_dir.mkdir()
        await wait_until_async_status(config, "/readyz", 200)


@contextlib.asynccontextmanager
async def running_without_waiting(config: Config) -> AsyncIterator[None]:
    from coredump_shipper.daemon.service import Service
    from coredump_shipper.ops.metrics import Metrics

    service = Service(config, Metrics(process=False))
    await service.startup()
    try:
        yield
    finally:
        await service.shutdown()


async def test_dead_watcher_fails_liveness(make_config: ConfigFactory) -> None:
    config = make_config()
    async with running(config) as service:
        assert (await get(config, "/healthz"))[0] == 200
        service.watcher_task.cancel()
        await asyncio.sleep(0.05)
        status, body = await probe(config, "/healthz")
        assert status == 503 and body["watcher"] == "stopped"


async def test_wedged_worker_fails_liveness(make_config: ConfigFactory, watch_dir: Path) -> None:
    async with silent_server() as port:
        config = make_config(
            endpoint_url=f"http://127.0.0.1:{port}", read_timeout="60s", stall_timeout="0.5s"
        )
        async with running(config):
            write_file(watch_dir / "core.stuck", b"stuck")
            await wait_until_async_status(config, "/healthz", 503)
            _, body = await probe(config, "/healthz")
            assert body["workers"]["wedged"] != []


async def test_metrics_move_with_successes_failures_and_skips(
    make_config: ConfigFactory, watch_dir: Path, bucket: Bucket
) -> None:
    config = make_config()
    async with running(config) as service:
        write_file(watch_dir / "core.a", b"a" * 1000)
        write_file(watch_dir / "core.b", os.urandom(5000))
        os.mkfifo(watch_dir / "core.fifo")
        os.close(os.open(watch_dir / "core.fifo", os.O_RDWR | os.O_NONBLOCK))
        await wait_until(lambda: len(bucket.core_keys()) == 2)
        await wait_until(lambda: service.pipeline.pending == 0)
        m = await scrape(config)
    assert m['coredump_shipper_uploads_total{result="success"}'] == 2
    assert m['coredump_shipper_uploads_total{result="failure"}'] == 0
    assert m["coredump_shipper_core_bytes_total"] == 6000
    stored = sum(bucket.head(k)["ContentLength"] for k in bucket.core_keys())
    assert m["coredump_shipper_upload_bytes_total"] == stored
    assert m["coredump_shipper_cores_detected_total"] == 3
    assert m['coredump_shipper_skipped_files_total{reason="fifo"}'] == 1
    assert m["coredump_shipper_pending_files"] == 0 and m["coredump_shipper_pending_bytes"] == 0
    assert m["coredump_shipper_queue_depth"] == 0
    assert m["coredump_shipper_upload_duration_seconds_count"] == 2
    assert m["coredump_shipper_last_success_timestamp_seconds"] > 1.7e9
    # The running interpreter and package, whatever their patch versions: exactly one info sample.
    build = f'coredump_shipper_build_info{{python="{platform.python_version()}",version="{__version__}"}}'
    assert [k for k in m if k.startswith("coredump_shipper_build_info")] == [build]
    assert m[build] == 1


async def test_failures_count_and_pending_stays_until_shipped(
    make_config: ConfigFactory, watch_dir: Path
) -> None:
    config = make_config(endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout="0.2s")
    async with running(config):
        write_file(watch_dir / "core.waiting", b"w" * 777)
        for _ in range(200):
            m = await scrape(config)
            if m['coredump_shipper_uploads_total{result="failure"}'] >= 2:
                break
            await asyncio.sleep(0.05)
    assert m['coredump_shipper_uploads_total{result="failure"}'] >= 2
    assert m["coredump_shipper_upload_retries_total"] >= 2
    assert m["coredump_shipper_pending_files"] == 1 and m["coredump_shipper_pending_bytes"] == 777
    assert (watch_dir / "core.waiting").exists()


def test_check_command_and_json_logs_without_secrets(bucket: Bucket, tmp_path: Path) -> None:
    secret = "SECRETsecretSECRET0123456789abcdefSECRET"
    watch = tmp_path / "cores"
    watch.mkdir()
    port = free_port()
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL_S3": bucket.endpoint.url}
    args = ["--watch-dir", str(watch), "--bucket", bucket.name, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coredump_shipper",
            "run",
            *args,
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    check = [sys.executable, "-m", "coredump_shipper", "check", "--listen", f"127.0.0.1:{port}"]
    try:
        wait_until_sync(lambda: subprocess.run(check, capture_output=True, check=False).returncode == 0)
        write_file(watch / "core.json", b"json")
        wait_until_sync(lambda: not (watch / "core.json").exists())
        metrics_body = subprocess.run(
            ["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, check=False
        ).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert subprocess.run(check, capture_output=True, check=False).returncode == 1, "nothing listens now"
    lines = [json.loads(line) for line in err.decode().splitlines()]
    uploaded = [line for line in lines if line.get("event") == "uploaded"]
    assert len(uploaded) == 1
    assert uploaded[0]["file"] == str(watch / "core.json") and uploaded[0]["bytes"] == 4
    assert "has been uploaded to 's3://" in uploaded[0]["message"]
    assert secret.encode() not in err and secret.encode() not in metrics_body


def test_credentials_never_reach_logs_or_metrics_when_requests_fail(
    s3_server: S3Endpoint, tmp_path: Path
) -> None:
    secret = "LEAKCHECKsecretVALUE0123456789abcdef0000"
    key_id = "AKIALEAKCHECK0000KEY"
    watch = tmp_path / "cores"
    watch.mkdir()
    write_file(watch / "core.fails", b"never shipped")
    port = free_port()
    with ThreadedFaultProxy(s3_server.url) as proxy:
        proxy.faults.fail(403, code="SignatureDoesNotMatch")
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        args = [
            "--watch-dir",
            str(watch),
            "--bucket",
            "cores",
            "--endpoint-url",
            proxy.url,
            "--listen",
            f"127.0.0.1:{port}",
            "--retry-base-delay",
            "0.05s",
            "--retry-max-delay",
            "0.2s",
            "--log-level",
            "debug",
        ]
        proc = subprocess.Popen(
            [sys.executable, "-m", "coredump_shipper", "run", *args], env=env, stderr=subprocess.PIPE
        )
        try:
            wait_until_sync(lambda: proxy.stats().faults.get("http_403", 0) >= 10, timeout=30)
            body = subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, check=False
            ).stdout
            ready = subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{port}/readyz"], capture_output=True, check=False
            ).stdout
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
    assert b"SignatureDoesNotMatch" in err, "the failures were logged"
    for text in (err, body, ready):
        assert secret.encode() not in text and key_id.encode() not in text
        assert b"Signature=" not in text and b"X-Amz-Signature" not in text
    assert (watch / "core.fails").exists()
