"""Capture switched off under a running daemon: core_pattern and core_pipe_limit read back every minute.

The daemon test changes the machine's real kernel.core_pattern, core_pipe_limit and fs.suid_dumpable,
under the shared lock of
testkit/receiver.py, in a directory named with its TEMP_PREFIX (a killed run is repaired at the next
start), and always puts the old values back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import pipe_line
from coredump_shipper.daemon import service as service_module
from coredump_shipper.diagnostics import capturestate
from coredump_shipper.diagnostics.doctor import run_doctor
from coredump_shipper.ops.metrics import Metrics
from testkit.daemon import ConfigFactory, running
from testkit.receiver import CORE_PATTERN, PIPE_LIMIT, TEMP_PREFIX, core_pattern_lock
from testkit.waiting import wait_until

SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")
HELPER = "/var/lib/coredump-shipper/coredump-receive"
WATCH = "/var/coredump"
LINE = pipe_line(HELPER, WATCH, 32 << 30, DiskLimit(percent=15), 600)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A watch directory short enough for a core_pattern line (pytest's tmp_path is too long)."""
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sysctls(root: Path, pattern: str, pipe_limit: int = 16, suid: int = 0) -> Path:
    (root / "kernel").mkdir(parents=True)
    (root / "fs").mkdir()
    (root / "kernel/core_pattern").write_text(pattern + "\n")
    (root / "kernel/core_pipe_limit").write_text(f"{pipe_limit}\n")
    (root / "fs/suid_dumpable").write_text(f"{suid}\n")
    return root


CASES = [
    ("pipe", LINE, 16, None),
    ("pipe", LINE, 64, None),
    ("pipe", LINE, 4, "core_pipe_limit is 4, below 16"),
    ("pipe", LINE, 0, "does not wait for the receiver"),
    ("pipe", LINE.replace("-f 15%%", "-f 5%%"), 16, "not the line `coredump-shipper core-pattern`"),
    ("pipe", "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", 16, "not the line"),
    ("pipe", f"{WATCH}/core.%h.%e.sig%s.%p.%t", 16, "does not pipe cores"),
    ("pipe", "core", 16, "does not pipe cores"),
    ("file", f"{WATCH}/core.%h.%e.sig%s.%p.%t", 0, None),
    ("file", "/tmp/core.%e", 0, "writes cores into /tmp, not into /var/coredump"),
    ("file", "core", 0, "relative"),
    ("file", LINE, 16, "pipes cores but --capture-mode is file"),
    ("auto", LINE.replace("-f 15%%", "-f 5%%"), 16, None),
    ("auto", f"{WATCH}/core.%e", 0, None),
    ("auto", LINE.replace(WATCH, "/srv/cores"), 16, "stores cores in /srv/cores, not in /var/coredump"),
    ("auto", "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E", 16, "another program"),
    ("auto", LINE, 0, "core_pipe_limit is 0"),
    ("auto", "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", 16, "another program"),
]


@pytest.mark.parametrize(
    ("mode", "pattern", "pipe_limit", "suid", "problem"),
    [
        *((mode, pattern, limit, 2, problem) for mode, pattern, limit, problem in CASES),
        # Node setup's fs.suid_dumpable=2 reset to the kernel's 0: required in pipe mode only.
        ("pipe", LINE, 16, 0, "fs.suid_dumpable is 0, not the 2 node setup sets"),
        ("auto", LINE, 16, 0, None),
    ],
)
def test_what_counts_as_capture_configured(
    tmp_path: Path, mode: str, pattern: str, pipe_limit: int, suid: int, problem: str | None
) -> None:
    watch = (
        "/var/lib/systemd/coredump"
        if "systemd-coredump" in pattern and mode == "auto" and not problem
        else WATCH
    )
    expect = capturestate.expectation(
        mode, Path(watch), HELPER, 32 << 30, DiskLimit(percent=15), 600, pipe_limit=16
    )
    state = capturestate.check(expect, sysctls(tmp_path / "sys", pattern, pipe_limit, suid))
    assert state.configured == (problem is None)
    if problem is not None:
        assert state.problem is not None and problem in state.problem
    assert state.core_pattern == pattern and state.core_pipe_limit == pipe_limit


def test_watching_systemd_coredumps_own_directory_counts_its_pipe(tmp_path: Path) -> None:
    systemd = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h"
    expect = capturestate.expectation(
        "auto", Path("/var/lib/systemd/coredump"), HELPER, 0, DiskLimit(), 600, pipe_limit=16
    )
    assert capturestate.check(expect, sysctls(tmp_path / "sys", systemd)).configured


async def test_doctor_row_names_what_it_found_and_the_line(
    make_config: ConfigFactory, tmp_path: Path, short_dir: Path
) -> None:
    config = make_config(watch_dir=short_dir, capture_mode="pipe", receiver_path=HELPER, keep_free="15%")
    line = pipe_line(HELPER, str(config.watch_dir), config.max_core_size, config.keep_free, 600)
    proc = tmp_path / "proc"
    sysctls(proc / "sys", "|/usr/lib/systemd/systemd-coredump %P", suid=2)
    checks = {c.name: c for c in await run_doctor(config, write_probe=False, proc_root=proc)}
    row = checks["capture configured"]
    assert row.status == "FAIL" and "systemd-coredump" in row.detail and "fs.suid_dumpable=2" in row.detail
    assert row.fix is not None and line in row.fix
    (proc / "sys/kernel/core_pattern").write_text(line + "\n")
    checks = {c.name: c for c in await run_doctor(config, write_probe=False, proc_root=proc)}
    assert checks["capture configured"].status == "OK"


async def test_daemon_sees_core_pattern_switched_off_and_back_under_it(
    make_config: ConfigFactory,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real kernel: our pipe line, then another tool's pattern, then a pipe limit of 0, then fixed."""
    monkeypatch.setattr(service_module, "CAPTURE_CHECK_INTERVAL", 0.1)
    watch = short_dir
    config = make_config(watch_dir=watch, capture_mode="pipe", receiver_path=HELPER)
    line = pipe_line(HELPER, str(watch), config.max_core_size, config.keep_free, config.receive_timeout)
    metrics = Metrics(process=False)

    def configured() -> float:
        value: float = metrics.capture_configured._value.get()
        return value

    caplog.set_level(logging.INFO, "coredump_shipper.daemon.service")
    with core_pattern_lock():
        old_pattern = CORE_PATTERN.read_text().rstrip("\n")
        old_limit = PIPE_LIMIT.read_text().strip()
        old_suid = SUID_DUMPABLE.read_text().strip()
        try:
            CORE_PATTERN.write_text(line + "\n")
            PIPE_LIMIT.write_text("16\n")
            SUID_DUMPABLE.write_text("2\n")  # as node setup sets it with the line
            async with running(config, metrics):
                await wait_until(lambda: configured() == 1)
                # What a distribution's default or `sysctl --system` puts back.
                CORE_PATTERN.write_text("core\n")
                await wait_until(lambda: configured() == 0)
                CORE_PATTERN.write_text(line + "\n")
                PIPE_LIMIT.write_text("0\n")
                await wait_until(lambda: "core_pipe_limit is 0" in caplog.text)
                assert configured() == 0
                PIPE_LIMIT.write_text("16\n")
                await wait_until(lambda: configured() == 1)
        finally:
            CORE_PATTERN.write_text(old_pattern + "\n")
            PIPE_LIMIT.write_text(old_limit + "\n")
            SUID_DUMPABLE.write_text(old_suid + "\n")
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "coredump_shipper.daemon.service" and "capture" in r.getMessage()
    ]
    off = [line for line in said if "NOT configured" in line]
    assert "kernel.core_pattern='core'" in off[0] and "not pipe cores to coredump-receive" in off[0]
    assert "core_pipe_limit is 0" in off[1] and len(off) == 2, said
    # Said when it changes, not at every check: on, off, (on, if a check fell between the two
    # writes), off, on.
    assert len(said) in {4, 5}, said


def test_the_daemon_expects_the_line_node_setup_writes(make_config: ConfigFactory) -> None:
    """One source of the line: what `coredump-shipper core-pattern` prints for the chart's pipe-mode
    settings (a cap, scope all, the heartbeat) is what the daemon's check expects."""
    import os
    import subprocess
    import sys

    settings = {"max_use": "1GiB", "capture_scope": "all", "heartbeat": "/tmp/cds-heartbeat"}
    config = make_config(receiver_path=HELPER, **settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREDUMP_SHIPPER_")}
    env |= {f"COREDUMP_SHIPPER_{name.upper()}": value for name, value in settings.items()}
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "coredump_shipper",
            "core-pattern",
            "--helper",
            HELPER,
            "--watch-dir",
            WATCH,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert " -x 1G " in printed and " -s all " in printed and " -a 1h " in printed
    expect = capturestate.expectation(
        "pipe",
        Path(WATCH),
        config.receiver_path,
        config.max_core_size,
        config.keep_free,
        config.receive_timeout,
        config.pipe_limit,
        max_use=config.max_use,
        scope=config.capture_scope,
        alive_window="1h" if config.heartbeat else None,
    )
    assert expect.pipe_line == printed
