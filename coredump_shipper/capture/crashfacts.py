"""The crash facts `coredump-receive` (the core_pattern pipe helper) leaves beside each core.

The receiver writes them to ``.<core>.crash.json`` and renames that in before the core itself, so a
core that has facts has them complete when the watcher sees it. They are read as hostile input:
bounded in size, opened without following links, every field type- and range-checked, and bound to
the core by its inode and size (a stale or planted file describing another core is ignored). Names
that start with a dot are never shipped; removing facts with their core and sweeping orphans is
core/companions.py's job.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".crash.json"
TEMP_PREFIX = ".coredump-receive."
MAX_BYTES = 16 * 1024  # the receiver writes at most 8 KiB
FORMAT = 1
_POD_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_TRUNCATION = frozenset(
    {"max-size", "keep-free", "max-use", "deadline", "no-space", "read-error", "write-error"}
)
# The kernel's %d: 1 an ordinary dump, 2 suid-safe (the process changed credentials; fs.suid_dumpable=2).
DUMP_MODES = frozenset({1, 2})
CAPTURES = frozenset({"pipe", "socket"})  # the receiver's capturePipe and captureSocket
_MAX_ID = 2**32 - 1
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def sidecar_name(core_name: str) -> str:
    return f".{core_name}{SUFFIX}"


@dataclass(frozen=True)
class CrashFacts:
    """What the kernel and /proc said about one crash, as the receiver recorded it."""

    global_pid: int
    pid: int | None  # in the process's own pid namespace
    uid: int
    gid: int
    signal: int
    crash_time: datetime
    hostname: str  # %h: in a pod, the pod name
    comm: str
    exe_path: str | None
    cgroup: str | None
    pod_uid: str | None
    container_id: str | None
    cut_short: str | None  # why the receiver stopped early (max-size, keep-free, deadline...)
    receiver: str
    dump_mode: int | None = None  # %d; None from a pattern line without it
    capture: str = "pipe"  # how the kernel handed the core over; receivers before `serve` wrote none


class _Invalid(ValueError):
    pass


def _int(data: dict[str, Any], name: str, high: int, *, optional: bool = False) -> int | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value <= high:
        raise _Invalid(f"{name} is not an integer in 0..{high}")
    return value


def _str(data: dict[str, Any], name: str, limit: int, pattern: re.Pattern[str] | None = None) -> str | None:
    value = data.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _Invalid(f"{name} is not a string of at most {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise _Invalid(f"{name} has the wrong form")
    return value


def parse(text: bytes, inode: int, size: int) -> CrashFacts:
    """Validate the receiver's JSON for the core with this inode and size; raise ValueError if not."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _Invalid(f"not format {FORMAT} crash facts")
    if (data.get("inode"), data.get("size")) != (inode, size):
        raise _Invalid("they describe another file (inode or size differ)")
    cut_short = _str(data, "truncated_reason", 16)
    if cut_short is not None and cut_short not in _TRUNCATION:
        raise _Invalid("truncated_reason is unknown")
    crash_time = _int(data, "time", 2**40) or 0
    dump_mode = _int(data, "dump_mode", 2, optional=True)
    if dump_mode is not None and dump_mode not in DUMP_MODES:
        raise _Invalid("dump_mode is not 1 or 2")
    capture = _str(data, "capture", 8) or "pipe"
    if capture not in CAPTURES:
        raise _Invalid("capture is neither pipe nor socket")
    return CrashFacts(
        global_pid=_int(data, "global_pid", 2**31) or 0,
        pid=_int(data, "pid", 2**31, optional=True),
        uid=_int(data, "uid", _MAX_ID) or 0,
        gid=_int(data, "gid", _MAX_ID) or 0,
        signal=_int(data, "signal", 255) or 0,
        crash_time=datetime.fromtimestamp(crash_time, UTC),
        hostname=_str(data, "hostname", 64) or "",
        comm=_str(data, "comm", 64) or "",
        exe_path=_str(data, "exe_path", 1024),
        cgroup=_str(data, "cgroup", 1024),
        pod_uid=_str(data, "pod_uid", 36, _POD_UID),
        container_id=_str(data, "container_id", 64, _CONTAINER_ID),
        cut_short=cut_short,
        receiver=_str(data, "receiver", 64) or "",
        dump_mode=dump_mode,
        capture=capture,
    )


def read(directory: Path, core_name: str, inode: int, size: int) -> CrashFacts | None:
    """The facts for this core, or None when there are none or they cannot be trusted. Blocking."""
    path = directory / sidecar_name(core_name)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("crash facts %r not read: %s", str(path), error.strerror)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > MAX_BYTES:
            raise _Invalid("not a small regular file with one name")
        return parse(os.read(fd, MAX_BYTES + 1), inode, size)
    except (OSError, ValueError, RecursionError) as error:
        log.warning("crash facts %r ignored: %s", str(path), error)
        return None
    finally:
        os.close(fd)
