"""Command line: run, ship, check, doctor, ls, fetch, core-pattern, restore-wait.

Exit codes are defined here only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from coredump_shipper import __version__
from coredump_shipper.browse.filters import Filters
from coredump_shipper.capture.pattern import ALIVE_WINDOW, DEFAULT_HELPER, pipe_line
from coredump_shipper.config.settings import (
    SETTINGS,
    SETTINGS_BY_NAME,
    Config,
    load_config,
    raw_value,
)
from coredump_shipper.errors import ConfigError, FileChanged, S3Error, ShipperError, SkipFile
from coredump_shipper.ops.logs import setup_logging

# Each command imports what it needs when it runs (see _run, _ship, _ls, _fetch, _doctor): aiohttp,
# botocore, prometheus-client and inotify cost about half a CPU-second to import, which a one-shot
# command or an exec probe (`check`) would pay every time for nothing it uses.
if TYPE_CHECKING:
    from coredump_shipper.s3.retry import Backoff
    from coredump_shipper.ship.shipper import Shipper

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: it lands in pod logs and must name the problem plainly.
        self.exit(EXIT_CONFIG, f"coredump-shipper: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coredump-shipper",
        description="Ship finished core dumps to S3 or any S3-compatible store.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="watch the directory and ship every finished core")
    ship = commands.add_parser("ship", help="ship the given files once; exit 0 only if all shipped")
    ship.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check = commands.add_parser("check", help="exit 0 if the instance on --listen is healthy (exec probe)")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    doctor = commands.add_parser("doctor", help="check this node's set-up: OK/WARN/FAIL with a fix for each")
    doctor.add_argument(
        "--no-write-probe", action="store_true", help="read-only S3 checks: no probe object or upload"
    )
    ls = commands.add_parser("ls", help="list shipped cores, newest first")
    Filters.add_arguments(ls)
    ls.add_argument("--limit", type=int, help="at most this many cores")
    ls.add_argument("--json", action="store_true", help="JSON for scripts")
    ls.add_argument(
        "--group", action="store_true", help="one row per crash signature: count, first/last seen, where"
    )
    ls.add_argument(
        "--full",
        action="store_true",
        help="read every core's manifest (all fields; one request per core) instead of the fleet index",
    )
    fetch = commands.add_parser("fetch", help="download, decompress and verify one core")
    fetch.add_argument("target", metavar="KEY|s3://BUCKET/KEY")
    fetch.add_argument("-o", "--output", type=Path, help="file or directory (default: original name here)")
    fetch.add_argument("--force", action="store_true", help="overwrite an existing file")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    fetch.add_argument("--gdb", action="store_true", help="then open it in gdb with the command printed")
    pattern = commands.add_parser(
        "core-pattern", help="print the kernel.core_pattern line that pipes cores to coredump-receive"
    )
    pattern.add_argument(
        "--helper",
        default=DEFAULT_HELPER,
        help=f"where the receiver is on the node (default {DEFAULT_HELPER})",
    )
    wait = commands.add_parser(
        "restore-wait", help="the chart's uninstall hook: wait until node setup's restore ran on every node"
    )
    wait.add_argument("--daemonset", required=True, help="the restore DaemonSet")
    wait.add_argument("--namespace", required=True, help="its namespace")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up (exit 1)")
    wait.add_argument("--kubeconfig", help="a kubeconfig instead of the pod's service account")
    subcommands = (
        (run, "run"),
        (ship, "ship"),
        (check, "check"),
        (doctor, "doctor"),
        (ls, "ls"),
        (fetch, "fetch"),
        (pattern, "core-pattern"),
    )
    for sub, command in subcommands:
        for setting in SETTINGS:
            if command not in setting.commands:
                continue
            sub.add_argument(
                setting.flag,
                dest=setting.attribute,
                default=None,
                metavar=setting.name.upper().replace("-", "_"),
                # argparse %-formats help texts: "10%" must reach it as "10%%".
                help=f"{setting.help} [env {setting.env}; default {setting.default!r}]".replace("%", "%%"),
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check_health(args)
    if args.command == "restore-wait":
        return restore_wait(args)
    values = vars(args)
    if args.command == "fetch" and args.target.startswith("s3://") and not values.get("bucket"):
        # The URL names the bucket; --bucket is not needed.
        values["bucket"] = args.target[5:].split("/", 1)[0]
    try:
        config = load_config(values, command=args.command)
        setup_logging(config.log_format, config.log_level)
        return asyncio.run(COMMANDS[args.command](config, args))
    except ConfigError as error:
        print(f"coredump-shipper: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except ShipperError as error:  # ls / fetch: not found, integrity mismatch, S3 errors
        print(f"coredump-shipper: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def check_health(args: argparse.Namespace) -> int:
    """GET /healthz of the local instance: for exec probes in images without curl."""
    setting = SETTINGS_BY_NAME["listen"]
    try:
        host, port = setting.parse(raw_value(setting, vars(args), os.environ) or "")
    except ValueError as error:
        print(f"coredump-shipper: error: {setting.flag}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as answer:
            print(answer.read().decode(errors="replace"))
            return EXIT_OK
    except urllib.error.HTTPError as error:
        print(error.read().decode(errors="replace"), file=sys.stderr)
    except OSError as error:
        print(f"coredump-shipper: {url}: {error}", file=sys.stderr)
    return EXIT_FAILED


def restore_wait(args: argparse.Namespace) -> int:
    from coredump_shipper.kube.restorewait import restore_wait as wait

    setup_logging("text", "info")
    done = asyncio.run(
        wait(os.environ, args.kubeconfig, args.namespace, args.daemonset, seconds=args.timeout)
    )
    return EXIT_OK if done else EXIT_FAILED


# `ls` and `fetch` load nothing of the upload side, and the daemon none of the debugging side.


async def _run(config: Config, args: argparse.Namespace) -> int:
    from coredump_shipper.daemon import heap
    from coredump_shipper.daemon.service import Service

    # Before any thread allocates: what a burst leaves behind must be where malloc_trim reaches it.
    heap.use_one_arena()
    await Service(config).serve()
    return EXIT_OK


async def _doctor(config: Config, args: argparse.Namespace) -> int:
    from coredump_shipper.diagnostics.doctor import exit_status, run_doctor
    from coredump_shipper.diagnostics.doctor import render_table as render_checks

    checks = await run_doctor(config, write_probe=not args.no_write_probe)
    sys.stdout.write(render_checks(checks))
    return EXIT_FAILED if exit_status(checks) else EXIT_OK


async def _ls(config: Config, args: argparse.Namespace) -> int:
    from coredump_shipper.browse.grouping import group_cores
    from coredump_shipper.browse.listing import list_cores
    from coredump_shipper.browse.terminal import render_groups, render_groups_json, render_json, render_table
    from coredump_shipper.s3.client import s3_client
    from coredump_shipper.s3.settings import client_settings

    filters = Filters.from_args(vars(args), datetime.now(UTC))
    async with s3_client(client_settings(config)) as client:
        entries = await list_cores(
            client, config.bucket, filters, limit=None if args.group else args.limit, full=args.full
        )
    if args.group:
        groups = (
            group_cores(entries)[: max(0, args.limit)] if args.limit is not None else group_cores(entries)
        )
        sys.stdout.write(render_groups_json(groups) if args.json else render_groups(groups))
    else:
        sys.stdout.write(render_json(entries) if args.json else render_table(entries))
    return EXIT_OK


async def _fetch(config: Config, args: argparse.Namespace) -> int:
    from coredump_shipper.browse.fetch import fetch_core
    from coredump_shipper.browse.terminal import describe_fetch
    from coredump_shipper.s3.client import s3_client
    from coredump_shipper.s3.settings import client_settings

    progress = sys.stderr.isatty() and not args.no_progress
    async with s3_client(client_settings(config)) as client:
        result = await fetch_core(
            client, config.bucket, args.target, args.output, progress=progress, overwrite=args.force
        )
    sys.stdout.write(describe_fetch(result))
    if args.gdb:
        return _open_in_gdb(result.gdb_command)
    return EXIT_OK


def _open_in_gdb(command: str) -> int:
    import shlex
    import shutil
    import subprocess

    if shutil.which("gdb") is None:
        print("coredump-shipper: error: --gdb: gdb is not installed here", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.flush()
    return subprocess.run(shlex.split(command), check=False).returncode


async def _core_pattern(config: Config, args: argparse.Namespace) -> int:
    print(
        pipe_line(
            args.helper,
            str(config.watch_dir),
            config.max_core_size,
            config.keep_free,
            config.receive_timeout,
            ALIVE_WINDOW,
            max_use=config.max_use,
            scope=config.capture_scope,
        )
    )
    return EXIT_OK


async def _ship(config: Config, args: argparse.Namespace) -> int:
    """Ship each file with a bounded number of attempts; never deletes what it shipped."""
    from coredump_shipper.ops.metrics import Metrics
    from coredump_shipper.s3.client import s3_client
    from coredump_shipper.s3.settings import client_settings, store_settings
    from coredump_shipper.s3.store import S3Store
    from coredump_shipper.ship.afterupload import Leave
    from coredump_shipper.ship.settings import shipper_settings
    from coredump_shipper.ship.shipper import Shipper

    files: Sequence[Path] = args.files
    metrics = Metrics(process=False)
    async with s3_client(client_settings(config)) as client:
        store = S3Store(client, store_settings(config), metrics)
        backoff = store.backoff
        shipper = Shipper(shipper_settings(config), store, metrics, Leave())
        limit = asyncio.Semaphore(config.workers)

        async def one(path: Path) -> bool:
            async with limit:
                return await _ship_one(shipper, path, config.ship_attempts, backoff)

        try:
            results = await asyncio.gather(*(one(path) for path in files))
        finally:
            await shipper.close()  # a day summary being written is left to the daemons
    return EXIT_OK if all(results) else EXIT_FAILED


async def _ship_one(shipper: Shipper, path: Path, attempts: int, backoff: Backoff) -> bool:
    for attempt in range(1, attempts + 1):
        try:
            await shipper.ship(path)
            return True
        except SkipFile as skip:
            log.error("not shipped: %s", skip.detail)
            return False
        except (S3Error, FileChanged) as error:
            if attempt == attempts:
                log.error("giving up on %s after %d attempts: %s", path, attempts, error)
                return False
            log.warning("attempt %d for %s failed: %s", attempt, path, error)
            await asyncio.sleep(backoff.delay(attempt))
    return False


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "ship": _ship,
    "doctor": _doctor,
    "ls": _ls,
    "fetch": _fetch,
    "core-pattern": _core_pattern,
}
