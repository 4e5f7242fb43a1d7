"""Scenario 0: the cluster itself, before any release: what the chart needs from a node works.

A DaemonSet on hostNetwork becomes Ready through an httpGet liveness probe and an exec readiness
probe, and sees its node, its pod IP (127.0.0.1) and the API server's in-cluster address; its logs and
`kubectl exec` work; its service account token reaches the API through KUBERNETES_SERVICE_HOST
(there is no kube-proxy) with exactly the rights of its role; a hostPath is shared with the host; a
failing liveness probe restarts the container, and so does a crash by SIGSEGV; a chart installs and
uninstalls with `helm --wait`. A failure here is the cluster's (e2e/cluster/), not the shipper's.
Everything lives in a namespace of its own, deleted before the shipper's scenarios start.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.tests.conftest import BUSYBOX, NODE, Kube, is_ready, restarts, wait_for
from testkit.servers import free_port

NS = "cluster-check"
# The API server's address is the first one of the service range, so in-cluster clients reach it
# without kube-proxy (e2e/cluster/cluster.sh).
API = "127.100.0.1:443"
# The child shell dies of SIGSEGV (PID 1 of a container ignores signals it has no handler for, and
# busybox sh execs a trailing `sh -c`, hence the explicit exit): the container exits 139.
CRASH = 'echo about to crash; sleep 1; sh -c "kill -SEGV \\$\\$"; rc=$?; echo "child died: rc=$rc"; exit $rc'


@dataclass(frozen=True)
class Probe:
    """The DaemonSet's one pod, the port its httpd serves on the node's loopback, its hostPath."""

    kube: Kube
    pod: str
    port: int
    host_dir: Path

    def run_in(self, *command: str, check: bool = True) -> str:
        """`kubectl exec` in the pod."""
        return self.kube.kubectl("-n", NS, "exec", self.pod, "--", *command, check=check)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.kube.get("pod", "-n", NS, self.pod)["status"]
        return status


def probe_daemonset(port: int, host_dir: Path, bindir: Path) -> dict[str, Any]:
    script = (
        'echo "started on $NODE_NAME podIP=$POD_IP api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"\n'
        f"httpd -p 127.0.0.1:{port} -h /www\n"
        "while true; do date >> /host/heartbeat; sleep 2; done\n"
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe-ds", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "probe-ds"}},
            "template": {
                "metadata": {"labels": {"app": "probe-ds"}},
                "spec": {
                    "serviceAccountName": "probe-sa",
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "main",
                            "image": BUSYBOX,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", script],
                            "env": [
                                {
                                    "name": "NODE_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            ],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": port},
                                "periodSeconds": 2,
                            },
                            "readinessProbe": {
                                "exec": {"command": ["test", "-s", "/host/heartbeat"]},
                                "periodSeconds": 2,
                            },
                            "volumeMounts": [
                                {"name": "host", "mountPath": "/host"},
                                {"name": "hostbin", "mountPath": "/hostbin", "readOnly": True},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "host", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}},
                        {"name": "hostbin", "hostPath": {"path": str(bindir), "type": "Directory"}},
                    ],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    kube.kubectl("create", "namespace", NS)
    try:
        yield NS
    finally:
        # The crash-looping pod and the probes stop here, before the shipper's scenarios start.
        kube.kubectl("delete", "namespace", NS, "--wait=true", timeout=180)


@pytest.fixture(scope="module")
def probe(kube: Kube, namespace: str) -> Probe:
    kube.kubectl("-n", namespace, "create", "serviceaccount", "probe-sa")
    kube.kubectl(
        "-n", namespace, "create", "rolebinding", "probe-view", "--clusterrole=view",
        f"--serviceaccount={namespace}:probe-sa",
    )  # fmt: skip
    port, host_dir = free_port(), kube.work / "cluster-check"
    kube.apply(probe_daemonset(port, host_dir, kube.bin))
    kube.kubectl("-n", namespace, "rollout", "status", "daemonset/probe-ds", "--timeout=120s", timeout=140)
    pods = kube.get("pods", "-n", namespace, "-l", "app=probe-ds")["items"]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return Probe(kube, pods[0]["metadata"]["name"], port, host_dir)


def test_daemonset_pod_is_ready_on_the_nodes_loopback(probe: Probe) -> None:
    pod = probe.kube.get("pod", "-n", NS, probe.pod)
    assert is_ready(pod)
    assert pod["spec"]["nodeName"] == NODE
    assert pod["status"]["podIP"] == pod["status"]["hostIP"] == "127.0.0.1"
    # hostNetwork: the pod's httpd, the one the liveness probe asks, is on the host's loopback.
    with urllib.request.urlopen(f"http://127.0.0.1:{probe.port}/healthz", timeout=5) as answer:
        assert answer.read() == b"ok\n"


def test_logs_show_the_node_the_pod_ip_and_the_in_cluster_api_address(probe: Probe) -> None:
    logs = probe.kube.kubectl("-n", NS, "logs", probe.pod)
    assert logs.splitlines()[0] == f"started on {NODE} podIP=127.0.0.1 api={API}"


def test_hostpath_is_shared_with_the_host(probe: Probe) -> None:
    heartbeat = probe.host_dir / "heartbeat"
    wait_for(
        "two heartbeats on the host",
        lambda: heartbeat.exists() and len(heartbeat.read_text().splitlines()) >= 2,
        15,
    )
    assert probe.run_in("cat", "/host/heartbeat").splitlines()[:2] == heartbeat.read_text().splitlines()[:2]


def test_service_account_token_reaches_the_api_with_its_roles_rights(probe: Probe) -> None:
    files = probe.run_in("ls", "/var/run/secrets/kubernetes.io/serviceaccount").split()
    assert {"ca.crt", "namespace", "token"} <= set(files)
    # The node's own kubectl, in-cluster config: KUBERNETES_SERVICE_HOST/PORT, the token, its namespace.
    assert f"pod/{probe.pod}" in probe.run_in("/hostbin/kubectl", "get", "pods", "-o", "name").split()
    assert probe.run_in("/hostbin/kubectl", "auth", "can-i", "list", "pods").strip() == "yes"
    # `view` does not cover secrets; can-i says so and exits 1.
    assert probe.run_in("/hostbin/kubectl", "auth", "can-i", "list", "secrets", check=False).strip() == "no"


def test_a_failing_liveness_probe_restarts_the_container(probe: Probe) -> None:
    assert restarts({"status": probe.status()}) == 0
    probe.run_in("rm", "/www/healthz")
    wait_for(
        "the restart after the liveness probe failed", lambda: restarts({"status": probe.status()}) >= 1, 60
    )
    events = probe.kube.get("events", "-n", NS, "--field-selector", f"involvedObject.name={probe.pod}")[
        "items"
    ]
    reasons = {(e["reason"], e["message"].split(":")[0]) for e in events}
    assert ("Unhealthy", "Liveness probe failed") in reasons, reasons
    assert any(reason == "Killing" for reason, _ in reasons), reasons


def test_a_container_killed_by_sigsegv_is_restarted(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "crasher", "namespace": namespace},
            "spec": {
                "hostNetwork": True,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "c",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": ["sh", "-c", CRASH],
                    }
                ],
            },
        }
    )

    def restarted() -> dict[str, Any] | None:
        pod: dict[str, Any] = kube.get("pod", "-n", namespace, "crasher")
        return pod if restarts(pod) >= 1 else None

    pod = wait_for("the crasher's restart", restarted, 90)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 139, last
    previous = kube.kubectl("-n", namespace, "logs", "crasher", "--previous")
    # stdout and stderr (where the shell may name the signal) of the run before the restart.
    assert previous.startswith("about to crash\n") and "child died: rc=139" in previous, previous
    kube.kubectl("-n", namespace, "delete", "pod", "crasher", "--wait=false")


CHART = {
    "Chart.yaml": "apiVersion: v2\nname: lab-ds\nversion: 0.1.0\n",
    "templates/ds.yaml": """apiVersion: apps/v1
kind: DaemonSet
metadata: {name: {{ .Release.Name }}}
spec:
  selector: {matchLabels: {app: {{ .Release.Name }}}}
  template:
    metadata: {labels: {app: {{ .Release.Name }}}}
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {{ .Values.image }}
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do echo helm-ds alive >> /host/helm-heartbeat; sleep 5; done']
        livenessProbe: {exec: {command: [test, -e, /host/helm-heartbeat]}, initialDelaySeconds: 3}
        volumeMounts: [{name: host, mountPath: /host}]
      volumes: [{name: host, hostPath: {path: {{ .Values.hostPath }}, type: DirectoryOrCreate}}]
""",
}


def test_a_chart_installs_and_uninstalls_with_helm_wait(kube: Kube, namespace: str, tmp_path: Path) -> None:
    chart, host_dir = tmp_path / "lab-ds", kube.work / "cluster-check-helm"
    for name, text in CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)
    kube.helm(
        "install", "lab-ds", str(chart), "-n", namespace, "--set", f"image={BUSYBOX}",
        "--set", f"hostPath={host_dir}", "--wait", "--timeout", "120s",
    )  # fmt: skip
    assert kube.helm("list", "-n", namespace, "-q").split() == ["lab-ds"]
    # helm's --wait can return before the DaemonSet controller has counted the pod it waited for.
    kube.kubectl("-n", namespace, "rollout", "status", "daemonset/lab-ds", "--timeout=60s", timeout=80)
    heartbeat = host_dir / "helm-heartbeat"
    wait_for("the chart's pod writing to the host", lambda: heartbeat.exists() and heartbeat.read_text(), 30)
    assert heartbeat.read_text().startswith("helm-ds alive\n")
    kube.helm("uninstall", "lab-ds", "-n", namespace, "--wait")
    gone = kube.run("kubectl", "-n", namespace, "get", "daemonset", "lab-ds", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone
    assert kube.helm("list", "-n", namespace, "-q").split() == []
