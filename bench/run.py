"""`make bench`: coredump-shipper against `aws s3 cp`, on the null sink and on moto.

Prints Markdown tables (for the README) and writes the raw figures to bench/results/.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import verify
from bench.contestants import BUCKET, CONTESTANTS, REPO, Contestant, child_env
from bench.daemon import run_daemon_bench
from bench.inputs import (
    GiB,
    MiB,
    describe,
    make_kernel_core,
    make_realistic_core,
    warm_page_cache,
)
from bench.measure import run_measured
from bench.report import (
    DaemonResult,
    Run,
    aggregate,
    daemon_table,
    goals_table,
    machine,
    machine_line,
    upload_table,
)
from bench.targets import NullSink, run_nullsink
from tests.servers import S3Endpoint
from tests.servers.moto import run_moto

RESULTS = REPO / "bench" / "results"
DEFAULT_LABEL = CONTESTANTS[0].label


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
) -> Run:
    warm_page_cache(item.path)
    measurement = run_measured(contestant.argv(item.path, endpoint, BUCKET), child_env(endpoint), log)
    return Run(
        target=endpoint.name,
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


def race_sink(sink: NullSink, inputs: Sequence[Input], reps: int, logs: Path) -> list[Run]:
    """Every contestant on every input, `reps` times, the order rotating between repetitions."""
    runs: list[Run] = []
    for rep in range(reps):
        for item in inputs:
            for index, contestant in enumerate(_rotated(rep)):
                before = sink.stats()
                log = logs / f"sink-{item.name.replace(' ', '-')}-{rep}-{index}.log"
                run = _run_once(contestant, item, sink.endpoint, log)
                after = sink.stats()
                run = replace(
                    run,
                    bytes_sent=after.bytes_received - before.bytes_received,
                    sink_cpu_s=after.cpu_s - before.cpu_s,
                    completed=run.measurement.ok and len(after.objects) > len(before.objects),
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


def warm_up(sink: NullSink, work: Path, logs: Path) -> None:
    """One untimed run each on a small file: compiles bytecode, warms imports, shows breakage."""
    small = Input("warm-up", make_realistic_core(work / "warm-up.core", 4 * MiB))
    for contestant in CONTESTANTS:
        run = _run_once(contestant, small, sink.endpoint, logs / f"warm-up-{contestant.label}.log")
        if not run.ok:
            say(f"warm-up: {contestant.label} fails: {run.measurement.output_tail[-300:]}")


def timed(step: str, action: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    say(f"{step}...")
    value = action()
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load = os.getloadavg()[0]
    if load > 1.0:
        say(f"load average is {load:.1f} on {os.cpu_count()} cores: wall times will be noisy")
    RESULTS.mkdir(parents=True, exist_ok=True)
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
        daemon = DaemonResult()
        with run_nullsink(logs) as sink:
            timed("warm-up", lambda: warm_up(sink, work, logs))
            runs += timed("null sink race", lambda: race_sink(sink, inputs, args.reps, logs))
            if not args.no_daemon:
                big = [(f"{args.size_mib / 1024:g} GiB realistic core", realistic.path)]
                if args.big:
                    path = timed("4 GiB core", lambda: make_realistic_core(work / "core.big", 4 * GiB))
                    big.append(("4 GiB realistic core", path))
                daemon = timed(
                    "daemon",
                    lambda: run_daemon_bench(sink, work, logs, args.starts, args.latency_cores, big),
                )
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
    report(runs, daemon, inputs_info, args, started, load)
    return 0


def report(
    runs: Sequence[Run],
    daemon: DaemonResult,
    inputs_info: list[dict[str, int | str]],
    args: argparse.Namespace,
    started: float,
    load_at_start: float,
) -> None:
    rows = aggregate(runs)
    info = machine() | {"load_at_start": round(load_at_start, 2)}
    sink_rows = [row for row in rows if row.target == "nullsink"]
    moto_rows = [row for row in rows if row.target == "moto"]
    sections = [
        f"### Upload to a body-discarding S3 endpoint (medians of {args.reps})",
        upload_table(sink_rows, with_sink=True),
    ]
    if moto_rows:
        sections += ["### Upload to moto server mode (realism)", upload_table(moto_rows, False)]
    if not args.no_daemon:
        sections += ["### Daemon (`coredump-shipper run`, null sink)", daemon_table(daemon)]
    sections += ["### Goals", goals_table(rows, daemon, DEFAULT_LABEL), machine_line(info)]
    errors = [
        f"- {row.contestant} on {row.target}/{row.input_name}: {row.error}" for row in rows if row.error
    ]
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
        "daemon": asdict(daemon),
    }
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    say(f"results in {path}")


if __name__ == "__main__":
    sys.exit(main())
