"""The chart's alerts, rendered by helm exactly as users get them, run by promtool against the situations
they exist for: when each one fires, that it stays quiet on a healthy node, and the text it sends.

Times below are seconds from the start of a scenario; series are sampled every 30 s (a scrape) and the
rules evaluated every 30 s. `fires_at` is the first evaluation at which the alert must fire; promtool
also checks it is quiet at every evaluation before.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.alertrules import (
    ALL_ALERTS,
    STALE,
    STEP,
    STYLES,
    Expect,
    Scenario,
    ScrapeStyle,
    Signal,
    Value,
    alerts_by_name,
    counter,
    promtool_tests,
    render_rules,
    required_tool,
    selector,
)

ROOT = Path(__file__).resolve().parents[2]
# Where the runbook is published: the chart's home (Chart.yaml) + the file on the main branch.
PUBLISHED_RUNBOOK = yaml.safe_load((ROOT / "charts/coredump-shipper/Chart.yaml").read_text())["home"] + (
    "/blob/main/docs/alerts.md"
)
M = 60
MiB = 1 << 20


def const(value: float) -> Value:
    return lambda t: value


def events(times: Sequence[float]) -> Value:
    """A counter that counts `times` (seconds) as they pass."""
    return lambda t: float(sum(1 for e in times if e <= t))


def piecewise(*points: tuple[float, float | None]) -> Signal:
    """(from, value) pairs: the value of the last point at or before t."""
    return lambda t: [v for start, v in points if start <= t][-1]


def with_gaps(signal: Signal, gaps: list[float]) -> Signal:
    """`signal`, with the scrapes at `gaps` failed (a restart): Prometheus marks the series stale."""
    return lambda t: STALE if t in gaps else signal(t)


def quiet(*alerts: str) -> list[Expect]:
    return [Expect(alert, None) for alert in alerts]


def shipper(**signals: Signal) -> dict[str, Signal]:
    """A healthy idle shipper's series, with `signals` (metric name without prefix -> signal) replaced.
    A scrape that fails (`up` 0) leaves every series of the target stale, as Prometheus does."""
    series: dict[str, Signal] = {
        'uploads_total{result="success"}': const(5),
        'uploads_total{result="failure"}': const(0),
        "upload_bytes_total": const(5 * MiB),
        "cores_detected_total": const(5),
        'dropped_total{reason="disk_budget"}': const(0),
        'dropped_total{reason="rate_limited"}': const(0),
        "integrity_failures_total": const(0),
        "pending_files": const(0),
        "oldest_pending_age_seconds": const(0),
        "pending_failed_attempts_max": const(0),
        "self_test_success": const(1),
        "capture_configured": const(1),
        "s3_reachable": const(1),
        "healthy": const(1),
        "last_success_timestamp_seconds": const(1.7e9),
        "start_time_seconds": const(1.7e9),
        'build_info{version="0.1.0"}': const(1),
        "up": const(1),
    }
    series.update(signals)
    up = series["up"]
    out = {}
    for name, signal in series.items():
        metric, _, labels = name.partition("{")
        extra = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        full = metric if metric == "up" else f"coredump_shipper_{metric}"
        out[selector(full, **extra)] = signal if metric == "up" else answered_only(signal, up)
    return out


def answered_only(signal: Signal, up: Signal) -> Signal:
    return lambda t: STALE if up(t) == 0 else signal(t)


def steady(per_min: float = 4, stop: float = float("inf")) -> dict[str, Signal]:
    """Healthy traffic: cores found, shipped and their bytes sent at `per_min` a minute until `stop`."""
    return {
        'uploads_total{result="success"}': counter(per_min, stop=stop, base=5),
        "cores_detected_total": counter(per_min, base=5),
        "upload_bytes_total": counter(per_min * 3 * MiB, stop=stop, base=5 * MiB),
    }


# An idle node: S3 went away at 20 min, a core arrives at 30 min, the whole-file attempts fail with
# the daemon's backoff (0.5 s doubling to 60 s, plus each attempt's own retries).
IDLE_FAILURES = [1830, 1860, 1890] + [1950 + 60 * k for k in range(30)]


# One core keeps failing from 10 min (a permanent error for that object) while others ship.
def stuck_attempts(first: float) -> Value:
    """The failed attempts of one core: +1 per scrape up to 5, then about one a minute (backoff cap)."""

    def value(t: float) -> float:
        if t < first:
            return 0
        k = int((t - first) // STEP) + 1
        return float(k if k <= 5 else 5 + (k - 5) // 2)

    return value


def restarting(signal_of_process: Value, restarts: Sequence[float], start: float = 0) -> Signal:
    """A per-process value (a function of the process's age) for a shipper restarted at `restarts`:
    the scrape at each restart fails, the next one shows the new process."""
    starts = [start, *restarts]

    def value(t: float) -> float | None:
        if t in restarts:
            return STALE
        began = max(s for s in starts if s <= t)
        return signal_of_process(t - began)

    return value


RESTARTS_EVERY_5_MIN = [900 + 300 * k for k in range(8)]


def window_max(signal: Signal, t: float, window: float) -> float:
    """max_over_time(signal[window]) at t."""
    values = [signal(s) for s in range(int(t - window), int(t) + 1, STEP) if s >= 0]
    return max(v for v in values if v is not None)


def stuck_core_restarting(t: float) -> float | None:
    """The stuck core's failed attempts when the shipper restarts every 5 min from 15 min: each new
    process finds the core at its start-up scan and counts its failures from 1 again."""
    if t in RESTARTS_EVERY_5_MIN:
        return STALE
    if t < RESTARTS_EVERY_5_MIN[0]:
        return stuck_attempts(600)(t)
    began = max(r for r in RESTARTS_EVERY_5_MIN if r <= t)
    return stuck_attempts(STEP)(t - began)


def start_times(restarts: Sequence[float]) -> Signal:
    """coredump_shipper_start_time_seconds: a new value after each restart."""

    def value(t: float) -> float | None:
        if t in restarts:
            return STALE
        return 1.7e9 + max([0.0, *[r for r in restarts if r <= t]])

    return value


DAEMONSET = '{daemonset="rel-coredump-shipper", namespace="coredumps"}'


def crash_loop_up(t: float) -> float:
    """From 10 min the shipper answers one scrape in four (crashes, back-off, starts again)."""
    return 1.0 if t < 600 or (t - 600) % 120 == 90 else 0.0


NEVER_SUCCEEDED_FAILURES = [330, 360, 390] + [450 + 60 * k for k in range(40)]

# S3 goes away at 20 min: the shipper's next check (within 15 s) fails, so the scrape at 20.5 min
# reads coredump_shipper_s3_reachable 0 (an S3 that hangs instead: 0 within 60 s, one scrape later).
S3_GONE = piecewise((0, 1), (1230, 0))

SCENARIOS = [
    Scenario(
        "S3 gone at 20 min on an idle node, no core at all: noticed within 10 min, back at 40 min",
        minutes=50,
        # Nothing to upload: no upload attempt, no failure, no waiting core; only the S3 check fails.
        series=shipper(s3_reachable=piecewise((0, 1), (1230, 0), (2400, 1))),
        # 0 from 20.5 min, for 5 min: fires at 25.5 min, 5.5 min after S3 went away.
        expect=[
            Expect("CoredumpShipperS3Unreachable", fires_at=1530, resolves_at=2400),
            *quiet(*(a for a in ALL_ALERTS[:-2] if a != "CoredumpShipperS3Unreachable")),
        ],
    ),
    Scenario(
        "S3 gone at 20 min on an idle node, a core at 30 min: the outage first, then the failing uploads",
        minutes=45,
        series=shipper(
            **{'uploads_total{result="failure"}': events(IDLE_FAILURES)},
            pending_files=piecewise((0, 0), (1800, 1)),
            s3_reachable=S3_GONE,
        ),
        # Uploads: pending at the first failed upload (30.5 min), fires 3 min later with 5 failures.
        expect=[
            Expect("CoredumpShipperS3Unreachable", fires_at=1530),
            Expect("CoredumpShipperUploadsFailing", fires_at=2010, value=5),
        ],
    ),
    Scenario(
        "S3 gone on a busy node: noticed within 15 min of the last success",
        minutes=50,
        series=shipper(
            **steady(4, stop=1800),
            **{'uploads_total{result="failure"}': counter(4, start=1800)},
            pending_files=piecewise((0, 0), (1800, 3)),
            s3_reachable=piecewise((0, 1), (1830, 0)),
        ),
        # The last success is scraped at 30 min; fires at 43 min with 40 failures in the last 10 min.
        expect=[
            Expect("CoredumpShipperS3Unreachable", fires_at=2130),
            Expect("CoredumpShipperUploadsFailing", fires_at=2580, value=40),
            Expect("CoredumpShipperCoreStuck", fires_at=None),
        ],
    ),
    Scenario(
        "S3 fails one check in four, two pods on the node in a rolling update, one never reaches S3",
        minutes=40,
        series=shipper(s3_reachable=lambda t: 0.0 if t // STEP % 4 == 0 else 1.0)
        | {
            selector(
                "coredump_shipper_s3_reachable", pod="rel-coredump-shipper-y2", instance="10.0.0.2:9823"
            ): const(0)
        },
        # Never unreachable for 5 min in a row, and one pod of the node reaching S3 is enough.
        expect=quiet("CoredumpShipperS3Unreachable"),
    ),
    Scenario(
        "steady healthy traffic with a transient failure every 7 min: quiet",
        minutes=60,
        series=shipper(
            **steady(4),
            **{'uploads_total{result="failure"}': lambda t: float(t // 420)},
            pending_failed_attempts_max=lambda t: 1.0 if t >= 420 and t % 420 < STEP else 0.0,
            oldest_pending_age_seconds=const(10),
        ),
        expect=quiet(*ALL_ALERTS[:-2]),
    ),
    Scenario(
        "a restart (counters reset, one failed scrape, 100 waiting cores found again): quiet",
        minutes=60,
        series=shipper(
            **{
                'uploads_total{result="success"}': restarting(counter(4, base=0), [1800]),
                'uploads_total{result="failure"}': restarting(lambda age: 12 + age // 420, [1800]),
                "upload_bytes_total": restarting(counter(12 * MiB), [1800]),
                "up": piecewise((0, 1), (1800, 0), (1830, 1)),
                "self_test_success": restarting(lambda age: -1.0 if age < 60 else 1.0, [1800]),
            },
            # The new process finds the 100 cores written while it was down at once, ships them in 5 min.
            pending_files=piecewise((0, 0), (1800, STALE), (1830, 100), (2130, 0)),
            oldest_pending_age_seconds=piecewise((0, 0), (1800, STALE), (1830, 60), (2130, 0)),
            cores_detected_total=lambda t: (
                STALE if t == 1800 else counter(4)(t) if t < 1800 else 100 + counter(4, start=1830)(t)
            ),
            healthy=restarting(lambda age: 1.0, [1800]),
            start_time_seconds=start_times([1800]),
        ),
        expect=quiet(*ALL_ALERTS[:-2]),
    ),
    Scenario(
        "one huge core uploading for 45 min with its parts flowing: quiet",
        minutes=55,
        series=shipper(
            pending_files=piecewise((0, 0), (300, 1), (3000, 0)),
            oldest_pending_age_seconds=lambda t: t - 300 if 300 <= t < 3000 else 0.0,
            upload_bytes_total=counter(16 * MiB, start=300, base=5 * MiB),
            **{'uploads_total{result="success"}': piecewise((0, 5), (3000, 6))},
        ),
        expect=quiet(
            "CoredumpShipperUploadsFailing", "CoredumpShipperBacklogStuck", "CoredumpShipperCoreStuck"
        ),
    ),
    Scenario(
        "one core always fails among healthy ones: noticed within 30 min",
        minutes=40,
        series=shipper(
            **steady(4),
            **{'uploads_total{result="failure"}': stuck_attempts(600)},
            pending_failed_attempts_max=stuck_attempts(600),
            pending_files=piecewise((0, 0), (600, 1)),
            oldest_pending_age_seconds=lambda t: max(0.0, t - 600),
        ),
        # 5 failed attempts at 12 min, 15 min of that: fires at 27 min, 17 min after the first failure.
        expect=[
            Expect("CoredumpShipperCoreStuck", fires_at=1620, value=stuck_attempts(600)(1620)),
            Expect("CoredumpShipperUploadsFailing", fires_at=None),
            Expect("CoredumpShipperBacklogStuck", fires_at=None),
        ],
    ),
    Scenario(
        "one core always fails and the shipper restarts every 5 min: still noticed within 30 min",
        minutes=40,
        series=shipper(
            **steady(4),
            pending_failed_attempts_max=stuck_core_restarting,
            start_time_seconds=start_times(RESTARTS_EVERY_5_MIN),
            up=lambda t: 0.0 if t in RESTARTS_EVERY_5_MIN else 1.0,
        ),
        expect=[
            Expect(
                "CoredumpShipperCoreStuck", fires_at=1620, value=window_max(stuck_core_restarting, 1620, 300)
            ),
            # The third restart (at 25 min) is seen at the next scrape.
            Expect("CoredumpShipperRestarting", fires_at=1530, value=3),
            Expect("CoredumpShipperDown", fires_at=None),
        ],
    ),
    Scenario(
        "the start-up self-test fails, the pod restarts, then a fixed pod replaces it",
        minutes=40,
        series=shipper(
            self_test_success=lambda t: (
                STALE if t == 900 or t >= 1470 else -1.0 if t < 60 or 930 <= t < 960 else 0.0
            ),
        )
        | {
            selector(
                "coredump_shipper_self_test_success", pod="rel-coredump-shipper-y2", instance="10.0.0.2:9823"
            ): (lambda t: STALE if t < 1500 else 1.0)
        },
        expect=[Expect("CoredumpShipperSelfTestFailed", fires_at=60, resolves_at=1500)],
    ),
    Scenario(
        "/healthz fails (a wedged worker) until the kubelet restarts the pod",
        minutes=40,
        series=shipper(healthy=piecewise((0, 1), (1200, 0), (1260, STALE), (1290, 1))),
        # Fires at the first failing scrape; the last one (20.5 min) leaves the 10 min window at 31 min.
        expect=[Expect("CoredumpShipperUnhealthy", fires_at=1200, resolves_at=1860)],
    ),
    Scenario(
        "a shipper that never shipped anything, idle: quiet (its last-success timestamp is 0)",
        minutes=60,
        series=shipper(
            **{'uploads_total{result="success"}': const(0)},
            upload_bytes_total=const(0),
            cores_detected_total=const(0),
            last_success_timestamp_seconds=const(0),
        ),
        expect=quiet(*ALL_ALERTS[:-2]),
    ),
    Scenario(
        "a shipper that never reached S3 gets a core at 5 min",
        minutes=45,
        series=shipper(
            **{
                'uploads_total{result="success"}': const(0),
                'uploads_total{result="failure"}': events(NEVER_SUCCEEDED_FAILURES),
            },
            upload_bytes_total=const(0),
            cores_detected_total=piecewise((0, 0), (300, 1)),
            last_success_timestamp_seconds=const(0),
            pending_files=piecewise((0, 0), (300, 1)),
            oldest_pending_age_seconds=lambda t: max(0.0, t - 300),
            s3_reachable=const(0),
            s3_last_success_timestamp_seconds=const(0),
        ),
        # Unreachable from the first scrape, for 5 min. Failing: 3 min after the first failure
        # (5.5 min). Backlog: the core is older than 30 min at 35.5 min, for 5 min.
        expect=[
            Expect("CoredumpShipperS3Unreachable", fires_at=300),
            Expect("CoredumpShipperUploadsFailing", fires_at=510, value=5),
            Expect("CoredumpShipperBacklogStuck", fires_at=2430, value=2130),
        ],
    ),
    Scenario(
        "the disk budget deletes 3 unshipped cores at 10 min",
        minutes=50,
        series=shipper(**{'dropped_total{reason="disk_budget"}': piecewise((0, 0), (600, 3))}, **steady(4)),
        # Quiet again once the deletions leave the 30 min window.
        expect=[
            Expect(
                "CoredumpShipperCoresDropped",
                fires_at=600,
                value=3,
                labels={"namespace": "coredumps", "node": "node-1", "reason": "disk_budget"},
                resolves_at=2400,
            )
        ],
    ),
    Scenario(
        "the store keeps other bytes than were sent for 2 objects at 10 min",
        minutes=50,
        series=shipper(integrity_failures_total=piecewise((0, 0), (600, 2)), **steady(4)),
        # At the first evaluation that sees it, while other cores still ship; quiet once it leaves
        # the 30 min window.
        expect=[Expect("CoredumpShipperIntegrityFailures", fires_at=600, value=2, resolves_at=2400)],
    ),
    Scenario(
        "the pipe receiver cuts 2 cores short at the free-space floor at 10 min",
        minutes=50,
        series=shipper(
            **{'capture_failures_total{reason="keep_free"}': piecewise((0, 0), (600, 2))}, **steady(4)
        ),
        expect=[
            Expect(
                "CoredumpShipperCaptureFailures",
                fires_at=600,
                value=2,
                labels={"namespace": "coredumps", "node": "node-1", "reason": "keep_free"},
                resolves_at=2400,
            )
        ],
    ),
    Scenario(
        "host processes dropped by the capture scope and cores cut at the size cap: by design",
        minutes=30,
        series=shipper(
            **{
                'capture_failures_total{reason="scope"}': counter(2),
                'capture_failures_total{reason="max_size"}': piecewise((0, 0), (600, 1)),
            },
            **steady(4),
        ),
        expect=quiet("CoredumpShipperCaptureFailures"),
    ),
    Scenario(
        "a crash loop writes 30 cores a minute from 10 min",
        minutes=30,
        series=shipper(cores_detected_total=lambda t: counter(4)(min(t, 600)) + counter(30, start=600)(t)),
        # Over 10 a minute in the 5 min window from 11.5 min, for 5 min.
        expect=[Expect("CoredumpShipperCoreStorm", fires_at=990)],
    ),
    Scenario(
        "the storm limit drops cores of one program",
        minutes=30,
        series=shipper(**{'dropped_total{reason="rate_limited"}': piecewise((0, 0), (600, 4))}),
        expect=[Expect("CoredumpShipperCoreStorm", fires_at=900)],
    ),
    Scenario(
        "another tool rewrites core_pattern at 10 min; a rollout re-runs node setup at 25 min",
        minutes=40,
        series=shipper(
            # -1 until the first check of each process, then 1 or 0; the new pod sees it configured.
            capture_configured=piecewise((0, -1), (30, 1), (600, 0), (1500, STALE))
        )
        | {
            selector(
                "coredump_shipper_capture_configured", pod="rel-coredump-shipper-y2", instance="10.0.0.2:9823"
            ): piecewise((0, STALE), (1500, -1), (1530, 1))
        },
        # Three minutes of checks that say 0; resolved at the new pod's first check.
        expect=[Expect("CoredumpShipperCaptureNotConfigured", fires_at=780, resolves_at=1530)],
    ),
    Scenario(
        "capture is never checked (--capture-mode off: -1 for ever)",
        minutes=30,
        series=shipper(capture_configured=lambda t: -1.0),
        expect=quiet("CoredumpShipperCaptureNotConfigured"),
    ),
    Scenario(
        "the metrics endpoint stops answering at 10 min",
        minutes=30,
        series=shipper(up=piecewise((0, 1), (600, 0))),
        expect=[Expect("CoredumpShipperDown", fires_at=1200, value=0)],
    ),
    Scenario(
        "a crash loop answers one scrape in four",
        minutes=40,
        series=shipper(
            up=crash_loop_up,
            # Only the scrapes that answer show a (new) process.
            start_time_seconds=lambda t: (1.7e9 if t < 600 else 1.7e9 + t) if crash_loop_up(t) else STALE,
        ),
        # Under half the scrapes answer from 16.5 min; fires 5 min later, when 6 of 21 answered.
        expect=[
            Expect("CoredumpShipperDown", fires_at=1290, value=6 / 21),
            Expect("CoredumpShipperRestarting", fires_at=930, value=3),
        ],
    ),
    Scenario(
        "no shipper of this release is scraped anywhere (another namespace's is)",
        minutes=20,
        series={
            'up{job="something-else", instance="10.0.0.9:80"}': const(1),
            'coredump_shipper_build_info{job="kubernetes-pods", namespace="other", node="node-1"}': const(1),
        },
        expect=[Expect("CoredumpShipperAbsent", fires_at=900, labels={"namespace": "coredumps"})],
    ),
    Scenario(
        "kube-state-metrics: the DaemonSet is unavailable on one of three nodes",
        minutes=20,
        series={
            f"kube_daemonset_status_desired_number_scheduled{DAEMONSET}": const(3),
            f"kube_daemonset_status_number_available{DAEMONSET}": const(2),
        },
        expect=[
            Expect(
                "CoredumpShipperNotOnAllNodes",
                fires_at=900,
                value=1,
                labels={"namespace": "coredumps", "daemonset": "rel-coredump-shipper"},
            )
        ],
    ),
]


@pytest.fixture(scope="module")
def rules() -> dict[str, Any]:
    return render_rules()


@pytest.fixture(scope="module")
def rule_file(rules: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "coredump-shipper.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def test_rules_pass_promtool_check(rule_file: Path) -> None:
    result = subprocess.run(
        [required_tool("promtool"), "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALL_ALERTS)} rules found" in result.stdout


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_alert_times(
    scenario: Scenario, style: ScrapeStyle, rules: dict[str, Any], rule_file: Path, tmp_path: Path
) -> None:
    """Each scenario with the shipper scraped each way: the alerts fire at the same times."""
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump(promtool_tests(scenario, rules, str(rule_file), style), sort_keys=False))
    result = subprocess.run(
        [required_tool("promtool"), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_every_alert_is_seen_firing_in_a_scenario() -> None:
    fired = {e.alert for s in SCENARIOS for e in s.expect if e.fires_at is not None}
    assert fired == set(ALL_ALERTS)


def test_every_alert_names_its_node_and_namespace_and_links_its_runbook(rules: dict[str, Any]) -> None:
    """The promtool scenarios check the labels of each firing alert; this checks every rule's form."""
    runbook = (ROOT / "docs" / "alerts.md").read_text()
    sections = {h.lower() for h in re.findall(r"^### (\w+)$", runbook, flags=re.MULTILINE)}
    for name, rule in alerts_by_name(rules).items():
        assert rule["annotations"]["runbook_url"] == f"{PUBLISHED_RUNBOOK}#{name.lower()}"
        assert name.lower() in sections, f"docs/alerts.md has no section for {name}"
        if name == "CoredumpShipperAbsent":  # absent() of an expression keeps no label
            assert rule["labels"]["namespace"] == "coredumps"
        elif name == "CoredumpShipperNotOnAllNodes":  # per DaemonSet, from kube-state-metrics
            assert 'namespace="coredumps"' in rule["expr"]
        else:
            groupings = re.findall(r"by \(([^)]*)\)", rule["expr"])
            assert groupings, name
            for grouping in groupings:
                assert {"namespace", "node"} <= {g.strip() for g in grouping.split(",")}, (name, grouping)
            assert "{{ $labels.node }}" in rule["annotations"]["summary"], name


def test_time_scale_shrinks_every_duration(rules: dict[str, Any]) -> None:
    scaled = alerts_by_name(render_rules(set_json={"metrics.prometheusRule.timeScale": "0.01"}))

    def durations(rule: dict[str, Any]) -> list[float]:
        text = rule["expr"] + " " + str(rule.get("for", ""))
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        return [float(n) * units[u] for n, u in re.findall(r"\b(\d+)(ms|s|m|h)\b", text)]

    for name, rule in alerts_by_name(rules).items():
        assert [d / 100 for d in durations(rule)] == pytest.approx(durations(scaled[name])), name
    assert "> 18\n" in scaled["CoredumpShipperBacklogStuck"]["expr"]
