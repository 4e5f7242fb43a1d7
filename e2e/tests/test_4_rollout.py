"""Scenario 4: `kubectl rollout restart` while a large core uploads through a slow S3.

The fault proxy delays every UploadPart, so the upload outlasts config.shutdownTimeout: the old pod
must stop within its grace period (abandoning and aborting its multipart upload), the new pod must
find the core still on the node and ship it whole, and no multipart upload may be left behind.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime

from e2e.tests.conftest import (
    DAEMONSET,
    LOGS,
    NAMESPACE,
    RELEASE,
    Kube,
    Release,
    Store,
    drop_core,
    fake_core,
    is_ready,
    manifest,
    pod_logs,
    shipped,
    wait_for,
)

SIZE = 40 * 1024 * 1024  # 8 parts of 5 MiB
PART_DELAY = 2.5  # seconds per UploadPart: ~10 s per attempt with 2 parts in flight


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


def test_rollout_restart_during_an_upload_loses_nothing(release: Release, store: Store, kube: Kube) -> None:
    old = kube.shipper_pod()
    old_name = old["metadata"]["name"]
    grace = old["spec"]["terminationGracePeriodSeconds"]
    data = fake_core(SIZE)
    name = f"core.rollout.bigapp.sig6.4242.{int(time.time())}"
    slow = store.proxy.faults.latency(PART_DELAY, ops={"UploadPart"})
    try:
        parts_before = store.proxy.stats().requests.get("UploadPart", 0)
        with pod_logs(kube, old_name, LOGS / "rollout-old-pod.log") as old_log:
            drop_core(release.core_dir, name, data)
            wait_for(
                "the first part to be under way",
                lambda: store.proxy.stats().requests.get("UploadPart", 0) > parts_before,
                30,
                interval=0.1,
            )
            assert shipped(store.bucket, name) is None, "the upload was not slow enough to be interrupted"
            restarted = time.monotonic()
            kube.kubectl("-n", NAMESPACE, "rollout", "restart", f"daemonset/{DAEMONSET}")
            wait_for(
                "the old pod to go",
                lambda: (
                    old_name
                    not in [
                        p["metadata"]["name"]
                        for p in kube.get(
                            "pods", "-n", NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"
                        )["items"]
                    ]
                ),
                # The process stops within the grace period (asserted below from its own log); the
                # pod object goes only once the kubelet has reported it, which a loaded 2-core
                # node has been seen to take well over 30 s more.
                grace + 90,
            )
            stopped_after = time.monotonic() - restarted
        # SIGTERM was handled: the shipper stopped by itself within the grace period, before the
        # kubelet's SIGKILL (the pod object goes a few seconds later, when the kubelet reports it).
        lines = [json.loads(line) for line in old_log.read_text().splitlines() if line.startswith("{")]
        times = {line["message"]: parse_time(line["time"]) for line in lines}
        assert "SIGTERM received: shutting down" in times, lines[-5:]
        assert "stopped" in times, lines[-5:]
        assert (times["stopped"] - times["SIGTERM received: shutting down"]).total_seconds() < grace
        print(f"old pod gone {stopped_after:.1f}s after the restart")

        new = wait_for(
            "the new pod Ready",
            lambda: next(
                (p for p in kube.shipper_pods() if p["metadata"]["name"] != old_name and is_ready(p)), None
            ),
            120,
        )
        key = wait_for("the core shipped by the new pod", lambda: shipped(store.bucket, name), 120)
    finally:
        store.proxy.faults.remove(slow)
    assert new["metadata"]["name"] != old_name
    content = store.bucket.content(key)
    assert content == data
    assert manifest(store.bucket, key)["sha256"] == hashlib.sha256(data).hexdigest()
    assert store.bucket.incomplete_uploads() == []
    assert not (release.core_dir / name).exists()
    metrics = release.metrics()
    assert metrics['coredump_shipper_uploads_total{result="success"}'] >= 1
    assert metrics["coredump_shipper_core_bytes_total"] >= SIZE
