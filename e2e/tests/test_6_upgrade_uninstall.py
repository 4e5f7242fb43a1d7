"""Scenario 6: `helm upgrade` with a changed setting rolls the pods (the checksum/config annotation),
and `helm uninstall` plus the restore the chart README documents leaves the node's core_pattern as it
was before the install. Runs last: it removes the release the other scenarios share.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from e2e.tests.conftest import (
    CHART,
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


def test_uninstall_and_the_documented_restore_leave_core_pattern_as_before(
    release: Release, kube: Kube
) -> None:
    before_install = os.environ["CDS_E2E_SAVED_PATTERN"]
    assert CORE_PATTERN.read_text().strip() == release.core_pattern
    kube.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "120s")
    wait_for(
        "the release's pods gone",
        lambda: not kube.get("pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"],
        60,
    )
    assert kube.get("daemonsets,configmaps,serviceaccounts", "-n", NAMESPACE, "-l",
                    f"app.kubernetes.io/instance={RELEASE}")["items"] == []  # fmt: skip
    # Uninstalling does not touch the node (charts/coredump-shipper/README.md says so) ...
    assert CORE_PATTERN.read_text().strip() == release.core_pattern
    # ... and the documented restore puts the pattern back.
    subprocess.run(["sysctl", "-q", "-w", f"kernel.core_pattern={before_install}"], check=True)
    assert CORE_PATTERN.read_text().strip() == before_install
