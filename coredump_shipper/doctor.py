"""`coredump-shipper doctor`: check a node's set-up once, say how to fix each problem.

Every check returns OK / WARN / FAIL with a one-line fix. Checks never raise: a check that breaks
becomes a FAIL row of its own, so one problem cannot hide the others. /proc is injectable so tests
can show the branches the test machine cannot (a pipe core_pattern, an NFS watch directory).
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import stat
import string
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import aiohttp
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError, SSLError

from coredump_shipper.config import Config
from coredump_shipper.corename import CoreNamePattern
from coredump_shipper.errors import ConfigError
from coredump_shipper.naming import KeyTemplate
from coredump_shipper.retry import describe
from coredump_shipper.service import client_settings
from coredump_shipper.uploader import s3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
else:
    S3Client = Any

Status = Literal["OK", "WARN", "FAIL"]
T = TypeVar("T")

# A doctor run must answer in seconds when S3 is down, whatever the daemon's own timeouts are.
# The call timeout bounds each call: the read timeout does not cover a PUT waiting for "100 Continue"
# from a server that accepts connections and never answers.
S3_CONNECT_TIMEOUT = 3.0
S3_READ_TIMEOUT = 4.0
S3_CALL_TIMEOUT = 5.0
CREDENTIALS_TIMEOUT = 5.0

SUGGESTED_NAME = "core.%h.%e.sig%s.%p.%t"
PROBE_NAME = ".coredump-shipper-probe"
PROBE_BODY = b"coredump-shipper doctor probe: safe to delete\n"
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

CREDENTIAL_SOURCES = {
    "env": "environment variables",
    "shared-credentials-file": "shared credentials file",
    "config-file": "AWS config file",
    "assume-role": "assumed role from the config file",
    "assume-role-with-web-identity": "web identity token (IRSA / pod identity)",
    "sso": "SSO",
    "custom-process": "credential_process",
    "container-role": "container credentials endpoint (EKS Pod Identity / ECS)",
    "iam-role": "instance metadata (the node's instance profile)",
}


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    status: Status
    detail: str
    fix: str = ""


# Hook for settings that add their own lines (disk budget, rate limits): pass them to run_doctor.
ExtraCheck = Callable[[Config], Check]


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
        ("RLIMIT_CORE", lambda: [rlimit_core_check()]),
        ("watch dir", lambda: watch_dir_checks(config.watch_dir, proc_root)),
        ("fs.inotify", lambda: [inotify_check(proc_root)]),
    ]
    local += [(_callable_name(extra), _as_list(extra, config)) for extra in extra_checks]
    for name, run in local:
        checks += _guarded(name, run)
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
    checks = [destination_check(config, pattern, proc_root)]
    if not pattern.startswith("|"):
        name = pattern.rsplit("/", 1)[-1]
        checks.append(fields_check(config, name, uses_pid))
        checks.append(filename_pattern_check(config, name, uses_pid))
    meaning = {"1": "the kernel appends .PID to names without %p", "0": "no .PID suffix is added"}
    checks.append(
        Check("kernel.core_uses_pid", "OK", f"{uses_pid}: {meaning.get(uses_pid or '', 'unknown')}")
    )
    return checks


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


# S3 ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Problem:
    """What an S3 failure means for the operator."""

    detail: str
    fix: str
    # True when later calls cannot do better (server unreachable, TLS, no credentials).
    unreachable: bool = False


_IAM_ACTIONS = {
    "HeadBucket": "s3:ListBucket on arn:aws:s3:::{bucket} (readiness uses HeadBucket)",
    "PutObject": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "CreateMultipartUpload": "s3:PutObject on arn:aws:s3:::{bucket}/*",
    "AbortMultipartUpload": "s3:AbortMultipartUpload on arn:aws:s3:::{bucket}/*",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads on arn:aws:s3:::{bucket}",
    "DeleteObject": "s3:DeleteObject on arn:aws:s3:::{bucket}/* (only the doctor's probe needs it)",
}
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"}
)
# Codes stores give when they reject the CRC32 checksum headers botocore sends with when_supported.
_CHECKSUM_SUSPECTS = frozenset(
    {"InvalidArgument", "NotImplemented", "InvalidRequest", "XAmzContentSHA256Mismatch", "BadDigest"}
)


def s3_problem(error: BaseException, config: Config, operation: str) -> S3Problem:
    """The S3 error code (or connection failure) and the setting that fixes it."""
    if isinstance(error, ClientError):
        return _client_error_problem(error, config, operation)
    detail = describe(error)
    if isinstance(error, SSLError):
        return S3Problem(detail, "--ca-bundle (the endpoint's CA) or --endpoint-url", unreachable=True)
    if isinstance(error, NoCredentialsError):
        return S3Problem(detail, "provide credentials (see the S3 credentials row)", unreachable=True)
    if isinstance(error, ConnectionError | HTTPClientError | aiohttp.ClientError | TimeoutError | OSError):
        endpoint = config.endpoint_url or "the AWS default endpoint"
        return S3Problem(
            f"{detail} (endpoint {endpoint})",
            "--endpoint-url, or the network path to it (DNS, proxy, NetworkPolicy)",
            unreachable=True,
        )
    return S3Problem(detail, "see the error above")


def _client_error_problem(error: ClientError, config: Config, operation: str) -> S3Problem:
    err = error.response.get("Error", {})
    code, message = str(err.get("Code", "")), str(err.get("Message", ""))
    detail = f"{operation}: {describe(error)}"
    if "checksum" in (code + message).lower() or (
        config.checksum_mode == "when_supported" and code in _CHECKSUM_SUSPECTS
    ):
        return S3Problem(
            detail, "--checksum-mode when_required (the store rejects botocore's CRC32 checksums)"
        )
    action = _IAM_ACTIONS.get(operation, "the S3 action above").format(bucket=config.bucket)
    kms = " and kms:GenerateDataKey on the bucket's KMS key" if "kms" in message.lower() else ""
    region = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
    fixes = {
        **dict.fromkeys(
            ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"),
            (f"the IAM policy (or bucket policy) must allow {action}{kms}", False),
        ),
        **dict.fromkeys(
            ("NoSuchBucket", "404"),
            (f"--bucket (no bucket {config.bucket!r} at this endpoint) or --endpoint-url", True),
        ),
        **dict.fromkeys(
            (
                "301",
                "PermanentRedirect",
                "AuthorizationHeaderMalformed",
                "IllegalLocationConstraintException",
            ),
            (f"--region {region}" if region else "--region (the bucket's region)", True),
        ),
        **dict.fromkeys(
            _CREDENTIAL_CODES, ("the credentials do not fit this endpoint: check the key pair or role", True)
        ),
        "RequestTimeTooSkewed": ("the node's clock is off: fix NTP", False),
    }
    fix, unreachable = fixes.get(code, ("see the S3 error code above", False))
    return S3Problem(detail, fix, unreachable)


async def s3_checks(config: Config, *, write_probe: bool) -> list[Check]:
    """Credentials, endpoint, HeadBucket, then a probe object and a multipart upload, each aborted."""
    credentials, hidden = await credentials_check()
    checks = [credentials]
    settings = replace(
        client_settings(config),
        connect_timeout=min(config.connect_timeout, S3_CONNECT_TIMEOUT),
        read_timeout=min(config.read_timeout, S3_READ_TIMEOUT),
    )
    try:
        async with s3_client(settings) as client:
            checks.append(endpoint_check(config, client))
            head, reachable = await head_bucket_check(config, client, write_probe)
            checks.append(head)
            if write_probe and reachable:
                checks.append(await write_probe_check(config, client))
                checks.append(await multipart_check(config, client))
            elif not write_probe:
                checks.append(Check("S3 write probe", "OK", "skipped (read-only check asked for)"))
    except Exception as error:
        problem = s3_problem(error, config, "creating the S3 client")
        checks.append(Check("S3 client", "FAIL", problem.detail, problem.fix))
    return [_redact(check, hidden) for check in checks]


def _redact(check: Check, hidden: Sequence[str]) -> Check:
    """Belt and braces: no error text may carry a key, whatever a store puts in its messages."""
    detail, fix = check.detail, check.fix
    for value in hidden:
        if len(value) >= 8:
            detail, fix = detail.replace(value, "<redacted>"), fix.replace(value, "<redacted>")
    return replace(check, detail=detail, fix=fix)


async def credentials_check() -> tuple[Check, list[str]]:
    """Which provider of botocore's chain answered; the key id's last 4 characters at most."""
    name = "S3 credentials"
    fix = (
        "set credentials: a Secret (credentials.existingSecret), IRSA / pod identity, or an instance profile"
    )
    try:
        credentials = await asyncio.wait_for(get_session().get_credentials(), CREDENTIALS_TIMEOUT)
        if credentials is None:
            return Check(name, "FAIL", "no credentials found in botocore's chain", fix), []
        frozen = await asyncio.wait_for(credentials.get_frozen_credentials(), CREDENTIALS_TIMEOUT)
    except Exception as error:
        # Only the error's type and code: provider errors can quote their configuration.
        code = error.response.get("Error", {}).get("Code", "") if isinstance(error, ClientError) else ""
        return Check(name, "FAIL", f"the credential provider failed: {type(error).__name__} {code}", fix), []
    method = str(credentials.method)
    source = CREDENTIAL_SOURCES.get(method, method)
    key_id = frozen.access_key or ""
    tail = f", access key id ...{key_id[-4:]}" if len(key_id) > 8 else ""
    temporary = ", temporary (with session token)" if frozen.token else ""
    hidden = [value for value in (frozen.access_key, frozen.secret_key, frozen.token) if value]
    return Check(name, "OK", f"{source} ({method}){tail}{temporary}"), hidden


def endpoint_check(config: Config, client: S3Client) -> Check:
    if config.endpoint_url:
        origin = "--endpoint-url"
    else:
        origin = next(
            (name for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(name)),
            "AWS default",
        )
    return Check(
        "S3 endpoint",
        "OK",
        f"{client.meta.endpoint_url} ({origin}), region {client.meta.region_name}, bucket "
        f"{config.bucket}, addressing {config.addressing_style}, checksums {config.checksum_mode}",
    )


async def _call(call: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(call, S3_CALL_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(f"no answer within {S3_CALL_TIMEOUT:.0f}s") from None


async def _attempt(call: Awaitable[Any]) -> Exception | None:
    try:
        await _call(call)
    except Exception as error:
        return error
    return None


async def head_bucket_check(config: Config, client: S3Client, write_probe: bool) -> tuple[Check, bool]:
    """The check and whether later calls are worth making."""
    error = await _attempt(client.head_bucket(Bucket=config.bucket))
    if error is None:
        return Check("S3 HeadBucket", "OK", f"bucket {config.bucket} answered"), True
    problem = s3_problem(error, config, "HeadBucket")
    skipped = " (write probe not tried)" if problem.unreachable and write_probe else ""
    return Check("S3 HeadBucket", "FAIL", problem.detail + skipped, problem.fix), not problem.unreachable


def probe_key(config: Config, kind: str = "") -> str:
    """A key where cores go (so prefix-scoped IAM policies apply), under a name no core has."""
    fields = tuple(name for _, name, _, _ in string.Formatter().parse(config.key_template) if name)
    template = KeyTemplate(config.key_template, fields)
    filename = f"{PROBE_NAME}-{config.node_name}-{secrets.token_hex(6)}{kind}"
    return template.render(
        {
            "cluster": config.cluster_name,
            "node": config.node_name,
            "filename": filename,
            "crash_time": datetime.now(UTC),
        }
    )


async def write_probe_check(config: Config, client: S3Client) -> Check:
    name = "S3 PutObject/DeleteObject"
    key = probe_key(config)
    put = client.put_object(Bucket=config.bucket, Key=key, Body=PROBE_BODY, ContentType="text/plain")
    error = await _attempt(put)
    if error is not None:
        problem = s3_problem(error, config, "PutObject")
        return Check(name, "FAIL", problem.detail, problem.fix)
    error = await _attempt(client.delete_object(Bucket=config.bucket, Key=key))
    if error is not None:
        problem = s3_problem(error, config, "DeleteObject")
        return Check(
            name,
            "WARN",
            f"probe {key} written, but left behind: {problem.detail}",
            "the shipper never deletes objects, so this is harmless: delete the probe by hand",
        )
    return Check(name, "OK", f"probe {key} written and deleted (checksums {config.checksum_mode} accepted)")


async def multipart_check(config: Config, client: S3Client) -> Check:
    """Cores larger than --part-size go in parts; killed uploads are found and aborted at start-up."""
    name = "S3 multipart"
    key = probe_key(config, ".multipart")
    try:
        created = await _call(client.create_multipart_upload(Bucket=config.bucket, Key=key))
    except Exception as error:
        problem = s3_problem(error, config, "CreateMultipartUpload")
        return Check(name, "FAIL", f"{problem.detail}: cores above --part-size cannot ship", problem.fix)
    abort = client.abort_multipart_upload(Bucket=config.bucket, Key=key, UploadId=created["UploadId"])
    failure = await _attempt(abort)
    if failure is not None:
        problem = s3_problem(failure, config, "AbortMultipartUpload")
        return Check(
            name,
            "WARN",
            f"failed uploads cannot be aborted; parts of {key} stay stored: {problem.detail}",
            f"{problem.fix}, and an AbortIncompleteMultipartUpload lifecycle rule",
        )
    failure = await _attempt(client.list_multipart_uploads(Bucket=config.bucket, Prefix=key, MaxUploads=1))
    if failure is not None:
        problem = s3_problem(failure, config, "ListMultipartUploads")
        return Check(
            name,
            "WARN",
            f"uploads of a killed shipper are not cleaned up at start-up: {problem.detail}",
            f"{problem.fix}, or an AbortIncompleteMultipartUpload lifecycle rule",
        )
    return Check(name, "OK", "CreateMultipartUpload, AbortMultipartUpload and ListMultipartUploads allowed")
