"""Turn raw runs into medians, ratios against `aws s3 cp`, goal checks and Markdown tables."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.contestants import AWS, AWS_LABEL, REPO
from bench.daemon import DaemonResult
from bench.idle import IdleResult
from bench.inputs import GiB, MiB
from bench.measure import Measurement, median, percentile
from bench.mixed import AFTER_S, MixedResult
from bench.storm import DAEMON_LABEL, SCRIPT_LABEL, StormResult


@dataclass(frozen=True)
class Run:
    """One contestant shipping one input to one target once."""

    target: str
    input_name: str
    input_bytes: int
    contestant: str
    measurement: Measurement
    bytes_sent: int | None
    sink_cpu_s: float | None
    completed: bool
    verified: bool | None = None
    to_object_s: float | None = None  # from the contestant's start (the core closed) to the object

    @property
    def ok(self) -> bool:
        return self.measurement.ok and self.completed


@dataclass
class Row:
    """Medians over the successful runs of one (target, input, contestant)."""

    target: str
    input_name: str
    input_bytes: int
    contestant: str
    runs: int
    failures: int
    wall_s: float | None = None
    cpu_s: float | None = None
    rss_mib: float | None = None
    sent_bytes: float | None = None
    sink_cpu_s: float | None = None
    verified: bool | None = None
    to_object_s: float | None = None
    error: str = ""

    @property
    def mb_per_s(self) -> float | None:
        return self.input_bytes / self.wall_s / 1e6 if self.wall_s else None

    @property
    def cpu_per_gib(self) -> float | None:
        return self.cpu_s / (self.input_bytes / GiB) if self.cpu_s is not None else None


def aggregate(runs: Sequence[Run]) -> list[Row]:
    rows: dict[tuple[str, str, str], Row] = {}
    for run in runs:
        key = (run.target, run.input_name, run.contestant)
        row = rows.setdefault(key, Row(run.target, run.input_name, run.input_bytes, run.contestant, 0, 0))
        row.runs += 1
        if not run.ok:
            row.failures += 1
            lines = run.measurement.output_tail.splitlines()
            last = lines[-1] if lines else f"exit code {run.measurement.returncode}"
            row.error = row.error or f"exit {run.measurement.returncode}: {last}"
    for key, row in rows.items():
        good = [r for r in runs if (r.target, r.input_name, r.contestant) == key and r.ok]
        row.wall_s = median([r.measurement.wall_s for r in good])
        row.cpu_s = median([r.measurement.cpu_s for r in good])
        rss = median([r.measurement.max_rss_kib for r in good])
        row.rss_mib = rss / 1024 if rss is not None else None
        row.sent_bytes = median([r.bytes_sent for r in good if r.bytes_sent is not None])
        row.sink_cpu_s = median([r.sink_cpu_s for r in good if r.sink_cpu_s is not None])
        row.to_object_s = median([r.to_object_s for r in good if r.to_object_s is not None])
        checks = [r.verified for r in runs if (r.target, r.input_name, r.contestant) == key]
        known = [c for c in checks if c is not None]
        row.verified = all(known) if known else None
    return list(rows.values())


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "—"
    return f"{value / base:.2f}x"


def _baseline(rows: Sequence[Row], row: Row) -> Row | None:
    for other in rows:
        if (other.target, other.input_name, other.contestant) == (
            row.target,
            row.input_name,
            AWS_LABEL,
        ):
            return other if other.wall_s is not None else None
    return None


def upload_table(rows: Sequence[Row], with_sink: bool) -> str:
    head = [
        "Input",
        "Contestant",
        "Wall s",
        "MB/s",
        "CPU s/GiB",
        "Peak RSS MiB",
        "Speed vs aws",
        "CPU vs aws",
        "RSS vs aws",
    ]
    head += ["Sent MiB", "Sink CPU s"] if with_sink else ["Round trip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = f"{row.input_name} ({row.input_bytes / MiB:.0f} MiB)"
        if row.wall_s is None:
            cells = [name, row.contestant, f"FAILED ({row.failures}/{row.runs})"]
            cells += [""] * (len(head) - len(cells))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        base = _baseline(rows, row)
        failed = f" ({row.failures} failed)" if row.failures else ""
        cells = [
            name,
            row.contestant + failed,
            _num(row.wall_s),
            _num(row.mb_per_s, 0),
            _num(row.cpu_per_gib),
            _num(row.rss_mib, 0),
            _ratio(base.wall_s, row.wall_s) if base else "—",
            _ratio(row.cpu_per_gib, base.cpu_per_gib) if base else "—",
            _ratio(row.rss_mib, base.rss_mib) if base else "—",
        ]
        if with_sink:
            sent = row.sent_bytes / MiB if row.sent_bytes is not None else None
            cells += [_num(sent, 1), _num(row.sink_cpu_s)]
        else:
            cells.append({None: "—", True: "ok", False: "MISMATCH"}[row.verified])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def link_table(rows: Sequence[Row]) -> str:
    """Limited links: what a user waits for is the core object, from the core's close."""
    head = ["Link", "Input", "Contestant", "Close to object s", "Speed vs aws", "CPU s/GiB", "Sent MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = f"{row.input_name} ({row.input_bytes / MiB:.0f} MiB)"
        base = _baseline(rows, row)
        if row.to_object_s is None:
            lines.append(
                f"| {row.target} | {name} | {row.contestant} | FAILED ({row.failures}/{row.runs}) | | | |"
            )
            continue
        sent = row.sent_bytes / MiB if row.sent_bytes is not None else None
        cells = [
            row.target,
            name,
            row.contestant,
            _num(row.to_object_s),
            _ratio(base.to_object_s, row.to_object_s) if base else "—",
            _num(row.cpu_per_gib),
            _num(sent, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def storm_table(results: Sequence[StormResult]) -> str:
    head = ["Storm", "Contestant", "Cores timed", "Seconds", "Cores/s", "Rate vs script", "CPU s per core"]
    head.append("Peak RSS MiB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for result in results:
        storm = f"{result.cores} x {result.core_bytes // MiB} MiB"
        if result.error:
            lines.append(f"| {storm} | {result.contestant} | FAILED: {result.error} | | | | | |")
            continue
        script = _storm_script(results, result)
        ratio = "—"
        if script is not None and script.rate and result.rate:
            ratio = f"{result.rate / script.rate:.0f}x"
        cells = [
            storm,
            result.contestant,
            f"{result.timed}" + ("" if result.timed == result.cores else " (serial: rate per core)"),
            _num(result.seconds),
            _num(result.rate, 1),
            ratio,
            _num(result.cpu_per_core, 3),
            _num(result.peak_rss_mib, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _storm_script(results: Sequence[StormResult], result: StormResult) -> StormResult | None:
    for other in results:
        if other.contestant == SCRIPT_LABEL and other.core_bytes == result.core_bytes and not other.error:
            return other
    return None


def idle_table(result: IdleResult) -> str:
    lines = ["| Idle figure | Value |", "|---|---|"]
    if result.error:
        lines.append(f"| FAILED | {result.error} |")
        return "\n".join(lines)
    per_minute = result.cpu_per_minute
    lines += [
        f"| Window measured (after start-up) | {result.seconds:.0f} s, {result.scrapes} scrapes |",
        f"| CPU seconds in the window | {_num(result.cpu_s)} |",
        f"| CPU seconds per minute | {_num(per_minute, 3)} |",
        f"| CPU seconds per hour (per-minute figure x 60, extrapolated) | "
        f"{_num(per_minute * 60 if per_minute is not None else None, 1)} |",
        f"| RSS at the end / peak RSS | {_num(result.rss_mib, 0)} / {_num(result.peak_rss_mib, 0)} MiB |",
    ]
    return "\n".join(lines)


def mixed_table(result: MixedResult) -> str:
    lines = ["| Mixed load figure | Value |", "|---|---|"]
    if result.error:
        lines.append(f"| FAILED | {result.error} |")
        return "\n".join(lines)
    lines += [
        f"| 5 cores at once (1 KiB, 5 MiB odd name, 20 MiB, 150 MiB, sparse 1 GiB): all shipped in | "
        f"{_num(result.drain_s)} s |",
        f"| RSS idle before / peak / {AFTER_S:.0f} s after the last core | {_num(result.idle_rss_mib, 0)} / "
        f"{_num(result.peak_rss_mib, 0)} / {_num(result.after_rss_mib, 0)} MiB |",
    ]
    return "\n".join(lines)


def daemon_table(result: DaemonResult) -> str:
    lines = ["| Daemon figure | Value |", "|---|---|"]
    if result.error:
        lines.append(f"| FAILED | {result.error} |")
    if result.startup_s:
        lines.append(
            f"| Start-up to `/readyz` 200, median of {len(result.startup_s)} | "
            f"{_num(median(result.startup_s), 3)} s |"
        )
    if result.latency_s:
        lines.append(
            f"| 1 MiB core: close to object complete, median ({len(result.latency_s)} cores) | "
            f"{_num(_ms(median(result.latency_s)), 0)} ms |"
        )
        lines.append(
            f"| 1 MiB core: close to object complete, p95 | "
            f"{_num(_ms(percentile(result.latency_s, 0.95)), 0)} ms |"
        )
        lines.append(f"| Cores deleted after upload | {result.deleted}/{result.latency_cores} |")
    if result.idle_rss_mib is not None:
        lines.append(f"| Peak RSS, idle start-up and stop | {_num(result.idle_rss_mib, 0)} MiB |")
    for name, figures in result.big.items():
        lines.append(f"| Peak RSS shipping {name} (whole daemon life) | {_num(figures['rss_mib'], 0)} MiB |")
        lines.append(
            f"| {name}: appearance to object complete | {_num(figures['wall_s'])} s "
            f"({_num(figures['mb_per_s'], 0)} MB/s) |"
        )
        lines.append(
            f"| {name}: daemon CPU per GiB (already running, no start-up) | "
            f"{_num(figures.get('cpu_per_gib'))} s |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> float | None:
    return value * 1000 if value is not None else None


def _find(rows: Sequence[Row], target: str, prefix: str, contestant: str) -> Row | None:
    for row in rows:
        if row.target == target and row.input_name.startswith(prefix) and row.contestant == contestant:
            return row if row.wall_s is not None else None
    return None


def _ratio_of(ours: float | None, base: float | None) -> float | None:
    return ours / base if ours is not None and base else None


def goals_table(
    rows: Sequence[Row],
    daemon: DaemonResult,
    storms: Sequence[StormResult],
    idle: IdleResult | None,
    default_label: str,
    main_target: str,
) -> str:
    """The issue's goals, checked against this run's numbers (the HTTPS rows are the main ones)."""
    lines = ["| Goal | Target | Measured | Met |", "|---|---|---|---|"]

    def add(
        goal: str, target: str, measured: float | None, limit: float, unit: str, least: bool = False
    ) -> None:
        if measured is None:
            lines.append(f"| {goal} | {target} | not measured | — |")
            return
        met = "yes" if (measured >= limit if least else measured <= limit) else "NO"
        lines.append(f"| {goal} | {target} | {measured:.2f}{unit} | {met} |")

    ours = _find(rows, main_target, "realistic", default_label)
    aws = _find(rows, main_target, "realistic", AWS_LABEL)
    aws_cpu = aws.cpu_per_gib if aws else None
    first = next(iter(daemon.big.values()), {})
    add(
        "HTTPS: running daemon CPU s per GiB vs aws s3 cp",
        "<= 0.5x",
        _ratio_of(first.get("cpu_per_gib"), aws_cpu),
        0.5,
        "x",
    )
    add(
        "HTTPS: `ship` CPU s per GiB vs aws s3 cp",
        "<= 0.5x",
        _ratio_of(ours.cpu_per_gib if ours else None, aws_cpu),
        0.5,
        "x",
    )
    speed = _ratio_of(aws.wall_s if aws else None, ours.wall_s if ours else None)
    add("HTTPS: `ship` throughput vs aws s3 cp, 1 GiB realistic", ">= 2x", speed, 2.0, "x", least=True)
    link_ours = _find(rows, "link-1gbit", "realistic", default_label)
    link_aws = _find(rows, "link-1gbit", "realistic", AWS_LABEL)
    link = _ratio_of(link_aws.to_object_s if link_aws else None, link_ours.to_object_s if link_ours else None)
    add("1 Gbit/s link: close to object, speed vs aws s3 cp, realistic", ">= 3x", link, 3.0, "x", least=True)
    latency = _ms(median(daemon.latency_s))
    add("1 MiB core: close to object complete, median", "<= 50 ms", latency, 50, " ms")
    for name in ("1 GiB realistic core", "4 GiB realistic core"):
        rss = daemon.big.get(name, {}).get("rss_mib")
        add(f"Daemon peak RSS shipping a {name.split(' realistic')[0]} core", "<= 95 MiB", rss, 95, " MiB")
    for label, ratio, storm_rss in _storm_goals(storms):
        add(f"{label}: drain rate vs the script", ">= 100x", ratio, 100, "x", least=True)
        add(f"{label}: daemon peak RSS", "<= 95 MiB", storm_rss, 95, " MiB")
    if idle is not None:
        add("Idle: CPU seconds per minute", "< 1", idle.cpu_per_minute, 1.0, "")
        add("Idle: RSS", "<= 70 MiB", idle.rss_mib, 70, " MiB")
    return "\n".join(lines)


def _storm_goals(storms: Sequence[StormResult]) -> list[tuple[str, float | None, float | None]]:
    """(storm, the daemon's rate / the script's, the daemon's peak RSS) per core size."""
    goals = []
    for ours in storms:
        if ours.contestant != DAEMON_LABEL:
            continue
        script = _storm_script(storms, ours)
        ratio = ours.rate / script.rate if script and ours.rate and script.rate else None
        goals.append((f"{ours.cores} x {ours.core_bytes // MiB} MiB storm", ratio, ours.peak_rss_mib))
    return goals


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aws_cli": _version([str(AWS), "--version"]),
        "commit": _version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "load_at_end": round(os.getloadavg()[0], 2),
    }


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "absent"
    return (done.stdout or done.stderr).strip().split(" ")[0] or "unknown"


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}; {info['aws_cli']}; "
        f"coredump-shipper {info['commit']}. 1-minute load average {info.get('load_at_start', '?')} "
        f"at start, {info['load_at_end']} at end (other work on the machine skews wall times, "
        "CPU seconds much less)."
    )
