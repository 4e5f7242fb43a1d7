"""Scenario 5: S3 goes away. The shipper says so (coredump_shipper_s3_reachable 0, /readyz's "s3"),
but stays Ready (readiness is about this node's pod being set up: an outage must not look like a
scheduling problem) and alive (a restart would not bring S3 back); the core waits on the node, and it
is shipped once S3 returns.
"""

from __future__ import annotations

import json
import time

from e2e.tests.conftest import (
    NAMESPACE,
    Kube,
    Release,
    Store,
    drop_core,
    fake_core,
    is_ready,
    shipped,
    wait_for,
)

# The shipper checks S3 every 15 s, and counts it unreachable at once when a check fails (service.py).
S3_CHECK_INTERVAL = 15


def events(kube: Kube, pod: str) -> list[str]:
    items = kube.get("events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={pod}")["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in items]


def test_s3_outage_is_reported_the_pod_stays_ready_and_the_core_waits(
    release: Release, store: Store, kube: Kube
) -> None:
    pod = wait_for(
        "a Ready shipper pod", lambda: next((p for p in kube.shipper_pods() if is_ready(p)), None), 120
    )
    name = pod["metadata"]["name"]
    restarts_before = sum(s["restartCount"] for s in pod["status"]["containerStatuses"])
    data = fake_core(1024 * 1024)
    core = f"core.outage.waitapp.sig6.777.{int(time.time())}"
    wait_for("S3 reachable", lambda: release.metrics()["coredump_shipper_s3_reachable"] == 1, 60)
    store.proxy.down()
    try:
        down_at = time.monotonic()
        drop_core(release.core_dir, core, data)
        wait_for(
            "the shipper to report S3 unreachable",
            lambda: release.metrics()["coredump_shipper_s3_reachable"] == 0,
            S3_CHECK_INTERVAL + 60,
            interval=1,
        )
        print(f"S3 unreachable reported {time.monotonic() - down_at:.0f}s after S3 went down")
        status, body = release.http("/readyz")
        assert status == 200, body
        assert json.loads(body)["s3"] == "failing", body
        assert release.http("/healthz")[0] == 200
        # Ready throughout three readiness periods (10 s each, failureThreshold 3) of the outage.
        for _ in range(15):
            assert is_ready(kube.get("pod", "-n", NAMESPACE, name))
            time.sleep(2)
        # The core waits on the node, nothing of it in the bucket.
        assert (release.core_dir / core).exists()
        assert shipped(store.bucket, core) is None
        metrics = release.metrics()
        assert metrics["coredump_shipper_pending_files"] >= 1
        assert metrics["coredump_shipper_upload_retries_total"] >= 1
        assert metrics["coredump_shipper_s3_reachable"] == 0
        seen = events(kube, name)
        assert not any("Liveness probe failed" in e for e in seen), seen
    finally:
        store.proxy.up()
    key = wait_for("the waiting core shipped", lambda: shipped(store.bucket, core), 60)
    assert store.bucket.content(key) == data
    wait_for("S3 reachable again", lambda: release.metrics()["coredump_shipper_s3_reachable"] == 1, 60)
    assert is_ready(kube.get("pod", "-n", NAMESPACE, name))
    wait_for("the core deleted from the node", lambda: not (release.core_dir / core).exists(), 30)
    after = kube.get("pod", "-n", NAMESPACE, name)
    # Liveness held throughout: the same pod, never restarted.
    assert sum(s["restartCount"] for s in after["status"]["containerStatuses"]) == restarts_before
    assert store.bucket.incomplete_uploads() == []
