"""`make bench`: coredump-shipper against `aws s3 cp`, on the null sink and on moto.

Prints Markdown tables (for docs/performance.md) and writes the raw figures to bench/results/.
Run from the repository root: `python -m bench.run [--reps 3] [--big] [--no-moto]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import verify
from bench.capture import CaptureResult, capture_bursts, capture_section
from bench.contestants import AWS_LABEL, BUCKET, CONTESTANTS, REPO, Contestant, child_env
from bench.daemon import DaemonResult, run_daemon_bench
from bench.idle import IdleResult, run_idle_bench
from bench.inputs import (
    GiB,
    MiB,
    describe,
    make_kernel_core,
    make_realistic_core,
    warm_page_cache,
)
from bench.measure import run_measured
from bench.mixed import MixedResult, run_mixed_bench
from bench.passes import overlap_table, passes_table
from bench.pipeship import ShipResult, parse_burst, parse_sizes, pipe_ship_section, run_pipe_ship
from bench.report import (
    Run,
    aggregate,
    daemon_table,
    goals_table,
    idle_table,
    link_table,
    machine,
    machine_line,
    mixed_table,
    storm_table,
    upload_table,
)
from bench.storm import StormResult, storm_daemon, storm_script
from bench.targets import Target, https_target, plain_target, run_nullsink
from testkit.servers import S3Endpoint
from testkit.servers.moto import run_moto

RESULTS = REPO / "bench" / "results"
DEFAULT_LABEL = CONTESTANTS[0].label
# The targets, by the name their rows carry.
HTTPS = "nullsink-https"
PLAIN = "nullsink"
# Limited links (bytes per second), all behind the TLS terminator: what users have.
LINKS = {"link-1gbit": 125e6, "link-100mbit": 12.5e6}
# On a limited link `none` is `aws s3 cp` with fewer bytes of overhead: compression is the point.
LINK_CONTESTANTS = tuple(c for c in CONTESTANTS if c.label in (DEFAULT_LABEL, AWS_LABEL))


@dataclass(frozen=True)
class Input:
    name: str
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per contestant (medians)")
    parser.add_argument("--size-mib", type=int, default=1024, help="realistic core size")
    parser.add_argument("--kernel-core-mib", type=int, default=300, help="memory the child touches")
    parser.add_argument("--moto-mib", type=int, default=256, help="core size for the moto row")
    parser.add_argument("--no-moto", action="store_true", help="skip the moto realism rows")
    parser.add_argument("--no-daemon", action="store_true", help="skip the daemon figures")
    parser.add_argument("--big", action="store_true", help="also ship a 4 GiB core (memory)")
    parser.add_argument("--starts", type=int, default=5, help="daemon start-ups to time")
    parser.add_argument("--latency-cores", type=int, default=20)
    parser.add_argument("--no-race", action="store_true", help="skip the HTTPS and plain-HTTP races")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-HTTP rows")
    parser.add_argument("--no-link", action="store_true", help="skip the limited-link rows")
    parser.add_argument(
        "--slow-link-mib", type=int, default=256, help="realistic core size on the 100 Mbit/s link"
    )
    parser.add_argument("--no-storm", action="store_true", help="skip the core storms")
    parser.add_argument("--no-mixed", action="store_true", help="skip the mixed-load memory row")
    parser.add_argument("--storm-small", type=int, default=1000, help="1 MiB cores in the storm")
    parser.add_argument("--storm-large", type=int, default=100, help="64 MiB cores in the storm")
    parser.add_argument(
        "--script-cores",
        default="50,10",
        help="1 MiB,64 MiB cores timed for the serial script (its rate does not depend on the count)",
    )
    parser.add_argument(
        "--capture-burst",
        default="50,8",
        help="COUNT,MIB: crashes at once through pipe and socket capture (root, Linux 6.17+; 0: skip)",
    )
    parser.add_argument(
        "--pipe-ship-mib",
        default="1,100,1024",
        help="crash -> S3 through pipe capture against file capture: MiB per crash (root; empty: skip)",
    )
    parser.add_argument(
        "--pipe-ship-burst",
        default="50,32",
        help="COUNT,MIB: crashes at once -> S3, pipe and file (0,0: skip)",
    )
    parser.add_argument("--idle-s", type=float, default=150.0, help="idle window (0: skip)")
    parser.add_argument("--no-passes", action="store_true", help="skip timing each pass over the bytes")
    parser.add_argument("--work-dir", type=Path, help="where inputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and its inputs")
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_once(
    contestant: Contestant,
    item: Input,
    endpoint: S3Endpoint,
    log: Path,
    target: str | None = None,
) -> Run:
    warm_page_cache(item.path)
    measurement = run_measured(contestant.argv(item.path, endpoint, BUCKET), child_env(endpoint), log)
    return Run(
        target=target or endpoint.name,
        input_name=item.name,
        input_bytes=item.size,
        contestant=contestant.label,
        measurement=measurement,
        bytes_sent=None,
        sink_cpu_s=None,
        completed=measurement.ok,
    )


def _rotated(rep: int) -> tuple[Contestant, ...]:
    """The contestants in an order that rotates between repetitions, so none always goes first."""
    shift = rep % len(CONTESTANTS)
    return CONTESTANTS[shift:] + CONTESTANTS[:shift]


def race_sink(
    target: Target,
    inputs: Sequence[Input],
    reps: int,
    logs: Path,
    contestants: Sequence[Contestant] = CONTESTANTS,
) -> list[Run]:
    """Every contestant on every input, `reps` times, the order rotating between repetitions."""
    runs: list[Run] = []
    sink = target.sink
    for rep in range(reps):
        for item in inputs:
            shift = rep % len(contestants)
            for index, contestant in enumerate([*contestants[shift:], *contestants[:shift]]):
                before = sink.stats()
                log = logs / f"{target.name}-{item.name.replace(' ', '-')}-{rep}-{index}.log"
                # The core is closed before the contestant starts: from here to the core object's
                # completion at the sink is "close to object complete".
                closed = time.time()
                run = _run_once(contestant, item, target.endpoint, log, target.name)
                after = sink.stats()
                cores = [o for o in after.objects[before.completed :] if not str(o["key"]).endswith(".json")]
                run = replace(
                    run,
                    bytes_sent=after.bytes_received - before.bytes_received,
                    sink_cpu_s=after.cpu_s - before.cpu_s,
                    completed=run.measurement.ok and bool(cores),
                    to_object_s=float(cores[0]["completed_at"]) - closed if cores else None,
                )
                say(_brief(run))
                runs.append(run)
    return runs


def race_moto(endpoint: S3Endpoint, item: Input, reps: int, logs: Path) -> list[Run]:
    """moto keeps objects in memory: empty the bucket before each run, check the first of each."""
    verify.create_bucket(endpoint, BUCKET)
    expected = verify.file_sha256(item.path)
    runs: list[Run] = []
    for rep in range(reps):
        for index, contestant in enumerate(_rotated(rep)):
            verify.empty_bucket(endpoint, BUCKET)
            run = _run_once(contestant, item, endpoint, logs / f"moto-{rep}-{index}.log")
            if rep == 0 and run.ok:
                ok = verify.core_object_matches(endpoint, BUCKET, expected)
                run = replace(run, verified=ok)
            say(_brief(run))
            runs.append(run)
    verify.empty_bucket(endpoint, BUCKET)
    return runs


def _brief(run: Run) -> str:
    m = run.measurement
    state = "ok" if run.ok else f"FAILED (exit {m.returncode})"
    return (
        f"{run.target} {run.input_name} {run.contestant}: {state} {m.wall_s:.2f}s "
        f"cpu {m.cpu_s:.2f}s rss {m.max_rss_kib / 1024:.0f}MiB"
    )


def warm_up(target: Target, work: Path, logs: Path) -> None:
    """One untimed run each on a small file: compiles bytecode, warms imports, shows breakage."""
    small = Input("warm-up", make_realistic_core(work / "warm-up.core", 4 * MiB))
    for contestant in CONTESTANTS:
        run = _run_once(contestant, small, target.endpoint, logs / f"warm-up-{contestant.label}.log")
        if not run.ok:
            say(f"warm-up: {contestant.label} fails: {run.measurement.output_tail[-300:]}")


def timed(step: str, action: Callable[..., Any], *args: Any) -> Any:
    started = time.perf_counter()
    say(f"{step}...")
    value = action(*args)
    say(f"{step}: {time.perf_counter() - started:.1f}s")
    return value


@contextlib.contextmanager
def work_dir(args: argparse.Namespace) -> Iterator[Path]:
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        yield args.work_dir
        return
    path = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    try:
        yield path
    finally:
        if args.keep:
            say(f"inputs kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Extras:
    """The figures that are not one contestant shipping one file."""

    daemon: DaemonResult = field(default_factory=DaemonResult)
    storms: list[StormResult] = field(default_factory=list)
    idle: IdleResult | None = None
    mixed: MixedResult | None = None
    passes: str = ""  # Markdown: each pass over the bytes, and the helper thread's overlap
    captures: list[CaptureResult] = field(default_factory=list)
    pipe_ship: list[ShipResult] = field(default_factory=list)
    pipe_ship_bursts: list[ShipResult] = field(default_factory=list)


def races(
    args: argparse.Namespace, https: Target, plain: Target, inputs: Sequence[Input], work: Path, logs: Path
) -> list[Run]:
    """The unlimited races: HTTPS (the main rows), then plain HTTP."""
    timed("warm-up", warm_up, https, work, logs)
    if args.no_race:
        return []
    runs: list[Run] = timed("HTTPS race", race_sink, https, inputs, args.reps, logs)
    if not args.no_plain:
        runs += timed("plain HTTP race", race_sink, plain, inputs, args.reps, logs)
    return runs


def race_links(args: argparse.Namespace, inputs: Sequence[Input], work: Path, logs: Path) -> list[Run]:
    """The limited links, each a throttled sink of its own behind a TLS terminator."""
    runs: list[Run] = []
    slow = Input(
        "realistic core",
        make_realistic_core(work / "core.slow-link", args.slow_link_mib * MiB),
    )
    for name, rate in LINKS.items():
        items = [slow if rate < 50e6 and item.name == "realistic core" else item for item in inputs]
        with run_nullsink(logs, rate) as sink, https_target(name, sink, work) as target:
            runs += timed(name, race_sink, target, items, args.reps, logs, LINK_CONTESTANTS)
    return runs


def storms(args: argparse.Namespace, target: Target, work: Path, logs: Path) -> list[StormResult]:
    small, large = (int(n) for n in args.script_cores.split(","))
    results = []
    for count, script_count, size in ((args.storm_small, small, MiB), (args.storm_large, large, 64 * MiB)):
        if not count:
            continue
        results.append(
            timed(f"storm {count} x {size // MiB} MiB", storm_daemon, target, work, logs, count, size)
        )
        say(_storm_brief(results[-1]))
        if not script_count:
            continue
        results.append(
            timed(
                f"script storm {script_count} x {size // MiB} MiB",
                storm_script,
                target,
                work,
                logs,
                count,
                min(count, script_count),
                size,
            )
        )
        say(_storm_brief(results[-1]))
    return results


def _storm_brief(result: StormResult) -> str:
    if result.error:
        return f"{result.contestant}: FAILED {result.error}"
    return (
        f"{result.contestant}: {result.timed} x {result.core_bytes // MiB} MiB in {result.seconds:.2f}s "
        f"({result.rate:.1f} cores/s), {result.cpu_per_core:.3f} CPU-s per core, "
        f"peak RSS {result.peak_rss_mib:.0f} MiB"
    )


def daemon_rows(
    args: argparse.Namespace, https: Target, realistic: Path, work: Path, logs: Path, extras: Extras
) -> None:
    """The running daemon's rows: one core at a time, storms, idle, mixed load."""
    if not args.no_daemon:
        big = [(f"{args.size_mib / 1024:g} GiB realistic core", realistic)]
        if args.big:
            path = timed("4 GiB core", lambda: make_realistic_core(work / "core.big", 4 * GiB))
            big.append(("4 GiB realistic core", path))
        extras.daemon = timed(
            "daemon",
            lambda: run_daemon_bench(https, work, logs, args.starts, args.latency_cores, big),
        )
    if not args.no_storm:
        extras.storms = storms(args, https, work, logs)
    if args.idle_s > 0:
        extras.idle = timed("idle daemon", lambda: run_idle_bench(https, work, logs, args.idle_s))
    if not args.no_mixed:
        extras.mixed = timed("mixed load", lambda: run_mixed_bench(https, work, logs))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load = os.getloadavg()[0]
    if load > 1.0:
        say(f"load average is {load:.1f} on {os.cpu_count()} cores: wall times will be noisy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    extras = Extras()
    with work_dir(args) as work:
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        realistic = Input(
            "realistic core",
            timed(
                "realistic core",
                lambda: make_realistic_core(work / "core.realistic", args.size_mib * MiB),
            ),
        )
        kernel = Input(
            "kernel core",
            timed("kernel core", lambda: make_kernel_core(work, args.kernel_core_mib * MiB)),
        )
        inputs = [realistic, kernel]
        runs: list[Run] = []
        with run_nullsink(logs) as sink, https_target(HTTPS, sink, work) as https:
            runs += races(args, https, plain_target(PLAIN, sink), inputs, work, logs)
            daemon_rows(args, https, realistic.path, work, logs, extras)
            sizes, burst = parse_sizes(args.pipe_ship_mib), parse_burst(args.pipe_ship_burst)
            if sizes or burst:
                extras.pipe_ship, extras.pipe_ship_bursts = timed(
                    "crash -> S3, pipe and file capture",
                    lambda: run_pipe_ship(https, logs, sizes, args.reps, burst),
                )
        extras.captures = timed("crash burst", lambda: capture_bursts(args.capture_burst))
        if not args.no_passes:
            extras.passes = timed(
                "passes over the bytes",
                lambda: passes_table(realistic.path) + "\n\n" + overlap_table(realistic.path, args.reps),
            )
        if not args.no_link:
            runs += race_links(args, inputs, work, logs)
        if not args.no_moto:
            small = Input(
                "realistic core",
                make_realistic_core(work / "core.moto", args.moto_mib * MiB),
            )
            with run_moto(logs) as moto:
                runs += timed("moto race", lambda: race_moto(moto, small, args.reps, logs))
        inputs_info = [describe(item.path) for item in inputs]
        if args.keep:
            say(f"logs in {logs}")
    report(runs, extras, inputs_info, args, started, load)
    return 0


def daemon_sections(extras: Extras, args: argparse.Namespace) -> list[str]:
    sections = []
    if not args.no_daemon:
        sections += ["### Daemon (`coredump-shipper run`, HTTPS null sink)", daemon_table(extras.daemon)]
    if extras.storms:
        sections += ["### Core storm (HTTPS null sink)", storm_table(extras.storms)]
    if extras.idle is not None:
        sections += [
            "### Idle daemon (HTTPS null sink, `/metrics` scraped every 15 s)",
            idle_table(extras.idle),
        ]
    if extras.mixed is not None:
        sections += ["### Mixed load, then a minute idle (HTTPS null sink)", mixed_table(extras.mixed)]
    return sections


def report(
    runs: Sequence[Run],
    extras: Extras,
    inputs_info: list[dict[str, int | str]],
    args: argparse.Namespace,
    started: float,
    load_at_start: float,
) -> None:
    rows = aggregate(runs)
    info = machine() | {"load_at_start": round(load_at_start, 2)}
    reps = args.reps
    sections = [
        f"### HTTPS: upload to a body-discarding S3 endpoint behind a private-CA TLS terminator "
        f"(medians of {reps})",
        upload_table([row for row in rows if row.target == HTTPS], with_sink=True),
    ]
    plain = [row for row in rows if row.target == PLAIN]
    if plain:
        sections += [
            f"### Plain HTTP: the same endpoint without TLS (medians of {reps})",
            upload_table(plain, with_sink=True),
        ]
    link_rows = [row for row in rows if row.target in LINKS]
    if link_rows:
        sections += [
            f"### Limited link over HTTPS: the sink reads at 1 Gbit/s or 100 Mbit/s (medians of {reps})",
            link_table(link_rows),
        ]
    moto_rows = [row for row in rows if row.target == "moto"]
    if moto_rows:
        sections += ["### Upload to moto server mode (realism)", upload_table(moto_rows, False)]
    sections += daemon_sections(extras, args)
    sections += capture_section(extras.captures)
    sections += pipe_ship_section(extras.pipe_ship, extras.pipe_ship_bursts, reps)
    if extras.passes:
        sections += [
            f"### Passes over the bytes of the {args.size_mib} MiB realistic core (in the harness process)",
            extras.passes,
        ]
    sections += [
        "### Goals",
        goals_table(rows, extras.daemon, extras.storms, extras.idle, DEFAULT_LABEL, HTTPS),
        machine_line(info),
    ]
    errors = [
        f"- {row.contestant} on {row.target}/{row.input_name}: {row.error}" for row in rows if row.error
    ]
    errors += [f"- storm, {s.contestant}: {s.error}" for s in extras.storms if s.error]
    errors += [f"- crash burst, {c.mode}: {c.error}" for c in extras.captures if c.error]
    if extras.idle is not None and extras.idle.error:
        errors.append(f"- idle daemon: {extras.idle.error}")
    if errors:
        sections += ["Failures:", "\n".join(errors)]
    text = "\n\n".join(sections)
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    (RESULTS / f"{stamp}.md").write_text(text + "\n", encoding="utf-8")
    payload = {
        "started": started,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": info,
        "inputs": inputs_info,
        "runs": [asdict(run) for run in runs],
        "rows": [asdict(row) | {"mb_per_s": row.mb_per_s, "cpu_per_gib": row.cpu_per_gib} for row in rows],
        "daemon": asdict(extras.daemon),
        "storms": [asdict(s) | {"rate": s.rate, "cpu_per_core": s.cpu_per_core} for s in extras.storms],
        "idle": asdict(extras.idle) if extras.idle else None,
        "captures": [asdict(c) | {"rate": c.rate} for c in extras.captures],
        "pipe_ship": [asdict(r) for r in [*extras.pipe_ship, *extras.pipe_ship_bursts]],
    }
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    say(f"results in {path}")


if __name__ == "__main__":
    sys.exit(main())
