"""The `kernel.core_pattern` line that pipes cores to `coredump-receive`, and reading one back.

The kernel splits the line on spaces before it expands `%` specifiers (Linux 5.3+), runs the first
word as root, and ignores everything past 127 bytes, so the line is built strictly: absolute paths
without spaces or `%`, and refused when too long rather than silently cut by the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import PurePosixPath

from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.errors import ConfigError

KERNEL_LIMIT = 127  # CORENAME_MAX_SIZE - 1: longer patterns are truncated by the kernel
HELPER_NAME = "coredump-receive"
DEFAULT_HELPER = f"/var/lib/coredump-shipper/{HELPER_NAME}"
# The receiver's arguments after DIR: %e last, so a comm split on spaces by old kernels is joined.
SPECIFIERS = "%P %u %g %s %t %h %e"
# The dump mode is an option, so a receiver started by an older line (during an upgrade) still runs.
DUMP_MODE = "-d %d"
RECEIVER_DEFAULT_TIMEOUT = 600
# --capture-scope: the receiver's default is "pod", written only when it is "all".
SCOPES = ("pod", "all")
# The receiver's own -x when the line has none: the shipper's --max-use default (config.py), so the
# line, at most 127 bytes, carries it only when it differs.
RECEIVER_DEFAULT_MAX_USE = DiskLimit(percent=10)
_OPTIONS = frozenset({"-m", "-f", "-x", "-s", "-t", "-a", "-d"})
# The receiver stores nothing once the shipper's heartbeat (heartbeat.py, every minute) is older than
# this: a shipper down for an hour, or gone with a node left piping to the receiver.
ALIVE_WINDOW = "1h"


def _size(count: int) -> str:
    """A byte count the receiver reads: the largest binary unit that divides it (32G, 512M, 1000)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if count and count % (1 << shift) == 0:
            return f"{count >> shift}{unit}"
    return str(count)


def _plain_path(setting: str, path: str) -> None:
    if not path.startswith("/"):
        raise ConfigError(setting, f"{path!r} must be an absolute path")
    if any(ch.isspace() or ch == "%" for ch in path):
        raise ConfigError(
            setting, f"{path!r} must not contain spaces or '%' (the kernel splits and expands them)"
        )


def _disk_limit(limit: DiskLimit) -> str | None:
    if limit.percent:
        return f"{limit.percent:g}%%"  # the kernel expands "%%" to "%"
    return _size(limit.bytes) if limit.bytes else None


def pipe_line(
    helper: str,
    watch_dir: str,
    max_core_size: int,
    keep_free: DiskLimit,
    timeout: float,
    alive_window: str | None = None,
    *,
    max_use: DiskLimit = RECEIVER_DEFAULT_MAX_USE,
    scope: str = "pod",
) -> str:
    """The core_pattern value; ConfigError when it cannot be written as such.

    `|HELPER -d %d [-m SIZE] [-f FREE] [-x MAXUSE] [-s all] [-t SECONDS] [-a WINDOW] DIR %P %u %g %s %t %h %e`
    """
    _plain_path("--helper", helper)
    _plain_path("--watch-dir", watch_dir)
    if scope not in SCOPES:
        raise ConfigError("--capture-scope", f"{scope!r} is neither pod nor all")
    words = [f"|{helper}", DUMP_MODE]
    if max_core_size:
        words += ["-m", _size(max_core_size)]
    if (value := _disk_limit(keep_free)) is not None:
        words += ["-f", value]
    if max_use != RECEIVER_DEFAULT_MAX_USE:
        words += ["-x", _disk_limit(max_use) or "0"]
    if scope != "pod":
        words += ["-s", scope]
    seconds = math.ceil(timeout)
    if seconds != RECEIVER_DEFAULT_TIMEOUT:
        words += ["-t", str(seconds)]
    if alive_window:
        words += ["-a", alive_window]
    line = " ".join([*words, str(PurePosixPath(watch_dir)), SPECIFIERS])
    length = len(line.encode())
    if length > KERNEL_LIMIT:
        raise ConfigError(
            "--helper",
            f"the core_pattern line would be {length} bytes, over the kernel's {KERNEL_LIMIT}: "
            "use a shorter --helper or --watch-dir path",
        )
    return line


@dataclass(frozen=True)
class ReceiverLine:
    """What a core_pattern that pipes to coredump-receive says."""

    helper: str
    directory: str | None


def parse_pipe_line(pattern: str) -> ReceiverLine | None:
    """The receiver's path and directory if `pattern` pipes to coredump-receive, else None."""
    if not pattern.startswith("|"):
        return None
    words = pattern[1:].split()
    if not words or PurePosixPath(words[0]).name != HELPER_NAME:
        return None
    rest = words[1:]
    while len(rest) >= 2 and rest[0] in _OPTIONS:
        rest = rest[2:]
    return ReceiverLine(words[0], rest[0] if rest and rest[0].startswith("/") else None)
