"""doctor with core_pattern `@@PATH`: a real server listening (or not) on a real socket, the kernel's
core_modes and the server's counters (docs/socket-capture.md)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from coredump_shipper import __version__
from coredump_shipper.diagnostics.doctor import core_pattern_checks
from testkit.daemon import ConfigFactory
from testkit.receiver import build_receiver
from testkit.socketcapture import Server
from tests.diagnostics.test_doctor import by_name, fake_proc

SOCKET_MODES = "file\npipe\nsocket\n"


def _proc(tmp_path: Path, pattern: str, core_modes: str | None = SOCKET_MODES) -> Path:
    proc = fake_proc(tmp_path / "proc", pattern)
    if core_modes is not None:
        (proc / "sys/kernel/core_modes").write_text(core_modes)
    (proc / "net").symlink_to("/proc/self/net")  # the real listening sockets of this namespace
    return proc


def test_a_listening_server_is_ok_with_its_counters(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    os.chown(config.watch_dir, os.geteuid(), os.getegid())
    build_receiver()
    sock = tmp_path / "run" / "coredump.sock"
    sock.parent.mkdir()
    with Server(sock, config.watch_dir, stats_name="stats.json"):
        checks = by_name(core_pattern_checks(config, _proc(tmp_path, f"@@{sock}")))
    assert {name: check.status for name, check in checks.items()} == {
        "kernel.core_pattern": "OK",
        "coredump socket support": "OK",
        "coredump socket": "OK",
        "socket server": "OK",
        "watch dir owner": "OK",
    }, checks
    assert checks["socket server"].detail.startswith(f"version {__version__}; stored 0")


def test_a_socket_nobody_listens_on_fails(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    sock = tmp_path / "coredump.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(sock))  # what a killed server leaves: the file, no listener
    left.close()
    checks = by_name(core_pattern_checks(config, _proc(tmp_path, f"@@{sock}")))
    assert checks["coredump socket"].status == "FAIL"
    assert "nothing listens" in checks["coredump socket"].detail
    assert "socket server" not in checks


@pytest.mark.parametrize(
    ("core_modes", "status"), [(SOCKET_MODES, "OK"), ("file\npipe\n", "FAIL"), (None, "FAIL")]
)
def test_kernel_support_follows_core_modes(
    make_config: ConfigFactory, tmp_path: Path, core_modes: str | None, status: str
) -> None:
    checks = by_name(core_pattern_checks(make_config(), _proc(tmp_path, "@@/run/x/c.sock", core_modes)))
    assert checks["coredump socket support"].status == status
    assert checks["coredump socket"].status == "WARN"  # not visible here: says how to mount it


def test_the_plain_socket_protocol_is_a_warning(make_config: ConfigFactory, tmp_path: Path) -> None:
    checks = by_name(core_pattern_checks(make_config(), _proc(tmp_path, "@/run/x/c.sock")))
    assert checks["kernel.core_pattern"].status == "WARN" and "@@" in (
        checks["kernel.core_pattern"].fix or ""
    )
