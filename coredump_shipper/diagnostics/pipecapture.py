"""doctor's checks for pipe capture (core_pattern pipes to coredump-receive) and, for file capture,
whether this uid can read cores written by other uids at all."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from coredump_shipper import __version__
from coredump_shipper.capture.pattern import DEFAULT_HELPER, ReceiverLine
from coredump_shipper.config.settings import Config
from coredump_shipper.diagnostics.checkrow import Check

# Capabilities that let a non-root uid read another uid's 0600 core.
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
VERSION_TIMEOUT = 5.0


def _line_fix(config: Config) -> str:
    return (
        f"coredump-shipper core-pattern --watch-dir {config.watch_dir} > /proc/sys/kernel/core_pattern "
        "on the node (or the chart's nodeSetup with capture.mode=pipe)"
    )


def receiver_checks(config: Config, line: ReceiverLine, proc_root: Path) -> list[Check]:
    """Pipe capture: the line, the helper binary, core_pipe_limit and who owns the directory."""
    watch = os.path.abspath(config.watch_dir)
    if line.directory in {watch, os.path.realpath(watch)}:
        checks = [
            Check(
                "kernel.core_pattern", "OK", f"cores are piped to {line.helper}, which stores them in {watch}"
            )
        ]
    else:
        checks = [
            Check(
                "kernel.core_pattern",
                "FAIL",
                f"cores are piped to {line.helper}, which stores them in {line.directory}, not in {watch}",
                _line_fix(config),
            )
        ]
    return [*checks, helper_check(line.helper), pipe_limit_check(proc_root), owner_check(config.watch_dir)]


def helper_check(helper: str) -> Check:
    name = "pipe receiver"
    try:
        st = os.stat(helper)
    except OSError as error:
        return Check(
            name,
            "WARN",
            f"{helper} is not visible here ({error.strerror}); the kernel drops every core if it is "
            "missing on the node",
            f"mount the node's {os.path.dirname(helper)} read-only at the same path to check it",
        )
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
        return Check(name, "FAIL", f"{helper} is not an executable file", "re-run the chart's nodeSetup")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return Check(
            name,
            "FAIL",
            f"{helper} runs as root for every crash but is owned by uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}: whoever can write it can run code as root",
            f"chown root:root {helper}; chmod 0755 {helper} "
            f"(install it in {os.path.dirname(DEFAULT_HELPER)})",
        )
    try:
        answer = subprocess.run(
            [helper, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
        version = answer.stdout.split()[-1] if answer.stdout.split() else "?"
    except (OSError, subprocess.TimeoutExpired) as error:
        return Check(name, "WARN", f"{helper} --version did not answer: {error}")
    if version != __version__:
        return Check(
            name,
            "WARN",
            f"{helper} is version {version}, the shipper {__version__}",
            "re-run the chart's nodeSetup (a rollout of the DaemonSet does) to install the matching receiver",
        )
    return Check(
        name, "OK", f"{helper} is version {version}, owned by root, mode {stat.S_IMODE(st.st_mode):04o}"
    )


def pipe_limit_check(proc_root: Path) -> Check:
    name = "kernel.core_pipe_limit"
    try:
        limit = int((proc_root / "sys/kernel/core_pipe_limit").read_text().strip())
    except (OSError, ValueError):
        return Check(name, "WARN", "cannot read /proc/sys/kernel/core_pipe_limit")
    if limit == 0:
        return Check(
            name,
            "WARN",
            "0: the kernel does not wait for the receiver, so /proc/<pid> may be gone before it is "
            "read (no pod UID or container ID)",
            "sysctl -w kernel.core_pipe_limit=16 on the node (the chart's nodeSetup does)",
        )
    return Check(name, "OK", f"{limit} crashes are received at once; more are dropped by the kernel")


def owner_check(watch_dir: Path) -> Check:
    name = "watch dir owner"
    try:
        st = os.stat(watch_dir)
    except OSError as error:
        return Check(name, "FAIL", f"{watch_dir}: {error.strerror}")
    uid = os.geteuid()
    if st.st_uid != uid:
        return Check(
            name,
            "FAIL",
            f"{watch_dir} is owned by uid {st.st_uid}; the receiver gives each core to the directory's "
            f"owner, so uid {uid} could not read it",
            f"chown {uid} {watch_dir} (the chart's nodeSetup.directoryUid)",
        )
    return Check(name, "OK", f"owned by uid {uid}: the receiver hands cores to this shipper")


def _effective_caps(proc_root: Path) -> int:
    for line in (proc_root / "self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def other_uids_check(proc_root: Path) -> Check:
    """File capture: the kernel writes each core 0600 as the crashing uid."""
    name = "cores of other uids"
    uid = os.geteuid()
    try:
        caps = _effective_caps(proc_root)
    except (OSError, ValueError):
        caps = 0
    if uid == 0 or caps & (1 << _CAP_DAC_OVERRIDE | 1 << _CAP_DAC_READ_SEARCH):
        return Check(name, "OK", "this process can read cores of every uid")
    return Check(
        name,
        "WARN",
        f"the kernel writes file cores mode 0600 owned by the crashing uid: uid {uid} can read only "
        f"cores of uid {uid}; the others stay on the node unshipped",
        "pipe capture: the chart's capture.mode=pipe with nodeSetup.enabled=true",
    )
