"""What one run of each one-shot command costs: CPU seconds, peak RSS and import time.

Run from the repository root: `python -m bench.studies.startup [--reps 5] [--source DIR]`. Each command runs
against the null sink (plain HTTP: this measures the process, not the transport): `ship` a 1 MiB
core, `ls` an empty bucket, `fetch` a key the sink cannot serve, `doctor --no-write-probe`, and the
exec probe `check` against a daemon that is not there. CPU and peak RSS come from bench/launch.py
(medians); import time is the sum of `-X importtime`'s self times in one more run. `--source DIR`
runs the package found in DIR instead (e.g. an older commit unpacked with `git archive`), with
this checkout's virtualenv, to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.contestants import BUCKET, REPO, child_env
from bench.inputs import MiB
from bench.measure import run_measured
from bench.targets import run_nullsink
from testkit.servers import S3Endpoint

PYTHON = REPO / ".venv" / "bin" / "python"


def commands(endpoint: S3Endpoint, work: Path) -> dict[str, list[str]]:
    core = work / "core.startup.sig11.1.1700000000"
    with core.open("wb") as out:
        out.write(os.urandom(MiB // 2) + bytes(MiB // 2))
    s3 = ["--bucket", BUCKET, "--endpoint-url", endpoint.url, "--max-attempts", "1"]
    return {
        "check": ["check", "--listen", "127.0.0.1:9", "--timeout", "1"],
        "ship": ["ship", *s3, str(core)],
        "ls": ["ls", *s3],
        "fetch": ["fetch", *s3, "no/such/key.zst", "-o", str(work / "out")],
        "doctor": ["doctor", *s3, "--no-write-probe", "--watch-dir", str(work)],
    }


def import_seconds(stderr: str) -> float:
    """Total import time from `-X importtime` output: the sum of every module's self time."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us = line.split(":", 1)[1].split("|")[0].strip()
            if self_us.isdigit():
                total += int(self_us)
    return total / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--source", type=Path, help="run the coredump_shipper package in this directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cds-startup-") as tmp:
        work = Path(tmp)
        with run_nullsink(work) as sink:
            env = child_env(sink.endpoint)
            if args.source:
                env["PYTHONPATH"] = str(args.source.resolve())
            print(f"load average {os.getloadavg()[0]:.2f}; source: {args.source or REPO}\n")
            print("| Command | CPU s (median) | Peak RSS MiB | Imports s (-X importtime) | Exit |")
            print("|---|---|---|---|---|")
            for name, command in commands(sink.endpoint, work).items():
                # -P: the package comes from PYTHONPATH or the install, never from the current directory.
                base = [str(PYTHON), "-P", "-m", "coredump_shipper", *command]
                runs = [run_measured(base, env, work / f"{name}-{rep}.log") for rep in range(args.reps)]
                timed = run_measured(
                    [str(PYTHON), "-X", "importtime", *base[1:]], env, work / f"{name}-imp.log"
                )
                imports = import_seconds((work / f"{name}-imp.log").read_text(errors="replace"))
                cpu = statistics.median(run.cpu_s for run in runs)
                rss = statistics.median(run.max_rss_kib for run in runs) / 1024
                print(f"| `{name}` | {cpu:.2f} | {rss:.0f} | {imports:.2f} | {timed.returncode} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
