"""Start the S3 endpoints the contestants upload to, and read the null sink's counters."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from testkit.servers import S3Endpoint, free_port, stop, wait_for_port
from testkit.servers.tls import behind_tls, make_certificates


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of /_stats: everything the sink has counted since it started."""

    bytes_received: int
    cpu_s: float
    objects: list[dict[str, Any]]
    completed: int  # objects completed in all (`objects` may list only the latest)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SinkStats:
        return cls(
            bytes_received=int(body["bytes_received"]),
            cpu_s=float(body["cpu_user_s"]) + float(body["cpu_sys_s"]),
            objects=list(body["objects"]),
            completed=int(body["completed"]),
        )


@dataclass(frozen=True)
class NullSink:
    """A running bench.nullsink subprocess."""

    endpoint: S3Endpoint

    def _get(self, path: str, timeout: float) -> SinkStats:
        url = self.endpoint.url + path
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return SinkStats.parse(json.load(response))

    def stats(self) -> SinkStats:
        return self._get("/_stats", 10.0)

    def completed_since(self, seen: int) -> list[dict[str, Any]]:
        """The objects completed after the first `seen` (a short answer during a storm)."""
        return self._get(f"/_stats?since={seen}", 10.0).objects

    def count(self) -> int:
        """How many objects have completed so far."""
        return self._get(f"/_stats?since={1 << 62}", 10.0).completed

    def wait_for(self, count: int, timeout: float) -> SinkStats:
        """Block until `count` objects have completed in total, or `timeout` seconds passed."""
        return self._get(f"/_stats/wait?count={count}&timeout={timeout}", timeout + 10.0)


@dataclass(frozen=True)
class Target:
    """Where contestants upload (`endpoint`: maybe HTTPS, maybe a limited link) and the sink
    behind it that counts what arrived (`sink`, always reached directly)."""

    name: str
    endpoint: S3Endpoint
    sink: NullSink


@contextlib.contextmanager
def run_nullsink(log_dir: Path, rate: float | None = None) -> Iterator[NullSink]:
    """Start `python -m bench.nullsink` on a free loopback port and stop it on exit.

    `rate` (bytes per second) makes it a limited link shared by all connections.
    """
    port = free_port()
    command = [sys.executable, "-m", "bench.nullsink", "--port", str(port)]
    if rate:
        command += ["--rate", str(rate)]
    with (log_dir / f"nullsink-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port)
            yield NullSink(
                S3Endpoint(
                    name="nullsink" if not rate else f"nullsink-{rate * 8 / 1e6:g}mbit",
                    url=f"http://127.0.0.1:{port}",
                    access_key="bench-access-key",
                    secret_key="bench-secret-key",  # noqa: S106 - the sink accepts any key
                )
            )
        finally:
            stop(proc)


@contextlib.contextmanager
def https_target(name: str, sink: NullSink, work_dir: Path) -> Iterator[Target]:
    """`sink` behind haproxy terminating TLS with a private CA: contestants must verify the
    certificate with the CA file, as users of a private store do."""
    with haproxy_front(sink.endpoint, work_dir) as endpoint:
        yield Target(name, endpoint, sink)


# A terminator made for it, not the contestants' bottleneck: haproxy in C with OpenSSL moves several
# GB/s per core, where the tests' asyncio front (testkit.servers.tls) capped `aws s3 cp` at ~200 MB/s.
# One thread: the contestants and the sink need the other CPU time on a 2-core machine.
HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 512
    tune.ssl.default-dh-param 2048
defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend sink
backend sink
    server sink {backend}
"""


@contextlib.contextmanager
def haproxy_front(backend: S3Endpoint, work_dir: Path) -> Iterator[S3Endpoint]:
    """Serve the plain-HTTP `backend` over HTTPS on a free loopback port through haproxy."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        raise SystemExit("bench: haproxy is missing (Debian: apt-get install haproxy; make bench does it)")
    port = free_port()
    directory = work_dir / f"haproxy-{port}"
    certs = make_certificates(directory)
    pem = directory / "server.pem"  # haproxy wants the certificate and its key in one file
    pem.write_bytes(certs.cert.read_bytes() + certs.key.read_bytes())
    pem.chmod(0o600)
    config = directory / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(port=port, pem=pem, backend=urlsplit(backend.url).netloc))
    with (directory / "haproxy.log").open("wb") as log:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port)
            yield behind_tls(backend, port, certs.ca)
        finally:
            stop(proc)


def plain_target(name: str, sink: NullSink) -> Target:
    return Target(name, sink.endpoint, sink)
