"""`make demo`: the shipper's main job on an embedded default, end to end, on this machine.

Starts a local S3-compatible server (moto) on 127.0.0.1, runs `coredump-shipper run` on a temporary
directory, crashes a child process in that directory so the kernel writes a real core there, and
prints the object the shipper stored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from tests.cores import core_pattern, gcore, kernel_core
from tests.servers import free_port
from tests.servers.moto import run_moto

BUCKET = "coredumps"


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if callable(check) and check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo failed: {what} did not happen within {timeout:.0f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback URL we built
        return bool(answer.status == 200)


def is_core(listed: dict[str, Any]) -> bool:
    """Not a manifest, and not the start-up self-test's probe (written and deleted at once)."""
    key = str(listed["Key"])
    return not key.endswith(".manifest.json") and "coredump-shipper-probe" not in key


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="coredump-demo-") as scratch, run_moto(Path(scratch)) as s3:
        root = Path(scratch)
        watch = root / "cores"
        watch.mkdir(mode=0o700)
        env = {**os.environ, **s3.env()}
        client = boto3.client(
            "s3",
            endpoint_url=s3.url,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            region_name=s3.region,
        )
        client.create_bucket(Bucket=BUCKET)
        say(f"local S3-compatible server (moto) at {s3.url}, bucket {BUCKET!r}")

        port = free_port()
        command = [
            sys.executable,
            "-m",
            "coredump_shipper",
            "run",
            "--watch-dir",
            str(watch),
            "--bucket",
            BUCKET,
            "--cluster-name",
            "demo",
            "--listen",
            f"127.0.0.1:{port}",
        ]
        say("starting: coredump-shipper " + " ".join(command[3:]))
        shipper = subprocess.Popen(command, env=env)
        try:
            wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), "readiness")
            say(f"shipper ready: http://127.0.0.1:{port}/readyz answers 200")

            say(f"crashing a child process in {watch} (kernel.core_pattern is {core_pattern()!r})")
            core = kernel_core(watch, touch_mib=16)
            if core is None:
                say(
                    "the kernel wrote no core into the crashing process's cwd on this machine;"
                    " falling back to gcore on a live child"
                )
                core = gcore(watch)
                if core is None:
                    raise SystemExit("demo failed: no kernel core and no gcore available")
            say(f"the kernel wrote {core.name} ({core.stat().st_size:,} bytes)")

            def shipped() -> bool:
                return not core.exists() and any(
                    map(is_core, client.list_objects_v2(Bucket=BUCKET).get("Contents", []))
                )

            wait_for(shipped, "the upload")
            for obj in filter(is_core, client.list_objects_v2(Bucket=BUCKET)["Contents"]):
                head = client.head_object(Bucket=BUCKET, Key=obj["Key"])
                say(f"stored s3://{BUCKET}/{obj['Key']}")
                print(f"    stored bytes: {obj['Size']:,} (core: {int(head['Metadata']['size']):,} bytes)")
                print(f"    content-type: {head['ContentType']}")
                for name, value in sorted(head["Metadata"].items()):
                    print(f"    x-amz-meta-{name}: {value}")
                manifest = client.get_object(Bucket=BUCKET, Key=obj["Key"] + ".manifest.json")
                sha = json.loads(manifest["Body"].read())["sha256"]
                print(f"    sha256 (manifest): {sha}")
            say("the local core was deleted after upload (--after-upload delete)")
        finally:
            shipper.send_signal(signal.SIGTERM)
            code = shipper.wait(timeout=30)
        say(f"shipper stopped on SIGTERM with exit status {code}")
        return code


if __name__ == "__main__":
    raise SystemExit(main())
