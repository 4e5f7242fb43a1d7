"""`coredump-shipper doctor`: check a node's set-up once, say how to fix each problem.

Every check returns OK / WARN / FAIL with a one-line fix. Checks never raise: a check that breaks
becomes a FAIL row of its own, so one problem cannot hide the others. /proc is injectable so tests
can show the branches the test machine cannot (a pipe core_pattern, an NFS watch directory).
"""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coredump_shipper.capture.pattern import parse_pipe_line
from coredump_shipper.config.settings import Config
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.diagnostics import capturestate
from coredump_shipper.diagnostics.checkrow import Check, ExtraCheck, Status
from coredump_shipper.diagnostics.kubernetes import kube_checks
from coredump_shipper.diagnostics.pipecapture import other_uids_check, receiver_checks
from coredump_shipper.diagnostics.s3store import s3_checks
from coredump_shipper.diagnostics.socketcapture import socket_checks
from coredump_shipper.errors import ConfigError
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship import afterupload
from coredump_shipper.ship.diskbudget import DiskBudget

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any


SUGGESTED_NAME = "core.%h.%e.sig%s.%p.%t"
MIN_FREE_FRACTION = 0.10
SMALL_RLIMIT_CORE = 64 * 1024 * 1024
SYSTEMD_COREDUMP_DIR = "/var/lib/systemd/coredump"

# inotify on these sees only writes made through this kernel, not those of other clients.
REMOTE_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs", "lustre", "afs"}
)
# The container's own root filesystem: nothing on the node writes here.
CONTAINER_LAYERS = frozenset({"overlay", "aufs"})
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
# Below these the shared per-user inotify limits are easily exhausted by other processes of the uid.
INOTIFY_MINIMUMS = {"max_user_watches": 1024, "max_user_instances": 16, "max_queued_events": 1024}


async def run_doctor(
    config: Config,
    *,
    write_probe: bool = True,
    proc_root: Path = Path("/proc"),
    extra_checks: Sequence[ExtraCheck] = (),
) -> list[Check]:
    """Every check, in table order. `write_probe=False` keeps the S3 checks read-only."""
    checks: list[Check] = []
    local: list[tuple[str, Callable[[], list[Check]]]] = [
        ("kernel.core_pattern", lambda: core_pattern_checks(config, proc_root)),
        ("capture configured", lambda: [capture_check(config, proc_root)]),
        ("RLIMIT_CORE", lambda: [rlimit_core_check()]),
        ("watch dir", lambda: watch_dir_checks(config.watch_dir, proc_root)),
        ("fs.inotify", lambda: [inotify_check(proc_root)]),
        ("disk budget", lambda: [disk_budget_check(config)]),
        ("storm limit", lambda: [storm_limit_check(config)]),
    ]
    local += [(_callable_name(extra), _as_list(extra, config)) for extra in extra_checks]
    for name, run in local:
        checks += _guarded(name, run)
    checks += await kube_checks(config)
    checks += await s3_checks(config, write_probe=write_probe)
    return checks


def exit_status(checks: Sequence[Check]) -> int:
    """1 if any check failed, else 0 (warnings do not fail the run)."""
    return 1 if any(check.status == "FAIL" for check in checks) else 0


def render_table(checks: Sequence[Check]) -> str:
    """An aligned table: one row per check, its fix on an indented line below it, then a summary."""
    width = max([len("CHECK"), *(len(check.name) for check in checks)])
    lines = [f"{'STATUS':<6}  {'CHECK':<{width}}  DETAIL"]
    for check in checks:
        lines.append(f"{check.status:<6}  {check.name:<{width}}  {_one_line(check.detail)}")
        if check.fix:
            lines.append(f"{'':<6}  {'':<{width}}  fix: {_one_line(check.fix)}")
    counts = {status: sum(c.status == status for c in checks) for status in ("FAIL", "WARN", "OK")}
    lines.append("")
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()))
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _callable_name(check: ExtraCheck) -> str:
    return str(getattr(check, "__name__", type(check).__name__))


def _as_list(check: ExtraCheck, config: Config) -> Callable[[], list[Check]]:
    return lambda: [check(config)]


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    try:
        return run()
    except Exception as error:
        return [Check(name, "FAIL", f"the check itself failed: {type(error).__name__}: {error}")]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


# kernel.core_pattern ------------------------------------------------------------------------------


def _sysctl_fix(config: Config) -> str:
    watch = os.path.abspath(config.watch_dir)
    return f"sysctl -w kernel.core_pattern={watch}/{SUGGESTED_NAME} on the node (or the chart's nodeSetup)"


def core_pattern_checks(config: Config, proc_root: Path) -> list[Check]:
    """Where cores go, what their names carry, and whether --filename-pattern can read them."""
    pattern = _read(proc_root / "sys/kernel/core_pattern")
    uses_pid = _read(proc_root / "sys/kernel/core_uses_pid")
    if pattern is None:
        return [Check("kernel.core_pattern", "WARN", "cannot read /proc/sys/kernel/core_pattern")]
    if pattern.startswith("@"):  # socket capture (docs/socket-capture.md)
        return socket_checks(config, pattern, proc_root)
    receiver = parse_pipe_line(pattern)
    if receiver is not None:  # pipe capture: the receiver names cores and records their facts
        return receiver_checks(config, receiver, proc_root)
    checks = [destination_check(config, pattern, proc_root)]
    if not pattern.startswith("|"):
        name = pattern.rsplit("/", 1)[-1]
        checks.append(fields_check(config, name, uses_pid))
        checks.append(filename_pattern_check(config, name, uses_pid))
        checks.append(other_uids_check(proc_root))
    meaning = {"1": "the kernel appends .PID to names without %p", "0": "no .PID suffix is added"}
    checks.append(
        Check("kernel.core_uses_pid", "OK", f"{uses_pid}: {meaning.get(uses_pid or '', 'unknown')}")
    )
    return checks


def capture_check(config: Config, proc_root: Path) -> Check:
    """The daemon's minute-by-minute check (coredump_shipper_capture_configured), run once."""
    name = "capture configured"
    if config.capture_mode == "off":
        return Check(name, "OK", "not checked (--capture-mode off)")
    expect = capturestate.for_config(config)
    state = capturestate.check(expect, proc_root / "sys")
    if state.configured:
        return Check(name, "OK", f"--capture-mode {config.capture_mode}: {state.describe()}")
    fix = (
        "re-run node setup (kubectl rollout restart of the DaemonSet with nodeSetup.enabled); "
        "find what rewrote it (systemd-sysctl with 50-coredump.conf, apport) and disable it"
    )
    if expect.pipe_line and config.capture_mode == "pipe":
        fix = f"echo '{expect.pipe_line}' > /proc/sys/kernel/core_pattern, or " + fix
    # auto names no mode the node must be in: a warning; an explicit mode that does not hold fails.
    status: Status = "WARN" if config.capture_mode == "auto" else "FAIL"
    return Check(name, status, f"{state.problem}; found {state.describe()}", fix)


def destination_check(config: Config, pattern: str, proc_root: Path) -> Check:
    name = "kernel.core_pattern"
    watch = os.path.abspath(config.watch_dir)
    if pattern.startswith("|"):
        return _pipe_check(config, pattern, watch)
    if not pattern.startswith("/"):
        return Check(
            name,
            "WARN",
            f"{pattern!r} is relative: cores go to the crashing process's cwd, not to {watch}",
            _sysctl_fix(config),
        )
    directory = os.path.normpath(os.path.dirname(pattern))
    if "%" in directory:
        return Check(
            name,
            "WARN",
            f"{pattern!r} puts cores in per-crash subdirectories; the shipper watches {watch} only, "
            "not its subdirectories",
            _sysctl_fix(config),
        )
    if directory in {watch, os.path.realpath(watch)}:
        return Check(name, "OK", f"{pattern!r} writes into the watched directory {watch}")
    return _elsewhere_check(config, pattern, directory, watch, proc_root)


def _pipe_check(config: Config, pattern: str, watch: str) -> Check:
    helper = pattern[1:].split(maxsplit=1)[0] if pattern[1:].split() else "?"
    if helper.endswith("systemd-coredump") and watch == SYSTEMD_COREDUMP_DIR:
        return Check(
            "kernel.core_pattern",
            "WARN",
            f"cores are piped to {helper}, which stores them (compressed, named its own way) in the "
            "watched directory: they are shipped, but --filename-pattern cannot read their names",
            "to ship plain cores named by the kernel: " + _sysctl_fix(config),
        )
    return Check(
        "kernel.core_pattern",
        "FAIL",
        f"cores are piped to the helper {helper}: the kernel writes no file into {watch}",
        f"check that nothing else on the node needs {helper} (systemd-coredump, apport), then "
        + _sysctl_fix(config),
    )


def _elsewhere_check(config: Config, pattern: str, directory: str, watch: str, proc_root: Path) -> Check:
    # Inside a container the watch dir is a bind mount of some node directory; mountinfo's root field
    # gives that directory relative to its filesystem, which is the node path when it sits on /.
    real = os.path.realpath(watch)
    mount = find_mount(_read(proc_root / "self/mountinfo") or "", real)
    if mount is not None and mount.node_path(real) == directory:
        return Check(
            "kernel.core_pattern",
            "OK",
            f"{pattern!r} writes into the node's {directory}, mounted here at {watch}; app pods must "
            f"mount it at {directory} too",
        )
    seen = f" ({watch} is {mount.node_path(real)} on {mount.source})" if mount is not None else ""
    return Check(
        "kernel.core_pattern",
        "WARN",
        f"{pattern!r} writes into {directory} (in the crashing process's mount namespace) but the "
        f"shipper watches {watch}{seen}; in a container the node path may differ from the watch dir, "
        "so check that the hostPath behind the watch dir is the node's directory",
        f"mount the node's {directory} at {directory} in the shipper and app pods and set "
        f"--watch-dir {directory}, or " + _sysctl_fix(config),
    )


def fields_check(config: Config, name: str, uses_pid: str | None) -> Check:
    missing = []
    if "%h" not in name:
        missing.append("no %h: the pod name is unknown (keys and metadata say 'unknown')")
    if "%t" not in name:
        missing.append(
            "no %t: a later crash with the same name replaces a core not yet shipped, "
            "and the crash time comes from the file's mtime"
        )
    if "%p" not in name and uses_pid != "1":
        missing.append("no %p (and core_uses_pid=0): crashes of one program share a name")
    if not missing:
        return Check("core_pattern fields", "OK", f"{name!r} has %h (pod name) and %t (crash time)")
    return Check("core_pattern fields", "WARN", "; ".join(missing), _sysctl_fix(config))


def filename_pattern_check(config: Config, name: str, uses_pid: str | None) -> Check:
    check = "--filename-pattern"
    try:
        CoreNamePattern.compile(name, uses_pid={"1": True, "0": False}.get(uses_pid or ""))
    except ConfigError as error:
        return Check(
            check, "WARN", f"fields cannot be read back from {name!r}: {error.problem}", _sysctl_fix(config)
        )
    if name == config.filename_pattern:
        return Check(check, "OK", f"{name!r} matches core_pattern's file name")
    return Check(
        check,
        "WARN",
        f"{config.filename_pattern!r} differs from core_pattern's file name {name!r}: crash fields "
        "(pod, program, signal, pid, time) are not read from file names",
        f"--filename-pattern '{name}'",
    )


# RLIMIT_CORE -------------------------------------------------------------------------------------


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value} bytes"


def rlimit_core_check() -> Check:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    note = (
        "pods inherit it from the container runtime (containerd's LimitCORE, Docker/CRI-O default "
        "ulimits), not from this pod"
    )
    detail = f"this process: soft {_limit(soft)}, hard {_limit(hard)}; {note}"
    fix = (
        "set LimitCORE=infinity for containerd (systemd drop-in) or the runtime's default core "
        "ulimit, or have the application raise its soft limit"
    )
    if soft == 0:
        return Check("RLIMIT_CORE", "WARN", f"0: processes like this one write no core; {detail}", fix)
    if soft != resource.RLIM_INFINITY and soft < SMALL_RLIMIT_CORE:
        return Check("RLIMIT_CORE", "WARN", f"cores larger than {soft} bytes are cut short; {detail}", fix)
    return Check("RLIMIT_CORE", "OK", detail)


# The watch directory ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    root: str  # the path inside the mounted filesystem (a bind mount's source)
    fstype: str
    source: str

    def node_path(self, path: str) -> str:
        rest = os.path.relpath(path, self.mount_point)
        return os.path.normpath(os.path.join(self.root, rest))


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        after = fields[fields.index("-") + 1 :]
        if len(after) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), after[0], _unescape(after[1])))
    return mounts


def find_mount(mountinfo: str, path: str) -> Mount | None:
    """The mount holding `path`: the longest mount point that is a prefix (the last one wins ties)."""
    best: Mount | None = None
    for mount in parse_mountinfo(mountinfo):
        point = mount.mount_point.rstrip("/") + "/"
        inside = path == mount.mount_point or path.startswith(point)
        if inside and (best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    return best


def watch_dir_checks(watch_dir: Path, proc_root: Path) -> list[Check]:
    """Exists, usable by the shipper, on a filesystem inotify serves, with room, not open to all."""
    if not watch_dir.exists():
        return [
            Check(
                "watch dir",
                "FAIL",
                f"{watch_dir} does not exist",
                "mount the node's core directory there (hostPath) or fix --watch-dir",
            )
        ]
    if not watch_dir.is_dir():
        return [Check("watch dir", "FAIL", f"{watch_dir} is not a directory", "fix --watch-dir")]
    real = os.path.realpath(watch_dir)
    return [
        access_check(watch_dir),
        filesystem_check(real, proc_root),
        free_space_check(watch_dir, os.statvfs(watch_dir)),
        permissions_check(watch_dir, os.stat(watch_dir)),
    ]


def access_check(watch_dir: Path) -> Check:
    probe = watch_dir / f".coredump-shipper-doctor-{os.getpid()}"
    try:
        os.listdir(watch_dir)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return Check(
            "watch dir",
            "FAIL",
            f"{watch_dir}: {error.strerror} ({type(error).__name__}) as uid {os.getuid()}: the shipper "
            "must list it and delete shipped cores",
            f"give uid {os.getuid()} rwx on {watch_dir} (the chart's nodeSetup.directoryUid)",
        )
    return Check("watch dir", "OK", f"{watch_dir} is a directory uid {os.getuid()} can read and write")


def filesystem_check(real_path: str, proc_root: Path) -> Check:
    name = "watch dir filesystem"
    mount = find_mount(_read(proc_root / "self/mountinfo") or "", real_path)
    if mount is None:
        return Check(name, "WARN", "cannot tell: /proc/self/mountinfo is unreadable")
    where = f"{mount.fstype} ({mount.source}, mounted at {mount.mount_point})"
    if mount.fstype in REMOTE_FILESYSTEMS or mount.fstype.startswith("fuse"):
        return Check(
            name,
            "WARN",
            f"{where}: inotify misses files written by other clients of this filesystem; "
            "they are found only by the periodic rescan",
            "use a local directory (hostPath) or keep --rescan-interval short",
        )
    if mount.fstype in CONTAINER_LAYERS:
        return Check(
            name,
            "WARN",
            f"{where}: this is the container's own filesystem, nothing on the node writes here",
            "mount the node's core directory at the watch dir (hostPath)",
        )
    if mount.fstype in MEMORY_FILESYSTEMS:
        return Check(
            name, "WARN", f"{where}: cores waiting here take node memory", "use a disk-backed directory"
        )
    return Check(name, "OK", where)


def free_space_check(watch_dir: Path, fs: os.statvfs_result) -> Check:
    total = fs.f_blocks * fs.f_frsize
    free = fs.f_bavail * fs.f_frsize
    fraction = free / total if total else 0.0
    detail = f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB ({fraction:.0%})"
    if fraction < MIN_FREE_FRACTION:
        return Check(
            "watch dir free space",
            "WARN",
            f"{detail}: cores may be cut short",
            f"free space on the filesystem holding {watch_dir}",
        )
    return Check("watch dir free space", "OK", detail)


def permissions_check(watch_dir: Path, st: os.stat_result) -> Check:
    mode = stat.S_IMODE(st.st_mode)
    detail = f"mode {mode:04o}, owner {st.st_uid}:{st.st_gid}"
    fix = f"chmod 0770 {watch_dir} (or 1733 if apps run as many uids); the chart's nodeSetup.directoryMode"
    if mode & stat.S_IROTH:
        return Check(
            "watch dir permissions",
            "WARN",
            f"{detail}: anyone on the node can list it, and read cores not written 0600 (cores hold secrets)",
            fix,
        )
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return Check(
            "watch dir permissions",
            "WARN",
            f"{detail}: anyone on the node can delete or replace cores (no sticky bit)",
            fix,
        )
    return Check("watch dir permissions", "OK", detail)


def inotify_check(proc_root: Path) -> Check:
    values: dict[str, int] = {}
    for name in INOTIFY_MINIMUMS:
        text = _read(proc_root / "sys/fs/inotify" / name)
        if text is None or not text.isdigit():
            return Check("fs.inotify", "WARN", f"cannot read fs.inotify.{name}")
        values[name] = int(text)
    detail = " ".join(f"{name}={value}" for name, value in values.items())
    small = [name for name, minimum in INOTIFY_MINIMUMS.items() if values[name] < minimum]
    if small:
        fixes = " ".join(f"fs.inotify.{name}={INOTIFY_MINIMUMS[name] * 16}" for name in small)
        return Check(
            "fs.inotify",
            "WARN",
            f"{detail}: {', '.join(small)} tiny (limits are shared by every process of the uid; "
            "overflows cost a full rescan)",
            f"sysctl -w {fixes}",
        )
    return Check("fs.inotify", "OK", detail)


# Node protection ---------------------------------------------------------------------------------


def disk_budget_check(config: Config) -> Check:
    name = "disk budget"
    policy = afterupload.for_daemon(config.after_upload, config.state_path)
    ignored = afterupload.IgnoreFilter(config.ignore, policy)
    budget = DiskBudget(
        config.watch_dir, config.max_use, config.keep_free, ignored, Metrics(process=False), policy
    )
    max_use, keep_free = budget.limits()
    used = budget.usage()
    fs = os.statvfs(config.watch_dir)
    free = fs.f_bavail * fs.f_frsize
    detail = (
        f"cores use {_mib(used)} (--max-use {_mib(max_use) if max_use else 'off'}), "
        f"{_mib(free)} free (--keep-free {_mib(keep_free) if keep_free else 'off'})"
    )
    if not max_use and not keep_free:
        return Check(name, "WARN", detail, "set --max-use and --keep-free: cores can fill the node's disk")
    if (max_use and used > max_use) or (keep_free and free < keep_free):
        return Check(
            name,
            "WARN",
            detail + ": over budget, the oldest unshipped cores will be deleted",
            "ship the backlog (is S3 reachable?) or raise the budget",
        )
    return Check(name, "OK", detail)


def storm_limit_check(config: Config) -> Check:
    name = "storm limit"
    if config.storm_limit == 0:
        return Check(name, "WARN", "off: a crash loop ships every core", "set --storm-limit (e.g. 10)")
    window = f"{config.storm_window:.0f}s"
    detail = f"at most {config.storm_limit} cores of one program of one workload per {window}"
    if "%e" not in config.filename_pattern and "%E" not in config.filename_pattern:
        return Check(
            name,
            "WARN",
            detail + ", but --filename-pattern names no program (%e/%E): nothing is limited",
            "use a core_pattern and --filename-pattern with %e",
        )
    return Check(name, "OK", detail + "; the rest keep a metadata-only manifest")


def _mib(count: int) -> str:
    return f"{count / 1024 / 1024:,.1f} MiB"
