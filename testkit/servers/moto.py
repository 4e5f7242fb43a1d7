"""moto's server mode as a subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from testkit.servers import S3Endpoint, free_port, stop, wait_for_port


@contextlib.contextmanager
def run_moto(log_dir: Path, port: int | None = None) -> Iterator[S3Endpoint]:
    """Start `moto_server` on 127.0.0.1 (on `port`, else a free one) and stop it on exit."""
    port = port or free_port()
    log = (log_dir / f"moto-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield S3Endpoint(
            name="moto",
            url=f"http://127.0.0.1:{port}",
            access_key="testing-access-key",
            secret_key="testing-secret-key",
        )
    finally:
        stop(proc)
        log.close()
