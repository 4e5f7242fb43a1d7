"""The chart's alert rules as Prometheus loads them, and `promtool test rules` files built from scenarios.

The rules come from `helm template` of the real chart (the PrometheusRule's `spec.groups`), never a
copy. A scenario is a set of series (one Python function of time per series, sampled like a 30 s
scrape) and, per alert, when it must start firing (or that it never fires): promtool checks every
evaluation up to the end, so the time an alert fires is pinned to one evaluation interval.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.chart.test_chart import CHART, HELM, MONITORING_API

STEP = 30  # seconds between scrapes and between rule evaluations (the chart's monitor default)
RELEASE_SELECTOR = {"job": "rel-coredump-shipper", "namespace": "coredumps"}
NODE = {**RELEASE_SELECTOR, "node": "node-1", "instance": "10.0.0.1:9823", "pod": "rel-coredump-shipper-x1"}
STALE = None  # a failed scrape: Prometheus marks the target's series stale


@dataclass(frozen=True)
class ScrapeStyle:
    """One way Prometheus finds and scrapes the shipper, as the labels it stores: `target` are the
    labels the scrape config gives the target (all that `up` has); the shipper adds its own node and
    namespace to every series it exports, kept beside the target's under exported_* unless
    `honor_labels`, as Prometheus does."""

    name: str
    target: Mapping[str, str]
    honor_labels: bool

    def exported(self, own: Mapping[str, str]) -> dict[str, str]:
        """The labels of a series the shipper exports with the labels `own`, as Prometheus stores it."""
        labels = dict(self.target)
        for name, value in own.items():
            labels[name if self.honor_labels or name not in self.target else f"exported_{name}"] = value
        return labels


POD = {"instance": "10.0.0.1:9823", "pod": "rel-coredump-shipper-x1"}
STYLES = (
    # The chart's ServiceMonitor/PodMonitor: job = the full name, node relabelled from the pod,
    # honorLabels on.
    ScrapeStyle(
        "operator",
        {**RELEASE_SELECTOR, "node": "node-1", **POD, "container": "shipper", "endpoint": "http"},
        honor_labels=True,
    ),
    # prometheus.io/scrape annotations and Prometheus' example kubernetes-pods job: its own job name,
    # namespace and pod relabelled, no node, honor_labels off.
    ScrapeStyle(
        "annotations", {"job": "kubernetes-pods", "namespace": "coredumps", **POD}, honor_labels=False
    ),
    # A plain static scrape config: a job name and the address, nothing from Kubernetes.
    ScrapeStyle("static", {"job": "coredump-shipper", "instance": POD["instance"]}, honor_labels=False),
)

# A series' value at time t (seconds); STALE for a scrape that failed.
Signal = Callable[[float], float | None]
# A series that always has a value (counters and their building blocks).
Value = Callable[[float], float]


def required_tool(name: str) -> str:
    """The path of a Prometheus binary (Debian's `prometheus` package); CI must have it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found (run, as root: make test-deps)"
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI: {reason}")
        pytest.skip(reason)
    return path


def render_rules(
    sets: Mapping[str, str] | None = None, set_json: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The chart's rules as a Prometheus rule file (`groups:`), as `helm template` renders them."""
    if HELM is None:
        if os.environ.get("CI"):
            pytest.fail("helm is required in CI: run make test-deps")
        pytest.skip("helm not found: run make test-deps")
    args = [HELM, "template", "rel", str(CHART), "--namespace", "coredumps", "--api-versions", MONITORING_API]
    args += ["--set", "metrics.prometheusRule.enabled=true"]
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    for key, value in (set_json or {}).items():
        args += ["--set-json", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    (rule,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "PrometheusRule"]
    return {"groups": rule["spec"]["groups"]}


def alerts_by_name(rules: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for group in rules["groups"] for r in group["rules"] if "alert" in r}


# Prometheus' template functions the annotations use, as Prometheus 2.42 prints them.
def humanize_duration(v: float) -> str:
    if v == 0:
        return "0s"
    if abs(v) < 1:
        raise NotImplementedError("sub-second durations")
    sign = "-" if v < 0 else ""
    whole = int(abs(v))
    days, hours, minutes, seconds = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{abs(v):.4g}s"


_FILTERS: dict[str, Callable[[float], str]] = {
    '$value | printf "%.0f"': lambda v: f"{v:.0f}",
    "$value | humanizeDuration": humanize_duration,
    "$value | humanizePercentage": lambda v: f"{v * 100:.4g}%",
}


def expand(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """An annotation as Prometheus expands it, for the few template forms the chart uses."""

    def one(match: re.Match[str]) -> str:
        body = match.group(1).strip()
        if body.startswith("$labels."):
            return labels[body.removeprefix("$labels.")]
        assert value is not None, f"the scenario must give the alert's value for {body!r}"
        return _FILTERS[body](value)

    expanded = re.sub(r"\{\{(.*?)\}\}", one, template)
    assert "{{" not in expanded, expanded
    return expanded


AT_NODE = {"namespace": NODE["namespace"], "node": NODE["node"]}


@dataclass
class Expect:
    """When `alert` fires in a scenario: from `fires_at` seconds (None: never) until `resolves_at`,
    with `value` at `fires_at` (checked through its annotations' text) and these labels."""

    alert: str
    fires_at: float | None
    value: float | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: AT_NODE)
    resolves_at: float | None = None


@dataclass
class Scenario:
    name: str
    minutes: float
    series: Mapping[str, Signal]
    expect: Sequence[Expect]


def _format(value: float | None) -> str:
    if value is None:
        return "stale"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _series_text(signal: Signal, minutes: float) -> str:
    steps = int(minutes * 60 // STEP)
    return " ".join(_format(signal(i * STEP)) for i in range(steps + 1))


def selector(name: str, **labels: str) -> str:
    """A series of the node's shipper target (NODE labels) plus `labels`."""
    merged = {**NODE, **labels}
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in merged.items()) + "}"


def _checks(expect: Expect, rule: Mapping[str, Any], minutes: float) -> list[dict[str, Any]]:
    """Quiet at every evaluation before `fires_at` and from `resolves_at`; firing, with its full text,
    at `fires_at` (between the two its value moves, so only `resolves_at` is checked there)."""
    checks: list[dict[str, Any]] = []
    for i in range(int(minutes * 60 // STEP) + 1):
        t = i * STEP
        if (
            expect.fires_at is None
            or t < expect.fires_at
            or (expect.resolves_at is not None and t >= expect.resolves_at)
        ):
            checks.append({"eval_time": f"{t}s", "alertname": expect.alert, "exp_alerts": []})
        elif t == expect.fires_at:
            labels = {**rule.get("labels", {}), **expect.labels}
            full = {"alertname": expect.alert, **labels}
            text = {k: expand(str(v), full, expect.value) for k, v in rule["annotations"].items()}
            exp: dict[str, Any] = {"exp_labels": labels, "exp_annotations": text}
            checks.append({"eval_time": f"{t}s", "alertname": expect.alert, "exp_alerts": [exp]})
    assert expect.fires_at is None or expect.fires_at % STEP == 0, "fires_at must be an evaluation time"
    return checks


def _labels(series: str) -> tuple[str, dict[str, str]]:
    name, _, labels = series.partition("{")
    return name, dict(re.findall(r'(\w+)="([^"]*)"', labels))


def _text(name: str, labels: Mapping[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def scraped_as(series: Mapping[str, Signal], style: ScrapeStyle) -> dict[str, Signal]:
    """`series` written as `selector` gives them (the chart's monitors), relabelled as `style` stores
    them; series of other targets (kube-state-metrics, another release) are left as they are."""
    out: dict[str, Signal] = {}
    for text, signal in series.items():
        name, labels = _labels(text)
        if labels.get("job") != NODE["job"]:
            out[text] = signal
            continue
        # This pod: its target labels in `style`, with this series' own pod and address.
        target = {k: labels.get(k, v) if k in POD else v for k, v in style.target.items()}
        if name == "up":
            out[_text(name, target)] = signal
            continue
        own = {k: v for k, v in labels.items() if k not in NODE} | {
            "namespace": labels["namespace"],
            "node": labels["node"],
        }
        out[_text(name, ScrapeStyle(style.name, target, style.honor_labels).exported(own))] = signal
    return out


def promtool_tests(
    scenario: Scenario, rules: Mapping[str, Any], rule_file: str, style: ScrapeStyle = STYLES[0]
) -> dict[str, Any]:
    """A promtool test file for `scenario`, its series scraped as `style`, against `rule_file`."""
    alerts = alerts_by_name(rules)
    checks = [
        c for expect in scenario.expect for c in _checks(expect, alerts[expect.alert], scenario.minutes)
    ]
    return {
        "rule_files": [rule_file],
        "evaluation_interval": f"{STEP}s",
        "tests": [
            {
                "name": scenario.name,
                "interval": f"{STEP}s",
                "input_series": [
                    {"series": sel, "values": _series_text(signal, scenario.minutes)}
                    for sel, signal in scraped_as(scenario.series, style).items()
                ],
                "alert_rule_test": checks,
            }
        ],
    }


def counter(rate_per_min: float, start: float = 0, stop: float = math.inf, base: float = 0) -> Value:
    """A counter that grows by `rate_per_min` from `start` until `stop` (seconds), sampled per scrape."""

    def value(t: float) -> float:
        active = max(0.0, min(t, stop) - start)
        return base + math.floor(active / STEP) * rate_per_min * STEP / 60

    return value


# Every alert the chart ships, in the order of its rules.
ALL_ALERTS = (
    "CoredumpShipperUploadsFailing",
    "CoredumpShipperCoreStuck",
    "CoredumpShipperBacklogStuck",
    "CoredumpShipperSelfTestFailed",
    "CoredumpShipperS3Unreachable",
    "CoredumpShipperUnhealthy",
    "CoredumpShipperRestarting",
    "CoredumpShipperCoresDropped",
    "CoredumpShipperIntegrityFailures",
    "CoredumpShipperCoreStorm",
    "CoredumpShipperCaptureFailures",
    "CoredumpShipperCaptureNotConfigured",
    "CoredumpShipperDown",
    "CoredumpShipperAbsent",
    "CoredumpShipperNotOnAllNodes",
)
