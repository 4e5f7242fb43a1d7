"""Runs the built image the way the Helm chart does and ships one core through it.

    python -m testkit.imagesmoke --image localhost/coredump-shipper:ci
    python -m testkit.imagesmoke --image localhost/coredump-shipper:ci-multiarch --arch arm64

The container gets a read-only root filesystem, uid/gid 1000, no capabilities, no privilege
escalation, the host's network namespace (to reach moto on 127.0.0.1) and a bind-mounted watch
directory. A core placed in the directory must arrive in the bucket byte for byte (after zstd
decompression), /healthz, /readyz, /metrics and `coredump-shipper check` must answer, and SIGTERM
must end the container cleanly.

--arch names the architecture the image must be (its config, `uname -m` inside it, the receiver's
ELF header): a foreign one runs under the host's binfmt_misc emulator, with longer waits. A manifest
list is run through its entry for --arch.
Called by docker/ci-image.sh; not collected by pytest (it needs podman and a built image).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
# Per image architecture: what `uname -m` prints in it and its ELF e_machine.
MACHINES = {"amd64": ("x86_64", 62), "arm64": ("aarch64", 183)}
HOST_ARCH = {machine: arch for arch, (machine, _) in MACHINES.items()}[os.uname().machine]
# Under user-mode emulation the smoke test's containers took ~9x the CPU (18 s against 2 s on
# amd64) and ~5x the wall time: waits scale with it.
EMULATED_SLOWDOWN = 8


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


def check_ship(image: str, work: Path, slowdown: float) -> None:
    with run_moto(work) as endpoint:
        s3 = endpoint.client()
        s3.create_bucket(Bucket=BUCKET)
        watch = work / "coredump"
        watch.mkdir()
        os.chown(watch, UID, UID)  # what the chart's node-setup init container does
        listen = free_port()
        base = f"http://127.0.0.1:{listen}"
        with container(image, endpoint, watch, listen) as name:
            wait_for("/healthz answers", lambda: http_get(f"{base}/healthz"), 60 * slowdown, 0.2)
            wait_for("/readyz answers", lambda: http_get(f"{base}/readyz"), 60 * slowdown, 0.2)
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

            key = wait_for(f"{filename} in s3://{BUCKET}", shipped, 60 * slowdown, 0.2)
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
            wait_for("core deleted after upload", lambda: not (watch / filename).exists(), 30 * slowdown, 0.2)

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


def check_arch(image: str, arch: str) -> None:
    """The image says it is `arch` and its programs run as that machine."""
    declared = podman("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", image).stdout.strip()
    assert declared == f"linux/{arch}", f"image platform is {declared!r}"
    result = podman(
        "run", "--rm", "--read-only", "--user", f"{UID}:{UID}", "--network", "none",
        "--entrypoint", "uname", image, "-m",
    )  # fmt: skip
    machine = result.stdout.strip()
    assert machine == MACHINES[arch][0], f"uname -m in the container: {machine!r}"


def elf_machine(path: Path) -> int:
    """e_machine of a little-endian ELF file (bytes 18-19 of the header)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")


def resolve(image: str, arch: str) -> str:
    """The image to run: a manifest list's entry for `arch` (by the local image that has its
    digest), or `image` itself when it is not a list."""
    if podman("manifest", "exists", image, check=False).returncode != 0:
        return image
    listing = json.loads(podman("manifest", "inspect", image).stdout)
    digests = [m["digest"] for m in listing["manifests"] if m["platform"]["architecture"] == arch]
    assert len(digests) == 1, f"{image}: {len(digests)} entries for {arch}"
    ids = podman("images", "--noheading", "--no-trunc", "--format", "{{.ID}} {{.Digest}}").stdout.split("\n")
    found = {line.split()[0] for line in ids if line.split()[1:] == [digests[0]]}
    assert len(found) == 1, f"{image}: {arch} entry {digests[0]} is {len(found)} local images"
    return found.pop()


def check_node_setup(image: str, work: Path, arch: str) -> None:
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
    # The receiver is built for the image's architecture; a foreign one runs below through binfmt.
    assert elf_machine(lib / "coredump-receive") == MACHINES[arch][1], f"receiver is not {arch}"
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
    parser.add_argument(
        "--arch", choices=sorted(MACHINES), default=HOST_ARCH, help="the image's architecture"
    )
    args = parser.parse_args()
    image = resolve(args.image, args.arch)
    slowdown = 1 if args.arch == HOST_ARCH else EMULATED_SLOWDOWN
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert user == f"{UID}:{UID}", f"image user is {user!r}"
    check_arch(image, args.arch)
    print(f"architecture: {args.arch}" + ("" if slowdown == 1 else " (emulated)"))
    check_cli(image)
    print("cli: ok")
    work = Path(tempfile.mkdtemp(prefix="cds-node-"))
    try:
        check_node_setup(image, work, args.arch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("node setup (pipe capture): ok")
    if not args.cli_only:
        work = Path(tempfile.mkdtemp(prefix="cds-smoke-"))
        try:
            check_ship(image, work, slowdown)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("ship: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
