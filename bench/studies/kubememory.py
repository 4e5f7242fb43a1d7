"""Daemon peak RSS shipping one large core with and without the Kubernetes features (docs/kubernetes.md).

    python -m bench.studies.kubememory [--size-gib 4] [--pods 100]

A real kube-apiserver (testkit/servers/kube.py) holds `--pods` pods on the daemon's node; the daemon
uses a real service account token bound by the chart's rules, lists and watches them, names the
core's pod and sends its Event. The core goes to the body-discarding null sink.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.daemon import Daemon, ship_through_daemon
from bench.inputs import GiB, make_realistic_core
from bench.targets import run_nullsink
from testkit.servers.kube import run_kube
from tools.readme import kube_rules

NODE = "bench-node"
WATCHED = ("coredump_shipper_enrichment_total", "coredump_shipper_events_total")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=4.0)
    parser.add_argument("--pods", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cds-kubemem-") as temp, run_kube(Path(temp) / "kube") as kube:
        work = Path(temp)
        print(f"kube-apiserver + etcd ready in {kube.start_seconds:.1f} s")
        kube.apply("/api/v1/namespaces", {"metadata": {"name": "bench"}})
        kube.apply("/api/v1/namespaces/bench/serviceaccounts", {"metadata": {"name": "shipper"}})
        kube.apply(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {"metadata": {"name": "s"}, "rules": kube_rules()},
        )
        kube.apply(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": "s"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "s"},
                "subjects": [{"kind": "ServiceAccount", "name": "shipper", "namespace": "bench"}],
            },
        )
        labels = {f"label-{i}": "x" * 40 for i in range(10)}
        for index in range(args.pods):
            spec = {"nodeName": NODE, "containers": [{"name": f"c{c}", "image": "r/app:1"} for c in range(3)]}
            kube.api(
                "POST",
                "/api/v1/namespaces/bench/pods",
                {"metadata": {"name": f"app-{index}", "labels": labels}, "spec": spec},
            )
        kubeconfig = kube.kubeconfig(work / "kubeconfig", token=kube.token("bench", "shipper"))
        core = make_realistic_core(
            work / f"core.app-0.myapp.sig11.1.{int(time.time())}", int(args.size_gib * GiB)
        )
        staging = work / "staging"
        staging.mkdir()
        with run_nullsink(work) as sink:
            for name, extra in (
                ("without Kubernetes", ["--kubernetes", "off"]),
                (
                    "with Kubernetes",
                    [
                        "--kubeconfig",
                        str(kubeconfig),
                        "--node-name",
                        NODE,
                        "--filename-pattern",
                        "core.%h.%e.sig%s.%p.%t",
                    ],
                ),
            ):
                watch = work / name.replace(" ", "-")
                watch.mkdir()
                daemon = Daemon(sink.endpoint, watch, work / f"{watch.name}.log", extra)
                daemon.wait_ready()
                time.sleep(2)  # the pod list is in
                wall, cpu = ship_through_daemon(daemon, sink, core, staging)
                time.sleep(1)  # the Event goes out
                with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics") as answer:
                    metrics = answer.read().decode()
                rss = daemon.stop()
                found = [
                    line
                    for line in metrics.splitlines()
                    if line.startswith(WATCHED) and not line.endswith(" 0.0")
                ]
                print(f"{name}: peak RSS {rss:.1f} MiB, {wall:.1f} s, {cpu:.1f} CPU-s; {found}")


if __name__ == "__main__":
    main()
