"""Cores the pipe receiver lost or cut short, from the records it leaves for the shipper.

`coredump-receive` runs as root for one crash and exits; it cannot export metrics. For every core it
does not store (a host process outside the capture scope, a suid-safe dump it must not hand over, an
error) or stores cut short (the free-space floor, the directory cap, the deadline, a write error), it
writes one small JSON record into ``.coredump-receive.failures/`` in the core directory. The daemon
reads them every few seconds into ``coredump_shipper_capture_failures_total{reason}`` and removes
them. They are read as hostile input (the directory is writable by the shipper's uid): bounded in
number and size, opened without following links, unknown reasons counted as ``invalid``.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

SPOOL = ".coredump-receive.failures"
FORMAT = 1
MAX_BYTES = 4096  # the receiver writes about 200
MAX_PER_READ = 1024  # the receiver stops at 256 waiting records
# The receiver's reasons (dashes) as label values (underscores); "invalid" for a record not its own.
REASONS = (
    "scope",
    "suid_owner",
    "keep_free",
    "max_use",
    "max_size",
    "deadline",
    "no_space",
    "write_error",
    "read_error",
    "not_stored",
    "invalid",
)
# Cores lost by design: the operator chose the scope and the size cap. The rest mean lost data.
BY_DESIGN = frozenset({"scope", "max_size"})
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _reason(data: bytes) -> tuple[str, str]:
    """The record's label value and a short description of the crash for the log."""
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        return "invalid", ""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return "invalid", ""
    reason = record.get("reason")
    label = reason.replace("-", "_") if isinstance(reason, str) else ""
    if label not in REASONS or label == "invalid":
        return "invalid", ""
    comm, pid = record.get("comm"), record.get("global_pid")
    described = f"{comm[:64]!r} pid {pid}" if isinstance(comm, str) and type(pid) is int else ""
    return label, described


def _read_one(spool_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=spool_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        return os.read(fd, MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def collect(directory: Path) -> collections.Counter[str]:
    """Read and remove the waiting records; the count of each reason. Blocking."""
    counts: collections.Counter[str] = collections.Counter()
    try:
        spool_fd = os.open(directory / SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return counts
    except OSError as error:
        log.warning("capture failure records in %r not read: %s", str(directory / SPOOL), error.strerror)
        return counts
    examples: dict[str, str] = {}
    try:
        for name in sorted(os.listdir(spool_fd))[:MAX_PER_READ]:
            data = _read_one(spool_fd, name)
            reason, described = _reason(data) if data is not None else ("invalid", "")
            try:
                os.unlink(name, dir_fd=spool_fd)
            except OSError:
                continue  # counted only once removed, so never twice (a planted directory stays)
            counts[reason] += 1
            if described:
                examples.setdefault(reason, described)
    except OSError as error:
        log.warning("capture failure records not read: %s", error.strerror)
    finally:
        os.close(spool_fd)
    for reason, count in sorted(counts.items()):
        level = logging.INFO if reason in BY_DESIGN else logging.WARNING
        log.log(
            level,
            "the pipe receiver did not store %d core(s) whole: %s (e.g. %s); see docs/alerts.md",
            count,
            reason,
            examples.get(reason, "no details"),
            extra={"event": "capture_failure", "reason": reason},
        )
    return counts
