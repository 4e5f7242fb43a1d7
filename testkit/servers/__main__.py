"""Start one test S3 server by hand and print how to reach it.

    python -m testkit.servers swift            # OpenStack Swift s3api over HTTP
    python -m testkit.servers moto --https     # moto behind a private-CA TLS front
    python -m testkit.servers.swift --https    # the same as `swift --https`

Runs until Ctrl-C or SIGTERM, then stops everything it started. Data lives in a temporary
directory unless `--dir` names one (kept afterwards, so the logs can be read).
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from testkit.servers import S3Endpoint
from testkit.servers.moto import run_moto
from testkit.servers.swift import run_swift
from testkit.servers.tls import tls_front


@contextlib.contextmanager
def _server(kind: str, https: bool, work_dir: Path) -> Iterator[S3Endpoint]:
    with contextlib.ExitStack() as stack:
        if kind == "swift":
            endpoint = stack.enter_context(run_swift(work_dir / "swift"))
        else:
            endpoint = stack.enter_context(run_moto(work_dir))
        if https:
            endpoint = stack.enter_context(tls_front(endpoint, work_dir))
        yield endpoint


@contextlib.contextmanager
def _work_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="s3-server-") as tmp:
        yield Path(tmp)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m testkit.servers", description=__doc__)
    parser.add_argument("kind", choices=["swift", "moto"])
    parser.add_argument("--https", action="store_true", help="put a private-CA TLS front on it")
    parser.add_argument("--dir", type=Path, help="keep data and logs here")
    args = parser.parse_args(argv)
    with _work_dir(args.dir) as work_dir, _server(args.kind, args.https, work_dir) as endpoint:
        print(f"{endpoint.name} listening at {endpoint.url} (logs under {work_dir})")
        print("# for a shell:")
        for key, value in endpoint.env().items():
            print(f"export {key}={shlex.quote(value)}")
        print("export AWS_REQUEST_CHECKSUM_CALCULATION=when_required")
        print("export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required")
        print("# Ctrl-C stops it.", flush=True)
        _wait_for_signal()


if __name__ == "__main__":
    main()
