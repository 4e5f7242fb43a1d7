"""The daemon's capture check (coredump_shipper/diagnostics/capturestate.py) with socket capture:
`@@PATH`, or the pipe line the server hands back while it is down, against stand-in sysctl files."""

from __future__ import annotations

from pathlib import Path

import pytest

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.diagnostics import capturestate
from tests.diagnostics.test_capture_check import HELPER, LINE, WATCH, sysctls

SOCKET = "@@/run/coredump-shipper/coredump.sock"


@pytest.mark.parametrize(
    ("mode", "pattern", "problem"),
    [
        ("socket", SOCKET, None),
        ("socket", LINE, None),  # the fallback while the server restarts
        ("auto", SOCKET, None),
        ("socket", "@/run/coredump-shipper/coredump.sock", "plain socket protocol"),
        ("socket", f"{WATCH}/core.%h.%e.sig%s.%p.%t", "neither names the socket server"),
        ("pipe", SOCKET, "but --capture-mode is pipe"),
        ("file", SOCKET, "but --capture-mode is file"),
    ],
)
def test_socket_patterns(tmp_path: Path, mode: str, pattern: str, problem: str | None) -> None:
    expect = capturestate.expectation(mode, Path(WATCH), HELPER, 32 << 30, DiskLimit(percent=15), 600, 16)
    state = capturestate.check(expect, sysctls(tmp_path / "sys", pattern, suid=2))
    assert state.configured == (problem is None), state.problem
    if problem is not None:
        assert state.problem is not None and problem in state.problem
