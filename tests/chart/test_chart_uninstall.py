"""Uninstall puts every node back: the chart's pre-delete hook (a restore DaemonSet and the Job that
waits for it), rendered by the real helm binary, and the wait's rule for "restored everywhere".
The hook itself runs on a real cluster in e2e scenario 6."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coredump_shipper.kube.restorewait import restored_everywhere
from testkit.servers.kube import KubeServer
from tests.chart import test_chart
from tests.chart.test_chart import Manifest, render
from tests.chart.test_kube_rbac import granted
from tools.readme import kube_calls

pytestmark = test_chart.pytestmark

PIPE = {"nodeSetup.enabled": "true"}
HOOK_KINDS = ["ServiceAccount", "Role", "RoleBinding", "DaemonSet", "Job"]


def hooks(manifests: list[Manifest]) -> dict[str, Manifest]:
    found = [m for m in manifests if "helm.sh/hook" in m["metadata"].get("annotations", {})]
    return {m["kind"]: m for m in found}


def test_the_hook_restores_every_node_and_waits_for_it() -> None:
    manifests = render(sets={**PIPE, "capture.receiverDirectory": "/opt/bin/cds", "hostNetwork": "true"})
    found = hooks(manifests)
    assert sorted(found) == sorted(HOOK_KINDS)
    for manifest in found.values():
        annotations = manifest["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weights = {kind: int(m["metadata"]["annotations"]["helm.sh/hook-weight"]) for kind, m in found.items()}
    assert weights["Role"] < weights["DaemonSet"] < weights["Job"], (
        "the Job waits for a DaemonSet that exists"
    )

    shipper = next(m for m in manifests if m["kind"] == "DaemonSet" and m not in found.values())
    restore = found["DaemonSet"]
    spec = restore["spec"]["template"]["spec"]
    # Every node the shipper runs on (and so may have a receiver) gets a restore pod.
    for key in ("nodeSelector", "tolerations"):
        assert spec[key] == shipper["spec"]["template"]["spec"][key]
    # Its pods are not the shipper's: no selector, NetworkPolicy or PodMonitor of the shipper picks them.
    shipper_labels = shipper["spec"]["selector"]["matchLabels"]
    pod_labels = restore["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in shipper_labels.items())
    (init,) = spec["initContainers"]
    assert init["command"] == ["/bin/sh", "/usr/local/bin/coredump-node-setup", "restore"]
    assert init["securityContext"]["privileged"] is True
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["RECEIVER_DIR"] == "/opt/bin/cds"
    assert env["FILE_PATTERN"] == "/var/coredump/core.%h.%e.sig%s.%p.%t"
    assert init["volumeMounts"] == [{"name": "receiver", "mountPath": "/opt/bin/cds"}]
    assert spec["volumes"][0]["hostPath"]["path"] == "/opt/bin/cds"
    (ready,) = spec["containers"]
    assert ready["securityContext"]["privileged"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["hostNetwork"] is True

    job = found["Job"]
    pod = job["spec"]["template"]["spec"]
    (wait,) = pod["containers"]
    assert wait["args"] == [
        "restore-wait",
        f"--daemonset={restore['metadata']['name']}",
        "--namespace=coredumps",
        "--timeout=240",
    ]
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 270
    assert pod["serviceAccountName"] == found["ServiceAccount"]["metadata"]["name"]
    assert found["RoleBinding"]["subjects"][0]["name"] == pod["serviceAccountName"]
    assert wait["securityContext"]["privileged"] is False


def test_the_hook_role_allows_exactly_the_calls_the_wait_makes() -> None:
    found = hooks(render(sets=PIPE))
    rules: list[dict[str, Any]] = found["Role"]["rules"]
    assert granted(rules) == kube_calls(hook=True) == {("apps", "daemonsets", "get")}
    assert rules[0]["resourceNames"] == [found["DaemonSet"]["metadata"]["name"]]
    assert found["Role"]["kind"] == "Role", "namespaced: no cluster-wide grant"


@pytest.mark.parametrize(
    "sets",
    [
        {},  # node setup off: nothing on the nodes to undo
        {**PIPE, "capture.mode": "file"},
        {**PIPE, "nodeSetup.restoreOnUninstall": "false"},
    ],
)
def test_no_hook_without_pipe_node_setup(sets: dict[str, str]) -> None:
    assert hooks(render(sets=sets)) == {}


def _daemonset(generation: int, **status: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


def _counted(generation: int, observed: int, desired: int, ready: int, updated: int) -> dict[str, Any]:
    return _daemonset(
        generation,
        observedGeneration=observed,
        desiredNumberScheduled=desired,
        numberReady=ready,
        updatedNumberScheduled=updated,
    )


@pytest.mark.parametrize(
    ("daemonset", "done"),
    [
        (_daemonset(1), False),  # just created: the controller has not counted the nodes yet
        ({"metadata": {"generation": 1}}, False),
        (_counted(1, 1, 3, 2, 3), False),
        (_counted(2, 1, 3, 3, 3), False),
        (_counted(1, 1, 3, 3, 2), False),
        (_counted(1, 1, 3, 3, 3), True),
        (_daemonset(1, observedGeneration=1, desiredNumberScheduled=0), True),  # no node to put back
    ],
)  # fmt: skip
def test_restored_everywhere_only_when_every_scheduled_pod_is_ready(
    daemonset: dict[str, Any], done: bool
) -> None:
    assert restored_everywhere(daemonset) is done


@pytest.mark.slow
def test_the_wait_returns_once_every_node_is_restored_with_the_charts_role(
    kube_server: KubeServer, tmp_path: Path
) -> None:
    """`coredump-shipper restore-wait` against a real kube-apiserver, with the token of the hook's
    service account bound by the chart's own rendered Role and RoleBinding: it waits while the
    DaemonSet has nodes not yet restored, returns 0 once every scheduled pod is Ready, and exits 1
    at its deadline otherwise."""
    namespace = "cds-uninstall"
    found = hooks(render(sets=PIPE))
    server = kube_server
    server.apply("/api/v1/namespaces", {"metadata": {"name": namespace}})
    account = found["ServiceAccount"]["metadata"]["name"]
    server.apply(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": account}})
    for kind, plural in (("Role", "roles"), ("RoleBinding", "rolebindings")):
        body = {k: v for k, v in found[kind].items() if k not in ("apiVersion", "kind")}
        body["metadata"] = {"name": found[kind]["metadata"]["name"]}
        if kind == "RoleBinding":
            body["subjects"] = [{**s, "namespace": namespace} for s in body["subjects"]]
        server.apply(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/{plural}", body)
    daemonset = found["DaemonSet"]
    name = daemonset["metadata"]["name"]
    path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets"
    # This API server refuses privileged containers (no --allow-privileged), and the wait reads only
    # the status: the restore's privileged init container is left out.
    spec = daemonset["spec"]
    spec["template"]["spec"].pop("initContainers")
    server.apply(path, {"metadata": {"name": name}, "spec": spec})
    kubeconfig = server.kubeconfig(tmp_path / "hook.kubeconfig", token=server.token(namespace, account))
    command = [sys.executable, "-m", "coredump_shipper", "restore-wait", f"--kubeconfig={kubeconfig}",
               f"--namespace={namespace}", f"--daemonset={name}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}

    # No controller runs here: the status stays as written. Two nodes, one restored: still waiting.
    def status(ready: int) -> None:
        counts = {"desiredNumberScheduled": 2, "numberReady": ready, "updatedNumberScheduled": 2}
        counts |= {"observedGeneration": 1, "currentNumberScheduled": 2, "numberMisscheduled": 0}
        server.api("PATCH", f"{path}/{name}/status", {"status": counts})

    status(ready=1)
    timed_out = subprocess.run(
        [*command, "--timeout=3"], env=env, capture_output=True, text=True, check=False
    )
    assert timed_out.returncode == 1, timed_out.stderr
    assert "1/2 nodes restored" in timed_out.stderr
    with subprocess.Popen([*command, "--timeout=60"], env=env, stderr=subprocess.PIPE, text=True) as waiting:
        try:
            time.sleep(3)
            assert waiting.poll() is None, "returned before every node was restored"
            status(ready=2)
            _, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "2/2 nodes restored" in err
    # The Role is the one DaemonSet's: another one cannot be read with this token.
    server.apply(path, {"metadata": {"name": "other"}, "spec": spec})
    other = [*command[:-1], "--daemonset=other", "--timeout=2"]
    denied = subprocess.run(other, env=env, capture_output=True, text=True, check=False)
    assert denied.returncode == 1 and "403" in denied.stderr, denied.stderr


def test_the_shipper_writes_its_heartbeat_next_to_the_receiver_and_nothing_else_there() -> None:
    manifests = render(sets={**PIPE, "capture.receiverDirectory": "/opt/bin/cds/"})
    container = test_chart.shipper(manifests)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COREDUMP_SHIPPER_HEARTBEAT"] == "/opt/bin/cds/alive/heartbeat"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["receiver"] == {"name": "receiver", "mountPath": "/opt/bin/cds/", "readOnly": True}
    assert mounts["alive"] == {"name": "alive", "mountPath": "/opt/bin/cds/alive"}
    volumes = {v["name"]: v for v in test_chart.pod_spec(manifests)["volumes"]}
    assert volumes["alive"]["hostPath"] == {"path": "/opt/bin/cds/alive", "type": "DirectoryOrCreate"}
    file_mode = test_chart.shipper(render(sets={**PIPE, "capture.mode": "file"}))
    assert "COREDUMP_SHIPPER_HEARTBEAT" not in {e["name"] for e in file_mode["env"]}
