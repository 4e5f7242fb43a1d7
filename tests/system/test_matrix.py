"""The compatibility matrix: the whole daemon against every test store, as docs/compatibility.md shows it.

Stores: moto's server mode, OpenStack Swift's s3api, Ceph's RADOS Gateway and rclone's `serve s3`,
each over plain HTTP and over HTTPS with a private CA (`testkit/servers/tls.py`; radosgw and rclone
serve HTTPS themselves). The
service runs in-process with its defaults (checksum mode `when_required`, addressing `auto`), is
given only what an operator would set (endpoint, CA bundle, credentials and region from the
environment), and ships:

- a small core (one PutObject) and a multipart core (12 MiB of random bytes, 5 MiB parts), each
  with zstd and without compression; every object is read back and compared byte for byte, its
  metadata and manifest checked, and no multipart upload may be left behind;
- with `--checksum-mode when_supported`, to record where botocore's default breaks a store;
- over HTTPS without the CA bundle, which must fail with an SSL error and ship nothing.

`coredump-shipper ship` also runs as a subprocess over HTTPS, trusting the CA through AWS_CA_BUNDLE.
The call-level quirks behind these results are asserted in tests/s3/test_s3_servers.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.config.settings import Config, load_config
from coredump_shipper.ops.metrics import Metrics
from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import running
from testkit.servers import S3Endpoint, free_port
from testkit.tlsleaks import collect_tls_leaks, ignores_tls_leaks
from testkit.waiting import wait_until

MIB = 1 << 20
PART_SIZE = 5 * MIB
CORE_NAME = "core.app.sig11.1234.1700000000"
ENDPOINTS = [
    *("moto-http", "moto-https", "swift-http", "swift-https"),
    *("ceph-http", "ceph-https", "rclone-http", "rclone-https"),
]
HTTPS_ENDPOINTS = ["moto-https", "swift-https", "ceph-https", "rclone-https"]
_REPO_ROOT = Path(__file__).resolve().parents[2]
# Stores that refuse botocore's `aws-chunked` bodies (sent over HTTPS with when_supported): the error.
REFUSES_AWS_CHUNKED = {
    "swift": "NotImplemented (HTTP 501)",
    "ceph": "MissingContentLength (HTTP 411)",
    "rclone": "MissingContentLength (HTTP 411)",
}


# --- Servers, one of each for the session ------------------------------------------------------


def _server(request: pytest.FixtureRequest) -> S3Endpoint:
    # The session fixtures start only the servers the selected tests use.
    fixture = {
        "moto-http": "s3_server",
        "moto-https": "moto_tls",
        "swift-http": "swift_s3",
        "swift-https": "swift_tls",
        "ceph-http": "ceph_s3",
        "ceph-https": "ceph_tls",
        "rclone-http": "rclone_s3",
        "rclone-https": "rclone_tls",
    }[request.param]
    endpoint: S3Endpoint = request.getfixturevalue(fixture)
    return endpoint


@pytest.fixture(params=ENDPOINTS)
def endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    return _server(request)


@pytest.fixture(params=HTTPS_ENDPOINTS)
def https_endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    return _server(request)


# --- Per test: credentials, a bucket, a config -------------------------------------------------


def store_of(endpoint: S3Endpoint) -> str:
    return endpoint.name.removesuffix("-https")


def is_https(endpoint: S3Endpoint) -> bool:
    return endpoint.url.startswith("https://")


def credentials(monkeypatch: pytest.MonkeyPatch, endpoint: S3Endpoint) -> None:
    """What an operator sets for the store: keys and region in the environment, nothing else."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", endpoint.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", endpoint.secret_key)
    monkeypatch.setenv("AWS_REGION", endpoint.region)
    monkeypatch.setenv("AWS_DEFAULT_REGION", endpoint.region)


def new_bucket(monkeypatch: pytest.MonkeyPatch, endpoint: S3Endpoint) -> Iterator[Bucket]:
    # Requested after conftest's autouse _aws_env, so these keys replace moto's.
    credentials(monkeypatch, endpoint)
    bucket = Bucket(endpoint, f"matrix-{uuid.uuid4().hex[:12]}")
    yield bucket
    bucket.client.close()


@pytest.fixture
def store_bucket(_aws_env: None, monkeypatch: pytest.MonkeyPatch, endpoint: S3Endpoint) -> Iterator[Bucket]:
    yield from new_bucket(monkeypatch, endpoint)


@pytest.fixture
def https_bucket(
    _aws_env: None, monkeypatch: pytest.MonkeyPatch, https_endpoint: S3Endpoint
) -> Iterator[Bucket]:
    yield from new_bucket(monkeypatch, https_endpoint)


def matrix_config(bucket: Bucket, watch_dir: Path, **overrides: str) -> Config:
    """The shipper's defaults plus what the store needs: its endpoint and, for HTTPS, the CA."""
    values: dict[str, str] = {
        "watch_dir": str(watch_dir),
        "bucket": bucket.name,
        "endpoint_url": bucket.endpoint.url,
        "ca_bundle": bucket.endpoint.ca_bundle or "",
        "node_name": "node-1",
        "cluster_name": "matrix",
        "listen": f"127.0.0.1:{free_port()}",
        "part_size": "5MiB",
        "retry_base_delay": "0.05s",
        "retry_max_delay": "0.5s",
        "rescan_interval": "0",
        "shutdown_timeout": "1s",
    }
    values.update(overrides)
    return load_config(values, env=os.environ, command="run")


async def self_test_outcome(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Wait for the start-up self-test to finish; its failure lines (none when it passed)."""

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == "self_test"]

    # Waited for before the service stops: a self-test cut short leaves its probe behind.
    await wait_until(lambda: records() != [], timeout=30)
    return [r.getMessage() for r in records() if r.levelno >= logging.ERROR]


def core_data(size: str) -> bytes:
    if size == "small":
        # Half random, half zeros, like a core: zstd has something to do.
        return os.urandom(32 * 1024) + bytes(32 * 1024)
    # Random bytes do not compress: several parts with and without zstd.
    return os.urandom(12 * MIB + 4321)


def key_for(compression: str, name: str = CORE_NAME) -> str:
    return f"matrix/node-1.{name}" + (".zst" if compression == "zstd" else "")


def assert_shipped(bucket: Bucket, key: str, data: bytes, compression: str, size: str) -> None:
    """The object, its metadata and its manifest, all as the shipper promises."""
    assert bucket.core_keys() == [key]
    assert bucket.content(key) == data
    head = bucket.head(key)
    stored = bucket.get(key)
    assert head["ContentLength"] == len(stored)
    content_type = "application/zstd" if compression == "zstd" else "application/octet-stream"
    assert head["ContentType"] == content_type
    # Metadata names are case-insensitive; rclone answers them capitalised (Go's header form).
    meta = {name.lower(): value for name, value in head["Metadata"].items()}
    assert (meta["size"], meta["node"], meta["cluster"]) == (str(len(data)), "node-1", "matrix")
    assert meta["compression"] == compression
    assert meta["exe"] == "app"
    manifest = json.loads(bucket.get(key + ".manifest.json"))
    assert manifest["key"] == key
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["stored-bytes"] == len(stored)
    # Each store's ETags are MD5s (and md5-of-md5s-N): every object is verified.
    assert manifest["verified"] == "etag-md5", manifest.get("not-verified-reason")
    if size == "small":
        assert meta["sha256"] == manifest["sha256"]
        assert "-" not in head["ETag"], "expected a single PutObject"
    elif store_of(bucket.endpoint) == "rclone":
        # rclone answers the completion with md5-of-md5s-N (which the shipper checked) but HEAD
        # with the whole object's MD5.
        assert head["ETag"].strip('"') == hashlib.md5(stored, usedforsecurity=False).hexdigest()
    else:
        parts = math.ceil(len(stored) / PART_SIZE)
        assert parts >= 3
        assert head["ETag"].endswith(f'-{parts}"'), head["ETag"]
    assert bucket.incomplete_uploads() == []


# --- The matrix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.parametrize("size", ["small", "multipart"])
async def test_daemon_ships(
    store_bucket: Bucket,
    watch_dir: Path,
    size: str,
    compression: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coredump_shipper")
    config = matrix_config(store_bucket, watch_dir, compression=compression)
    # The default every store must work with.
    assert (config.checksum_mode, config.addressing_style) == ("when_required", "auto")
    data = core_data(size)
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        write_file(watch_dir / CORE_NAME, data)
        await wait_until(lambda: not (watch_dir / CORE_NAME).exists(), timeout=30)
        await wait_until(lambda: service.pipeline.pending == 0)
        assert await self_test_outcome(caplog) == []
        ready, why = service.readiness()
        assert ready, why
    assert metrics.uploads.labels("success")._value.get() == 1
    if store_of(store_bucket.endpoint) != "rclone":
        # rclone answers UploadPart with 500 now and then while another object of the same
        # directory (the self-test's probes) is written or deleted ("Dir.Remove not empty", "file
        # does not exist" in its log): the shipper tries again and the core ships intact all the same.
        assert metrics.uploads.labels("failure")._value.get() == 0
    assert_shipped(store_bucket, key_for(compression), data, compression, size)


@pytest.mark.parametrize("size", ["small", "multipart"])
async def test_when_supported_checksums(
    store_bucket: Bucket,
    watch_dir: Path,
    size: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """botocore's default checksum mode: an `aws-chunked` body over HTTPS, which Swift and Ceph refuse.

    The refused core stays on disk, the error is logged, and no multipart upload is left behind.
    """
    caplog.set_level(logging.INFO, logger="coredump_shipper")
    endpoint = store_bucket.endpoint
    refusal = REFUSES_AWS_CHUNKED.get(store_of(endpoint)) if is_https(endpoint) else None
    refused = refusal is not None
    config = matrix_config(store_bucket, watch_dir, checksum_mode="when_supported")
    data = core_data(size)
    path = watch_dir / CORE_NAME
    metrics = Metrics(process=False)
    async with running(config, metrics):
        write_file(path, data)
        if refused:
            await wait_until(lambda: metrics.uploads.labels("failure")._value.get() >= 1)
        else:
            await wait_until(lambda: not path.exists(), timeout=30)
        self_test_failures = await self_test_outcome(caplog)
    if not refused:
        assert self_test_failures == []
        assert_shipped(store_bucket, key_for("zstd"), data, "zstd", size)
        return
    # The self-test names the setting to change.
    assert any("--checksum-mode" in m for m in self_test_failures), self_test_failures
    operation = "PutObject" if size == "small" else "UploadPart"
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"{operation} failed: {refusal}" in m for m in failures), failures
    assert path.read_bytes() == data
    assert metrics.uploads.labels("success")._value.get() == 0
    assert store_bucket.keys() == []
    assert store_bucket.incomplete_uploads() == []


@ignores_tls_leaks
async def test_https_without_the_ca_fails_clearly(
    https_bucket: Bucket, watch_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = matrix_config(https_bucket, watch_dir, ca_bundle="")
    assert config.ca_bundle is None and "AWS_CA_BUNDLE" not in os.environ
    data = core_data("small")
    path = watch_dir / CORE_NAME
    metrics = Metrics(process=False)
    async with running(config, metrics) as service:
        write_file(path, data)
        await wait_until(lambda: metrics.uploads.labels("failure")._value.get() >= 1)
        ready, why = service.readiness()
        reachable = service.s3_reachable()
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    ssl_errors = [m for m in failures if "PutObject failed: SSLError" in m]
    assert ssl_errors and all("CERTIFICATE_VERIFY_FAILED" in m for m in ssl_errors), failures
    # Reported as S3 being unreachable (its own alert), not as a pod that is not ready.
    assert not reachable
    assert ready and why["s3"] == "failing", why
    assert "SSLError" in why["s3_error"]
    assert metrics.uploads.labels("success")._value.get() == 0
    assert path.read_bytes() == data
    assert https_bucket.keys() == []
    collect_tls_leaks()


def test_ship_command_trusts_aws_ca_bundle(https_bucket: Bucket, tmp_path: Path) -> None:
    """`coredump-shipper ship` in its own process, configured by the environment alone."""
    endpoint = https_bucket.endpoint
    core = tmp_path / CORE_NAME
    data = os.urandom(6 * MIB) + bytes(MIB)
    write_file(core, data)
    env = {**os.environ, **endpoint.env()}
    # The CA comes from AWS_CA_BUNDLE and the endpoint from AWS_ENDPOINT_URL_S3 (botocore's own).
    assert env["AWS_CA_BUNDLE"] == endpoint.ca_bundle and env["AWS_ENDPOINT_URL_S3"] == endpoint.url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "coredump_shipper", "ship", str(core)]
    flags = ["--bucket", https_bucket.name, "--node-name", "node-1", "--cluster-name", "matrix"]
    done = subprocess.run(
        [*command, *flags, "--part-size", "5MiB", "--ship-attempts", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "has been uploaded to" in done.stderr
    key = key_for("zstd")
    assert https_bucket.core_keys() == [key]
    assert https_bucket.content(key) == data
    manifest: dict[str, Any] = json.loads(https_bucket.get(key + ".manifest.json"))
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert https_bucket.incomplete_uploads() == []
    # `ship` never deletes what it shipped.
    assert core.read_bytes() == data


# A %E-style name (the executable's path) in a non-Latin script: 96 UTF-8 bytes that the shipper
# escapes as %XX, which makes its `filename` metadata value ~330 characters long.
NON_ASCII_NAME = "core.!opt!" + "監視エージェント!" * 4 + ".sig11.1234.1700000000"


async def test_non_ascii_file_name(
    store_bucket: Bucket, watch_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Swift refuses a metadata value over 256 bytes (with a 500 that never clears): values are capped.
    caplog.set_level(logging.INFO, logger="coredump_shipper")
    config = matrix_config(store_bucket, watch_dir)
    path = watch_dir / NON_ASCII_NAME
    metrics = Metrics(process=False)
    async with running(config, metrics):
        write_file(path, b"odd name")
        outcomes = ("success", "failure")
        await wait_until(lambda: sum(metrics.uploads.labels(o)._value.get() for o in outcomes) >= 1)
        assert await self_test_outcome(caplog) == []
    assert metrics.uploads.labels("success")._value.get() == 1
    (key,) = store_bucket.core_keys()
    assert store_bucket.content(key) == b"odd name"
    assert not path.exists()
