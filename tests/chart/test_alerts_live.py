"""A real Prometheus (Debian's 2.42) on loopback scrapes two real shipper processes and evaluates the
chart's rules as helm renders them, with every duration scaled down by
`metrics.prometheusRule.timeScale`. node-1 is scraped the way the chart's ServiceMonitor does it, node-2
the way annotation-based scraping does (another job name, no node target label): the rules must find
both. node-2's S3 goes away while it is idle (no core at all): S3Unreachable names it. A core then
waits there: UploadsFailing. Meanwhile node-1 ships a core slowed down to outlast every alert's window
and `for:`: nothing fires for it. S3 comes back: everything resolves.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from testkit.bucket import Bucket
from testkit.cores import write_file
from testkit.daemon import daemon_args
from testkit.faultproxy import ThreadedFaultProxy
from testkit.servers import S3Endpoint, free_port
from testkit.waiting import wait_until_sync
from tests.chart.alertrules import RELEASE_SELECTOR, alerts_by_name, render_rules, required_tool

# 10 min -> 6 s, 3 min -> 1.8 s: with a 1 s scrape and evaluation each alert fits in seconds.
TIME_SCALE = "0.01"
MiB = 1 << 20
PART = 5 * MiB
PART_LATENCY = 4.0  # seconds each UploadPart waits in the proxy: a slow link whose parts still flow
NAMESPACE = RELEASE_SELECTOR["namespace"]


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback, built here)
        body: bytes = answer.read()
    return body.decode()


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process logging to `log` (a pipe would fill up and block it), stopped with SIGTERM."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def alerts(prometheus: str) -> list[dict[str, Any]]:
    """Every alert Prometheus holds, pending or firing."""
    found: list[dict[str, Any]] = json.loads(http_get(f"{prometheus}/api/v1/alerts"))["data"]["alerts"]
    return found


def firing(prometheus: str, name: str, node: str) -> list[dict[str, Any]]:
    return [
        a
        for a in alerts(prometheus)
        if a["labels"]["alertname"] == name and a["labels"].get("node") == node and a["state"] == "firing"
    ]


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    result: list[dict[str, Any]] = json.loads(http_get(url))["data"]["result"]
    return result


def sample(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def time_to_fire(rule: Mapping[str, Any]) -> float:
    """The least time a condition must hold before `rule` can fire: its longest range or age
    threshold, plus its `for:`. The lookback that finds a target's node is not a wait."""
    expr = re.sub(r"max_over_time\(coredump_shipper_build_info[^]]*\]\)", "", rule["expr"])
    waits = [seconds(w) for w in re.findall(r"\[(\d+(?:ms|s|m|h))[]:]", expr)]
    waits += [float(n) for n in re.findall(r"_age_seconds\{[^}]*\}\)* > ([\d.]+)", expr)]
    return max(waits, default=0) + seconds(str(rule.get("for", "0s")))


def watch(prometheus: str, done: Callable[[], bool], allowed: set[tuple[str, str]], timeout: float) -> float:
    """Poll until `done()`, asserting at every poll that each alert, pending or firing, is one of
    `allowed` (alert name, node); return the seconds it took."""
    started = time.monotonic()
    while not done():
        for alert in alerts(prometheus):
            labels = alert["labels"]
            seen = (labels["alertname"].removeprefix("CoredumpShipper"), labels.get("node", ""))
            assert seen in allowed, (alert, allowed)
        assert time.monotonic() - started < timeout, f"not done within {timeout}s"
        time.sleep(0.2)
    return time.monotonic() - started


class Finish:
    """Notes when `done()` first holds, however often it is polled afterwards."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done
        self.at: float | None = None

    def poll(self) -> bool:
        if self.at is None and self.done():
            self.at = time.monotonic()
        return self.at is not None


def scrape_configs(node_1: str, node_2: str) -> list[dict[str, Any]]:
    return [
        {
            # As the chart's ServiceMonitor/PodMonitor: job = the release's full name, the pod's
            # namespace and node as target labels, honorLabels on.
            "job_name": RELEASE_SELECTOR["job"],
            "honor_labels": True,
            "static_configs": [
                {
                    "targets": [node_1],
                    "labels": {"namespace": NAMESPACE, "node": "node-1", "pod": "rel-coredump-shipper-a1"},
                }
            ],
        },
        {
            # As annotation-based scraping (Prometheus' example kubernetes-pods job): its own job
            # name, namespace and pod relabelled from the pod, no node, honor_labels off.
            "job_name": "kubernetes-pods",
            "static_configs": [
                {"targets": [node_2], "labels": {"namespace": NAMESPACE, "pod": "rel-coredump-shipper-b2"}}
            ],
        },
    ]


def test_prometheus_sees_each_node_however_it_is_scraped(
    s3_server: S3Endpoint, bucket: Bucket, tmp_path: Path
) -> None:
    prometheus_bin = required_tool("prometheus")
    promtool = required_tool("promtool")
    rules = render_rules(set_json={"metrics.prometheusRule.timeScale": TIME_SCALE})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    longest = max(time_to_fire(rule) for rule in alerts_by_name(rules).values())
    # Enough parts, two in flight, for the slow upload to outlast every alert's time to fire.
    parts = int(2 * (longest + 5) / PART_LATENCY) + 1
    watch_1, watch_2 = tmp_path / "cores-1", tmp_path / "cores-2"
    watch_1.mkdir()
    watch_2.mkdir()

    with ExitStack() as stack:
        proxy_1 = stack.enter_context(ThreadedFaultProxy(s3_server.url))
        proxy_2 = stack.enter_context(ThreadedFaultProxy(s3_server.url))
        # This machine's core_pattern sends cores nowhere these daemons watch: capture checking is off
        # here (CaptureNotConfigured has its promtool scenarios and a real-kernel test of its own).
        own = ("--namespace", NAMESPACE, "--capture-mode", "off")
        args_1 = daemon_args(
            watch_1, bucket.name, proxy_1.url, *own, "--compression", "none", "--part-size", "5MiB"
        )
        args_2 = daemon_args(watch_2, bucket.name, proxy_2.url, *own, "--node-name", "node-2")
        listen_1, listen_2 = (a[a.index("--listen") + 1] for a in (args_1, args_2))
        for args, name in ((args_1, "shipper-1"), (args_2, "shipper-2")):
            stack.enter_context(
                process([sys.executable, "-m", "coredump_shipper", *args], tmp_path / f"{name}.log")
            )
        wait_until_sync(lambda: _reachable(f"http://{listen_1}/metrics"), timeout=30)
        wait_until_sync(lambda: _reachable(f"http://{listen_2}/metrics"), timeout=30)

        web = f"127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yaml")],
            "scrape_configs": scrape_configs(listen_1, listen_2),
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_args = [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={web}",
            "--log.level=warn",
        ]
        stack.enter_context(process(prometheus_args, tmp_path / "prometheus.log"))
        prometheus = f"http://{web}"
        wait_until_sync(lambda: _answers(f"{prometheus}/-/ready"), timeout=30)
        # Both targets scraped, each series with its node, whichever way it was scraped.
        reachable = f'coredump_shipper_s3_reachable{{namespace="{NAMESPACE}"}}'
        wait_until_sync(lambda: len(query(prometheus, reachable)) == 2, timeout=30, interval=0.2)
        assert sorted(r["metric"]["node"] for r in query(prometheus, reachable)) == ["node-1", "node-2"]

        # Healthy: a core ships, nothing fires, and the exposition passes promtool's lint.
        write_file(watch_1 / "core.before", b"shipped while S3 is up")
        wait_until_sync(lambda: len(bucket.core_keys()) == 1, timeout=30)
        check = subprocess.run(
            [promtool, "check", "metrics"],
            input=http_get(f"http://{listen_1}/metrics"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        # The first rule evaluations may run before the first scrape (Absent goes pending): within a
        # few 1 s evaluations of the data, nothing is pending or firing.
        try:
            wait_until_sync(lambda: alerts(prometheus) == [], timeout=10, interval=0.5)
        except AssertionError:
            assert alerts(prometheus) == []  # says which

        # node-1: a healthy upload, slowed down; node-2: S3 goes away while nothing is to be shipped.
        proxy_1.faults.latency(PART_LATENCY, ops={"UploadPart"})
        write_file(watch_1 / "core.slow", bytes(range(256)) * (parts * PART // 256))
        slow_since = time.monotonic()
        proxy_2.down()
        unreachable = {("S3Unreachable", "node-2")}
        fired_after = watch(
            prometheus,
            lambda: bool(firing(prometheus, "CoredumpShipperS3Unreachable", "node-2")),
            unreachable,
            60,
        )
        (alert,) = firing(prometheus, "CoredumpShipperS3Unreachable", "node-2")
        assert alert["labels"]["namespace"] == NAMESPACE
        assert alert["annotations"]["summary"] == "S3 is unreachable from node-2."
        assert alert["annotations"]["runbook_url"].startswith("https://")
        # The real idle outage: not one upload was attempted on node-2, nothing waits there.
        (attempts,) = query(prometheus, 'sum(coredump_shipper_uploads_total{node="node-2"})')
        assert float(attempts["value"][1]) == 0
        assert sample(http_get(f"http://{listen_2}/metrics"), "coredump_shipper_pending_files") == 0

        # A core now waits on node-2: its uploads fail too.
        write_file(watch_2 / "core.during", b"written while S3 is down")
        # The waiting core's own alerts may follow on node-2 (it fails again and again, and ages).
        failing = unreachable | {(a, "node-2") for a in ("UploadsFailing", "CoreStuck", "BacklogStuck")}
        watch(
            prometheus,
            lambda: bool(firing(prometheus, "CoredumpShipperUploadsFailing", "node-2")),
            failing,
            60,
        )
        (alert,) = firing(prometheus, "CoredumpShipperUploadsFailing", "node-2")
        assert (
            "uploads from node-2 failed in the last 6s and none succeeded"
            in alert["annotations"]["description"]
        )

        # S3 comes back for node-2 while node-1's slow upload goes on: node-2's alerts resolve, and
        # the upload ends without a single alert, pending or firing, for node-1.
        proxy_2.up()
        back = time.monotonic()
        slow = Finish(lambda: any("core.slow" in key for key in bucket.core_keys()))
        resolved = Finish(lambda: alerts(prometheus) == [])
        watch(prometheus, lambda: all([slow.poll(), resolved.poll()]), failing, 60)
        assert slow.at is not None and resolved.at is not None
        slow_took, resolved_after = slow.at - slow_since, resolved.at - back
        assert proxy_1.faults.stats().requests["UploadPart"] == parts
        assert len(bucket.core_keys()) == 3
    print(
        f"timeScale {TIME_SCALE}: S3Unreachable fired {fired_after:.1f} s after node-2's S3 went away "
        f"(idle); node-1's upload took {slow_took:.1f} s (every alert can fire after {longest:.1f} s) "
        f"and raised nothing; all resolved {resolved_after:.1f} s after S3 came back"
    )
    # The daemon checks S3 every 15 s (not scaled); the alert's 5 min "for" is 3 s here.
    assert fired_after < 30
    assert slow_took > longest + 2


def _answers(url: str) -> bool:
    try:
        http_get(url)
    except OSError:
        return False
    return True


def _reachable(metrics_url: str) -> bool:
    """The shipper answers and its first S3 check has succeeded."""
    try:
        return sample(http_get(metrics_url), "coredump_shipper_s3_reachable") == 1
    except OSError:
        return False
