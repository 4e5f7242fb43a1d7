"""Scenario 5: S3 goes away. Readiness fails (the node shows its shipper cannot ship), liveness does
not (a restart would not bring S3 back), the core waits on the node, and it is shipped once S3 returns.
"""

from __future__ import annotations

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

# The shipper reports S3 as failing once its last successful call is older than this (service.py).
S3_READY_WINDOW = 60


def events(kube: Kube, pod: str) -> list[str]:
    items = kube.get("events", "-n", NAMESPACE, "--field-selector", f"involvedObject.name={pod}")["items"]
    return [f"{e['reason']}: {e.get('message', '')}" for e in items]


def test_s3_outage_fails_readiness_not_liveness_and_the_core_waits(
    release: Release, store: Store, kube: Kube
) -> None:
    pod = wait_for(
        "a Ready shipper pod", lambda: next((p for p in kube.shipper_pods() if is_ready(p)), None), 120
    )
    name = pod["metadata"]["name"]
    restarts_before = sum(s["restartCount"] for s in pod["status"]["containerStatuses"])
    data = fake_core(1024 * 1024)
    core = f"core.outage.waitapp.sig6.777.{int(time.time())}"
    store.proxy.down()
    try:
        down_at = time.monotonic()
        drop_core(release.core_dir, core, data)
        wait_for(
            "the pod to turn not Ready",
            lambda: not is_ready(kube.get("pod", "-n", NAMESPACE, name)),
            S3_READY_WINDOW + 60,
            interval=1,
        )
        print(f"not Ready {time.monotonic() - down_at:.0f}s after S3 went down")
        status, body = release.http("/readyz")
        assert status == 503, body
        assert "S3 not reachable" in body
        assert release.http("/healthz")[0] == 200
        # The core waits on the node, nothing of it in the bucket.
        assert (release.core_dir / core).exists()
        assert shipped(store.bucket, core) is None
        metrics = release.metrics()
        assert metrics["coredump_shipper_pending_files"] >= 1
        assert metrics["coredump_shipper_upload_retries_total"] >= 1
        seen = events(kube, name)
        assert any(e.startswith("Unhealthy: Readiness probe failed") for e in seen), seen
        assert not any("Liveness probe failed" in e for e in seen), seen
    finally:
        store.proxy.up()
    key = wait_for("the waiting core shipped", lambda: shipped(store.bucket, core), 60)
    assert store.bucket.content(key) == data
    wait_for("the pod Ready again", lambda: is_ready(kube.get("pod", "-n", NAMESPACE, name)), 60)
    wait_for("the core deleted from the node", lambda: not (release.core_dir / core).exists(), 30)
    after = kube.get("pod", "-n", NAMESPACE, name)
    # Liveness held throughout: the same pod, never restarted.
    assert sum(s["restartCount"] for s in after["status"]["containerStatuses"]) == restarts_before
    assert store.bucket.incomplete_uploads() == []
