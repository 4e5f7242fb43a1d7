"""A real Prometheus (Debian's 2.42) on loopback scrapes a real shipper process and evaluates the chart's
rules as helm renders them, with every duration scaled down by `metrics.prometheusRule.timeScale`:
S3 goes away, UploadsFailing fires; S3 comes back, it resolves.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.alertrules import RELEASE_SELECTOR, render_rules, required_tool
from tests.conftest import Bucket, daemon_args, wait_until_sync, write_file
from tests.faultproxy import ThreadedFaultProxy
from tests.servers import S3Endpoint, free_port

# 10 min -> 6 s, 3 min -> 1.8 s: with a 1 s scrape and evaluation the whole outage fits in seconds.
TIME_SCALE = "0.01"
ALERT = "CoredumpShipperUploadsFailing"


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


def firing(prometheus: str) -> list[dict[str, Any]]:
    alerts = json.loads(http_get(f"{prometheus}/api/v1/alerts"))["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]


def sample(metrics_text: str, name: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_prometheus_fires_and_resolves_uploads_failing(
    s3_server: S3Endpoint, bucket: Bucket, tmp_path: Path
) -> None:
    prometheus_bin = required_tool("prometheus")
    promtool = required_tool("promtool")
    rules = render_rules(set_json={"metrics.prometheusRule.timeScale": TIME_SCALE})
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    watch = tmp_path / "cores"
    watch.mkdir()

    with ThreadedFaultProxy(s3_server.url) as proxy:
        args = daemon_args(watch, bucket.name, proxy.url)
        listen = args[args.index("--listen") + 1]
        metrics_url = f"http://{listen}/metrics"
        web = f"127.0.0.1:{free_port()}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yaml")],
            "scrape_configs": [
                {
                    # The labels the chart's ServiceMonitor gives: job = the release's full name, node.
                    "job_name": RELEASE_SELECTOR["job"],
                    "static_configs": [
                        {
                            "targets": [listen],
                            "labels": {"namespace": RELEASE_SELECTOR["namespace"], "node": "node-1"},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus_args = [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={web}",
            "--log.level=warn",
        ]
        shipper_args = [sys.executable, "-m", "coredump_shipper", *args]
        with (
            process(shipper_args, tmp_path / "shipper.log"),
            process(prometheus_args, tmp_path / "prometheus.log"),
        ):
            prometheus = f"http://{web}"
            wait_until_sync(lambda: _answers(f"{prometheus}/-/ready") and _answers(metrics_url), timeout=30)

            # Healthy: a core ships, nothing fires, and the exposition passes promtool's lint.
            write_file(watch / "core.before", b"shipped while S3 is up")
            wait_until_sync(lambda: len(bucket.core_keys()) == 1, timeout=30)
            check = subprocess.run(
                [promtool, "check", "metrics"],
                input=http_get(metrics_url),
                capture_output=True,
                text=True,
                check=False,
            )
            assert check.returncode == 0, check.stdout + check.stderr
            assert firing(prometheus) == []

            proxy.down()
            stopped = time.monotonic()
            write_file(watch / "core.during", b"written while S3 is down")
            wait_until_sync(lambda: firing(prometheus) != [], timeout=30, interval=0.2)
            fired_after = time.monotonic() - stopped
            (alert,) = firing(prometheus)
            assert alert["labels"]["node"] == "node-1"
            assert alert["labels"]["namespace"] == "coredumps"
            assert alert["labels"]["severity"] == "critical"
            assert (
                "uploads from node-1 failed in the last 6s and none succeeded"
                in alert["annotations"]["description"]
            )
            assert sample(http_get(metrics_url), "coredump_shipper_pending_failed_attempts_max") >= 1

            proxy.up()
            back = time.monotonic()
            wait_until_sync(lambda: firing(prometheus) == [], timeout=30, interval=0.2)
            resolved_after = time.monotonic() - back
            assert len(bucket.core_keys()) == 2
    print(
        f"UploadsFailing at timeScale {TIME_SCALE}: fired {fired_after:.1f} s after S3 stopped, "
        f"resolved {resolved_after:.1f} s after it came back"
    )
    # 6 s window + 1.8 s "for" + scrape and evaluation intervals: well under 30 s either way.
    assert fired_after < 20
    assert resolved_after < 20


def _answers(url: str) -> bool:
    try:
        http_get(url)
    except OSError:
        return False
    return True
