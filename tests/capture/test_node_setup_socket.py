"""docker/node-setup.sh with CAPTURE_MODE socket and auto, against stand-in sysctl files (see
tests/capture/test_node_setup.py): the pipe line is installed as the fallback, left for the server, and the
mode follows kernel.core_modes."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.capture.test_node_setup import node as stand_in_sysctl
from tests.capture.test_node_setup import run

SOCKET_MODES = "file\npipe\nsocket\n"
PIPE_MODES = "file\npipe\n"


@pytest.fixture
def node() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cds-ns-", dir="/tmp"))  # short: the line has 127 bytes
    stand_in_sysctl(path, "|/usr/share/apport/apport %p %s")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _install(node: Path, mode: str, core_modes: str | None) -> tuple[int, str, str]:
    if core_modes is not None:
        (node / "sysctl/kernel/core_modes").write_text(core_modes)
    done = run(node, "install", CAPTURE_MODE=mode, SOCKET_PATH=str(node / "run/coredump.sock"))
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(("mode", "core_modes"), [("socket", SOCKET_MODES), ("auto", SOCKET_MODES)])
def test_socket_mode_installs_the_pipe_fallback_and_leaves_it_for_the_server(
    node: Path, mode: str, core_modes: str
) -> None:
    status, out, err = _install(node, mode, core_modes)
    assert status == 0, err
    line = (node / "sysctl/kernel/core_pattern").read_text()
    assert line.startswith(f"|{node}/lib/coredump-receive ")
    assert (node / "lib/pipe-core_pattern").read_text() == line
    assert (node / "lib/saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (node / "run").stat().st_mode & 0o777 == 0o755
    assert "capture mode: socket" in out

    # The server has claimed the pattern; a re-install (the next rollout) must not save it.
    (node / "sysctl/kernel/core_pattern").write_text(f"@@{node}/run/coredump.sock\n")
    status, _, err = _install(node, mode, core_modes)
    assert status == 0, err
    assert (node / "lib/saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"


@pytest.mark.parametrize("core_modes", [PIPE_MODES, None])
def test_auto_is_pipe_on_a_kernel_without_the_socket(node: Path, core_modes: str | None) -> None:
    status, out, err = _install(node, "auto", core_modes)
    assert status == 0, err
    assert "capture mode: pipe" in out
    assert not (node / "run").exists()
    # Left for the server, which idles on this kernel (-when-supported) and needs the line to start.
    assert (node / "lib/pipe-core_pattern").read_text() == (node / "sysctl/kernel/core_pattern").read_text()


@pytest.mark.parametrize("core_modes", [PIPE_MODES, None])
def test_socket_mode_on_an_older_kernel_stops_before_changing_anything(
    node: Path, core_modes: str | None
) -> None:
    status, _, err = _install(node, "socket", core_modes)
    assert status == 2 and "Linux 6.17" in err and err.count("\n") == 1, err
    assert (node / "sysctl/kernel/core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert not (node / "lib").exists()


def test_an_unknown_mode_is_refused(node: Path) -> None:
    status, _, err = _install(node, "sockets", SOCKET_MODES)
    assert status == 2 and "CAPTURE_MODE" in err
