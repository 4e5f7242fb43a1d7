"""OpenStack Swift with its s3api middleware: a single-node, one-replica store under one directory.

Debian's packages (installed by `make test-deps`, tests/setup.sh) provide the daemons; everything they write
(configs, rings, devices, sqlite databases, logs) lives under the caller's `work_dir`, and every
process listens on a free 127.0.0.1 port. Only `/etc/swift/swift.conf` (the hash prefix/suffix,
which Swift reads from that fixed path) is created when it is missing.

By hand: `python -m testkit.servers swift [--https]` (or `python -m testkit.servers.swift`) prints
the endpoint and runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from testkit.servers import S3Endpoint

SWIFT_CONF = Path("/etc/swift/swift.conf")
DAEMONS = ("account", "container", "object", "proxy")
# tempauth's user "tester" in account "test"; s3api takes "account:user" as the access key.
ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"

# Logs from each daemon go to stderr (`-v`); Swift would also send them to syslog, so point its
# syslog handler at a path that does not exist: it then falls back to UDP on loopback, which keeps
# the machine's journal clean.
_COMMON = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
# 0 runs the WSGI server in this process: one pid per daemon, nothing forked to clean up.
workers = 0
user = {user}
swift_dir = {etc}
devices = {devices}
mount_check = false
disable_fallocate = true
log_address = {work}/no-syslog
log_level = INFO
"""

_BACKEND = """\
[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

# Pipeline order follows Swift's s3api docs: s3api before the auth middleware, slo after it
# (s3api completes a multipart upload by writing an SLO manifest; without slo it silently turns
# multipart uploads off).
_PROXY = """\
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api \
tempauth copy slo dlo versioned_writes proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
# tempauth accounts exist only once something writes to them.
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = {region}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {secret} .admin

[filter:cache]
use = egg:swift#memcache
# Without memcached every request re-reads account and container data from the backends.
memcache_servers = 127.0.0.1:{memcached}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

# Listed because the proxy inserts it anyway (and logs that it changed the pipeline).
[filter:versioned_writes]
use = egg:swift#versioned_writes
"""


_Procs = dict[str, "subprocess.Popen[bytes]"]


class SwiftError(RuntimeError):
    """Swift is not installed, or did not come up."""


def _distinct_ports(count: int) -> list[int]:
    """Free loopback ports, all different: each stays bound until every one is chosen."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@dataclass(frozen=True)
class _Layout:
    work: Path
    etc: Path
    devices: Path
    logs: Path
    ports: dict[str, int]

    @classmethod
    def create(cls, work_dir: Path) -> _Layout:
        work = work_dir.resolve()
        layout = cls(
            work=work,
            etc=work / "etc",
            devices=work / "devices",
            logs=work / "logs",
            ports=dict(zip((*DAEMONS, "memcached"), _distinct_ports(len(DAEMONS) + 1), strict=True)),
        )
        for path in (layout.etc, layout.devices / "d1", layout.logs):
            path.mkdir(parents=True, exist_ok=True)
        return layout

    def conf(self, daemon: str) -> Path:
        return self.etc / f"{daemon}-server.conf"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def missing() -> str | None:
    """Why Swift cannot run here (a skip reason), or None when it can."""
    needed = [f"swift-{daemon}-server" for daemon in DAEMONS]
    needed += ["swift-ring-builder", "memcached"]
    absent = [name for name in needed if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed (run, as root: make test-deps)"
    if not SWIFT_CONF.exists():
        parent = SWIFT_CONF.parent if SWIFT_CONF.parent.exists() else SWIFT_CONF.parent.parent
        if not os.access(parent, os.W_OK):
            return f"{SWIFT_CONF} is missing and this user cannot create it"
    return None


def _ensure_swift_conf() -> None:
    """Swift reads its hash prefix/suffix only from this fixed path; never touch an existing one."""
    if SWIFT_CONF.exists():
        return
    SWIFT_CONF.parent.mkdir(parents=True, exist_ok=True)
    SWIFT_CONF.write_text(
        "[swift-hash]\n"
        f"swift_hash_path_prefix = {secrets.token_hex(8)}\n"
        f"swift_hash_path_suffix = {secrets.token_hex(8)}\n"
        "\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
    )


def _check_xattrs(devices: Path) -> None:
    """The object server keeps metadata in user xattrs: fail plainly where there are none."""
    probe = devices / "xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"1")
    except OSError as exc:
        raise SwiftError(f"{devices} does not support user xattrs, which Swift needs: {exc}") from exc
    finally:
        probe.unlink()


def _write_configs(layout: _Layout, region: str) -> None:
    user = getpass.getuser()
    for daemon in DAEMONS:
        common = _COMMON.format(
            port=layout.ports[daemon],
            user=user,
            etc=layout.etc,
            devices=layout.devices,
            work=layout.work,
        )
        if daemon == "proxy":
            body = _PROXY.format(region=region, secret=SECRET_KEY, memcached=layout.ports["memcached"])
        else:
            body = _BACKEND.format(name=daemon)
        layout.conf(daemon).write_text(f"{common}\n{body}")


# swift-ring-builder's create/add/rebalance for each ring, in one interpreter: nine CLI runs would
# cost ~5 CPU-seconds of imports on a 2-core machine, more than the daemons' own start-up.
_RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for arg in sys.argv[2:]:
    name, port = arg.split("=")
    # Part power 6 keeps the build fast; one device needs no more partitions.
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": "d1", "weight": 1})
    builder.rebalance()
    builder.save(f"{etc}/{name}.builder")
    builder.get_ring().save(f"{etc}/{name}.ring.gz")
"""


def _build_rings(layout: _Layout, env: dict[str, str]) -> None:
    """One ring per backend: one device (a plain directory), one replica."""
    rings = [f"{ring}={layout.ports[ring]}" for ring in ("account", "container", "object")]
    with layout.log("rings").open("wb") as log:
        # swift-ring-builder's own interpreter, which has the swift package.
        python = _shebang_python("swift-ring-builder")
        code = subprocess.run(
            [python, "-c", _RING_SCRIPT, str(layout.etc), *rings],
            stdout=log,
            stderr=log,
            env=env,
            timeout=60,
            check=False,
        ).returncode
    if code != 0:
        raise SwiftError(f"building the rings failed:\n{_tail(layout.log('rings'))}")


def _shebang_python(script: str) -> str:
    path = shutil.which(script)
    assert path is not None  # missing() checked it
    with open(path, "rb") as file:
        first = file.readline().decode().strip()
    return first[2:].split()[0] if first.startswith("#!") else "python3"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text[-lines:])


def _logs_report(layout: _Layout) -> str:
    parts = []
    for log in sorted(layout.logs.glob("*.log")):
        parts.append(f"--- {log} ---\n{_tail(log)}")
    return "\n".join(parts)


def _daemon_env() -> dict[str, str]:
    """Swift runs on Debian's python3: keep this process's virtualenv out of its imports."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    # Everything is addressed by IP: skipping eventlet's DNS resolver saves ~0.2 s of imports per
    # daemon, which is most of what start-up waits for on two cores.
    env["EVENTLET_NO_GREENDNS"] = "yes"
    return env


def _s3_ready(client: Any) -> str | None:
    """A real S3 round trip through s3api, tempauth, memcached and the backends, or why not."""
    try:
        # ListBuckets needs the account server; HEAD of a missing bucket the container server.
        client.list_buckets()
        client.head_bucket(Bucket="readiness-probe")
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            return str(exc)
    except BotoCoreError as exc:
        return str(exc)
    return None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_ready(endpoint: S3Endpoint, procs: _Procs, layout: _Layout, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why = "nothing listens yet"
    client = endpoint.client(attempts=1, connect_timeout=1, read_timeout=5)
    try:
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SwiftError(
                        f"{name} exited with {proc.returncode} while starting\n{_logs_report(layout)}"
                    )
            # A cheap check first: botocore's error path costs CPU the starting daemons need.
            if _port_open(layout.ports["proxy"]):
                why = _s3_ready(client) or ""
                if not why:
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise SwiftError(f"Swift's s3api did not answer within {timeout}s (last: {why})\n{_logs_report(layout)}")


def _stop(procs: _Procs) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _command(layout: _Layout, name: str) -> list[str]:
    if name == "memcached":
        # memcached refuses to run as root unless told which user to be; -U 0: no UDP listener.
        port = str(layout.ports["memcached"])
        user = getpass.getuser()
        return ["memcached", "-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "64", "-u", user]
    # -v adds a stderr log handler that survives the daemon closing its stdio.
    return [f"swift-{name}-server", str(layout.conf(name)), "-v"]


def _spawn(layout: _Layout, names: tuple[str, ...], env: dict[str, str], into: _Procs) -> None:
    for name in names:
        with layout.log(name).open("ab") as log:
            into[name] = subprocess.Popen(
                _command(layout, name), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )


@contextlib.contextmanager
def run_swift(work_dir: Path, *, region: str = "us-east-1", timeout: float = 60.0) -> Iterator[S3Endpoint]:
    """Start memcached and Swift's account, container, object and proxy servers; stop them on exit.

    Yields once S3 calls succeed (about 4 s on an idle 2-core machine, 10+ s on a loaded one).
    Raises SwiftError (with every daemon's log tail) when Swift is missing, a daemon dies, or
    s3api does not answer within `timeout` seconds.
    """
    reason = missing()
    if reason:
        raise SwiftError(reason)
    _ensure_swift_conf()
    layout = _Layout.create(work_dir)
    _check_xattrs(layout.devices)
    _write_configs(layout, region)
    endpoint = S3Endpoint(
        name="swift",
        url=f"http://127.0.0.1:{layout.ports['proxy']}",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=region,
    )
    env = _daemon_env()
    procs: _Procs = {}
    try:
        _build_rings(layout, env)
        _spawn(layout, ("memcached", *DAEMONS), env, procs)
        _wait_ready(endpoint, procs, layout, timeout)
        yield endpoint
    finally:
        _stop(procs)


if __name__ == "__main__":
    from testkit.servers.__main__ import main

    main(["swift", *sys.argv[1:]])
