"""Shared fixtures: real S3 servers on loopback, fresh buckets, configs, a clean environment.

The tools these fixtures use (Bucket, running, wait_until, the servers) live in testkit/, shared with
bench/, e2e/ and `make demo`.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.config.settings import Config, load_config
from testkit.bucket import Bucket
from testkit.daemon import ConfigFactory
from testkit.receiver import repair_core_pattern
from testkit.servers import S3Endpoint, free_port
from testkit.servers import ceph as ceph_server
from testkit.servers import kube as kube_servers
from testkit.servers import rclone as rclone_server
from testkit.servers import swift as swift_server
from testkit.servers.moto import run_moto
from testkit.servers.tls import tls_front
from tests import skips

_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    # Under CI=true a skip fails unless tests/ci-skip-allowlist.txt names it (see tests/skips.py).
    if not config.pluginmanager.is_registered(skips):
        config.pluginmanager.register(skips, "ci-skips")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run killed while kernel.core_pattern piped into its temporary directory left it so: repair."""
    left = repair_core_pattern()
    if left is not None:
        print(f"kernel.core_pattern was {left!r}, left by a killed test run: restored to 'core'")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto's server mode: the default S3 server of the suite."""
    with run_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def swift_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """OpenStack Swift with s3api, started once for every test file that uses it."""
    reason = swift_server.missing()
    if reason:
        # make test installs Swift (tests/setup.sh): a skip under CI would hide a broken set-up.
        if os.environ.get("CI"):
            pytest.fail(f"Swift is required in CI: {reason}")
        pytest.skip(reason)
    with swift_server.run_swift(tmp_path_factory.mktemp("swift")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph_server.CephEndpoints]:
    """Ceph's RADOS Gateway (one mon, one OSD), HTTP and HTTPS, started once for the session."""
    reason = ceph_server.missing()
    if reason:
        # CI installs Ceph (tests/setup.sh): a skip there would hide a broken setup.
        if os.environ.get("CI"):
            pytest.fail(f"Ceph is required in CI: {reason}")
        pytest.skip(reason)
    with ceph_server.run_ceph(tmp_path_factory.mktemp("ceph")) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def ceph_s3(ceph: ceph_server.CephEndpoints) -> S3Endpoint:
    return ceph.http


@pytest.fixture(scope="session")
def ceph_tls(ceph: ceph_server.CephEndpoints) -> S3Endpoint:
    """radosgw's own HTTPS endpoint (beast), its certificate from a private CA."""
    return ceph.https


@pytest.fixture(scope="session")
def rclone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rclone_server.RcloneEndpoints]:
    """rclone serve s3 over a local directory, HTTP and HTTPS, started once for the session."""
    reason = rclone_server.missing()
    if reason:
        if os.environ.get("CI"):  # a dev dependency: missing means a broken install
            pytest.fail(reason)
        pytest.skip(reason)
    with rclone_server.run_rclone(tmp_path_factory.mktemp("rclone")) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def rclone_s3(rclone: rclone_server.RcloneEndpoints) -> S3Endpoint:
    return rclone.http


@pytest.fixture(scope="session")
def rclone_tls(rclone: rclone_server.RcloneEndpoints) -> S3Endpoint:
    return rclone.https


@pytest.fixture(scope="session")
def kube_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube_servers.KubeServer]:
    """etcd + kube-apiserver on 127.0.0.1 with real RBAC, started once for the session."""
    reason = kube_servers.missing()
    if reason:
        if os.environ.get("CI"):  # make test builds it (tests/setup.sh): a skip would hide a broken set-up
            pytest.fail(f"kube-apiserver is required in CI: {reason}")
        pytest.skip(reason)
    with kube_servers.run_kube(tmp_path_factory.mktemp("kube")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_tls(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """moto behind an HTTPS front whose certificate comes from a private CA."""
    with tls_front(s3_server, tmp_path_factory.mktemp("moto-tls")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def swift_tls(swift_s3: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """Swift behind an HTTPS front whose certificate comes from a private CA."""
    with tls_front(swift_s3, tmp_path_factory.mktemp("swift-tls")) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """`run` points the root logger at the stderr of its test; later tests must not write to it closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Endpoint) -> None:
    """Credentials for the test server only; nothing from the machine's own AWS set-up leaks in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "COREDUMP_SHIPPER_")) or name in {
            "LOCAL_PATH",
            "S3_BUCKET",
            "NODE_NAME",
            "CLUSTER_NAME",
            "POD_NAMESPACE",
            # The machine's own Kubernetes access must not turn pod look-ups on in tests.
            "KUBECONFIG",
            "KUBERNETES_SERVICE_HOST",
        }:
            monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        if not name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


@pytest.fixture
def bucket(s3_server: S3Endpoint) -> Bucket:
    return Bucket(s3_server, f"cores-{next(_counter)}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def watch_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cores"
    path.mkdir()
    return path


@pytest.fixture
def make_config(s3_server: S3Endpoint, bucket: Bucket, watch_dir: Path) -> ConfigFactory:
    """Config for the test server with fast retries; keyword arguments override settings."""

    def make(**overrides: Any) -> Config:
        values: dict[str, Any] = {
            "watch_dir": str(watch_dir),
            "bucket": bucket.name,
            "endpoint_url": s3_server.url,
            "node_name": "node-1",
            "cluster_name": "test",
            "listen": f"127.0.0.1:{free_port()}",
            "retry_base_delay": "0.05s",
            "retry_max_delay": "0.5s",
            "rescan_interval": "0",
            "shutdown_timeout": "1s",
            # The start-up probe writes objects of its own; tests that count objects want none.
            "self_test": "off",
        }
        values.update({name: str(value) for name, value in overrides.items()})
        return load_config(values, env=os.environ, command="run")

    return make
