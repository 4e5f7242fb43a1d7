"""Ceph's RADOS Gateway (radosgw, the S3 of Rook clusters): one monitor, one OSD, one gateway.

Debian's packages (`tests/setup.sh`) provide the daemons; everything they write
(ceph.conf, keyrings, the monitor's store, the OSD's bluestore on a sparse file, admin sockets, pid
files and logs) lives under the caller's `work_dir`, every daemon listens on 127.0.0.1, and pools
have one replica. radosgw serves S3 with its beast frontend over plain HTTP and over HTTPS with a
certificate from the private CA of testkit/servers/tls.py. No manager daemon: S3 does not need one.

By hand: `python -m testkit.servers.ceph` prints the endpoints and runs until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from testkit.servers import S3Endpoint
from testkit.servers.swift import _distinct_ports, _tail
from testkit.servers.tls import make_certificates

ACCESS_KEY = "cephtestaccesskey"
SECRET_KEY = "cephtestsecretkeycephtestsecretkey"
NEEDED = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "ceph-authtool", "monmaptool")
# The OSD's bluestore device: a sparse file, so it costs what is written, not its size.
BLOCK_SIZE = 8 << 30

_CONF = """\
[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
mon initial members = a
public network = 127.0.0.0/8
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {work}/admin.keyring
run dir = {work}/run
admin socket = {work}/run/$cluster-$name.asok
pid file = {work}/run/$name.pid
log file = {work}/logs/$name.log
log to stderr = false
err to stderr = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
mon data avail crit = 0
mon data avail warn = 0
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 134217728

[mon.a]
mon data = {work}/mon

[osd.0]
osd data = {work}/osd
osd objectstore = bluestore
bluestore block create = true
bluestore block path = {work}/osd-block
bluestore block size = {block_size}
keyring = {work}/osd/keyring

[client.rgw.a]
keyring = {work}/rgw.keyring
rgw data = {work}/rgw
rgw frontends = beast endpoint=127.0.0.1:{http} ssl_endpoint=127.0.0.1:{https} \
ssl_certificate={cert} ssl_private_key={key}
rgw dns name = 127.0.0.1
"""


class CephError(RuntimeError):
    """Ceph is not installed, or did not come up."""


@dataclass(frozen=True)
class CephEndpoints:
    http: S3Endpoint
    https: S3Endpoint
    # Seconds from the first command to S3 answering.
    startup_seconds: float


def missing() -> str | None:
    """Why Ceph cannot run here (a skip reason), or None when it can."""
    absent = [name for name in NEEDED if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not installed: run tests/setup.sh"
    return None


@dataclass
class _Cluster:
    work: Path
    conf: Path
    procs: dict[str, subprocess.Popen[bytes]]

    def run(self, *args: str, timeout: float = 120, stdin: bytes | None = None) -> str:
        """A ceph tool with this cluster's ceph.conf; its output, or CephError with it."""
        command = [args[0], "-c", str(self.conf), *args[1:]]
        result = subprocess.run(
            command, input=stdin, capture_output=True, timeout=timeout, check=False, env=_env()
        )
        if result.returncode != 0:
            raise CephError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
            )
        return result.stdout.decode()

    def tool(self, *args: str, timeout: float = 120) -> str:
        """A tool that takes no ceph.conf (ceph-authtool, monmaptool)."""
        result = subprocess.run(list(args), capture_output=True, timeout=timeout, check=False, env=_env())
        if result.returncode != 0:
            raise CephError(f"{' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def spawn(self, name: str, *args: str) -> None:
        log = (self.work / "logs" / f"{name}.stderr").open("ab")
        with log:
            self.procs[name] = subprocess.Popen(
                [args[0], "-c", str(self.conf), "-f", *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=_env(),
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CephError(f"{name} exited with {proc.returncode}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {log} ---\n{_tail(log)}" for log in sorted((self.work / "logs").iterdir()))


def _env() -> dict[str, str]:
    # The daemons and tools are Debian's: keep this process's virtualenv out of their Python tools.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _create_monitor(cluster: _Cluster, fsid: str, mon_v2: int, mon_v1: int) -> None:
    work = cluster.work
    mon_keyring, admin_keyring = str(work / "mon.keyring"), str(work / "admin.keyring")
    cluster.tool(
        "ceph-authtool", "--create-keyring", mon_keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"
    )
    cluster.tool(
        "ceph-authtool", "--create-keyring", admin_keyring, "--gen-key", "-n", "client.admin",
        "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
    )  # fmt: skip
    cluster.tool("ceph-authtool", mon_keyring, "--import-keyring", admin_keyring)
    monmap = str(work / "monmap")
    address = f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]"
    cluster.tool("monmaptool", "--create", "--addv", "a", address, "--fsid", fsid, monmap)
    cluster.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", mon_keyring)
    cluster.spawn("mon.a", "ceph-mon", "-i", "a")


def _create_osd(cluster: _Cluster) -> None:
    osd_uuid = str(uuid.uuid4())
    osd_id = cluster.run("ceph", "osd", "new", osd_uuid).strip()
    if osd_id != "0":
        raise CephError(f"expected OSD id 0, got {osd_id!r}")
    keyring = str(cluster.work / "osd" / "keyring")
    cluster.tool("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "osd.0")
    cluster.run("ceph", "auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd", "-i", keyring)
    cluster.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=300)
    cluster.spawn("osd.0", "ceph-osd", "-i", "0")


def _create_gateway(cluster: _Cluster) -> None:
    keyring = str(cluster.work / "rgw.keyring")
    cluster.run(
        "ceph", "auth", "get-or-create", "client.rgw.a", "mon", "allow rw", "osd", "allow rwx", "-o", keyring
    )
    cluster.spawn("rgw.a", "radosgw", "-n", "client.rgw.a")


def _create_user(cluster: _Cluster, deadline: float) -> None:
    """The S3 user; radosgw-admin needs the gateway's pools, which the gateway creates at start."""
    while True:
        try:
            cluster.run(
                "radosgw-admin", "user", "create", "--uid", "coredump-test", "--display-name", "test",
                "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, timeout=60,
            )  # fmt: skip
            return
        except (CephError, subprocess.TimeoutExpired) as error:
            cluster.check_alive()
            if time.monotonic() > deadline:
                raise CephError(
                    f"radosgw-admin user create kept failing: {error}\n{cluster.logs()}"
                ) from error
            time.sleep(2)


def _wait_s3(cluster: _Cluster, endpoint: S3Endpoint, deadline: float) -> None:
    client = endpoint.client(attempts=1, connect_timeout=1, read_timeout=10)
    why = "not tried"
    try:
        while time.monotonic() < deadline:
            cluster.check_alive()
            try:
                client.list_buckets()
                return
            except (ClientError, BotoCoreError) as error:
                why = str(error)
            time.sleep(1)
    finally:
        client.close()
    raise CephError(f"radosgw did not answer S3 in time (last: {why})\n{cluster.logs()}")


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    # The gateway first, the monitor last: each needs the ones after it to stop cleanly.
    for name in ("rgw.a", "osd.0", "mon.a"):
        proc = procs.get(name)
        if proc is None or proc.poll() is not None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_ceph(work_dir: Path, *, timeout: float = 600.0) -> Iterator[CephEndpoints]:
    """Start a monitor, an OSD and radosgw; stop them on exit. Raises CephError (with the daemons'
    log tails) when Ceph is missing, a daemon dies, or S3 does not answer within `timeout` seconds."""
    reason = missing()
    if reason:
        raise CephError(reason)
    started = time.monotonic()
    deadline = started + timeout
    work = work_dir.resolve()
    for sub in ("mon", "osd", "run", "logs", "rgw"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    certs = make_certificates(work / "tls")
    mon_v2, mon_v1, http, https = _distinct_ports(4)
    conf = work / "ceph.conf"
    conf.write_text(
        _CONF.format(
            fsid=uuid.uuid4(),
            work=work,
            mon_v2=mon_v2,
            mon_v1=mon_v1,
            block_size=BLOCK_SIZE,
            http=http,
            https=https,
            cert=certs.cert,
            key=certs.key,
        )
    )
    fsid = conf.read_text().split("fsid = ", 1)[1].split("\n", 1)[0]
    cluster = _Cluster(work, conf, {})
    try:
        _create_monitor(cluster, fsid, mon_v2, mon_v1)
        _create_osd(cluster)
        _create_gateway(cluster)
        _create_user(cluster, deadline)
        endpoints = CephEndpoints(
            http=S3Endpoint("ceph", f"http://127.0.0.1:{http}", ACCESS_KEY, SECRET_KEY),
            https=S3Endpoint(
                "ceph-https", f"https://127.0.0.1:{https}", ACCESS_KEY, SECRET_KEY, ca_bundle=str(certs.ca)
            ),
            startup_seconds=0.0,
        )
        _wait_s3(cluster, endpoints.http, deadline)
        yield CephEndpoints(endpoints.http, endpoints.https, time.monotonic() - started)
    finally:
        _stop(cluster.procs)


def main() -> None:
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ceph-")))
        endpoints = stack.enter_context(run_ceph(work))
        print(
            json.dumps(
                {
                    "http": endpoints.http.url,
                    "https": endpoints.https.url,
                    "ca_bundle": endpoints.https.ca_bundle,
                    "access_key": ACCESS_KEY,
                    "secret_key": SECRET_KEY,
                    "startup_seconds": round(endpoints.startup_seconds, 1),
                }
            ),
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
