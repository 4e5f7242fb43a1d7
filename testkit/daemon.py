"""The shipper's daemon under test: in-process as `run` wires it, or the arguments of a `run` process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from coredump_shipper.config.settings import Config
from coredump_shipper.daemon.service import Service
from coredump_shipper.ops.metrics import Metrics
from testkit.servers import free_port
from testkit.waiting import wait_until

# The type of tests/conftest.py's make_config fixture: keyword arguments override settings.
ConfigFactory = Callable[..., Config]


@contextlib.asynccontextmanager
async def running(config: Config, metrics: Metrics | None = None) -> AsyncIterator[Service]:
    """The whole service in-process, reachable over real HTTP on config.listen."""
    service = Service(config, metrics or Metrics(process=False))
    await service.startup()
    try:
        await wait_until(lambda: service.watcher.watching, timeout=10)
        yield service
    finally:
        await service.shutdown()


def daemon_args(watch_dir: Path, bucket: str, endpoint: str, *extra: str) -> list[str]:
    """`coredump-shipper run` arguments for a subprocess: fast retries, no self-test objects."""
    return [
        "run",
        "--watch-dir",
        str(watch_dir),
        "--bucket",
        bucket,
        "--endpoint-url",
        endpoint,
        "--node-name",
        "node-1",
        "--cluster-name",
        "test",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--retry-base-delay",
        "0.05",
        "--retry-max-delay",
        "0.5",
        "--self-test",
        "off",
        *extra,
    ]
