"""Scenario 6: `helm upgrade` with a changed setting rolls the pods (the checksum/config annotation),
and `helm uninstall` in pipe mode puts the node back by itself (the chart's pre-delete hook): the
node's own core_pattern, core_pipe_limit and suid_dumpable, exactly, and no receiver left. Runs
last: it removes the release the other scenarios share.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from e2e.tests.conftest import (
    CHART,
    DAEMONSET,
    NAMESPACE,
    RELEASE,
    Kube,
    Release,
    Store,
    drop_core,
    fake_core,
    is_ready,
    shipped,
    wait_for,
)

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
PIPE_LIMIT = Path("/proc/sys/kernel/core_pipe_limit")
SUID_DUMPABLE = Path("/proc/sys/fs/suid_dumpable")


def test_upgrade_with_a_changed_setting_rolls_the_pods(release: Release, store: Store, kube: Kube) -> None:
    old = kube.shipper_pod()
    old_checksum = old["metadata"]["annotations"]["checksum/config"]
    kube.helm(
        "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
        "--set", "config.logLevel=debug", "--wait", "--timeout", "180s",
    )  # fmt: skip
    new = wait_for(
        "a new Ready pod",
        lambda: next(
            (
                p
                for p in kube.shipper_pods()
                if p["metadata"]["uid"] != old["metadata"]["uid"] and is_ready(p)
            ),
            None,
        ),
        120,
    )
    assert new["metadata"]["annotations"]["checksum/config"] != old_checksum
    configmap = kube.get("configmap", "-n", NAMESPACE, f"{RELEASE}-coredump-shipper")
    assert configmap["data"]["COREDUMP_SHIPPER_LOG_LEVEL"] == "debug"
    wait_for(
        "the old pod gone",
        lambda: (
            old["metadata"]["uid"]
            not in [
                p["metadata"]["uid"]
                for p in kube.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")[
                    "items"
                ]
            ]
        ),
        60,
    )
    wait_for(
        "the new pod's S3 self-test", lambda: release.metrics()["coredump_shipper_self_test_success"] == 1, 60
    )
    assert kube.helm("history", RELEASE, "-n", NAMESPACE).count("deployed") == 1
    # The upgraded pod ships.
    data = fake_core(256 * 1024)
    name = f"core.upgrade.newapp.sig6.99.{int(time.time())}"
    drop_core(release.core_dir, name, data)
    key = wait_for("a core shipped by the upgraded pod", lambda: shipped(store.bucket, name), 60)
    assert store.bucket.content(key) == data
    assert release.metrics()['coredump_shipper_uploads_total{result="success"}'] >= 1


# systemd-coredump's own settings (50-coredump.conf): the node's values before the install, as on a
# Debian, Flatcar or RHCOS node where systemd-sysctl wrote them at boot.
SYSTEMD = ("|/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h", "16", "2")


def node_values() -> tuple[str, str, str]:
    return (
        CORE_PATTERN.read_text().strip(),
        PIPE_LIMIT.read_text().strip(),
        SUID_DUMPABLE.read_text().strip(),
    )


def set_node_values(values: tuple[str, str, str]) -> None:
    # The order the kernel accepts whatever the current values: suid_dumpable last.
    CORE_PATTERN.write_text(values[0] + "\n")
    PIPE_LIMIT.write_text(values[1] + "\n")
    SUID_DUMPABLE.write_text(values[2] + "\n")


def test_uninstall_puts_the_node_back_through_the_chart_hook(release: Release, kube: Kube) -> None:
    """`helm uninstall` alone (its pre-delete hook: the restore DaemonSet and the Job that waits for
    it) brings back the node's own core_pattern, core_pipe_limit and suid_dumpable exactly and removes
    the receiver. The test writes no kernel setting to pass: only the node's starting values (as
    systemd would at boot) before the install, and the machine's own values after the assertions."""
    receiver_dir = release.kube.work / "rcv"
    machine = (
        os.environ["CDS_E2E_SAVED_PATTERN"],
        os.environ["CDS_E2E_SAVED_PIPE_LIMIT"],
        os.environ["CDS_E2E_SAVED_SUID_DUMPABLE"],
    )
    try:
        set_node_values(SYSTEMD)
        kube.helm(
            "upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
            "--set", "capture.mode=pipe", "--wait", "--timeout", "180s",
        )  # fmt: skip
        kube.kubectl(
            "-n", NAMESPACE, "rollout", "status", f"daemonset/{DAEMONSET}", "--timeout=180s", timeout=200
        )  # fmt: skip
        installed = node_values()
        assert installed[0].startswith(f"|{receiver_dir}/coredump-receive "), installed
        assert installed[1:] == ("128", "2")  # the chart's capture.pipeLimit, and suid-safe dumps on
        assert (receiver_dir / "saved-core_pattern").read_text().strip() == SYSTEMD[0]

        started = time.monotonic()
        kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "300s", timeout=330)
        print(f"helm uninstall with the restore hook: {time.monotonic() - started:.1f}s")
        assert node_values() == SYSTEMD, "the hook restored the node's own values exactly"
        assert sorted(os.listdir(receiver_dir)) == [], "the receiver, the script and the saved values gone"
        wait_for(
            "the release's pods gone (the hook's too)",
            lambda: (
                not kube.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
            ),
            60,
        )
        left = kube.get(
            "daemonsets,jobs,configmaps,serviceaccounts,roles,rolebindings", "-n", NAMESPACE,
            "-l", f"app.kubernetes.io/instance={RELEASE}",
        )  # fmt: skip
        assert left["items"] == [], [m["metadata"]["name"] for m in left["items"]]
    finally:
        set_node_values(machine)
