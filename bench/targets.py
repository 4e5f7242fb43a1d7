"""Start the S3 endpoints the contestants upload to, and read the null sink's counters."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import S3Endpoint, free_port, stop, wait_for_port


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of /_stats: everything the sink has counted since it started."""

    bytes_received: int
    cpu_s: float
    objects: list[dict[str, Any]]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> SinkStats:
        return cls(
            bytes_received=int(body["bytes_received"]),
            cpu_s=float(body["cpu_user_s"]) + float(body["cpu_sys_s"]),
            objects=list(body["objects"]),
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

    def wait_for(self, count: int, timeout: float) -> SinkStats:
        """Block until `count` objects have completed in total, or `timeout` seconds passed."""
        return self._get(f"/_stats/wait?count={count}&timeout={timeout}", timeout + 10.0)


@contextlib.contextmanager
def run_nullsink(log_dir: Path) -> Iterator[NullSink]:
    """Start `python -m bench.nullsink` on a free loopback port and stop it on exit."""
    port = free_port()
    with (log_dir / f"nullsink-{port}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.nullsink", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port)
            yield NullSink(
                S3Endpoint(
                    name="nullsink",
                    url=f"http://127.0.0.1:{port}",
                    access_key="bench-access-key",
                    secret_key="bench-secret-key",  # noqa: S106 - the sink accepts any key
                )
            )
        finally:
            stop(proc)
