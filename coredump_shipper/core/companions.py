"""A core's companion files, from their names to their removal: crash facts and the pinned pod.

Two kinds of file may sit beside a core: ``.<core>.crash.json``, which `coredump-receive` renames in
before the core (its format: capture/crashfacts.py, with the receiver's ``.coredump-receive.*``
temporaries), and ``.<core>.pod.json``, the pod pinned when the core is found (its format:
kube/podrecord.py, with its ``.tmp``). This module is their lifecycle's one home: which names are
companions (never cores, whatever --ignore says), removing them with their core, and sweeping the
orphans a full directory listing shows. CoreFile.remove, the disk budget, the ignore filter and the
daemon's scans call it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from coredump_shipper.capture import crashfacts
from coredump_shipper.capture.failures import SPOOL as FAILURES_SPOOL
from coredump_shipper.kube import podrecord

log = logging.getLogger(__name__)

# A receiver killed half-way (OOM, a node reboot) leaves its temporary files; facts or pod records
# whose core was deleted by someone else are orphans. The receiver renames facts in just before the
# core, and its deadline is minutes, so these ages never catch a crash still being received.
ORPHAN_AGE = 60.0
LEFTOVER_AGE = 86400.0
_COMPANION_SUFFIXES = (crashfacts.SUFFIX, podrecord.SUFFIX, podrecord.TEMP_SUFFIX)


def names_of(core_name: str) -> tuple[str, ...]:
    """The names a core's companions have, whether or not they exist."""
    return (
        crashfacts.sidecar_name(core_name),
        podrecord.record_name(core_name),
        podrecord.temp_name(core_name),
    )


def is_companion(name: str) -> bool:
    """Crash facts, pinned pods and their temporaries: never cores, whatever --ignore says."""
    return name.startswith(crashfacts.TEMP_PREFIX) or (
        name.startswith(".") and name.endswith(_COMPANION_SUFFIXES)
    )


def core_of(name: str) -> str | None:
    """The name of the core a companion belongs to (None for the receiver's temporaries)."""
    for suffix in _COMPANION_SUFFIXES:
        if name.startswith(".") and name.endswith(suffix):
            return name[1 : -len(suffix)]
    return None


def remove(directory: Path, core_name: str) -> None:
    """Delete the companions of a core that was deleted (missing ones are fine)."""
    for name in names_of(core_name):
        try:
            os.unlink(directory / name)
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning("%s %r not removed: %s", _kind(name), name, error.strerror)


def sweep(directory: Path, names: set[str], now: float) -> list[str]:
    """After a full directory listing: delete orphaned companions and stale receiver leftovers."""
    removed = []
    for name in names:
        age = _age_to_remove(name, names)
        if age is None:
            continue
        try:
            if now - os.lstat(directory / name).st_mtime > age:
                os.unlink(directory / name)
                removed.append(name)
        except OSError:
            continue
    receiver = sorted(
        name for name in removed if not name.endswith((podrecord.SUFFIX, podrecord.TEMP_SUFFIX))
    )
    records = sorted(set(removed) - set(receiver))
    if receiver:
        log.info("removed %d leftover file(s) of the pipe receiver: %s", len(receiver), receiver[:5])
    if records:
        log.info("removed %d pod record(s) whose core is gone: %s", len(records), records[:5])
    return removed


def _age_to_remove(name: str, names: set[str]) -> float | None:
    """How old `name` must be to be removed; None if it stays whatever its age."""
    if name == FAILURES_SPOOL:  # the receiver's failure records: capture/failures.py reads them
        return None
    if name.startswith(crashfacts.TEMP_PREFIX):
        return LEFTOVER_AGE
    core = core_of(name)
    if core is None or core in names:
        return None
    return ORPHAN_AGE


def _kind(name: str) -> str:
    return "crash facts" if name.endswith(crashfacts.SUFFIX) else "pod record"
