"""What is known about one core before it is uploaded: from the environment, its name and its headers.

The file name (parsed with the node's core_pattern, `--filename-pattern`) says which pod and program
crashed and when; the ELF headers and notes say whether the file is a complete core and confirm the
signal, command and executable. Headers win where both speak: they come from the process itself.
In pipe capture the receiver's crash facts (crashfacts.py) come from the kernel and /proc and win
over the file name; they alone know the pod UID and container ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coredump_shipper import __version__
from coredump_shipper.bucket.keys import metadata
from coredump_shipper.capture import crashfacts
from coredump_shipper.core.elf import CoreInfo, inspect_core
from coredump_shipper.core.file import CoreFile
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.core.signature import Signature, compute

CORE_USES_PID = Path("/proc/sys/kernel/core_uses_pid")
# x-amz-meta-* is limited to 2 KiB in all: long values are cut, and room is kept for the sha256
# that single-part uploads add once the core has been read.
LONG_VALUE_LIMIT = 200
SHA256_RESERVE = len("sha256") + 64


def core_uses_pid() -> bool | None:
    """The node's kernel.core_uses_pid (global, readable from a pod), None if it cannot be read."""
    try:
        return CORE_USES_PID.read_text().strip() not in {"", "0"}
    except OSError:
        return None


@dataclass(frozen=True)
class CoreFacts:
    template_values: dict[str, Any]  # for the key template: str, int or datetime values
    metadata: dict[str, str]  # header-safe x-amz-meta-* values
    info: CoreInfo
    program: str  # what the storm limiter counts: the executable when the name gives it
    signature: Signature | None = None
    details: dict[str, str] = field(default_factory=dict)  # for the manifest only: too long for headers
    by_uid_only: bool = False  # crash facts exist: the pod is found by UID, never by host name


def gather(core: CoreFile, pattern: CoreNamePattern, cluster: str, node: str, compression: str) -> CoreFacts:
    """Blocking (reads the headers with pread): call in a thread."""
    named = pattern.parse(core.name)
    info = inspect_core(core.fd, core.size)
    received = crashfacts.read(core.path.parent, core.name, core.identity.inode, core.size)
    if received is not None:
        named = replace(
            named,
            pod=received.hostname or named.pod,
            exe=received.comm or named.exe,
            exe_path=received.exe_path or named.exe_path,
            signal=received.signal,
            pid=received.pid if received.pid is not None else named.pid,
            global_pid=received.global_pid,
            uid=received.uid,
            gid=received.gid,
            crash_time=received.crash_time,
        )
    crash_time = named.crash_time or datetime.fromtimestamp(core.mtime, UTC)
    signal = info.signal if info.signal is not None else named.signal
    program = named.exe if (named.matched or received) and named.exe else core.name
    signature = compute(core.fd, core.size, named.exe or info.comm or program, info.exe_path)
    values: dict[str, Any] = {
        "cluster": cluster,
        "node": node,
        "filename": core.name,
        "pod": named.pod,
        "exe": named.exe or info.comm,
        "exe_path": info.exe_path or named.exe_path,
        "signal": signal,
        "signal_name": info.signal_name or named.signal_name,
        "pid": named.pid if named.pid is not None else info.pid,
        "global_pid": named.global_pid,
        "uid": named.uid,
        "gid": named.gid,
        "pod_uid": received.pod_uid if received else None,
        "container_id": received.container_id if received else None,
        "crash_time": crash_time,
        "signature": signature.short,
    }
    # The receiver read the cgroup: the pod is its UID or none. %h is chosen by the crashing process
    # (`unshare -u; hostname victim-pod`) and never names a pod then (identity.py).
    by_uid_only = received is not None
    # Most useful first: if S3's 2 KiB metadata budget runs out, the long tail goes first.
    described: dict[str, Any] = {
        name: value for name, value in values.items() if value is not None and name != "exe_path"
    }
    described |= {
        "size": core.size,
        "compression": compression,
        "shipper-version": __version__,
        "name-matched": "true" if named.matched else "false",
    }
    extra = {**named.as_dict(), **info.as_dict()}
    if received is not None:
        # dump-mode 2: a suid-safe dump (the process changed credentials); its memory may hold what
        # the privileged part of the process read (docs/security.md).
        described |= {
            "capture": received.capture,
            "cut-short": received.cut_short,
            "dump-mode": received.dump_mode,
        }
        if received.cut_short:
            described["truncated"] = "true"
    described |= {n: v for n, v in extra.items() if n not in described and n not in {"matched", "args"}}
    described |= signature.metadata()  # the frames; every frame and module are in the manifest
    described["exe_path"] = values["exe_path"]
    described["args"] = extra.get("args", "")[:LONG_VALUE_LIMIT]
    if received is not None and received.cgroup:
        described["cgroup"] = received.cgroup[-LONG_VALUE_LIMIT:]  # the end names pod and container
    return CoreFacts(
        values,
        metadata(described, reserve=SHA256_RESERVE),
        info,
        program,
        signature,
        signature.details(),
        by_uid_only,
    )


def truncation_hint(info: CoreInfo) -> str:
    """The likely cause of a truncated core, for the warning an operator reads."""
    return (
        f"the core is {info.size} bytes but its headers describe {info.expected_size}: "
        "likely RLIMIT_CORE too small for the process (raise the runtime's LimitCORE / ulimit -c), "
        "the disk filled up while it was written, or the dumping process was killed"
    )
