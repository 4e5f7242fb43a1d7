"""Scenario 1: `helm install` with node setup on; the DaemonSet pod becomes Ready through the chart's
own probes, node setup has set the node's core_pattern, and `coredump-shipper doctor` run in the pod
passes its node rows."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2e.tests.conftest import NAMESPACE, RELEASE, Kube, Release, Store, is_ready, wait_for

# The doctor's rows about the node that must be OK in a pod set up by the chart. RLIMIT_CORE is not
# among them: it is the shipper's own (0 in a container) and says nothing about the applications.
NODE_ROWS = ("kernel.core_pattern", "core_pattern fields", "watch dir", "watch dir permissions", "fs.inotify")


def rendered_daemonset(kube: Kube) -> dict[str, object]:
    docs = yaml.safe_load_all(kube.helm("get", "manifest", RELEASE, "-n", NAMESPACE))
    return next(doc for doc in docs if doc and doc["kind"] == "DaemonSet")


def test_pod_becomes_ready_through_the_charts_probes(release: Release, store: Store, kube: Kube) -> None:
    ds = kube.get("daemonset", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"][0]
    assert ds["status"]["desiredNumberScheduled"] == 1
    assert ds["status"]["numberReady"] == 1
    pod = kube.shipper_pod()
    assert is_ready(pod)
    assert pod["spec"]["hostNetwork"] is True
    assert pod["status"]["podIP"] == "127.0.0.1"
    # The probes the kubelet runs are the ones the chart rendered: httpGet on the named port.
    live = next(c for c in pod["spec"]["containers"] if c["name"] == "shipper")
    chart = next(c for c in rendered_daemonset(kube)["spec"]["template"]["spec"]["containers"])  # type: ignore[index]
    assert live["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}
    assert live["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}
    for probe in ("livenessProbe", "readinessProbe"):
        for key, value in chart[probe].items():
            if key != "httpGet":
                assert live[probe][key] == value, probe
    # ... and they answer on the node's loopback, where the kubelet sends them.
    assert release.http("/healthz")[0] == 200
    status, body = release.http("/readyz")
    assert status == 200, body
    # The start-up self-test (a probe object and a 2-part upload) runs beside the watch.
    wait_for("the S3 self-test", lambda: release.metrics()["coredump_shipper_self_test_success"] == 1, 60)
    assert any(name.startswith("coredump_shipper_build_info") for name in release.metrics())
    # The self-test and the doctor's probe clean up after themselves in the bucket.
    assert not [key for key in store.bucket.keys() if "coredump-shipper-probe" in key]
    assert store.bucket.incomplete_uploads() == []


def test_node_setup_set_the_nodes_core_pattern(release: Release, kube: Kube) -> None:
    pod = kube.shipper_pod()
    (setup,) = pod["status"]["initContainerStatuses"]
    assert setup["name"] == "node-setup"
    assert setup["state"]["terminated"]["exitCode"] == 0
    assert Path("/proc/sys/kernel/core_pattern").read_text().strip() == release.core_pattern
    stat = release.core_dir.stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777) == (1000, 1000, 0o770)
    logs = kube.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"], "-c", "node-setup")
    assert f"kernel.core_pattern = {release.core_pattern}" in logs


def test_doctor_in_the_pod_passes_its_node_rows(release: Release, kube: Kube) -> None:
    pod = kube.shipper_pod()["metadata"]["name"]
    result = kube.run(
        "kubectl",
        "-n",
        NAMESPACE,
        "exec",
        pod,
        "-c",
        "shipper",
        "--",
        "coredump-shipper",
        "doctor",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Rows are `STATUS  NAME<padding>  DETAIL`: the status in 6 columns, the name from column 8.
    rows: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        for name in NODE_ROWS:
            if line[8:].startswith(name + "  "):
                rows.setdefault(name, set()).add(line[:6].strip())
    assert rows == {name: {"OK"} for name in NODE_ROWS}, result.stdout
