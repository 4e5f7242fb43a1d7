"""Is capture still set up? The node's kernel settings that send cores to this shipper, read back.

kernel.core_pattern is global and anyone root on the node can change it: systemd-sysctl re-applying
`50-coredump.conf`, apport at boot, another tool. Capture then stops without a sound. The daemon
reads the settings again every minute (and `doctor` once) and compares them with what it expects:

- `--capture-mode pipe`: exactly the line `coredump-shipper core-pattern` prints for these settings
  (`--receiver-path`, `--watch-dir`, `--max-core-size`, `--keep-free`, `--receive-timeout`), and
  kernel.core_pipe_limit at least `--pipe-limit` (fewer, and a burst of crashes is skipped by the
  kernel; 0, and the receiver may not read the pod before the process is gone), and fs.suid_dumpable
  2 as node setup sets it (else processes that changed credentials no longer dump);
- `--capture-mode file`: a file pattern that writes into the watched directory;
- `socket` (docs/socket-capture.md): `@@PATH`, the socket server's, or the pipe line it hands the
  kernel back while it is down (a restart), recognised as in auto;
- `auto`: any of these, the pipe line recognised by its receiver and directory rather than word for
  word (or systemd-coredump's pipe when the shipper watches systemd-coredump's directory);
- `off`: not checked (another tool captures, or the shipper only ships what others put there).

In the other modes fs.suid_dumpable is only reported: what it should be is the node's choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import (
    ALIVE_WINDOW,
    RECEIVER_DEFAULT_MAX_USE,
    parse_pipe_line,
    pipe_line,
)
from coredump_shipper.errors import ConfigError

if TYPE_CHECKING:
    from coredump_shipper.config.settings import Config

SYSCTL_DIR = Path("/proc/sys")  # the node's: kernel settings are not namespaced
SYSTEMD_COREDUMP_DIR = "/var/lib/systemd/coredump"
PIPE_SUID_DUMPABLE = 2  # what node setup sets in pipe mode (docker/node-setup.sh)


@dataclass(frozen=True)
class CaptureState:
    """What was found, and whether it sends cores to this shipper."""

    configured: bool
    core_pattern: str | None
    core_pipe_limit: int | None
    suid_dumpable: int | None
    problem: str | None  # why not configured, for the log, doctor and the operator

    def describe(self) -> str:
        return (
            f"kernel.core_pattern={self.core_pattern!r}, kernel.core_pipe_limit={self.core_pipe_limit}, "
            f"fs.suid_dumpable={self.suid_dumpable}"
        )


@dataclass(frozen=True)
class Expectation:
    """What the node must say; built once from the settings."""

    mode: str  # auto, pipe, file, socket (off is never checked)
    watch_dir: str
    pipe_line: str | None  # the exact line for pipe mode, None when the settings cannot make one
    pipe_limit: int


def expectation(
    mode: str,
    watch_dir: Path,
    receiver_path: str,
    max_core_size: int,
    keep_free: DiskLimit,
    receive_timeout: float,
    pipe_limit: int,
    *,
    max_use: DiskLimit = RECEIVER_DEFAULT_MAX_USE,
    scope: str = "pod",
    alive_window: str | None = None,
) -> Expectation:
    """What node setup installs for these settings (the line `coredump-shipper core-pattern` prints)."""
    try:
        line: str | None = pipe_line(
            receiver_path,
            str(watch_dir),
            max_core_size,
            keep_free,
            receive_timeout,
            alive_window,
            max_use=max_use,
            scope=scope,
        )
    except ConfigError:
        line = None
    return Expectation(mode, os.path.abspath(watch_dir), line, pipe_limit)


def for_config(config: Config) -> Expectation:
    """What the daemon and doctor expect of the node, from the settings the daemon runs with."""
    return expectation(
        config.capture_mode,
        config.watch_dir,
        config.receiver_path,
        config.max_core_size,
        config.keep_free,
        config.receive_timeout,
        config.pipe_limit,
        max_use=config.max_use,
        scope=config.capture_scope,
        # The chart's pipe mode sets --heartbeat, and node setup's line then carries -a (cli.py).
        alive_window=ALIVE_WINDOW if config.heartbeat else None,
    )


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().rstrip("\n")
    except OSError:
        return None


def _into(directory: str, watch: str) -> bool:
    return directory in {watch, os.path.realpath(watch)}


def _systemd_coredump(pattern: str) -> bool:
    words = pattern[1:].split()
    return bool(words) and os.path.basename(words[0]) == "systemd-coredump"


def _exact_line_problem(expect: Expectation, pattern: str) -> str | None:
    """--capture-mode pipe: why the line is not word for word the one for these settings, or None."""
    if expect.pipe_line is None:
        return "these settings make no core_pattern line (over the kernel's 127 bytes)"
    if pattern.strip() != expect.pipe_line:
        return (
            f"core_pattern is not the line `coredump-shipper core-pattern` prints for these settings "
            f"({expect.pipe_line!r})"
        )
    return None


def _line_problem(expect: Expectation, pattern: str) -> str | None:
    """Why a pipe line is not the one that stores cores in the watched directory, or None."""
    if expect.mode == "pipe":
        return _exact_line_problem(expect, pattern)
    receiver = parse_pipe_line(pattern)
    if receiver is None:
        if _systemd_coredump(pattern) and _into(SYSTEMD_COREDUMP_DIR, expect.watch_dir):
            return None  # shipping what systemd-coredump stores: its own set-up, left as it is
        return "core_pattern pipes cores to another program, not to coredump-receive"
    if receiver.directory is None or not _into(receiver.directory, expect.watch_dir):
        return f"coredump-receive stores cores in {receiver.directory}, not in {expect.watch_dir}"
    return None


def _pipe_problem(expect: Expectation, pattern: str, limit: int | None, suid: int | None) -> str | None:
    """Why a pipe line does not send cores here, or None."""
    problem = _line_problem(expect, pattern)
    if problem is None and expect.mode == "pipe" and suid != PIPE_SUID_DUMPABLE:
        # Node setup sets 2 with the line; another value means something reset the node's sysctls.
        problem = (
            f"fs.suid_dumpable is {suid}, not the {PIPE_SUID_DUMPABLE} node setup sets: processes that "
            "changed credentials (setuid programs, nginx or php-fpm workers) no longer dump"
        )
    if problem is None and (limit is None or limit < expect.pipe_limit):
        problem = (
            f"core_pipe_limit is {limit}, below {expect.pipe_limit}: the kernel skips crashes beyond it"
            + (" and does not wait for the receiver" if limit == 0 else "")
        )
    return problem


def _socket_problem(expect: Expectation, pattern: str) -> str | None:
    """core_pattern sends cores to a socket: why that is not this shipper's socket server, or None."""
    if expect.mode in {"pipe", "file"}:
        return f"core_pattern sends cores to a socket ({pattern}) but --capture-mode is {expect.mode}"
    if not pattern.startswith("@@/"):
        return "core_pattern uses the plain socket protocol (@): coredump-receive serve speaks @@"
    return None


def _file_problem(expect: Expectation, pattern: str) -> str | None:
    if not pattern.startswith("/"):
        return "core_pattern is relative: cores go to each crashing process's working directory"
    directory = os.path.normpath(os.path.dirname(pattern))
    if not _into(directory, expect.watch_dir):
        return f"core_pattern writes cores into {directory}, not into {expect.watch_dir}"
    return None


def check(expect: Expectation, sysctl_dir: Path | None = None) -> CaptureState:
    """Read the node's settings once and compare them with `expect`. Blocking (small reads)."""
    root = SYSCTL_DIR if sysctl_dir is None else sysctl_dir
    pattern = _read_text(root / "kernel/core_pattern")
    limit = _read_int(root / "kernel/core_pipe_limit")
    suid = _read_int(root / "fs/suid_dumpable")
    problem: str | None
    if pattern is None:
        problem = f"{root / 'kernel/core_pattern'} cannot be read"
    elif pattern.startswith("@"):
        problem = _socket_problem(expect, pattern)
    elif pattern.startswith("|"):
        problem = (
            "core_pattern pipes cores but --capture-mode is file"
            if expect.mode == "file"
            else _pipe_problem(expect, pattern, limit, suid)
        )
    elif expect.mode == "pipe":
        problem = "core_pattern does not pipe cores to coredump-receive (--capture-mode pipe)"
    elif expect.mode == "socket":
        problem = (
            "core_pattern neither names the socket server nor pipes to its fallback (--capture-mode socket)"
        )
    else:
        problem = _file_problem(expect, pattern)
    return CaptureState(problem is None, pattern, limit, suid, problem)
