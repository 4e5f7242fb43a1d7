"""`doctor`: this machine's real /proc, a real S3 server (up, down, silent), and fake /proc trees for
the kernel settings this machine does not have."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, SSLError

from coredump_shipper.config.settings import Config
from coredump_shipper.diagnostics.checkrow import Check
from coredump_shipper.diagnostics.doctor import (
    core_pattern_checks,
    exit_status,
    filesystem_check,
    find_mount,
    free_space_check,
    inotify_check,
    permissions_check,
    render_table,
    rlimit_core_check,
    run_doctor,
    watch_dir_checks,
)
from coredump_shipper.diagnostics.s3store import probe_key, s3_problem
from testkit.bucket import Bucket
from testkit.daemon import ConfigFactory
from testkit.servers import free_port

GOOD_NAME = "core.%h.%e.sig%s.%p.%t"
ACCESS_KEY = "AKIADOCTORTESTKEY7Q2Z"
SECRET_KEY = "doctor-secret-9f8e7d6c5b4a3f2e1d0c"


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [check.name for check in checks]
    assert len(names) == len(set(names)), names
    return {check.name: check for check in checks}


def fake_proc(
    root: Path,
    core_pattern: str,
    *,
    uses_pid: str = "0",
    mountinfo: str | None = None,
    inotify: tuple[int, int, int] = (8192, 128, 16384),
) -> Path:
    """A /proc with just the files doctor reads."""
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/kernel/core_pattern").write_text(core_pattern + "\n")
    (root / "sys/kernel/core_uses_pid").write_text(uses_pid + "\n")
    (root / "sys/fs/inotify").mkdir(parents=True)
    names = ("max_user_watches", "max_user_instances", "max_queued_events")
    for name, value in zip(names, inotify, strict=True):
        (root / "sys/fs/inotify" / name).write_text(f"{value}\n")
    if mountinfo is not None:
        (root / "self").mkdir()
        (root / "self/mountinfo").write_text(mountinfo)
    return root


def mountinfo_line(mount_point: str, root: str = "/", fstype: str = "ext4", source: str = "/dev/sda1") -> str:
    return f"100 1 8:1 {root} {mount_point} rw,relatime shared:1 - {fstype} {source} rw\n"


@contextlib.contextmanager
def core_limit(soft: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, before)


# This machine, end to end -------------------------------------------------------------------------


async def test_this_machine_with_s3_up(make_config: ConfigFactory, bucket: Bucket) -> None:
    config = make_config()
    checks = by_name(await run_doctor(config))
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    row = checks["kernel.core_pattern"]
    if pattern.startswith("|"):
        assert row.status == "FAIL"
    elif not pattern.startswith("/"):
        # This machine: core_pattern is "core".
        assert row.status == "WARN"
        assert "crashing process's cwd" in row.detail
        assert f"kernel.core_pattern={config.watch_dir}/{GOOD_NAME}" in row.fix
    for name in (
        "S3 credentials",
        "S3 endpoint",
        "S3 HeadBucket",
        "S3 PutObject/DeleteObject",
        "S3 multipart",
    ):
        assert checks[name].status == "OK", checks[name]
    assert "environment variables (env)" in checks["S3 credentials"].detail
    assert config.endpoint_url is not None
    assert config.endpoint_url in checks["S3 endpoint"].detail
    assert checks["watch dir"].status == "OK"
    assert not list(config.watch_dir.iterdir()), "the access probe file must be removed"
    # The probe object and the multipart probe are gone.
    assert bucket.keys() == []
    assert bucket.incomplete_uploads() == []
    if not pattern.startswith("|"):
        assert exit_status(list(checks.values())) == 0


async def test_s3_down_fails_quickly(make_config: ConfigFactory) -> None:
    config = make_config(endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout="60s")
    started = time.monotonic()
    checks = await run_doctor(config)
    elapsed = time.monotonic() - started
    assert elapsed < 10
    rows = by_name(checks)
    head = rows["S3 HeadBucket"]
    assert head.status == "FAIL"
    assert "EndpointConnectionError" in head.detail
    assert "--endpoint-url" in head.fix
    assert "S3 PutObject/DeleteObject" not in rows, "no probe once the server is known unreachable"
    assert exit_status(checks) == 1
    assert "FAIL    S3 HeadBucket" in render_table(checks)


async def test_silent_s3_times_out_in_seconds(make_config: ConfigFactory) -> None:
    """A server that accepts connections and never answers: the daemon's 60 s read timeout is not used."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        config = make_config(endpoint_url=f"http://127.0.0.1:{port}", read_timeout="60s")
        started = time.monotonic()
        checks = await run_doctor(config)
        elapsed = time.monotonic() - started
    assert elapsed < 10
    head = by_name(checks)["S3 HeadBucket"]
    assert head.status == "FAIL"
    # botocore's read timeout or, if its retry outlasts the budget, the doctor's own call timeout.
    assert "ReadTimeoutError" in head.detail or "no answer within 5s" in head.detail
    assert elapsed < 7
    assert exit_status(checks) == 1


async def test_missing_bucket_names_the_setting(make_config: ConfigFactory, bucket: Bucket) -> None:
    config = make_config(bucket=f"{bucket.name}-missing")
    checks = by_name(await run_doctor(config))
    head = checks["S3 HeadBucket"]
    assert head.status == "FAIL"
    assert "404" in head.detail
    assert "--bucket" in head.fix
    assert "S3 PutObject/DeleteObject" not in checks


async def test_read_only_run_writes_nothing(make_config: ConfigFactory, bucket: Bucket) -> None:
    checks = by_name(await run_doctor(make_config(), write_probe=False))
    assert checks["S3 HeadBucket"].status == "OK"
    assert "skipped" in checks["S3 write probe"].detail
    assert "S3 multipart" not in checks
    assert bucket.keys() == []


async def test_probe_accepts_when_supported_checksums(make_config: ConfigFactory, bucket: Bucket) -> None:
    checks = by_name(await run_doctor(make_config(checksum_mode="when_supported")))
    assert checks["S3 PutObject/DeleteObject"].status == "OK"
    assert "when_supported accepted" in checks["S3 PutObject/DeleteObject"].detail
    assert bucket.keys() == []


def test_probe_key_goes_where_this_nodes_cores_go(make_config: ConfigFactory) -> None:
    key = probe_key(make_config(key_template="{cluster}/{crash_time:%Y}/{node}/{filename}"))
    assert key.startswith(f"test/{time.gmtime().tm_year}/node-1/coredump-shipper-probe-node-1-")
    assert probe_key(make_config()) != probe_key(make_config())
    # The default template joins node and file name with a dot: one, not two.
    assert probe_key(make_config()).startswith("test/node-1.coredump-shipper-probe-node-1-")


# Credentials ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("s3_up", [True, False])
async def test_keys_never_appear(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, s3_up: bool
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "doctor-session-token-5a4b3c2d1e")
    config = make_config() if s3_up else make_config(endpoint_url=f"http://127.0.0.1:{free_port()}")
    checks = await run_doctor(config)
    table = render_table(checks)
    assert "...7Q2Z" in table
    assert "temporary" in by_name(checks)["S3 credentials"].detail
    for secret in (ACCESS_KEY, SECRET_KEY, "doctor-session-token-5a4b3c2d1e", "DOCTORTESTKEY"):
        assert secret not in table
        assert secret not in repr(checks)


async def test_credentials_from_shared_file(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = make_config()
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    checks = by_name(await run_doctor(config, write_probe=False))
    assert checks["S3 credentials"].status == "OK"
    assert "(shared-credentials-file)" in checks["S3 credentials"].detail
    assert checks["S3 HeadBucket"].status == "OK"
    assert SECRET_KEY not in render_table(list(checks.values()))


# kernel.core_pattern on fake /proc trees --------------------------------------------------------------


def test_pipe_pattern_fails(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    proc = fake_proc(tmp_path / "proc", "|/usr/share/apport/apport -p%p -s%s -c%c -d%d -P%P -u%u -g%g -- %E")
    checks = by_name(core_pattern_checks(config, proc))
    row = checks["kernel.core_pattern"]
    assert row.status == "FAIL"
    assert "/usr/share/apport/apport" in row.detail
    assert f"sysctl -w kernel.core_pattern={config.watch_dir}/{GOOD_NAME}" in row.fix
    # Names are the helper's business: no rows about file name fields.
    assert set(checks) == {"kernel.core_pattern", "kernel.core_uses_pid"}


def test_systemd_coredump_into_its_own_watched_store_warns(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = replace(make_config(), watch_dir=Path("/var/lib/systemd/coredump"))
    proc = fake_proc(tmp_path / "proc", "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h")
    assert by_name(core_pattern_checks(config, proc))["kernel.core_pattern"].status == "WARN"


def test_absolute_pattern_in_watch_dir_with_pod_and_time_is_ok(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(filename_pattern=GOOD_NAME)
    proc = fake_proc(tmp_path / "proc", f"{config.watch_dir}/{GOOD_NAME}")
    checks = by_name(core_pattern_checks(config, proc))
    assert {name: check.status for name, check in checks.items()} == {
        "kernel.core_pattern": "OK",
        "core_pattern fields": "OK",
        "--filename-pattern": "OK",
        "cores of other uids": "OK",  # the tests run as root
        "kernel.core_uses_pid": "OK",
    }


@pytest.mark.parametrize(
    ("name", "uses_pid", "missing"),
    [
        ("core.%e.sig%s.%p.%t", "0", ["%h"]),
        ("core.%h.%e.sig%s.%p", "0", ["%t"]),
        ("core.%h.%e.%t", "0", ["%p"]),
        ("core.%h.%e.%t", "1", []),
        ("core", "1", ["%h", "%t"]),
    ],
)
def test_missing_fields_warn(
    make_config: ConfigFactory, tmp_path: Path, name: str, uses_pid: str, missing: list[str]
) -> None:
    config = make_config(filename_pattern=name)
    proc = fake_proc(tmp_path / "proc", f"{config.watch_dir}/{name}", uses_pid=uses_pid)
    checks = by_name(core_pattern_checks(config, proc))
    row = checks["core_pattern fields"]
    assert row.status == ("WARN" if missing else "OK")
    for spec in missing:
        assert f"no {spec}" in row.detail
    assert checks["kernel.core_pattern"].status == "OK"
    assert checks["--filename-pattern"].status == "OK"
    assert checks["kernel.core_uses_pid"].detail.startswith(uses_pid)


def test_filename_pattern_mismatch_warns_with_the_value_to_use(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(filename_pattern="core.%e.sig%s.%p.%t")
    proc = fake_proc(tmp_path / "proc", f"{config.watch_dir}/{GOOD_NAME}")
    row = by_name(core_pattern_checks(config, proc))["--filename-pattern"]
    assert row.status == "WARN"
    assert row.fix == f"--filename-pattern '{GOOD_NAME}'"


def test_pattern_with_unreadable_name_warns(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    proc = fake_proc(tmp_path / "proc", f"{config.watch_dir}/core.%e%p")
    row = by_name(core_pattern_checks(config, proc))["--filename-pattern"]
    assert row.status == "WARN"
    assert "cannot be read back" in row.detail


def test_pattern_elsewhere_warns_and_explains_the_container_view(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    proc = fake_proc(tmp_path / "proc", f"/var/crash/{GOOD_NAME}", mountinfo=mountinfo_line("/"))
    row = by_name(core_pattern_checks(config, proc))["kernel.core_pattern"]
    assert row.status == "WARN"
    assert "/var/crash" in row.detail
    assert str(config.watch_dir) in row.detail
    assert "container" in row.detail
    assert "--watch-dir /var/crash" in row.fix


def test_pattern_into_the_node_dir_mounted_at_the_watch_dir_is_ok(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    # A hostPath: the node's /var/coredump (on the root filesystem) bind-mounted at the watch dir.
    mounts = mountinfo_line("/") + mountinfo_line(str(config.watch_dir), root="/var/coredump")
    proc = fake_proc(tmp_path / "proc", f"/var/coredump/{GOOD_NAME}", mountinfo=mounts)
    row = by_name(core_pattern_checks(config, proc))["kernel.core_pattern"]
    assert row.status == "OK"
    assert "app pods must mount it at /var/coredump" in row.detail


def test_per_pod_subdirectories_warn(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    proc = fake_proc(tmp_path / "proc", f"{config.watch_dir}/%h/core.%e.%p.%t")
    row = by_name(core_pattern_checks(config, proc))["kernel.core_pattern"]
    assert row.status == "WARN"
    assert "subdirectories" in row.detail


def test_unreadable_core_pattern_warns(make_config: ConfigFactory, tmp_path: Path) -> None:
    checks = core_pattern_checks(make_config(), tmp_path / "empty-proc")
    assert [(c.name, c.status) for c in checks] == [("kernel.core_pattern", "WARN")]


async def test_full_run_on_fake_proc_with_pipe_exits_1(make_config: ConfigFactory, tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", "|/bin/false")
    checks = await run_doctor(make_config(), write_probe=False, proc_root=proc)
    assert exit_status(checks) == 1
    assert [c.name for c in checks if c.status == "FAIL"] == ["kernel.core_pattern"]


# RLIMIT_CORE, watch dir, inotify ---------------------------------------------------------------------


def test_rlimit_core_zero_warns_and_names_the_runtime() -> None:
    with core_limit(0):
        row = rlimit_core_check()
    assert row.status == "WARN"
    assert "LimitCORE" in row.detail
    assert "container runtime" in row.detail


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY, reason="hard limit is finite"
)
def test_rlimit_core_unlimited_is_ok() -> None:
    with core_limit(resource.RLIM_INFINITY):
        row = rlimit_core_check()
    assert row.status == "OK"
    assert "soft unlimited" in row.detail


def test_small_rlimit_core_warns() -> None:
    with core_limit(4096):
        row = rlimit_core_check()
    assert row.status == "WARN"
    assert "cut short" in row.detail


def test_missing_and_non_directory_watch_dir_fail(tmp_path: Path) -> None:
    missing = watch_dir_checks(tmp_path / "absent", Path("/proc"))
    assert [(c.name, c.status) for c in missing] == [("watch dir", "FAIL")]
    (tmp_path / "file").write_bytes(b"")
    not_dir = watch_dir_checks(tmp_path / "file", Path("/proc"))
    assert [(c.name, c.status) for c in not_dir] == [("watch dir", "FAIL")]


async def test_missing_watch_dir_fails_the_run(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = replace(make_config(), watch_dir=tmp_path / "absent")
    checks = await run_doctor(config, write_probe=False)
    assert by_name(checks)["watch dir"].status == "FAIL"
    assert exit_status(checks) == 1


def test_watch_dir_on_this_machine(watch_dir: Path) -> None:
    checks = by_name(watch_dir_checks(watch_dir, Path("/proc")))
    assert checks["watch dir"].status == "OK"
    assert not list(watch_dir.iterdir())
    fs = os.statvfs(watch_dir)
    assert checks["watch dir free space"].status == ("OK" if fs.f_bavail / fs.f_blocks >= 0.1 else "WARN")
    real_type = find_mount(Path("/proc/self/mountinfo").read_text(), os.path.realpath(watch_dir))
    assert real_type is not None
    assert checks["watch dir filesystem"].detail.startswith(real_type.fstype)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory")
def test_unwritable_watch_dir_fails(watch_dir: Path) -> None:
    watch_dir.chmod(0o500)
    try:
        row = by_name(watch_dir_checks(watch_dir, Path("/proc")))["watch dir"]
    finally:
        watch_dir.chmod(0o700)
    assert row.status == "FAIL"


@pytest.mark.parametrize(
    ("mode", "status"),
    [(0o700, "OK"), (0o770, "OK"), (0o1733, "OK"), (0o755, "WARN"), (0o777, "WARN"), (0o733, "WARN")],
)
def test_permissions(watch_dir: Path, mode: int, status: str) -> None:
    watch_dir.chmod(mode)
    row = permissions_check(watch_dir, os.stat(watch_dir))
    assert row.status == status
    assert f"mode {mode:04o}" in row.detail


@pytest.mark.parametrize(
    ("fstype", "status", "words"),
    [
        ("ext4", "OK", "ext4"),
        ("xfs", "OK", "xfs"),
        ("nfs4", "WARN", "other clients"),
        ("fuse.sshfs", "WARN", "other clients"),
        ("9p", "WARN", "other clients"),
        ("overlay", "WARN", "container's own filesystem"),
        ("tmpfs", "WARN", "memory"),
    ],
)
def test_filesystem_types(tmp_path: Path, fstype: str, status: str, words: str) -> None:
    mounts = mountinfo_line("/") + mountinfo_line("/var/core dumps", fstype=fstype).replace(
        " dumps", "\\040dumps"
    )
    proc = fake_proc(tmp_path / "proc", "core", mountinfo=mounts)
    row = filesystem_check("/var/core dumps/sub", proc)
    assert row.status == status
    assert words in row.detail
    assert "/var/core dumps" in row.detail


def test_find_mount_takes_the_longest_prefix() -> None:
    mounts = (
        mountinfo_line("/") + mountinfo_line("/var", fstype="xfs") + mountinfo_line("/var/co", fstype="nfs")
    )
    assert find_mount(mounts, "/var/coredump") is not None
    assert find_mount(mounts, "/var/coredump").fstype == "xfs"  # type: ignore[union-attr]
    assert find_mount(mounts, "/var/co/x").fstype == "nfs"  # type: ignore[union-attr]
    assert find_mount(mounts, "/etc").fstype == "ext4"  # type: ignore[union-attr]
    assert find_mount("", "/etc") is None


@pytest.mark.parametrize(("free_blocks", "status"), [(5, "WARN"), (9, "WARN"), (10, "OK"), (60, "OK")])
def test_free_space(tmp_path: Path, free_blocks: int, status: str) -> None:
    fs = os.statvfs_result((4096, 4096, 100, free_blocks, free_blocks, 1000, 500, 500, 0, 255))
    row = free_space_check(tmp_path, fs)
    assert row.status == status
    assert f"({free_blocks}%)" in row.detail


def test_inotify_limits_on_this_machine() -> None:
    row = inotify_check(Path("/proc"))
    watches = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert f"max_user_watches={watches}" in row.detail


def test_tiny_inotify_limits_warn(tmp_path: Path) -> None:
    row = inotify_check(fake_proc(tmp_path / "proc", "core", inotify=(8192, 4, 100)))
    assert row.status == "WARN"
    assert "max_user_instances, max_queued_events" in row.detail
    assert "fs.inotify.max_queued_events=" in row.fix
    assert "max_user_watches=" not in row.fix


# S3 errors: the code and the setting to change ---------------------------------------------------------


def client_error(
    code: str, status: int, message: str = "", headers: dict[str, str] | None = None
) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "operation", "checksum_mode", "fix", "unreachable"),
    [
        (
            client_error("AccessDenied", 403, "Access Denied"),
            "PutObject",
            "when_required",
            "s3:PutObject",
            False,
        ),
        (client_error("403", 403), "HeadBucket", "when_required", "s3:ListBucket", False),
        (
            client_error("AccessDenied", 403, "denied by kms key policy"),
            "PutObject",
            "when_required",
            "kms:GenerateDataKey",
            False,
        ),
        (client_error("NoSuchBucket", 404), "PutObject", "when_required", "--bucket", True),
        (
            client_error("301", 301, headers={"x-amz-bucket-region": "eu-west-3"}),
            "HeadBucket",
            "when_required",
            "--region eu-west-3",
            True,
        ),
        (
            client_error("InvalidArgument", 400, "x-amz-checksum-crc32"),
            "PutObject",
            "when_supported",
            "when_required",
            False,
        ),
        (
            client_error("NotImplemented", 501),
            "PutObject",
            "when_supported",
            "--checksum-mode when_required",
            False,
        ),
        (
            client_error("XAmzContentChecksumMismatch", 400),
            "PutObject",
            "when_required",
            "--checksum-mode",
            False,
        ),
        (client_error("SignatureDoesNotMatch", 403), "PutObject", "when_required", "key pair", True),
        (client_error("RequestTimeTooSkewed", 403), "PutObject", "when_required", "NTP", False),
        (client_error("SlowDown", 503), "PutObject", "when_required", "error code", False),
        (
            SSLError(endpoint_url="https://s3.local", error=ValueError("bad cert")),
            "HeadBucket",
            "when_required",
            "--ca-bundle",
            True,
        ),
        (
            EndpointConnectionError(endpoint_url="http://x"),
            "HeadBucket",
            "when_required",
            "--endpoint-url",
            True,
        ),
        (TimeoutError(), "HeadBucket", "when_required", "--endpoint-url", True),
    ],
)
def test_s3_problem_names_the_code_and_the_setting(
    make_config: ConfigFactory,
    error: Exception,
    operation: str,
    checksum_mode: str,
    fix: str,
    unreachable: bool,
) -> None:
    config: Config = make_config(checksum_mode=checksum_mode)
    problem = s3_problem(error, config, operation)
    assert fix in problem.fix
    assert problem.unreachable is unreachable
    if isinstance(error, ClientError):
        assert error.response["Error"]["Code"] in problem.detail
        assert operation in problem.detail


# The table and the hook ---------------------------------------------------------------------------------


def test_render_table_aligns_rows_and_indents_fixes() -> None:
    checks = [
        Check("a", "OK", "fine"),
        Check("longer name", "WARN", "meh\nsecond line", "do this"),
        Check("b", "FAIL", "broken", "do that"),
    ]
    lines = render_table(checks).splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    column = lines[0].index("DETAIL")
    assert [line[column:] for line in lines[1:6]] == [
        "fine",
        "meh second line",
        "fix: do this",
        "broken",
        "fix: do that",
    ]
    assert lines[3][:column].strip() == ""
    assert lines[-1] == "1 FAIL, 1 WARN, 1 OK"
    assert exit_status(checks) == 1
    assert exit_status(checks[:2]) == 0


async def test_extra_checks_add_rows_and_a_broken_one_fails_alone(make_config: ConfigFactory) -> None:
    def extra(config: Config) -> Check:
        return Check("extra", "OK", f"{config.watch_dir} looked at")

    def broken(config: Config) -> Check:
        raise RuntimeError("boom")

    checks = by_name(await run_doctor(make_config(), write_probe=False, extra_checks=[extra, broken]))
    assert checks["extra"].status == "OK"
    assert checks["disk budget"].status == "OK" and checks["storm limit"].status == "OK"
    assert checks["broken"].status == "FAIL"
    assert "RuntimeError: boom" in checks["broken"].detail
    assert checks["S3 HeadBucket"].status == "OK"
