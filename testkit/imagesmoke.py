"""Runs the built image the way the Helm chart does and ships one core through it.

    python -m testkit.imagesmoke --image localhost/coredump-shipper:ci

The container gets a read-only root filesystem, uid/gid 1000, no capabilities, no privilege
escalation, the host's network namespace (to reach moto on 127.0.0.1) and a bind-mounted watch
directory. A core placed in the directory must arrive in the bucket byte for byte (after zstd
decompression), /healthz, /readyz, /metrics and `coredump-shipper check` must answer, and SIGTERM
must end the container cleanly.
Called by docker/ci-image.sh; not collected by pytest (it needs podman and a built image).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import zstandard

from testkit.servers import S3Endpoint, free_port
from testkit.servers.moto import run_moto
from testkit.waiting import wait_for

BUCKET = "cores"
UID = 1000


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True)


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback URL
            body: bytes = response.read()
            return body.decode() if response.status == 200 else None
    except OSError:
        return None


def fake_core(size: int) -> bytes:
    """An ELF-core-looking file: header magic, a compressible run and an incompressible one."""
    header = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + b"\x04\x00"  # e_type ET_CORE
    half = (size - len(header)) // 2
    return header + b"\x00" * half + os.urandom(size - len(header) - half)


@contextlib.contextmanager
def container(image: str, endpoint: S3Endpoint, watch: Path, listen: int) -> Iterator[str]:
    name = f"cds-smoke-{os.getpid()}"
    env = {
        "COREDUMP_SHIPPER_BUCKET": BUCKET,
        "COREDUMP_SHIPPER_ENDPOINT_URL": endpoint.url,
        "COREDUMP_SHIPPER_REGION": endpoint.region,
        "COREDUMP_SHIPPER_CLUSTER_NAME": "ci",
        "COREDUMP_SHIPPER_NODE_NAME": "node-1",
        "COREDUMP_SHIPPER_LISTEN": f"127.0.0.1:{listen}",
        "COREDUMP_SHIPPER_FILENAME_PATTERN": "core.%h.%e.sig%s.%p.%t",
        "COREDUMP_SHIPPER_LOG_FORMAT": "json",
        "AWS_ACCESS_KEY_ID": endpoint.access_key,
        "AWS_SECRET_ACCESS_KEY": endpoint.secret_key,
    }
    run = [
        "run", "--detach", "--name", name,
        "--read-only", "--user", f"{UID}:{UID}", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--network", "host",
        "--volume", f"{watch}:/var/coredump",
        *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
        image,
    ]  # fmt: skip
    podman(*run)
    try:
        yield name
    finally:
        logs = podman("logs", name, check=False)
        print(f"--- container logs ---\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        podman("rm", "--force", "--time", "0", name, check=False)


def check_ship(image: str, work: Path) -> None:
    with run_moto(work) as endpoint:
        s3 = endpoint.client()
        s3.create_bucket(Bucket=BUCKET)
        watch = work / "coredump"
        watch.mkdir()
        os.chown(watch, UID, UID)  # what the chart's node-setup init container does
        listen = free_port()
        base = f"http://127.0.0.1:{listen}"
        with container(image, endpoint, watch, listen) as name:
            wait_for("/healthz answers", lambda: http_get(f"{base}/healthz"), 60, 0.2)
            wait_for("/readyz answers", lambda: http_get(f"{base}/readyz"), 60, 0.2)
            # The exec-probe alternative, inside the read-only container with its own environment.
            check = podman("exec", name, "coredump-shipper", "check", check=False)
            assert check.returncode == 0, f"coredump-shipper check: {check.stdout}{check.stderr}"

            filename = "core.app-7d9f-x2.myprog.sig11.4242.1767323045"
            body = fake_core(3 * 1024 * 1024 + 17)
            # As the kernel does: one open/write/close of a 0600 file owned by the crashing uid
            # (the apps' uid 1000); the owner is set before the close so CLOSE_WRITE sees it.
            fd = os.open(watch / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchown(fd, UID, UID)
                os.write(fd, body)
            finally:
                os.close(fd)

            def shipped() -> str | None:
                listing = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
                keys = [str(item.get("Key", "")) for item in listing]
                # Not the fleet index entry, whose name carries the core's key too.
                return next(
                    (k for k in keys if filename in k and not k.startswith(".coredump-shipper/")), None
                )

            key = wait_for(f"{filename} in s3://{BUCKET}", shipped, 60, 0.2)
            data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if key.endswith(".zst"):
                data = zstandard.ZstdDecompressor().stream_reader(data).read()
            assert data == body, f"{key}: {len(data)} bytes differ from the {len(body)} written"
            assert key.startswith("ci/node-1."), key
            print(f"shipped {filename} -> s3://{BUCKET}/{key}")

            metrics = http_get(f"{base}/metrics") or ""
            # Every series carries the node (and namespace) as labels: the alerts match however scraped.
            success = re.compile(r'^coredump_shipper_uploads_total\{[^}]*result="success"[^}]*\} 1\.0$', re.M)
            assert success.search(metrics), metrics
            wait_for("core deleted after upload", lambda: not (watch / filename).exists(), 30, 0.2)

            podman("stop", "--time", "25", name)
            state = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
            assert state == "0", f"exit code after SIGTERM: {state}"


def check_cli(image: str) -> None:
    """Enough to prove the venv, the entry point and the read-only root work together."""
    result = podman(
        "run", "--rm", "--read-only", "--user", f"{UID}:{UID}", "--cap-drop", "ALL",
        "--network", "none", image, "--help",
    )  # fmt: skip
    assert "run" in result.stdout, result.stdout


def check_node_setup(image: str, work: Path) -> None:
    """Pipe mode's init container, as the chart runs it (root, read-only root filesystem), against
    stand-in sysctl files: the receiver it leaves on the "node" runs there without the image."""
    sysctl, lib, cores = work / "sysctl", work / "lib", work / "cores"
    # The three settings node setup changes, laid out as /proc/sys shows them.
    (sysctl / "kernel").mkdir(parents=True)
    (sysctl / "fs").mkdir()
    (sysctl / "kernel" / "core_pattern").write_text("core\n")
    (sysctl / "kernel" / "core_pipe_limit").write_text("0\n")
    (sysctl / "fs" / "suid_dumpable").write_text("0\n")
    podman(
        "run", "--rm", "--read-only", "--user", "0:0", "--network", "none",
        "--volume", f"{sysctl}:/fake-sysctl", "--volume", f"{work}:{work}",
        "--env", "SYSCTL_ROOT=/fake-sysctl", "--env", f"RECEIVER_DIR={lib}", "--env", f"CORE_DIR={cores}",
        "--env", f"DIR_UID={UID}", "--env", f"DIR_GID={UID}",
        "--entrypoint", "/bin/sh", image, "/usr/local/bin/coredump-node-setup", "install",
    )  # fmt: skip
    line = (sysctl / "kernel" / "core_pattern").read_text().strip()
    assert line.startswith(f"|{lib}/coredump-receive ") and line.endswith(f"{cores} %P %u %g %s %t %h %e"), (
        line
    )
    version = subprocess.run(
        [str(lib / "coredump-receive"), "--version"], check=False, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("coredump-receive "), version
    assert (lib / "saved-core_pattern").read_text() == "core\n"
    subprocess.run(
        ["sh", str(lib / "coredump-node-setup"), "restore"],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "SYSCTL_ROOT": str(sysctl), "RECEIVER_DIR": str(lib)},
    )
    restored = [
        (sysctl / name).read_text()
        for name in ("kernel/core_pattern", "kernel/core_pipe_limit", "fs/suid_dumpable")
    ]
    assert restored == ["core\n", "0\n", "0\n"], restored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--cli-only", action="store_true", help="skip the ship check")
    args = parser.parse_args()
    user = podman("image", "inspect", "--format", "{{.Config.User}}", args.image).stdout.strip()
    assert user == f"{UID}:{UID}", f"image user is {user!r}"
    check_cli(args.image)
    print("cli: ok")
    work = Path(tempfile.mkdtemp(prefix="cds-node-"))
    try:
        check_node_setup(args.image, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("node setup (pipe capture): ok")
    if not args.cli_only:
        work = Path(tempfile.mkdtemp(prefix="cds-smoke-"))
        try:
            check_ship(args.image, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("ship: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
