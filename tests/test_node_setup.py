"""docker/node-setup.sh, the pipe-mode node setup, run for real against stand-in sysctl files.

The real init container writes /proc/sys/kernel; here SYSCTL_DIR points at plain files so the
script's logic (save once, atomic install, the line, restore) runs without touching the machine.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.corepattern import pipe_line
from coredump_shipper.disklimit import DiskLimit
from tests.receiver import ROOT, build_receiver

SCRIPT = ROOT / "docker" / "node-setup.sh"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cds-ns-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(tmp_path: Path, action: str, **env: str) -> subprocess.CompletedProcess[str]:
    values = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SYSCTL_DIR": str(tmp_path / "sysctl"),
        "RECEIVER_DIR": str(tmp_path / "lib"),
        "RECEIVER_SOURCE": str(build_receiver()),
        "CORE_DIR": str(tmp_path / "cores"),
        "DIR_UID": "65534",
        "DIR_GID": "65534",
        "COREDUMP_SHIPPER_KEEP_FREE": "10%",
        **env,
    }
    return subprocess.run(
        ["sh", str(SCRIPT), action], env=values, capture_output=True, text=True, check=False
    )


def test_install_saves_installs_and_restore_puts_back(short_tmp: Path) -> None:
    tmp_path = short_tmp  # the paths end up in a core_pattern line of at most 127 bytes
    sysctl = tmp_path / "sysctl"
    sysctl.mkdir()
    (sysctl / "core_pattern").write_text("|/usr/share/apport/apport %p %s\n")
    (sysctl / "core_pipe_limit").write_text("0\n")
    done = run(tmp_path, "install")
    assert done.returncode == 0, done.stderr
    lib = tmp_path / "lib"
    helper = lib / "coredump-receive"
    line = pipe_line(
        str(helper),
        str(tmp_path / "cores"),
        32 << 30,
        DiskLimit(percent=10),
        600,
        max_use=DiskLimit(percent=10),
    )
    assert (sysctl / "core_pattern").read_text() == line + "\n"
    assert (sysctl / "core_pipe_limit").read_text() == "16\n"
    assert (lib / "saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (lib / "saved-core_pipe_limit").read_text() == "0\n"
    st = helper.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    assert helper.read_bytes() == build_receiver().read_bytes()
    cores = (tmp_path / "cores").stat()
    assert (cores.st_uid, cores.st_gid, stat.S_IMODE(cores.st_mode)) == (65534, 65534, 0o700)
    assert sorted(os.listdir(lib)) == [
        "coredump-node-setup",
        "coredump-receive",
        "saved-core_pattern",
        "saved-core_pipe_limit",
    ]

    # A second install (a rollout) must not save its own line over the node's original values.
    again = run(tmp_path, "install", PIPE_LIMIT="8")
    assert again.returncode == 0, again.stderr
    assert (lib / "saved-core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (sysctl / "core_pipe_limit").read_text() == "8\n"

    # The copy left on the node restores without the image.
    restore = subprocess.run(
        ["sh", str(lib / "coredump-node-setup"), "restore"],
        env={"PATH": "/usr/bin:/bin", "SYSCTL_DIR": str(sysctl), "RECEIVER_DIR": str(lib)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert restore.returncode == 0, restore.stderr
    assert (sysctl / "core_pattern").read_text() == "|/usr/share/apport/apport %p %s\n"
    assert (sysctl / "core_pipe_limit").read_text() == "0\n"


def test_restore_without_saved_values_leaves_a_working_pattern(tmp_path: Path) -> None:
    sysctl = tmp_path / "sysctl"
    sysctl.mkdir()
    (sysctl / "core_pattern").write_text("|/gone/coredump-receive /var/coredump %P\n")
    (tmp_path / "lib").mkdir()
    done = run(tmp_path, "restore")
    assert done.returncode == 0, done.stderr
    assert (sysctl / "core_pattern").read_text() == "core\n"


def test_install_refuses_a_line_the_kernel_would_cut(tmp_path: Path) -> None:
    sysctl = tmp_path / "sysctl"
    sysctl.mkdir()
    (sysctl / "core_pattern").write_text("core\n")
    (sysctl / "core_pipe_limit").write_text("0\n")
    done = run(tmp_path, "install", CORE_DIR=str(tmp_path / ("c" * 120)))
    assert done.returncode == 2 and "127" in done.stderr
    assert (sysctl / "core_pattern").read_text() == "core\n", "the node keeps its working pattern"
    assert not (tmp_path / "lib").exists(), "nothing was changed on the node"
