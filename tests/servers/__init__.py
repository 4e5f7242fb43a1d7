"""Real S3-compatible servers on loopback for tests, the demo and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class S3Endpoint:
    """How to reach one running S3-compatible server."""

    name: str
    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    ca_bundle: str | None = None

    def env(self) -> dict[str, str]:
        """Environment for a shipper (or aws CLI) subprocess talking to this server."""
        env = {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }
        if self.ca_bundle:
            env["AWS_CA_BUNDLE"] = self.ca_bundle
        return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 10 s; always reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def probe_client(endpoint: S3Endpoint, read_timeout: float) -> Any:
    """A one-attempt botocore client for start-up probes of a test store (no checksums a store may
    reject). Any: the sync botocore client has no stubs here."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint.url,
        region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        config=Config(
            connect_timeout=1,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
