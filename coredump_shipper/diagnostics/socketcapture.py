"""doctor's checks for socket capture: core_pattern `@@PATH` and `coredump-receive serve` listening
on PATH (docs/socket-capture.md)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from coredump_shipper import __version__
from coredump_shipper.config.settings import Config
from coredump_shipper.diagnostics.checkrow import Check
from coredump_shipper.diagnostics.pipecapture import owner_check

_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags column
_SERVER_LOGS = "kubectl logs POD -c socket-server"


def kernel_has_socket(proc_root: Path) -> bool:
    """Linux 6.17+ lists `socket` in kernel.core_modes."""
    try:
        return "socket" in (proc_root / "sys/kernel/core_modes").read_text().split()
    except OSError:
        return False


def socket_checks(config: Config, pattern: str, proc_root: Path) -> list[Check]:
    """core_pattern names a socket: the protocol, kernel support, the listener, its counters."""
    path = pattern.lstrip("@")
    checks = [_pattern_check(pattern, path), _kernel_check(proc_root)]
    listener = _listener_check(path, proc_root)
    checks.append(listener)
    if listener.status == "OK":
        checks.append(_server_check(path))
    checks.append(owner_check(config.watch_dir))
    return checks


def _pattern_check(pattern: str, path: str) -> Check:
    name = "kernel.core_pattern"
    if pattern.startswith("@@"):
        return Check(
            name, "OK", f"cores go to the socket server at {path} (request/ack: it sees who crashed first)"
        )
    return Check(
        name,
        "WARN",
        f"{pattern!r} uses the plain socket protocol: the server cannot reject a core or learn about it "
        "before the kernel writes it",
        "capture.mode=socket (the server sets @@PATH itself)",
    )


def _kernel_check(proc_root: Path) -> Check:
    name = "coredump socket support"
    if kernel_has_socket(proc_root):
        return Check(name, "OK", "kernel.core_modes lists socket")
    return Check(
        name,
        "FAIL",
        "kernel.core_modes does not list socket (Linux 6.17+): the kernel cannot deliver cores to a socket",
        "capture.mode=auto or pipe",
    )


def _listening_paths(proc_root: Path) -> set[str]:
    """Paths of listening AF_UNIX sockets in this network namespace (the pod's: the server's too)."""
    paths: set[str] = set()
    try:
        lines = (proc_root / "net/unix").read_text().splitlines()[1:]
    except OSError:
        return paths
    for line in lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) >= 8 and int(fields[3], 16) & _LISTENING:
            paths.add(fields[7])
    return paths


def _is_listening(path: str, listening: set[str]) -> bool:
    # The server binds PATH.<pid>.new and renames it over PATH (a restart never leaves PATH missing);
    # /proc/net/unix keeps showing the name it was bound to.
    return path in listening or any(
        name.startswith(f"{path}.") and name.endswith(".new") and name[len(path) + 1 : -4].isdigit()
        for name in listening
    )


def _listener_check(path: str, proc_root: Path) -> Check:
    name = "coredump socket"
    try:
        st = os.stat(path)
    except OSError as error:
        return Check(
            name,
            "WARN",
            f"{path} is not visible here ({error.strerror}); while nothing listens there the kernel "
            "drops every core",
            f"mount the node's {os.path.dirname(path)} read-only at the same path to check it",
        )
    if not stat.S_ISSOCK(st.st_mode):
        return Check(name, "FAIL", f"{path} is not a socket: the kernel drops every core", _SERVER_LOGS)
    if not _is_listening(path, _listening_paths(proc_root)):
        return Check(
            name,
            "FAIL",
            f"nothing listens on {path} (a server that was killed leaves its socket behind): the kernel "
            "drops every core until the server runs again",
            f"{_SERVER_LOGS}; or point core_pattern back at the pipe receiver (coredump-node-setup install)",
        )
    return Check(
        name,
        "OK",
        f"a server listens on {path}, owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}",
    )


def _server_check(path: str) -> Check:
    name = "socket server"
    stats_path = Path(path).parent / "stats.json"
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError) as error:
        return Check(name, "WARN", f"no counters in {stats_path}: {error}")
    if not isinstance(stats, dict):
        return Check(name, "WARN", f"{stats_path} holds no counters")
    version = str(stats.get("receiver", "?"))
    summary = (
        f"stored {stats.get('stored', 0)} (cut short {stats.get('truncated', 0)}), "
        f"rejected {stats.get('rejected') or 0}, failed {stats.get('failed', 0)}"
    )
    if version != __version__:
        return Check(
            name,
            "WARN",
            f"the server is version {version}, the shipper {__version__}; {summary}",
            "a rollout of the DaemonSet restarts both",
        )
    return Check(name, "OK", f"version {version}; {summary}")
