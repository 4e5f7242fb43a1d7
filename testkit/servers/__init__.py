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

    def client(self, attempts: int = 5, connect_timeout: float = 60, read_timeout: float = 60) -> Any:
        """A plain boto3 client for this server: the one way tests, the demo and the tools build one.

        It trusts the server's private CA, sends no CRC32 checksums (which some stores reject) and
        tries a failed call `attempts` times in all (1 for a start-up probe). Any: boto3 has no stubs
        here.
        """
        import boto3  # not every user of the endpoints needs boto3's import time
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=self.ca_bundle,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


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
