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
import urllib.request
from pathlib import Path
from typing import Any

from coredump_shipper.bucket.fleetindex import is_index_key
from testkit.cores import core_pattern, gcore, kernel_core
from testkit.servers import free_port
from testkit.servers.moto import run_moto
from testkit.waiting import wait_for

BUCKET = "coredumps"


def say(text: str) -> None:
    print(f"==> {text}", flush=True)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback URL we built
            return bool(answer.status == 200)
    except OSError:  # not listening yet
        return False


def is_core(listed: dict[str, Any]) -> bool:
    """Not a manifest, not a fleet index entry, and not the start-up self-test's probe (written and
    deleted at once)."""
    key = str(listed["Key"])
    return (
        not key.endswith(".manifest.json") and not is_index_key(key) and "coredump-shipper-probe" not in key
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="coredump-demo-") as scratch, run_moto(Path(scratch)) as s3:
        root = Path(scratch)
        watch = root / "cores"
        watch.mkdir(mode=0o700)
        env = {**os.environ, **s3.env()}
        client = s3.client()
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
            wait_for("readiness", lambda: http_ok(f"http://127.0.0.1:{port}/readyz"), 30, 0.1)
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

            wait_for("the upload", shipped, 30, 0.1)
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
    try:
        raise SystemExit(main())
    except TimeoutError as error:
        raise SystemExit(f"demo failed: {error}") from None
