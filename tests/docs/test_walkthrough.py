"""The "Debugging a crash" walkthrough in docs/debugging.md, followed as a user would.

Real kernel cores (one complete, one truncated by RLIMIT_CORE) are shipped by the daemon; then the
commands of the doc's marked ```sh blocks run as subprocesses, their placeholders (`<node>`, `<key>`,
`<exe>`, ...) filled in from what the previous step printed. The commands are read from the doc, so
the doc and this test cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from coredump_shipper.bucket.manifest import SUFFIX as MANIFEST_SUFFIX
from testkit.bucket import Bucket
from testkit.cores import kernel_core, skip_reason
from testkit.daemon import ConfigFactory, running
from testkit.servers import S3Endpoint
from testkit.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "debugging.md"
# A marked block: `<!-- walkthrough: NAME -->` right above a ```sh fence.
BLOCK = re.compile(r"<!-- walkthrough: ([\w-]+) -->\n```sh\n(.*?)\n```", re.S)
PLACEHOLDER = re.compile(r"<([a-z][a-z-]*)>")
# The script's line, then the crash signature (docs/signatures.md).
UPLOADED = re.compile(
    r"\[coredump\] '([^']*)' has been uploaded to '(s3://[^']*)' signature [0-9a-f]{12} \(.*\)"
)
PATTERN = "core.%h.%e.sig%s.%p.%t"
NODE = "node-1"
COMPLETE_POD = "api-7f9c-x2k"
TRUNCATED_POD = "batch-5d8f-q7w"
PROFILE = "cores-readonly"
# What the doc tells the reader gdb prints; the test checks gdb really does.
LOADED = "Program terminated with signal SIGSEGV"
TRUNCATED = "has a segment extending past end of file"
MiB = 1024 * 1024


def walkthrough_blocks(text: str) -> dict[str, list[list[str]]]:
    """Each marked block's commands as argument lists (continuations joined, comments dropped)."""
    blocks: dict[str, list[list[str]]] = {}
    for name, body in BLOCK.findall(text):
        lines = body.replace("\\\n", " ").splitlines()
        blocks[name] = [args for args in (shlex.split(line, comments=True) for line in lines) if args]
    return blocks


def fill(args: list[str], values: Mapping[str, str]) -> list[str]:
    """The arguments with `<name>` placeholders replaced; an unknown placeholder fails the test."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"no value for {match.group(0)} in {shlex.join(args)}"
        return values[match.group(1)]

    return [PLACEHOLDER.sub(value, arg) for arg in args]


def exports(commands: list[list[str]], values: Mapping[str, str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in commands:
        assert command[0] == "export", command
        for assignment in fill(command[1:], values):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def shipper(command: list[str]) -> list[str]:
    """`coredump-shipper ...` as this checkout's code runs it."""
    assert command[0] == "coredump-shipper", command
    return [sys.executable, "-m", "coredump_shipper", *command[1:]]


def run(args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    # The daemon is stopped and S3 is another process: blocking the event loop here holds up nothing.
    done = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{shlex.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def workstation_env(tmp_path: Path, s3_server: S3Endpoint, doc_env: Mapping[str, str]) -> dict[str, str]:
    """A shell set up as the doc says: credentials from a named profile, not from the environment."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.pop("DEBUGINFOD_URLS", None)  # gdb must not go to the network
    env.update(
        HOME=str(tmp_path),  # no personal gdbinit or ~/.aws
        PYTHONPATH=str(ROOT),
        AWS_SHARED_CREDENTIALS_FILE=str(credentials),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
    )
    env.update(doc_env)
    return env


def table_row(table: str, pod: str) -> list[str]:
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["TIME", "(UTC)"], table
    rows = [line for line in lines[1:] if f"  {pod}  " in line]
    assert len(rows) == 1, table
    return rows[0].split()


def printed_gdb_command(output: str) -> list[str]:
    lines = output.splitlines()
    command = shlex.split(lines[lines.index("open it with:") + 1])
    assert command[0] == "gdb" and len(command) == 3, command
    return command


def test_the_doc_marks_every_step() -> None:
    blocks = walkthrough_blocks(DOC.read_text())
    assert set(blocks) == {"ls", "fetch", "gdb", "kubectl-ls", "workstation-env"}
    assert all(len(commands) == 1 for name, commands in blocks.items() if name != "workstation-env")
    # The in-cluster variant runs the very same `ls` inside the shipper's pod.
    kubectl = blocks["kubectl-ls"][0]
    assert kubectl[:2] == ["kubectl", "-n"] and "exec" in kubectl and "ds/coredump-shipper" in kubectl
    assert kubectl[kubectl.index("--") + 1 :] == blocks["ls"][0]
    # The log line quoted in the doc has the shipper's format.
    quoted = [line for line in DOC.read_text().splitlines() if line.startswith("[coredump] ")]
    assert quoted and all(UPLOADED.fullmatch(line) for line in quoted), quoted
    assert TRUNCATED in DOC.read_text() and LOADED in DOC.read_text()


async def test_from_the_alert_to_a_gdb_prompt(
    make_config: ConfigFactory,
    bucket: Bucket,
    watch_dir: Path,
    s3_server: S3Endpoint,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocks = walkthrough_blocks(DOC.read_text())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    complete = kernel_core(scratch)
    if complete is None:
        pytest.skip(skip_reason())
    complete = complete.rename(scratch / "complete")
    # Touches 8 MiB but may write 2: the kernel stops at RLIMIT_CORE and the file ends short.
    truncated = kernel_core(scratch, touch_mib=8, limit=2 * MiB)
    assert truncated is not None
    # Copies to compare with what `fetch` restores (the shipper deletes the originals).
    kept = {COMPLETE_POD: tmp_path / "kept-complete", TRUNCATED_POD: tmp_path / "kept-truncated"}
    shutil.copyfile(complete, kept[COMPLETE_POD])
    shutil.copyfile(truncated, kept[TRUNCATED_POD])

    # 1. The crash: the kernel names the files after core_pattern, the daemon ships them.
    stamp = int(time.time())
    names = {
        COMPLETE_POD: f"core.{COMPLETE_POD}.python3.sig11.4242.{stamp}",
        TRUNCATED_POD: f"core.{TRUNCATED_POD}.python3.sig11.977.{stamp - 60}",
    }
    caplog.set_level(logging.INFO, logger="coredump_shipper")

    def uploaded() -> dict[str, str]:
        found = (UPLOADED.fullmatch(record.getMessage()) for record in caplog.records)
        return {Path(m.group(1)).name: m.group(2) for m in found if m}

    async with running(make_config(filename_pattern=PATTERN)):
        complete.rename(watch_dir / names[COMPLETE_POD])
        truncated.rename(watch_dir / names[TRUNCATED_POD])
        await wait_until(lambda: len(uploaded()) == 2)
    urls = {pod: uploaded()[name] for pod, name in names.items()}
    assert len([key for key in bucket.keys() if key.endswith(MANIFEST_SUFFIX)]) == 2

    doc_env = exports(
        blocks["workstation-env"],
        {"bucket": bucket.name, "profile": PROFILE, "region": s3_server.region, "endpoint": s3_server.url},
    )
    assert doc_env["COREDUMP_SHIPPER_BUCKET"] == bucket.name
    env = workstation_env(tmp_path, s3_server, doc_env)
    home = tmp_path / "home"
    home.mkdir()

    # 2. Find the core from the node name alone.
    table = run(shipper(fill(blocks["ls"][0], {"node": NODE})), home, env)
    row = table_row(table, COMPLETE_POD)
    key = row[-1]
    assert urls[COMPLETE_POD] == f"s3://{bucket.name}/{key}"
    assert row[3:8] == [NODE, COMPLETE_POD, "python3", "SIGSEGV", "(11)"], table
    assert "(truncated)" not in row
    assert "(truncated)" in table_row(table, TRUNCATED_POD), table

    # 3. Fetch it by the key from the table; the truncated one by the URL from the log line.
    output = run(shipper(fill(blocks["fetch"][0], {"key": key})), home, env)
    restored = home / names[COMPLETE_POD]
    assert restored.read_bytes() == kept[COMPLETE_POD].read_bytes()
    assert re.search(r"sha256 [0-9a-f]{64} verified", output), output
    command = printed_gdb_command(output)
    assert (home / command[2]).resolve() == restored

    output_truncated = run(shipper(fill(blocks["fetch"][0], {"key": urls[TRUNCATED_POD]})), home, env)
    assert (home / names[TRUNCATED_POD]).read_bytes() == kept[TRUNCATED_POD].read_bytes()
    assert "note: this core is truncated" in output_truncated, output_truncated
    command_truncated = printed_gdb_command(output_truncated)

    # 4. Open it: the command `fetch` printed, as printed (gdb reads commands from the closed stdin
    # and exits), and the doc's batch backtrace.
    gdb = shutil.which("gdb", path="/usr/bin:" + env.get("PATH", ""))
    if gdb is None:
        pytest.skip("gdb is not installed: apt-get install gdb")
    session = run([gdb, *command[1:]], home, env)
    assert f"Reading symbols from {command[1]}..." in session and LOADED in session, session
    backtrace = run([gdb, *fill(blocks["gdb"][0], {"exe": command[1], "core": command[2]})[1:]], home, env)
    # Frame 0 has a function name: the executable and its libraries matched the core.
    assert LOADED in backtrace and re.search(r"^#0 +0x[0-9a-f]+ in \w+", backtrace, re.M), backtrace
    cut = run(
        [gdb, *fill(blocks["gdb"][0], {"exe": command_truncated[1], "core": command_truncated[2]})[1:]],
        home,
        env,
    )
    assert TRUNCATED in cut and LOADED in cut, cut
