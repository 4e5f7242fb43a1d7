"""Scenario 2: pipe capture. Pods crash with no volume and no change made for cores (one as root, one
as uid 12345 with a read-only root filesystem, one crash-looping), and each core reaches S3 complete,
with its pod's namespace, name, container and workload from the Kubernetes API, and a CoreDumped
Event on the pod. The crash loop is cut by the storm limit.

The release switches to `capture.mode=pipe` here; at the end the restore by hand (the node's copy of
node setup) puts the node back (the kernel's defaults: the chart's own file pattern from before is
never saved as the node's), and the release goes back to file mode for the scenarios after this one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from e2e.tests.conftest import (
    APPS,
    BUSYBOX,
    CHART,
    DAEMONSET,
    NAMESPACE,
    RELEASE,
    Kube,
    Release,
    Store,
    manifest,
    wait_for,
)

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
PIPE_LIMIT = Path("/proc/sys/kernel/core_pipe_limit")
SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")
STORM_LIMIT = 2
# See test_3_file_mode.CRASH. No `ulimit -c`: the kernel does not apply RLIMIT_CORE (0 here) to pipes.
CRASH = 'sleep 1; sh -c "kill -SEGV \\$\\$"; rc=$?; echo "child died: rc=$rc"; exit $rc'
# The storm limit counts cores per program (%e): the loop crashes as `busybox-loop` (busybox runs the
# applet named by its first argument when its own name starts with "busybox"), so the other
# scenarios' `sh` cores do not count against it.
LOOP = 'ln -sf /bin/busybox /tmp/busybox-loop; /tmp/busybox-loop sh -c "kill -SEGV \\$\\$"; exit $?'


def pod(
    name: str, command: str, restart: str = "Never", security: dict[str, Any] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "app",
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", command],
    }
    if security:
        container["securityContext"] = security
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": APPS},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def restore_pod(receiver_dir: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "node-restore", "namespace": APPS},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "restore",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": ["sh", f"{receiver_dir}/coredump-node-setup", "restore"],
                    "env": [{"name": "RECEIVER_DIR", "value": receiver_dir}],
                    "securityContext": {"privileged": True},
                    "volumeMounts": [{"name": "receiver", "mountPath": receiver_dir}],
                }
            ],
            "volumes": [{"name": "receiver", "hostPath": {"path": receiver_dir, "type": "Directory"}}],
        },
    }


def terminated(kube: Kube, name: str) -> dict[str, Any] | None:
    statuses = kube.get("pod", "-n", APPS, name)["status"].get("containerStatuses", [])
    state: dict[str, Any] | None = next(
        (s["state"]["terminated"] for s in statuses if "terminated" in s["state"]), None
    )
    return state


def records_of(store: Store, pod_name: str) -> list[tuple[str, dict[str, Any]]]:
    """(core key, manifest) of every core the pod dumped, rate-limited ones included."""
    found = []
    for key in store.bucket.keys():
        if key.endswith(".manifest.json"):
            core_key = key.removesuffix(".manifest.json")
            facts = manifest(store.bucket, core_key)
            if facts.get("pod") == pod_name and facts.get("namespace") == APPS:
                found.append((core_key, facts))
    return found


def first_record(store: Store, pod_name: str) -> Callable[[], tuple[str, dict[str, Any]] | None]:
    return lambda: next(iter(records_of(store, pod_name)), None)


def core_dumped_events(kube: Kube, pod_name: str) -> list[dict[str, Any]]:
    items = kube.get("events", "-n", APPS, "--field-selector", f"involvedObject.name={pod_name}")["items"]
    return [e for e in items if e["reason"] == "CoreDumped"]


def upgrade(kube: Kube, *sets: str) -> None:
    args = [arg for value in sets for arg in ("--set", value)]
    kube.helm(
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        NAMESPACE,
        "--reuse-values",
        *args,
        "--wait",
        "--timeout",
        "180s",
    )
    kube.kubectl(
        "-n", NAMESPACE, "rollout", "status", f"daemonset/{DAEMONSET}", "--timeout=180s", timeout=200
    )


def test_pipe_capture_ships_cores_of_pods_without_volumes_with_their_identity(
    release: Release, store: Store, kube: Kube
) -> None:
    upgrade(kube, "capture.mode=pipe", f"config.stormLimit={STORM_LIMIT}", "config.stormWindow=10m")
    pattern = CORE_PATTERN.read_text().strip()
    assert pattern.startswith(f"|{release.kube.work}/rcv/coredump-receive "), pattern
    # Processes that change uid (nginx, php-fpm workers) dump only with suid_dumpable=2.
    assert SUID_DUMPABLE.read_text().strip() == "2"
    kube.apply(pod("crash-root", CRASH))
    kube.apply(
        pod(
            "crash-readonly",
            CRASH,
            security={"runAsUser": 12345, "runAsGroup": 12345, "readOnlyRootFilesystem": True},
        )
    )
    for name in ("crash-root", "crash-readonly"):
        key, facts = wait_for(f"the core of {name}", first_record(store, name), 90)
        core = store.bucket.content(key)
        assert core[:4] == b"\x7fELF"
        assert facts["sha256"] == hashlib.sha256(core).hexdigest()
        assert (facts["container"], facts["workload"], facts["exe"]) == ("app", name, "sh")
        pod_uid = kube.get("pod", "-n", APPS, name)["metadata"]["uid"]
        # The receiver read the pod's UID from the crashed process's cgroup; the shipper matched it.
        # The API's pod (namespace and name, matched above) is the one whose UID the cgroup gave.
        assert facts["pod-uid"] == pod_uid, facts
        assert facts["capture"] == "pipe"
        events = wait_for(f"a CoreDumped Event on {name}", partial(core_dumped_events, kube, name), 60)
        assert key in events[0]["message"], events[0]
        listed = kube.kubectl("-n", APPS, "get", "events", "--field-selector", f"involvedObject.name={name}")
        assert "CoreDumped" in listed
    metrics = release.metrics()
    assert metrics['coredump_shipper_uploads_total{result="success"}'] >= 2


def test_a_crash_loop_is_cut_by_the_storm_limit(release: Release, store: Store, kube: Kube) -> None:
    kube.apply(pod("crash-loop", LOOP, restart="Always"))

    def records() -> list[tuple[str, dict[str, Any]]] | None:
        found = records_of(store, "crash-loop")
        return found if len(found) > STORM_LIMIT else None

    found = wait_for("more crashes than the storm limit", records, 240, interval=2)
    assert {facts["exe"] for _, facts in found} == {"busybox-loop"}
    shipped = [facts for _, facts in found if facts.get("rate-limited") != "true"]
    limited = [facts for _, facts in found if facts.get("rate-limited") == "true"]
    assert len(shipped) == STORM_LIMIT
    assert limited
    assert release.metrics()['coredump_shipper_dropped_total{reason="rate_limited"}'] >= 1
    restarts = kube.get("pod", "-n", APPS, "crash-loop")["status"]["containerStatuses"][0]["restartCount"]
    assert restarts >= STORM_LIMIT
    events = core_dumped_events(kube, "crash-loop")
    assert any("storm limit" in e["message"] for e in events), events
    kube.kubectl("-n", APPS, "delete", "pod", "crash-loop", "crash-root", "crash-readonly", "--wait=true")
    # The restore by hand (docs/pipe-capture.md), the node's own copy of the script run from a
    # privileged pod that mounts the receiver's directory. Before pipe mode the node had the chart's
    # own file pattern (scenario 1): never saved as the node's, so the restore writes the kernel's
    # defaults rather than one of our own lines back, and takes the receiver away.
    receiver_dir = release.kube.work / "rcv"
    assert not (receiver_dir / "saved-core_pattern").exists(), "our own file pattern was saved"
    kube.apply(restore_pod(str(receiver_dir)))
    state = wait_for("the restore to finish", lambda: terminated(kube, "node-restore"), 60)
    assert state["exitCode"] == 0, kube.kubectl("-n", APPS, "logs", "node-restore")
    assert CORE_PATTERN.read_text().strip() == "core" != release.core_pattern
    assert PIPE_LIMIT.read_text().strip() == "0"
    assert SUID_DUMPABLE.read_text().strip() == "0"
    assert not (receiver_dir / "coredump-receive").exists()
    kube.kubectl("-n", APPS, "delete", "pod", "node-restore", "--wait=true")
    # Back to file mode for the scenarios that follow (the storm limit back to its default).
    upgrade(kube, "capture.mode=file", "config.stormLimit=", "config.stormWindow=")
    assert CORE_PATTERN.read_text().strip() == release.core_pattern
