"""The pipe receiver's crash facts as the shipper reads them: hostile input, bound to one core,
in keys, metadata and manifests, removed with their core; the core-pattern command; doctor's
pipe-mode checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper import __version__
from coredump_shipper.bucket.keys import TEMPLATE_FIELDS, KeyTemplate
from coredump_shipper.capture import crashfacts
from coredump_shipper.capture.disklimit import DiskLimit
from coredump_shipper.capture.pattern import RECEIVER_DEFAULT_MAX_USE, parse_pipe_line, pipe_line
from coredump_shipper.config.settings import SETTINGS_BY_NAME
from coredump_shipper.core import companions
from coredump_shipper.core.facts import gather
from coredump_shipper.core.file import CoreFile
from coredump_shipper.core.name import CoreNamePattern
from coredump_shipper.diagnostics.doctor import core_pattern_checks
from coredump_shipper.errors import ConfigError
from coredump_shipper.ops.metrics import Metrics
from coredump_shipper.ship import afterupload
from coredump_shipper.ship.claims import Claims
from coredump_shipper.ship.diskbudget import DiskBudget
from testkit.bucket import Bucket
from testkit.daemon import ConfigFactory, running
from testkit.receiver import build_receiver, receive
from testkit.waiting import wait_until

POD_UID = "8d3f2a1c-5b6e-4c7d-9e8f-0a1b2c3d4e5f"
CONTAINER_ID = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0"
PATTERN = CoreNamePattern.compile("core.%h.%e.sig%s.%P.%t")


def facts_json(ino: int, length: int, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": 1,
        "receiver": __version__,
        "inode": ino,
        "size": length,
        "truncated": False,
        "global_pid": 4242,
        "pid": 7,
        "uid": 1000,
        "gid": 1001,
        "signal": 6,
        "time": 1_700_000_000,
        "hostname": "web-7d9f",
        "comm": "myapp",
        "exe_path": "/usr/bin/myapp",
        "cgroup": f"/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}",
        "pod_uid": POD_UID,
        "container_id": CONTAINER_ID,
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


def plant(directory: Path, name: str, content: bytes, **changes: Any) -> Path:
    core = directory / name
    core.write_bytes(content)
    st = core.stat()
    sidecar = directory / crashfacts.sidecar_name(name)
    sidecar.write_text(json.dumps(facts_json(st.st_ino, st.st_size, **changes)))
    return core


def test_valid_facts_are_read() -> None:
    facts = crashfacts.parse(json.dumps(facts_json(5, 9)).encode(), 5, 9)
    assert (facts.global_pid, facts.pid, facts.uid, facts.gid, facts.signal) == (4242, 7, 1000, 1001, 6)
    assert (facts.pod_uid, facts.container_id, facts.hostname) == (POD_UID, CONTAINER_ID, "web-7d9f")
    assert facts.crash_time.timestamp() == 1_700_000_000 and facts.cut_short is None


@pytest.mark.parametrize(
    "changes",
    [
        {"format": 2},
        {"inode": 6},  # another core's facts
        {"size": 10},  # the core changed since
        {"uid": -1},
        {"uid": 2**32},
        {"uid": True},
        {"uid": "1000"},
        {"global_pid": ...},
        {"signal": 1.5},
        {"pod_uid": POD_UID.upper()},
        {"pod_uid": POD_UID.replace("-", "_")},
        {"container_id": f"containerd://{CONTAINER_ID}"},
        {"container_id": CONTAINER_ID[:12]},
        {"hostname": "x" * 65},
        {"hostname": ["a"]},
        {"cgroup": "c" * 1025},
        {"truncated_reason": "because"},
        {"dump_mode": 0},
        {"dump_mode": 3},
        {"dump_mode": "2"},
        {"dump_mode": True},
        {"capture": "file"},
        {"capture": 1},
    ],
)
def test_hostile_facts_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        crashfacts.parse(json.dumps(facts_json(5, 9, **changes)).encode(), 5, 9)


@pytest.mark.parametrize("text", [b"", b"[]", b"\xff\xfe", b"[" * 100_000, b'{"format": 1'])
def test_malformed_facts_are_refused(text: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        crashfacts.parse(text, 5, 9)


def test_links_fifos_and_big_files_are_never_read(tmp_path: Path) -> None:
    core = tmp_path / "core.a"
    core.write_bytes(b"x")
    st = core.stat()
    sidecar = tmp_path / crashfacts.sidecar_name("core.a")
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(facts_json(st.st_ino, 1)))
    sidecar.symlink_to(target)
    assert crashfacts.read(tmp_path, "core.a", st.st_ino, 1) is None
    sidecar.unlink()
    os.mkfifo(sidecar)  # would block a plain open
    assert crashfacts.read(tmp_path, "core.a", st.st_ino, 1) is None
    sidecar.unlink()
    os.link(target, sidecar)  # a second name of some other file
    assert crashfacts.read(tmp_path, "core.a", st.st_ino, 1) is None
    sidecar.unlink()
    sidecar.write_text(json.dumps(facts_json(st.st_ino, 1, comm=" " * 20_000)))
    assert crashfacts.read(tmp_path, "core.a", st.st_ino, 1) is None
    sidecar.write_text(json.dumps(facts_json(st.st_ino, 1)))
    assert crashfacts.read(tmp_path, "core.a", st.st_ino, 1) is not None


def test_receiver_files_are_ignored_whatever_ignore_says(make_config: ConfigFactory) -> None:
    config = make_config(ignore="")
    ignored = afterupload.IgnoreFilter(
        config.ignore, afterupload.for_daemon(config.after_upload, config.state_path)
    )
    assert ignored(".core.x.crash.json")
    assert ignored(".coredump-receive.42.core.tmp")
    assert not ignored("core.x") and not ignored("x.crash.json")


def test_template_values_contract(tmp_path: Path) -> None:
    """pod_uid (dashed) and container_id (64 hex, no runtime prefix) for pod identity lookups."""
    core = plant(tmp_path, "core.web-7d9f.myapp.sig6.4242.1700000000", b"not an ELF core")
    with CoreFile(core) as opened:
        facts = gather(opened, PATTERN, "prod", "node-1", "zstd")
    assert facts.template_values["pod_uid"] == POD_UID
    assert facts.template_values["container_id"] == CONTAINER_ID
    assert {"pod_uid", "container_id"} <= set(TEMPLATE_FIELDS)
    values = facts.template_values
    assert (values["pid"], values["global_pid"], values["uid"], values["gid"]) == (7, 4242, 1000, 1001)
    assert facts.metadata["pod-uid"] == POD_UID and facts.metadata["container-id"] == CONTAINER_ID
    assert facts.metadata["capture"] == "pipe" and facts.metadata["cgroup"].endswith(CONTAINER_ID)
    key = KeyTemplate("{pod_uid}/{container_id}/{filename}", TEMPLATE_FIELDS).render(values)
    assert key == f"{POD_UID}/{CONTAINER_ID}/{core.name}"
    plain = tmp_path / "core.other"
    plain.write_bytes(b"x")
    with CoreFile(plain) as opened:
        without = gather(opened, PATTERN, "prod", "node-1", "zstd").template_values
    assert without["pod_uid"] is None and without["container_id"] is None


def test_facts_of_another_file_are_not_used(tmp_path: Path) -> None:
    core = plant(tmp_path, "core.web.myapp.sig6.4242.1700000000", b"core", size=999)
    with CoreFile(core) as opened:
        facts = gather(opened, PATTERN, "prod", "node-1", "zstd")
    assert facts.template_values["pod_uid"] is None and "capture" not in facts.metadata


def test_the_capture_is_the_receivers_and_pipe_for_older_receivers(tmp_path: Path) -> None:
    # Receivers before `serve` wrote no capture: they could only be a core_pattern pipe.
    for written, expected in (({"capture": "socket"}, "socket"), ({"capture": "pipe"}, "pipe"), ({}, "pipe")):
        core = plant(tmp_path, f"core.{expected}.{len(written)}", b"core", **written)
        with CoreFile(core) as opened:
            assert gather(opened, PATTERN, "prod", "node-1", "zstd").metadata["capture"] == expected


def test_suid_safe_dump_is_marked_in_metadata(tmp_path: Path) -> None:
    core = plant(tmp_path, "core.b", b"core", dump_mode=2)
    with CoreFile(core) as opened:
        facts = gather(opened, PATTERN, "prod", "node-1", "zstd")
    assert facts.metadata["dump-mode"] == "2" and facts.by_uid_only
    older = plant(tmp_path, "core.c", b"core")  # facts of a line without -d
    with CoreFile(older) as opened:
        assert "dump-mode" not in gather(opened, PATTERN, "prod", "node-1", "zstd").metadata


@pytest.mark.parametrize("reason", ["keep-free", "max-use", "write-error", "deadline"])
def test_cut_short_core_is_marked_truncated(tmp_path: Path, reason: str) -> None:
    core = plant(tmp_path, "core.a", b"core", truncated=True, truncated_reason=reason)
    with CoreFile(core) as opened:
        facts = gather(opened, PATTERN, "prod", "node-1", "zstd")
    assert facts.metadata["truncated"] == "true" and facts.metadata["cut-short"] == reason


async def test_delete_mode_removes_core_and_facts(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    build_receiver()
    config = make_config(key_template="{cluster}/{pod}/{filename}")
    async with running(config):
        done = receive(watch_dir, b"\x7fELF core bytes", hostname="api-0", comm="server")
        assert done.returncode == 0, done.stderr
        await wait_until(lambda: len(bucket.core_keys()) == 1)
        await wait_until(lambda: os.listdir(watch_dir) == [])
    (key,) = bucket.core_keys()
    assert key.startswith("test/api-0/core.api-0.server.sig11.")
    meta = bucket.head(key)["Metadata"]
    assert (meta["uid"], meta["global-pid"], meta["capture"]) == ("1000", str(os.getpid()), "pipe")
    assert bucket.content(key) == b"\x7fELF core bytes"


async def test_keep_mode_keeps_core_and_facts(
    make_config: ConfigFactory, bucket: Bucket, watch_dir: Path
) -> None:
    build_receiver()
    async with running(make_config(after_upload="keep")):
        assert receive(watch_dir, b"kept core").returncode == 0
        await wait_until(lambda: len(bucket.core_keys()) == 1)
    names = [n for n in os.listdir(watch_dir) if not n.startswith(".coredump-shipper-state")]
    assert len(names) == 2 and any(n.endswith(".crash.json") for n in names)


def test_disk_budget_deletes_facts_with_their_core_and_never_counts_them(tmp_path: Path) -> None:
    core = plant(tmp_path, "core.old", os.urandom(64 * 1024))
    policy = afterupload.Delete()
    ignored = afterupload.IgnoreFilter((), policy)
    budget = DiskBudget(tmp_path, DiskLimit(bytes=1), DiskLimit(), ignored, Metrics(), policy)
    assert budget.usage() == core.stat().st_blocks * 512  # the facts are no core
    assert budget.enforce(Claims()) == ["core.old"]
    assert os.listdir(tmp_path) == []


# core-pattern ------------------------------------------------------------------------------------


def test_pipe_line_is_exact_and_escapes_percent() -> None:
    line = pipe_line(
        "/var/lib/coredump-shipper/coredump-receive", "/var/coredump", 32 << 30, DiskLimit(percent=5), 600
    )
    helper = "|/var/lib/coredump-shipper/coredump-receive"
    assert line == f"{helper} -d %d -m 32G -f 5%% /var/coredump %P %u %g %s %t %h %e"
    assert (
        pipe_line("/r", "/d/", 0, DiskLimit(bytes=3 << 20), 61.5)
        == "|/r -d %d -f 3M -t 62 /d %P %u %g %s %t %h %e"
    )
    every = pipe_line(
        "/opt/bin/coredump-receive",
        "/d",
        0,
        DiskLimit(percent=15),
        600,
        max_use=DiskLimit(bytes=64 << 30),
        scope="all",
    )
    assert every == "|/opt/bin/coredump-receive -d %d -f 15%% -x 64G -s all /d %P %u %g %s %t %h %e"
    for written in (line, every):
        parsed = parse_pipe_line(written)
        assert parsed is not None and parsed.directory == ("/var/coredump" if written == line else "/d")
    assert parse_pipe_line("|/usr/lib/systemd/systemd-coredump %P") is None


@pytest.mark.parametrize(
    ("helper", "watch", "setting"),
    [
        ("/" + "h" * 100, "/var/coredump", "--helper"),  # over 127 bytes
        ("relative/receive", "/var/coredump", "--helper"),
        ("/opt/my receiver", "/var/coredump", "--helper"),
        ("/r", "/var/core%dumps", "--watch-dir"),
    ],
)
def test_pipe_line_refuses(helper: str, watch: str, setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        pipe_line(helper, watch, 0, DiskLimit(), 600)
    assert error.value.setting == setting


def test_core_pattern_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COREDUMP_SHIPPER_")}
    env |= {"COREDUMP_SHIPPER_MAX_CORE_SIZE": "1GiB", "COREDUMP_SHIPPER_RECEIVE_TIMEOUT": "2m"}
    command = [sys.executable, "-m", "coredump_shipper", "core-pattern"]
    done = subprocess.run(
        [*command, "--watch-dir", "/cores"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    helper = "|/var/lib/coredump-shipper/coredump-receive"
    # --max-use at its default (10%) is the receiver's own -x default: the line leaves it out.
    assert done.stdout == f"{helper} -d %d -m 1G -f 15%% -t 120 -a 1h /cores %P %u %g %s %t %h %e\n"
    env["COREDUMP_SHIPPER_MAX_USE"] = "0"
    no_cap = subprocess.run(
        [*command, "--watch-dir", "/c"], env=env, capture_output=True, text=True, check=False
    )
    assert " -x 0 " in no_cap.stdout
    default = SETTINGS_BY_NAME["max-use"]
    assert default.parse(default.default or "") == RECEIVER_DEFAULT_MAX_USE
    too_long = subprocess.run(
        [*command, "--helper", "/" + "x" * 120], env=env, capture_output=True, text=True, check=False
    )
    assert too_long.returncode == 2 and too_long.stdout == ""
    assert too_long.stderr.count("\n") == 1 and "127" in too_long.stderr


# doctor in pipe mode -------------------------------------------------------------------------------


def pipe_proc(root: Path, pattern: str, pipe_limit: str = "16") -> Path:
    (root / "sys/kernel").mkdir(parents=True)
    (root / "sys/kernel/core_pattern").write_text(pattern + "\n")
    (root / "sys/kernel/core_uses_pid").write_text("0\n")
    (root / "sys/kernel/core_pipe_limit").write_text(pipe_limit + "\n")
    return root


def statuses(config: Any, proc: Path) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in core_pattern_checks(config, proc)}


def test_doctor_pipe_mode_ok(make_config: ConfigFactory, tmp_path: Path) -> None:
    receiver = build_receiver()
    config = make_config()
    os.chown(config.watch_dir, os.geteuid(), -1)
    line = f"|{receiver} -m 1G {config.watch_dir} %P %u %g %s %t %h %e"
    rows = statuses(config, pipe_proc(tmp_path / "proc", line))
    assert {name: status for name, (status, _) in rows.items()} == {
        "kernel.core_pattern": "OK",
        "pipe receiver": "OK",
        "kernel.core_pipe_limit": "OK",
        "watch dir owner": "OK",
    }
    assert __version__ in rows["pipe receiver"][1]


def test_doctor_pipe_mode_problems(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    fake = tmp_path / "coredump-receive"
    fake.write_text("#!/bin/sh\necho coredump-receive 0.0.1\n")
    fake.chmod(0o755)
    os.chown(config.watch_dir, 4242, 4242)
    line = f"|{fake} -f 5%% /elsewhere %P %u %g %s %t %h %e"  # paths too long for a real line
    rows = statuses(config, pipe_proc(tmp_path / "proc", line, pipe_limit="0"))
    assert rows["kernel.core_pattern"][0] == "FAIL" and "/elsewhere" in rows["kernel.core_pattern"][1]
    assert rows["pipe receiver"] == ("WARN", f"{fake} is version 0.0.1, the shipper {__version__}")
    assert rows["kernel.core_pipe_limit"][0] == "WARN"
    assert rows["watch dir owner"][0] == "FAIL"
    fake.chmod(0o777)  # anyone could replace what the kernel runs as root
    assert statuses(config, pipe_proc(tmp_path / "proc2", line))["pipe receiver"][0] == "FAIL"
    missing = f"|{tmp_path}/gone/coredump-receive {config.watch_dir} %P %u %g %s %t %h %e"
    assert statuses(config, pipe_proc(tmp_path / "proc3", missing))["pipe receiver"][0] == "WARN"


def test_doctor_file_mode_warns_a_non_root_shipper(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    proc = pipe_proc(tmp_path / "proc", f"{config.watch_dir}/core.%h.%e.sig%s.%p.%t")
    (proc / "self").mkdir()
    (proc / "self/status").write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    row = statuses(replace(config), proc)["cores of other uids"]
    assert row[0] == "WARN" and "uid 1000 can read only" in row[1]


def test_sweep_removes_orphaned_facts_and_stale_leftovers_only(tmp_path: Path) -> None:
    old = 1_000_000.0
    (tmp_path / "core.kept").write_bytes(b"core")
    files = {
        ".core.kept.crash.json": old,  # its core is there: kept
        ".core.gone.crash.json": old,  # its core was deleted by someone else: removed
        ".core.new.crash.json": old + 3000,  # the core is being renamed in right now: kept
        ".coredump-receive.7.core.tmp": old - 86400 * 2,  # a receiver killed two days ago: removed
        ".coredump-receive.8.core.tmp": old,  # a crash being received: kept
        ".notes": old,  # not the receiver's: kept
    }
    for name, mtime in files.items():
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (mtime, mtime))
    names = set(os.listdir(tmp_path))
    removed = companions.sweep(tmp_path, names, now=old + 3030)
    assert sorted(removed) == [".core.gone.crash.json", ".coredump-receive.7.core.tmp"]
    assert set(os.listdir(tmp_path)) == names - set(removed)
