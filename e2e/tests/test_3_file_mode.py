"""Scenario 3: file mode, the original script's way. An application pod that mounts the core directory
at the same path and raises its own RLIMIT_CORE (it is 0 in containers: the documented manual step)
crashes; the kernel writes its core through the pattern node setup installed, and the shipper ships it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from e2e.tests.conftest import (
    APPS,
    BUSYBOX,
    CLUSTER_NAME,
    NODE,
    SHIPPER_UID,
    Kube,
    Release,
    Store,
    manifest,
    shipped,
    wait_for,
)

# PID 1 of a container ignores signals it has no handler for, and busybox sh execs a trailing
# `sh -c` in place: a child shell kills itself, then PID 1 exits with the child's status (139).
CRASH = 'ulimit -c unlimited; cd /tmp; sh -c "kill -SEGV \\$\\$"; rc=$?; echo "child died: rc=$rc"; exit $rc'


def crashing_pod(name: str, release: Release) -> dict[str, Any]:
    core_dir = str(release.core_dir)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": APPS},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": SHIPPER_UID, "runAsGroup": SHIPPER_UID},
            "containers": [
                {
                    "name": "app",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", CRASH],
                    "volumeMounts": [{"name": "cores", "mountPath": core_dir}],
                }
            ],
            "volumes": [{"name": "cores", "hostPath": {"path": core_dir, "type": "Directory"}}],
        },
    }


def terminated(kube: Kube, name: str) -> dict[str, Any] | None:
    pod = kube.get("pod", "-n", APPS, name)
    for status in pod["status"].get("containerStatuses", []):
        if "terminated" in status["state"]:
            result: dict[str, Any] = status["state"]["terminated"]
            return result
    return None


def test_a_crashing_pod_that_mounts_the_directory_has_its_core_shipped(
    release: Release, store: Store, kube: Kube
) -> None:
    before = release.metrics()
    earlier = set(store.bucket.keys())  # earlier scenarios' cores of `sh` match the same name
    kube.apply(crashing_pod("crash-file-mode", release))
    state = wait_for("the crashing pod to exit", lambda: terminated(kube, "crash-file-mode"), 90)
    assert state["exitCode"] == 139, state
    logs = kube.kubectl("-n", APPS, "logs", "crash-file-mode")
    assert "child died: rc=139" in logs

    # The kernel named the file after the pattern: core.<host>.<comm>.sig<signal>.<pid>.<time>.
    key = wait_for("the core in S3", lambda: shipped(store.bucket, ".sh.sig11.", exclude=earlier), 60)
    # Whatever the key template, it starts with the cluster and has the node before the file name.
    assert key.startswith(f"{CLUSTER_NAME}/")
    assert f"{NODE}/core." in key or f"{NODE}.core." in key
    core = store.bucket.content(key)
    # A real kernel core: an ELF file of type ET_CORE.
    assert core[:4] == b"\x7fELF"
    assert int.from_bytes(core[16:18], "little") == 4
    facts = manifest(store.bucket, key)
    assert facts["sha256"] == hashlib.sha256(core).hexdigest()
    assert facts["node"] == NODE
    assert facts["exe"] == "sh"
    assert str(facts["signal"]) == "11"
    assert int(facts["size"]) == len(core)
    head = store.bucket.head(key)["Metadata"]
    assert head["node"] == NODE
    # Shipped cores are deleted from the node.
    wait_for(
        "the core deleted from the node", lambda: not any(release.core_dir.glob("core.*.sh.sig11.*")), 30
    )
    after = release.metrics()
    assert after['coredump_shipper_uploads_total{result="success"}'] >= (
        before.get('coredump_shipper_uploads_total{result="success"}', 0) + 1
    )
    assert after["coredump_shipper_core_bytes_total"] >= before["coredump_shipper_core_bytes_total"] + len(
        core
    )
    kube.kubectl("-n", APPS, "delete", "pod", "crash-file-mode", "--wait=true")
